"""The network guard's pure core: trusted-LAN classification, the compiled ruleset
(golden file, and real nft in a throw-away network namespace), rate maths, policy
errors for the network keys."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pbxagent.network import firewall, guard, lan
from pbxagent.network.lan import IfAddr
from pbxagent.policy import network, site

GOLDEN = Path(__file__).parent / "golden" / "firewall-default.nft"
REPO = Path(__file__).resolve().parents[2]


def default_policy() -> site.Policy:
    return site.compose(site.DEFAULTS, None)[0]


@pytest.mark.parametrize(
    ("addresses", "trusted"),
    [
        (["192.168.1.10/24"], ["192.168.1.0/24"]),
        (["10.1.2.3/8"], ["10.0.0.0/8"]),
        (["172.20.0.5/16"], ["172.20.0.0/16"]),
        (["172.32.0.5/16"], []),  # just outside 172.16/12
        (["203.0.113.7/24"], []),  # a public WAN segment is shared with strangers
        (["100.64.3.4/10"], []),  # carrier-grade NAT is not RFC 1918
        (["fd12:3456::1/64"], ["fd12:3456::/64"]),
        (["2001:db8::1/64", "fe80::1/64"], []),  # global and link-local IPv6
        (["192.168.1.10/24", "203.0.113.7/24", "fd00::5/64"], ["192.168.1.0/24", "fd00::/64"]),
        (["127.0.0.1/8", "::1/128"], []),
    ],
)
def test_only_private_segments_are_trusted(addresses: list[str], trusted: list[str]) -> None:
    assert lan.trusted([IfAddr("eth0", a) for a in addresses]) == trusted


def test_allow_list_is_trusted_with_its_reason_and_changes_follow() -> None:
    before = lan.classify([IfAddr("eth0", "192.168.1.10/24")], ["198.51.100.7"])
    assert [(d.network, d.reason) for d in before if d.trusted] == [
        ("192.168.1.0/24", "eth0 192.168.1.10/24: private segment (RFC 1918)"),
        ("198.51.100.7/32", "allow-list (policy lan.allow)"),
    ]
    after = lan.trusted([IfAddr("eth0", "192.168.7.10/24")])
    assert after == ["192.168.7.0/24"]  # a new lease: the old segment is gone


@pytest.mark.parametrize(("packets", "seconds", "expected"), [
    (100, 60, "100/minute"), (40, 2, "20/second"), (80, 2, "40/second"), (10, 60, "10/minute"),
    (7, 3, "140/minute"), (1, 3600, "1/hour"), (200, 1, "200/second"), (7, 11, "39/minute"),
])
def test_rate_maths(packets: int, seconds: int, expected: str) -> None:
    assert firewall.rate(packets, seconds) == expected


def test_default_ruleset_matches_the_golden_file() -> None:
    text = firewall.compile_ruleset(default_policy().firewall, ["10.0.2.0/24", "fd00::/64"], ["10.0.2.15"])
    if os.environ.get("PBXFW_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "ruleset changed: review, then rerun with PBXFW_UPDATE_GOLDEN=1"


def test_every_option_compiles_to_its_rules() -> None:
    fw = default_policy().firewall._replace(
        ping=False, drop_all=True, refuse_ami=False, allow=("198.51.100.7/32",), block=("203.0.113.0/24",),
        rules=network.rules(Path("p"), "firewall.rules", [
            {"action": "drop", "proto": "udp", "ports": "5060", "source": "192.0.2.0/24"},
            {"action": "accept", "mac": "52:54:00:AA:BB:CC"},
        ]),
    )
    text = firewall.compile_ruleset(fw, ["10.0.2.0/24"])
    assert "echo-request" not in text
    assert "trusted LAN\"" not in text  # drop all: the LAN gets only what is accepted
    assert 'ip saddr @trusted4 tcp dport 22 accept comment "ssh (LAN)"' in text
    assert "dport 5038 drop" not in text
    assert "add element inet pbx allow4 { 198.51.100.7/32 }" in text
    assert "add element inet pbx block4 { 203.0.113.0/24 }" in text
    assert 'ip saddr 192.0.2.0/24 udp dport 5060 drop comment "rule 0"' in text
    assert 'ether saddr 52:54:00:aa:bb:cc accept comment "rule 1"' in text
    ordered = [line for line in text.splitlines() if "rule 0" in line or "auto-defense" in line or "sip" in line]
    assert "rule 0" in ordered[0]  # common rules come before auto-defense and services


def test_a_block_list_entry_covering_the_box_is_refused() -> None:
    fw = default_policy().firewall._replace(block=("10.0.0.0/8",))
    with pytest.raises(firewall.FirewallError, match=r"firewall.block: 10.0.0.0/8 covers the device's own address "
                                                     r"10.0.2.15"):
        firewall.compile_ruleset(fw, [], ["10.0.2.15"])


@pytest.mark.parametrize(("text", "message"), [
    ("firewall:\n  services:\n    - {name: sip, proto: udp, ports: 70000}\n",
     r"firewall\.services\[0\]\.ports: '70000' is outside 1\.\.65535"),
    ("firewall:\n  block: [10.0.0.300/8]\n", r"firewall\.block\[0\]: '10\.0\.0\.300/8' is not an address or network"),
    ("lan:\n  allow: [somewhere]\n", r"lan\.allow\[0\]: 'somewhere' is not an address"),
    ("firewall:\n  rules:\n    - {action: reject}\n", r"firewall\.rules\[0\]\.action: 'reject' is not one of"),
    ("firewall:\n  rules:\n    - {action: drop, port: 22}\n", r"firewall\.rules\[0\]\.port: unknown key"),
    ("firewall:\n  rate_limits:\n    - {proto: udp, port: 5060, packets: 500, seconds: 2}\n",
     r"firewall\.rate_limits\[0\]\.packets: 500 is outside 1\.\.200"),
    ("firewall:\n  ping: maybe\n", r"firewall\.ping: must be true or false"),
    ("firewall:\n  flood_pps: [2000, 500]\n", r"firewall\.flood_pps: .* ascending"),
    ("firewal:\n  ping: false\n", r"firewal: unknown key"),
    ("bans:\n  sip: {failures: 0, window: 600, ban: 3600}\n", r"bans\.sip\.failures: must be an integer 1\.\.1000"),
    ("bans:\n  ssh: {failures: 5, window: 600}\n", r"bans\.ssh: needs exactly failures, window and ban"),
    ("bans:\n  telnet: {failures: 5, window: 600, ban: 60}\n", r"bans\.telnet: unknown key"),
])
def test_bad_network_policy_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    override = tmp_path / "policy.yaml"
    override.write_text(text)
    with pytest.raises(site.PolicyError, match=message) as error:
        site.compose(site.DEFAULTS, override)
    assert str(error.value).startswith(str(override))


def in_namespace(script: str) -> subprocess.CompletedProcess[str]:
    """Run Python in a fresh network namespace: real nft, no effect on the host."""
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.fail("nft and unshare are host requirements (make setup installs nftables)")
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace (CI runs as root)")
    path = os.pathsep.join([str(REPO / "agent"), str(REPO)])  # this checkout's agent, not the venv's
    return subprocess.run(["unshare", "--net", sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": path})


def test_ruleset_applies_twice_keeping_bans_and_the_base_table_goes() -> None:
    done = in_namespace("""
