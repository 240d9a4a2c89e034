"""Calls through the box on the test network (tests/device/netlab.py), the phones played
by sipp in the host namespaces (tests/device/phones.py):

- extension to extension: the caller answers the box's challenge, the callee rings at
  the contact it registered, the call is record-routed through the box and the audio
  flows both ways directly between the phones; one call record for it;
- a remote phone behind NAT (the home host) calls an extension on the LAN with its audio
  flowing both ways through the box's media relay, from the relay's ports
  (calls.relay_ports), which the firewall opens only while the relay runs; it is called
  through the address its registration came from;
- a remote phone stays reachable between calls: it gets an OPTIONS through its router
  within a keep-alive round (20 s), a LAN phone none; over TCP, its connection is kept
  as long as its registration, with TCP keep-alives;
- a third call at once from one extension is refused busy (calls.concurrent, 2), with
  its record and an alert;
- a guest call from the internet whose From claims a local extension is challenged and
  never reaches a phone;
- a call to an extension no phone registered is 480;
- a number that is no extension is decided by the agent's call policy: refused (no PIN,
  a wrong one, a satellite number) with a 403, its record and an alert, a wrong PIN also
  counted as an authentication failure; allowed, it has nowhere to go yet (503, no trunk);
  outside its class's window, to a country not allowed, and past the day's count of
  external calls, refused the same way;
- six external calls within a minute lock the extension's external calls (an alert, a
  failed audit check) until `pbxagent calls unlock`.
"""

from __future__ import annotations

import datetime
import json
import re
import time
import uuid
from pathlib import Path

from tests.device import phones
from tests.device.netlab import (
    HOME,
    HOME_HOST,
    INTERNET,
    INTERNET_HOST,
    LAN,
    LAN2,
    LAN2_HOST,
    LAN_HOST,
    TWIN,
    NetLab,
    secret_of,
)
from tests.infra.twin import Device

CALLEE_PORT, CALLER_PORT = 5070, 5080
RELAY_PORTS = "10000-10500"  # calls.relay_ports, the default


def callee_802(dev: Device) -> None:
    phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret_of(dev, "802"))


def test_an_extension_calls_another_with_audio_both_ways_and_one_record(lab: tuple[NetLab, Device],
                                                                        tmp_path: Path) -> None:
    _, dev = lab
    callee_802(dev)
    tag = uuid.uuid4().hex[:8]
    messages = tmp_path / "callee.msg"
    with phones.udp_arrivals(LAN, 6100) as at_caller, phones.udp_arrivals(LAN2, 6000) as at_callee:
        with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802", messages=messages) as phone:
            done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "802", tag)
        assert done.returncode == 0, done.stdout[-3000:]
        assert phone.returncode == 0
        # The phones' own addresses are in each SDP: the audio never passes the box.
        assert at_callee.packets() >= phones.AUDIO_PACKETS * 0.9
        assert at_caller.packets() >= phones.AUDIO_PACKETS * 0.9  # echoed back
    [record] = phones.records_of(dev, tag)
    assert (record["caller"], record["dialled"], record["kind"], record["code"], record["source"]) == \
        ("801", "802", "internal", 200, LAN_HOST)
    assert record["answer"] is not None and record["duration"] >= 1
    # The box's own headers name its LAN address, where a real phone sends its ACK and
    # BYE (sipp answers wherever a request came from, so the call alone shows nothing).
    text = messages.read_text()
    invite = text[text.index("INVITE sip:"):][:3000]
    assert f"Record-Route: <sip:{TWIN};" in invite and f"Via: SIP/2.0/UDP {TWIN};" in invite, invite


