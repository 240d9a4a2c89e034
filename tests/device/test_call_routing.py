"""Calls through the box on the test network (tests/device/netlab.py), the phones played
by sipp in the host namespaces (tests/device/phones.py):

- extension to extension: the caller answers the box's challenge, the callee rings at
  the contact it registered, the call is record-routed through the box and the audio
  flows both ways directly between the phones; one call record for it;
- a third call at once from one extension is refused busy (calls.concurrent, 2), with
  its record and an alert;
- a guest call from the internet whose From claims a local extension is challenged and
  never reaches a phone;
- a call to no extension is 404, to one that is not registered 480, each with a record.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from tests.device import phones
from tests.device.netlab import INTERNET, INTERNET_HOST, LAN, LAN2, LAN2_HOST, LAN_HOST, NetLab, secret_of
from tests.infra.twin import Device

CALLEE_PORT, CALLER_PORT = 5070, 5080


def records_of(dev: Device, tag: str) -> list[dict[str, Any]]:
    """This test's call records, as `pbxagent calls list` shows them."""
    rows = json.loads(dev.check("pbxagent calls list --json --since today 2>/dev/null"))
    return sorted((r for r in rows if r["call"].endswith(f"-{tag}")), key=lambda r: r["call"])


def callee_802(dev: Device) -> None:
    phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret_of(dev, "802"))


def test_an_extension_calls_another_with_audio_both_ways_and_one_record(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    callee_802(dev)
    tag = uuid.uuid4().hex[:8]
    with phones.udp_arrivals(LAN, 6100) as at_caller, phones.udp_arrivals(LAN2, 6000) as at_callee:
        with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802") as phone:
            done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "802", tag)
        assert done.returncode == 0, done.stdout[-3000:]
        assert phone.returncode == 0
        # The phones' own addresses are in each SDP: the audio never passes the box.
        assert at_callee.packets() >= phones.AUDIO_PACKETS * 0.9
        assert at_caller.packets() >= phones.AUDIO_PACKETS * 0.9  # echoed back
    [record] = records_of(dev, tag)
    assert (record["caller"], record["dialled"], record["kind"], record["code"], record["source"]) == \
        ("801", "802", "internal", 200, LAN_HOST)
    assert record["answer"] is not None and record["duration"] >= 1


def test_a_third_call_at_once_is_busy_with_its_record_and_an_alert(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    callee_802(dev)
    tag = uuid.uuid4().hex[:8]
    with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802", calls=2):
        done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "802", tag, calls=3,
                           hold_ms=5000)
    assert done.returncode != 0  # one of the three was not answered
    assert sorted(r["code"] for r in records_of(dev, tag)) == [200, 200, 486]
    alerts = dev.check("journalctl -u kamailio -o cat --since today | grep -c "
                       f"'pbx-alert concurrent-limit from=801 calls=2 src={LAN_HOST}' || true")
    assert int(alerts) >= 1


def test_a_guest_call_claiming_a_local_extension_is_challenged_and_never_rings(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    callee_802(dev)
    tag = uuid.uuid4().hex[:8]
    with phones.udp_arrivals(LAN2, CALLEE_PORT) as at_phone:
        done = phones.guest_call(INTERNET, INTERNET_HOST, 5090, "801", "802", tag)
        assert done.returncode == 0, done.stdout[-3000:]  # answered 407
        assert at_phone.packets() == 0
    assert records_of(dev, tag) == []
    assert f"pbx-auth-challenge src={INTERNET_HOST} " in dev.check(
        f"journalctl -u kamailio -o cat --since today | grep 'src={INTERNET_HOST} ' | tail -3")


def test_a_call_to_no_extension_is_404_and_to_one_not_registered_480(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    tag = uuid.uuid4().hex[:8]
    secret = secret_of(dev, "801")
    for dialled in ("899", "805"):  # no such extension; an extension with no phone registered
        done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret, dialled, tag)
        assert done.returncode != 0
    codes = {r["dialled"]: r["code"] for r in records_of(dev, tag)}
    assert codes == {"899": 404, "805": 480}