import subprocess
from pbxagent.network import bans, firewall, nft
from pbxagent.policy import site
fw = site.compose(site.DEFAULTS, None)[0].firewall
subprocess.run(["nft", "-f", "overlay/etc/nftables.conf"], check=True)
nft.apply(firewall.compile_ruleset(fw, ["10.0.2.0/24"]))
bans.add("203.0.113.9", 600, ["10.0.2.0/24"])
nft.apply(firewall.compile_ruleset(fw, ["192.168.5.0/24"]))
print([b.address for b in bans.current()])
print(nft.set_elements("inet pbx", "trusted4"))
print(subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.split())
nft.execute(firewall.trusted_update(["172.16.1.0/24"]))
print(nft.set_elements("inet pbx", "trusted4"))
""")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "['203.0.113.9']"
    assert "192.168.5.0" in lines[1] and "10.0.2.0" not in lines[1]
    assert lines[2] == "['table', 'inet', 'pbx']"
    assert "172.16.1.0" in lines[3]


def test_the_relays_open_ports_survive_a_reapply_and_close_with_a_flush() -> None:
    done = in_namespace("""
import subprocess
from pbxagent.network import firewall, nft
from pbxagent.policy import site
policy = site.compose(site.DEFAULTS, None)[0]
nft.apply(firewall.compile_ruleset(policy.firewall, ["10.0.2.0/24"]))
nft.execute(firewall.relay_open(policy.calls.relay_ports))
nft.apply(firewall.compile_ruleset(policy.firewall, ["192.168.5.0/24"]))
print(nft.set_elements("inet pbx", "relay"))
nft.command("flush", "set", "inet", "pbx", "relay")
print(nft.set_elements("inet pbx", "relay"))
""")
    assert done.returncode == 0, done.stderr
    opened, closed = done.stdout.splitlines()
    assert "10000" in opened and "10500" in opened
    assert closed == "[]"


def test_the_addresses_read_over_netlink_are_iproute2s() -> None:
    done = in_namespace("""
