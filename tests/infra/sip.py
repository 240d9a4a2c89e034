"""The SIP REGISTER client (tests/device/sipclient.py, standard library only) run on a
twin against its own kamailio: copied over the console once kamailio listens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.infra.twin import Device

CLIENT = Path(__file__).resolve().parents[1] / "device" / "sipclient.py"
ON_TWIN = "/tmp/sipclient.py"


def listening(*addresses: str, within_s: int = 120) -> str:
    """A shell loop that ends once kamailio is active, has no job queued and listens on
    port 5060 of each address (of any, when none is named). The guard restarts kamailio
    when the box's addresses move, and a request sent to a new address before that is
    refused. Bounded by the clock, not by a count of rounds (a round is slow on the
    U20), so a kamailio that never comes up is shown by its status within `within_s`."""
    wanted = " && ".join(f"echo \"$s\" | grep -q '{address}:5060'" for address in addresses) or '[ -n "$s" ]'
    return (f"( end=$(( $(date +%s) + {within_s} )); while [ $(date +%s) -lt $end ]; do "
            "s=$(ss -Hlun 'sport = :5060'); systemctl is-active -q kamailio && "
            f"[ -z \"$(systemctl list-jobs --no-legend kamailio.service)\" ] && {wanted} && exit 0; sleep 0.2; "
            "done; systemctl status kamailio --no-pager; exit 1 )")


def client_on(dut: Device) -> Callable[..., str]:
    """A register(user, secret, agent, host, source) that runs on `dut` and returns the
    final status line, e.g. "SIP/2.0 200 OK"."""
    dut.put(CLIENT, ON_TWIN)
    dut.check(listening(), timeout=180)

    def register(user: str, secret: str, agent: str = "pbxfw-test", host: str = "127.0.0.1", source: str = "") -> str:
        return dut.check(f"python3 {ON_TWIN} '{user}' '{secret}' '{agent}' {host} 5060 {source}", timeout=60).strip()

    return register
