"""The SIP REGISTER client (tests/device/sipclient.py, standard library only) run on a
twin against its own kamailio: copied over the console once kamailio listens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.infra.twin import Device

CLIENT = Path(__file__).resolve().parents[1] / "device" / "sipclient.py"
ON_TWIN = "/tmp/sipclient.py"


def client_on(dut: Device) -> Callable[..., str]:
    """A register(user, secret, agent, host, source) that runs on `dut` and returns the
    final status line, e.g. "SIP/2.0 200 OK"."""
    dut.put(CLIENT, ON_TWIN)
    dut.check("( for i in $(seq 600); do ss -Hlun 'sport = :5060' | grep -q . && exit 0; sleep 0.2; done; "
              "systemctl status kamailio --no-pager; exit 1 )", timeout=180)

    def register(user: str, secret: str, agent: str = "pbxfw-test", host: str = "127.0.0.1", source: str = "") -> str:
        return dut.check(f"python3 {ON_TWIN} '{user}' '{secret}' '{agent}' {host} 5060 {source}", timeout=60).strip()

    return register