import json, subprocess
from pbxagent.network import lan
for argv in (["link", "set", "lo", "up"], ["link", "add", "wan0", "type", "veth", "peer", "name", "wan1"],
             ["address", "add", "192.168.77.1/24", "dev", "lo"], ["address", "add", "fd00:77::1/64", "dev", "lo"],
             ["address", "add", "10.9.9.1", "peer", "10.9.9.2/32", "dev", "wan0"],
             ["address", "add", "203.0.113.7/28", "dev", "wan0"]):
    subprocess.run(["ip", *argv], check=True)
shown = json.loads(subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True, check=True).stdout)
print(sorted(lan.IfAddr(link["ifname"], f"{a['local']}/{a['prefixlen']}") for link in shown for a in link["addr_info"]))
print(lan.read_addresses())
""")
    assert done.returncode == 0, done.stderr
    iproute2, netlink = done.stdout.splitlines()
    assert netlink == iproute2
    assert "'10.9.9.1/32'" in netlink and "'fd00:77::1/64'" in netlink and "'203.0.113.7/28'" in netlink


def test_an_interface_gone_between_the_dump_and_its_name_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # The race (a PPP link going down mid-read) the kernel cannot be made to lose on cue.
    real = socket.if_indextoname
    loopback = socket.if_nametoindex("lo")

    def gone(index: int) -> str:
        if index == loopback:
            raise OSError(errno.ENXIO, "No such device")
        return real(index)

    assert any(a.ifname == "lo" for a in lan.read_addresses())
    monkeypatch.setattr(socket, "if_indextoname", gone)
    assert not any(a.ifname == "lo" for a in lan.read_addresses())


def test_an_address_change_wakes_the_guard_and_a_drain_empties_the_queue() -> None:
    done = in_namespace("""
import select, subprocess, time
from pbxagent.network import guard
events = guard.address_events()
print(bool(select.select([events], [], [], 0.5)[0]))
subprocess.run(["ip", "address", "add", "192.168.77.1/24", "dev", "lo"], check=True)
subprocess.run(["ip", "address", "add", "fd00:77::1/64", "dev", "lo"], check=True)
print(bool(select.select([events], [], [], 5)[0]))
time.sleep(guard.SETTLE_S)  # as the guard does: the second address's event may come a moment later
guard.drain(events)
print(bool(select.select([events], [], [], 0.5)[0]))
subprocess.run(["ip", "link", "set", "lo", "mtu", "9000"], check=True)  # a link change, not an address
print(bool(select.select([events], [], [], 0.5)[0]))
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "False", "False"]


def test_bans_refuse_trusted_addresses_and_survive_a_save_and_restore(tmp_path: Path) -> None:
    done = in_namespace(f"""
import errno
import os
os.environ["PBXAGENT_ROOT"] = "{tmp_path}"
from pbxagent.network import bans, firewall, nft
from pbxagent.policy import site
fw = site.compose(site.DEFAULTS, None)[0].firewall
nft.apply(firewall.compile_ruleset(fw, ["10.0.2.0/24"]))
try:
    bans.add("10.0.2.99", 600, ["10.0.2.0/24"])
except bans.BanError as exc:
    print("refused:", exc)
bans.add("2001:db8::66", 600, [])
bans.add("203.0.113.9", 600, [])
bans.save()
bans.remove("203.0.113.9")
nft.command("flush", "set", "inet", "pbx", "ban6")
print(bans.restore([]), [b.address for b in bans.current()])
""")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "refused: 10.0.2.99 is in 10.0.2.0/24, which is trusted or allow-listed and never banned"
    assert lines[1] == "1 ['2001:db8::66']"  # removed stays removed; the saved one comes back


