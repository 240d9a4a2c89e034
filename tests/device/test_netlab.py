"""The guard seen from the network, on a twin of its own attached by tap to host-side
namespaces (tests/device/netlab.py): a router, a LAN host beside the twin and an
internet host in a public-looking segment behind the router.

- a TCP connect scan from the internet finds exactly the TCP ports the policy opens to
  `any` (5060, 5061): everything else is dropped, not refused;
- ten wrong REGISTERs from the internet ban that host, after which nothing of it gets
  through (not even the right secret, not the open ports); `bans remove` lifts it;
- fifty wrong REGISTERs from the LAN host ban nothing, and its right secret still works;
- an allow-listed internet address is never banned: the ban engine sees its failures
  and exempts it, and its right secret still works.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tests.device.netlab import (
    INTERNET,
    INTERNET_HOST,
    LAN,
    LAN_HOST,
    TWIN,
    NetLab,
    secret_of,
)
from tests.infra.twin import Device

HERE = Path(__file__).parent
SCAN = "1-1024,3306,5038,5060,5061,5432,8080,8443"
OPEN_TO_ANY = [5060, 5061]  # firewall.services from `any`, tcp (default policy)
# fail2ban finds the first failures ~20 s late right after boot (docs/agent.md, network guard).
BAN_WAIT_S = 60
ALLOWED_HOST = "203.0.113.51"  # a second address of the internet host, allow-listed by the test


def register(net: NetLab, ns: str, user: str, secret: str, source: str = "") -> str:
    return net.run(ns, [sys.executable, str(HERE / "sipclient.py"), user, secret, "pbxfw-test", TWIN, "5060",
                        source]).strip()


def scan(net: NetLab, ns: str) -> list[int]:
    return [int(p) for p in net.run(ns, [sys.executable, str(HERE / "portscan.py"), TWIN, SCAN]).split()]


def test_a_connect_scan_from_the_internet_finds_only_what_the_policy_opens(lab: tuple[NetLab, Device]) -> None:
    net, _ = lab
    assert scan(net, INTERNET) == OPEN_TO_ANY


def test_ten_wrong_registers_ban_the_internet_host(lab: tuple[NetLab, Device]) -> None:
    net, dev = lab
    secret = secret_of(dev, "806")
    for _ in range(10):
        assert register(net, INTERNET, "806", "Wrong-Secret-77xx") == "SIP/2.0 401 Unauthorized"
    tenth = time.monotonic()
    # Bounded by time, not by a count of polls: under emulation each `nft` costs a varying
    # fraction of a second. The latency itself is `make bench-guard`'s figure.
    dev.check(f"timeout {BAN_WAIT_S} sh -c \"until nft get element inet pbx ban4 '{{ {INTERNET_HOST} }}' "
              ">/dev/null 2>&1; do sleep 0.1; done\"", timeout=BAN_WAIT_S + 30)
    print(f"internet host banned {time.monotonic() - tenth:.1f} s after its tenth failure (console round trip incl.)")
    try:
        assert register(net, INTERNET, "806", secret) == "timeout"
        assert scan(net, INTERNET) == []
        listed = json.loads(dev.check("pbxagent bans list --json 2>/dev/null"))
        assert [b["expires_in"] > 3500 for b in listed if b["address"] == INTERNET_HOST] == [True]  # the policy's hour
    finally:
        dev.check(f"pbxagent bans remove {INTERNET_HOST} 2>/dev/null || true")
    assert register(net, INTERNET, "806", secret) == "SIP/2.0 200 OK"


def test_fifty_wrong_registers_from_the_lan_ban_nothing(lab: tuple[NetLab, Device]) -> None:
    net, dev = lab
    for _ in range(50):
        assert register(net, LAN, "808", "Wrong-Secret-77xx") == "SIP/2.0 401 Unauthorized"
    assert register(net, LAN, "808", secret_of(dev, "808")) == "SIP/2.0 200 OK"
    assert LAN_HOST not in dev.check("pbxagent bans list 2>/dev/null")


def test_an_allow_listed_internet_address_is_never_banned(lab: tuple[NetLab, Device]) -> None:
    net, dev = lab
    net.add_address(INTERNET, ALLOWED_HOST)
    dev.check(f"printf 'lan:\\n  allow: [{ALLOWED_HOST}]\\n' > /tmp/allow.yaml")
    dev.check("pbxagent firewall apply --policy /tmp/allow.yaml 2>&1 && pbxagent firewall confirm 2>&1", timeout=180)
    try:
        for _ in range(12):
            assert register(net, INTERNET, "805", "Wrong-Secret-77xx", ALLOWED_HOST) == "SIP/2.0 401 Unauthorized"
        # Evidence that the ban engine saw the failures and exempted the address, not a sleep.
        dev.check(f"timeout {BAN_WAIT_S} sh -c \"until grep -q '\\[pbx-sip\\] Ignore {ALLOWED_HOST} by ip' "
                  "/var/log/fail2ban.log; do sleep 0.5; done\"", timeout=BAN_WAIT_S + 30)
        assert ALLOWED_HOST not in dev.check("pbxagent bans list 2>/dev/null")
        assert register(net, INTERNET, "805", secret_of(dev, "805"), ALLOWED_HOST) == "SIP/2.0 200 OK"
    finally:
        dev.check("rm -f /data/pbx/policy.yaml && pbxagent firewall apply 2>&1", timeout=180)