def test_a_remote_phone_behind_nat_calls_with_its_audio_through_the_relay(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    callee_802(dev)
    tag = uuid.uuid4().hex[:8]
    with phones.udp_arrivals(HOME, 6100, TWIN, RELAY_PORTS) as at_caller, \
            phones.udp_arrivals(LAN2, 6000, TWIN, RELAY_PORTS) as at_callee:
        with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802") as phone:
            done = phones.call(HOME, HOME_HOST, CALLER_PORT, "803", secret_of(dev, "803"), "802", tag)
        assert done.returncode == 0, done.stdout[-3000:]
        assert phone.returncode == 0
        # Its SDP names 10.77.0.2, where nothing could reach it: both phones talk to the relay.
        assert at_callee.packets() >= phones.AUDIO_PACKETS * 0.9
        assert at_caller.packets() >= phones.AUDIO_PACKETS * 0.9  # echoed back, relayed again
    [record] = phones.records_of(dev, tag)
    assert (record["caller"], record["code"], record["source"]) == ("803", 200, INTERNET_HOST)


def test_a_remote_phone_behind_nat_is_called_where_it_registered_from_with_relayed_audio(
        lab: tuple[NetLab, Device]) -> None:
    """The phone talks as it answers (a real one does): the relay sends it audio once the
    phone's own has opened the way through its router."""
    _, dev = lab
    phones.register(HOME, HOME_HOST, CALLEE_PORT, "803", secret_of(dev, "803"))
    tag = uuid.uuid4().hex[:8]
    with phones.udp_arrivals(LAN, 6100, TWIN, RELAY_PORTS) as at_caller, \
            phones.udp_arrivals(HOME, 6000, TWIN, RELAY_PORTS) as at_callee:
        with phones.answering(HOME, HOME_HOST, CALLEE_PORT, "803", talking=True) as phone:
            done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "803", tag)
        assert done.returncode == 0, done.stdout[-3000:]  # the INVITE reached 10.77.0.2 through the binding
        assert phone.returncode == 0  # and the ACK and BYE too (its contact's alias)
        assert at_callee.packets() >= phones.AUDIO_PACKETS * 0.9  # the caller's audio, through the relay
        assert at_caller.packets() >= phones.AUDIO_PACKETS * 0.9  # the callee's, relayed too
    [record] = phones.records_of(dev, tag)
    assert (record["dialled"], record["code"]) == ("803", 200)


NAT_PING_S = 20  # nathelper's natping_interval (kamailio.cfg)


def test_a_remote_phone_behind_nat_gets_keep_alives_through_its_router_a_lan_phone_none(
        lab: tuple[NetLab, Device], tmp_path: Path) -> None:
    _, dev = lab
    callee_802(dev)
    round_over = time.monotonic() + NAT_PING_S + 2  # every phone behind NAT has had its ping by then
    messages = tmp_path / "remote.msg"
    messages.touch()
    with phones.udp_arrivals(LAN2, CALLEE_PORT, TWIN) as at_lan_phone, \
            phones.registered(HOME, HOME_HOST, CALLER_PORT, "803", secret_of(dev, "803"), messages=messages):
        while "OPTIONS sip:" not in messages.read_text() and time.monotonic() < round_over + 5:
            time.sleep(0.5)
        time.sleep(max(0.0, round_over - time.monotonic()))
        to_lan_phone = at_lan_phone.packets()
    text = messages.read_text()
    assert "OPTIONS sip:" in text, text[-3000:]  # it reached 10.77.0.2: through the router's binding
    ping = text[text.index("OPTIONS sip:"):][:1500]
    assert ping.startswith(f"OPTIONS sip:803@{HOME_HOST}:{CALLER_PORT};") and "sip:keepalive@pbx.invalid" in ping, ping
    assert "CSeq: 1 OPTIONS" in ping[ping.index("SIP/2.0 200 OK"):], ping  # answered, as a phone does
    assert to_lan_phone == 0


TCP_LIST = "kamcmd -s unix:/run/kamailio/kamailio_ctl core.tcp_list"


def tcp_connections(dev: Device) -> list[dict[str, str]]:
    """kamailio's TCP connections, each as its fields."""
    return [dict(re.findall(r"^\s*(\w+): (\S+)$", block, re.MULTILINE))
            for block in dev.check(TCP_LIST).split("}") if ":" in block]