def test_changes_that_admit_the_administrator_are_risky() -> None:
    from pbxagent.network import probation

    current = default_policy().firewall
    assert probation.risky(current, current._replace(ping=False, refuse_ami=False, flood_pps=(600, 3000))) == []
    assert probation.risky(current, current._replace(drop_all=True)) == ["drop_all"]
    assert probation.risky(current, current._replace(services=current.services[:2], allow=("192.0.2.1/32",))) == [
        "services", "allow"]
    assert probation.risky(current, current._replace(block=("203.0.113.0/24",))) == ["block"]


def test_jail_thresholds_follow_the_policy(tmp_path: Path) -> None:
    defaults = network.render_jails(default_policy().jails)
    assert "[pbx-sip]\nmaxretry = 10\nfindtime = 600\nbantime = 3600\n" in defaults
    assert "[sshd]\nmaxretry = 5\nfindtime = 600\nbantime = 600\n" in defaults
    assert "[pbx-ssh-long]\nmaxretry = 8\nfindtime = 3600\nbantime = 1200\n" in defaults
    override = tmp_path / "policy.yaml"
    override.write_text("bans:\n  sip: {failures: 6, window: 300, ban: 7200}\n")
    tightened = network.render_jails(site.compose(site.DEFAULTS, override)[0].jails)
    assert "[pbx-sip]\nmaxretry = 6\nfindtime = 300\nbantime = 7200\n" in tightened
    assert "[pbx-sip-flood]\nmaxretry = 50\n" in tightened


def test_a_flood_from_one_source_port_meets_the_flood_layers_and_udp_limits() -> None:
    """A UDP flow the box has answered once is "established": the flood layers and the
    limits must come before that accept, and only replies to the box's own connections
    may skip them. TCP limits count connection attempts only."""
    lines = firewall.compile_ruleset(default_policy().firewall, ["10.0.2.0/24"], ["10.0.2.15"]).splitlines()
    where = {key: next(i for i, line in enumerate(lines) if key in line)
             for key in ("ct direction reply accept", "flood over 500 pps", "auto-defense 40/2s",
                         "auto-defense 80/2s", "input ct state established,related accept")}
    assert list(where.values()) == sorted(where.values()), where
    assert lines[where["auto-defense 80/2s"]].startswith("add rule inet pbx input ct state new tcp dport 5061")


def test_fail2ban_is_told_the_trusted_lan_and_the_live_allow_list(tmp_path: Path) -> None:
    """Real nft: the allow-list comes from the applied sets, whatever form nft keeps an
    element in (address, prefix, or a range auto-merged from neighbours); the trusted LAN
    is the one the caller just applied."""
    (tmp_path / "policy.yaml").write_text("lan:\n  allow: [203.0.113.51, 203.0.113.52, 198.51.100.0/24, "
                                          "2001:db8::/64]\n")
    done = in_namespace(f"""
import errno
import os
os.environ["PBXAGENT_ROOT"] = "{tmp_path}"
from pathlib import Path
from pbxagent.network import ban_exemptions, firewall, guard, nft
from pbxagent.policy import site
fw = site.compose(site.DEFAULTS, Path("{tmp_path}/policy.yaml"))[0].firewall
nft.apply(firewall.compile_ruleset(fw, ["10.0.2.0/24", "fd00::/64"]))
print(ban_exemptions.live_allow())
print(guard.exempt_sync(["10.0.2.0/24", "fd00::/64"]).message)
""")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == str(sorted(["203.0.113.51/32", "203.0.113.52/32", "198.51.100.0/24", "2001:db8::/64"]))
    assert lines[1] == "fail2ban not running: it reads the list when it starts"
    written = (tmp_path / "etc/fail2ban/jail.d/zz-pbx-exempt.local").read_text()
    assert ("[DEFAULT]\nignoreip = 10.0.2.0/24 198.51.100.0/24 2001:db8::/64 203.0.113.51/32 203.0.113.52/32 "
            "fd00::/64\n") in written