def test_a_phone_over_tcp_keeps_its_connection_as_long_as_its_registration(lab: tuple[NetLab, Device]) -> None:
    """Behind NAT the box reaches a TCP phone only through the phone's own connection."""
    _, dev = lab
    with phones.registered(HOME, HOME_HOST, CALLER_PORT, "803", secret_of(dev, "803"), transport="t1"):
        # Until its REGISTER has passed and kamailio's reader has handed the idle connection
        # back (5 s): only then does its timeout count from its lifetime.
        dev.run(f"for i in $(seq 60); do {TCP_LIST} | grep -Eq 'timeout: [0-9]{{4}}' && break; sleep 0.5; done", 60)
        held = [c for c in tcp_connections(dev) if c.get("src_ip") == INTERNET_HOST]
        sockets = dev.check(f"ss -tno state established dst {INTERNET_HOST}")
    assert held and int(held[0]["lifetime"]) == 3660 and int(held[0]["timeout"]) > 3600, held  # not 120 s
    # Probes after 60 s of silence, not the kernel's 2 h (kamailio sets SO_KEEPALIVE on every connection).
    idle = re.search(r"timer:\(keepalive,(\d+)sec,", sockets)
    assert idle and int(idle.group(1)) <= 60, sockets


def test_the_relays_ports_are_open_only_while_it_runs(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    opened = "elements = { 10000-10500 }"
    assert opened in dev.check("nft list set inet pbx relay")
    dev.check("systemctl stop rtpengine-daemon")
    try:
        assert "elements" not in dev.check("nft list set inet pbx relay")
    finally:
        dev.check("systemctl start rtpengine-daemon")
    assert opened in dev.check("nft list set inet pbx relay")


def test_a_third_call_at_once_is_busy_with_its_record_and_an_alert(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    callee_802(dev)
    tag = uuid.uuid4().hex[:8]
    with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802", calls=2):
        done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "802", tag, calls=3,
                           hold_ms=5000)
    assert done.returncode != 0  # one of the three was not answered
    assert sorted(r["code"] for r in phones.records_of(dev, tag)) == [200, 200, 486]
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
    assert phones.records_of(dev, tag) == []
    assert f"pbx-auth-challenge src={INTERNET_HOST} " in dev.check(
        f"journalctl -u kamailio -o cat --since today | grep 'src={INTERNET_HOST} ' | tail -3")


def test_an_extension_with_no_phone_is_480_and_no_extension_is_for_the_policy(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    tag = uuid.uuid4().hex[:8]
    secret = secret_of(dev, "804")  # a caller of its own: external attempts count toward its rate lock
    for dialled in ("805", "899"):  # an extension no phone registered; no extension's number
        done = phones.call(LAN, LAN_HOST, CALLER_PORT, "804", secret, dialled, tag)
        assert done.returncode != 0
    codes = {r["dialled"]: (r["kind"], r["code"]) for r in phones.records_of(dev, tag)}
    assert codes == {"805": ("internal", 480), "899": ("invalid", 403)}  # the defaults: no calls.country


def test_the_call_policy_decides_external_numbers_with_records_and_alerts(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    rows = json.loads(dev.check("pbxagent extensions list --json --show-secrets 2>/dev/null"))
    call_pin = next(r["call_pin"] for r in rows if r["extension"] == "801")  # made on this box
    wrong_pin = call_pin[:-1] + str((int(call_pin[-1]) + 1) % 10)
    dev.check("printf 'calls:\\n  country: FR\\n  classes: {\"801\": international}\\n"
              "  allowed_countries: [\"+49\"]\\n  window_international: \"\"\\n' > /data/pbx/policy.yaml")
    tag = uuid.uuid4().hex[:8]
    secret = secret_of(dev, "801")
    try:
        for dialled in ("0123456789", "0049301234567", f"*7{wrong_pin}*0049301234567",
                        f"*7{call_pin}*00881612345678", f"*7{call_pin}*0049301234567"):
            assert phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret, dialled, tag).returncode != 0
    finally:
        dev.check("rm -f /data/pbx/policy.yaml")
    got = [(r["dialled"], r["kind"], r["code"]) for r in phones.records_of(dev, tag)]
    assert sorted(got) == sorted([
        ("0123456789", "national", 503),  # allowed: no trunk to take it yet
        ("0049301234567", "international", 403),  # no PIN
        ("*7<PIN>*0049301234567", "international", 403),  # the wrong PIN
        ("*7<PIN>*00881612345678", "international", 403),  # satellite
        ("*7<PIN>*0049301234567", "international", 503),  # the right PIN: allowed
    ])
    alerts = dev.check(f"journalctl -u pbx-agent -o cat --since today | grep 'pbx-alert call-refused call=.*-{tag} '")
    assert len(alerts.splitlines()) == 3  # one per refused call, none for kamailio's ACKs
    assert "international calls need extension 801's call PIN" in alerts
    assert "wrong call PIN for extension 801" in alerts
    assert "+881 is no country's code" in alerts
    assert call_pin not in alerts and wrong_pin not in alerts
    failures = dev.check("journalctl -u kamailio -o cat --since today | "
                         f"grep -c 'pbx-auth-failure src={LAN_HOST} ' || true")
    assert int(failures) >= 1


def test_outside_its_window_to_a_country_not_allowed_and_past_the_days_count_a_call_is_refused(
        lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    rows = json.loads(dev.check("pbxagent extensions list --json --show-secrets 2>/dev/null"))
    call_pin = next(r["call_pin"] for r in rows if r["extension"] == "804")
    # A day that is not the box's today (it keeps UTC, as this host does).
    elsewhen = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=2)).strftime("%a").lower()
    dev.check("printf 'calls:\\n  country: FR\\n  classes: {\"804\": international}\\n"
              "  allowed_countries: [\"+49\"]\\n  daily_external: 1\\n"
              f"  window_international: \"{elsewhen} 08:00-09:00\"\\n' > /data/pbx/policy.yaml")
    tag = uuid.uuid4().hex[:8]
    secret = secret_of(dev, "804")
    try:
        for dialled in (f"*7{call_pin}*00442079460000", f"*7{call_pin}*0049301234567", "0123456789", "0123456780"):
            assert phones.call(LAN, LAN_HOST, CALLER_PORT, "804", secret, dialled, tag).returncode != 0
    finally:
        dev.check("rm -f /data/pbx/policy.yaml")
    got = [(r["dialled"], r["code"]) for r in sorted(phones.records_of(dev, tag), key=lambda r: r["end"])]
    assert got == [("*7<PIN>*00442079460000", 403), ("*7<PIN>*0049301234567", 403),
                   ("0123456789", 503), ("0123456780", 403)]  # the one allowed had no trunk to go to
    alerts = dev.check(f"journalctl -u pbx-agent -o cat --since today | grep 'pbx-alert call-refused call=.*-{tag} '")
    assert len(alerts.splitlines()) == 3
    assert "+44 is not an allowed country" in alerts
    assert "international calls are allowed only" in alerts and "(calls.window_international)" in alerts
    assert "1 external calls today (calls.daily_external)" in alerts


def test_six_external_calls_in_a_minute_lock_the_extension_until_unlocked(lab: tuple[NetLab, Device]) -> None:
    _, dev = lab
    dev.check("printf 'calls:\\n  country: FR\\n' > /data/pbx/policy.yaml")
    tag = uuid.uuid4().hex[:8]
    secret = secret_of(dev, "803")
    try:
        # calls.rate_lock 5; two at a time, as calls.concurrent (external calls count too) allows
        phones.call(LAN, LAN_HOST, CALLER_PORT, "803", secret, "0123456789", tag, calls=6, at_once=2)
        phones.call(LAN, LAN_HOST, CALLER_PORT, "803", secret, "0123456780", tag)
        audit = dev.run("pbxagent audit | grep call-locks")
        unlocked = dev.check("pbxagent calls unlock 803")
        phones.call(LAN, LAN_HOST, CALLER_PORT, "803", secret, "0123456781", tag)
    finally:
        dev.check("rm -f /data/pbx/policy.yaml; pbxagent calls unlock 803")
    codes = [r["code"] for r in sorted(phones.records_of(dev, tag), key=lambda r: (r["end"], r["dialled"]))]
    assert sorted(codes[:6]) == [403] + [503] * 5  # the sixth locked it; the others had no trunk to go to
    assert codes[6:] == [403, 503]  # locked; then unlocked
    assert audit.output.startswith("FAIL  call-locks") and "pbxagent calls unlock 803" in audit.output
    assert "803's external calls unlocked" in unlocked
    assert "pbx-alert rate-lock from=803: 6 external calls within a minute" in dev.check(
        "journalctl -u pbx-agent -o cat --since today | grep 'pbx-alert rate-lock from=803'")