def test_the_ignore_list_changes_by_the_difference_only() -> None:
    from pbxagent.network import ban_exemptions

    add, remove = ban_exemptions.changes(["10.0.2.0/24", "192.168.77.0/24", "203.0.113.51"],
                                    ["10.0.2.0/24", "203.0.113.51/32", "172.16.1.0/24"])
    assert (add, remove) == (["172.16.1.0/24"], ["192.168.77.0/24"])
    assert ban_exemptions.networks_of({"range": ["192.0.2.4", "192.0.2.11"]}) == ["192.0.2.4/30", "192.0.2.8/30"]


def test_a_ban_command_names_the_family_set_and_the_timeout() -> None:
    from pbxagent.network import bans

    assert bans.element_command("add", "203.0.113.9", 3600) == "add element inet pbx ban4 { 203.0.113.9 timeout 3600s }"
    assert bans.element_command("delete", "2001:db8::66") == "delete element inet pbx ban6 { 2001:db8::66 }"


def test_the_boot_firewall_loads_alone_with_its_bans_and_no_trusted_lan(tmp_path: Path) -> None:
    """What nftables.service loads before any interface: the compiled table, the bans,
    an empty trusted set; written again only when the rules or banned addresses change."""
    done = in_namespace(f"""
import os, subprocess
os.environ["PBXAGENT_ROOT"] = "{tmp_path}"
from pbxagent.network import bans, boot_firewall, nft
from pbxagent.network.bans import Ban
from pbxagent.policy import site
fw = site.compose(site.DEFAULTS, None)[0].firewall
subprocess.run(["nft", "-f", "overlay/etc/nftables.conf"], check=True)
print(boot_firewall.save(fw, [Ban("203.0.113.9", 600), Ban("2001:db8::66", 60), Ban("198.51.100.1", 0)]))
print(boot_firewall.save(fw, [Ban("203.0.113.9", 540), Ban("2001:db8::66", 1)]))
print(boot_firewall.save(fw, [Ban("203.0.113.9", 540)]))
subprocess.run(["nft", "-f", str(boot_firewall.path())], check=True)
print(subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout.split())
print([b.address for b in bans.current()], nft.set_elements("inet pbx", "trusted4"))
""")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["True", "False", "True"]  # timeouts alone do not rewrite it
    assert lines[3] == "['table', 'inet', 'pbx']"  # the base table went with the flush
    assert lines[4] == "['203.0.113.9'] []"


def test_kamailio_is_restarted_only_when_its_sockets_must_follow_the_boxs_addresses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, systemctl_calls: list[tuple[str, ...]]) -> None:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    route = ["10.0.2.15"]
    lookups: list[str] = []

    def source_toward() -> str:
        lookups.append(route[0])
        return route[0]

    monkeypatch.setattr("pbxagent.network.lan.source_toward", source_toward)
    restarts = systemctl_calls
    journal: list[str] = []
    guard._follow_sip(journal.append, ["10.0.2.15"])
    guard._follow_sip(journal.append, ["10.0.2.15"])
    guard._follow_sip(journal.append, [])
    assert restarts == [("try-restart", "--no-block", "kamailio.service")]
    assert journal == ["SIP service restarted on this box's addresses: 10.0.2.15"]
    assert lookups == []  # one address: the contact is that one, no route to look up
    guard._follow_sip(journal.append, ["10.0.2.15", "192.168.50.10"])
    route[0] = "192.168.50.10"  # the same addresses, the default route on the other: the provider's contact moves
    guard._follow_sip(journal.append, ["10.0.2.15", "192.168.50.10"])
    assert len(restarts) == 3


def test_the_relay_is_restarted_on_new_addresses_unless_it_started_after_them_or_never(
        monkeypatch: pytest.MonkeyPatch, systemctl_calls: list[tuple[str, ...]]) -> None:
    began = [5.0]
    monkeypatch.setattr("pbxagent.system.start_began", lambda unit: began[0])
    journal: list[str] = []
    guard._follow_relay(journal.append, ["10.0.2.15"], changed_by=10.0)  # running since before the lease
    assert systemctl_calls == [("try-restart", "--no-block", "rtpengine-daemon.service")]
    began[0] = 12.0  # a first boot: it started once the network was online, after the lease
    guard._follow_relay(journal.append, ["10.0.2.15"], changed_by=10.0)
    began[0] = 0.0  # a first boot: not started yet (it waits for the network and kamailio)
    guard._follow_relay(journal.append, ["10.0.2.15"], changed_by=10.0)
    assert len(systemctl_calls) == 1
    assert journal == ["media relay restarted on this box's addresses: 10.0.2.15"]
