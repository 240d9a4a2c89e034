"""A box behind the site's router, with the router's public address in the policy
(calls.public_address): the lab's router forwards SIP and the relay's ports from its
internet address to the twin and masquerades the LAN behind it, as a site's router does
(tests/device/netlab.py, `site_nat`). The internet side must be given the router's
address, the LAN the box's own:

- a call out through a trunk: the provider gets the router's address in the Via, on top
  of the Record-Route (the box's own under it, for the phone) and in the SDP, and the
  phone's audio reaches it through the relay and the router; the phone's SDP names the
  box;
- a trunk that registers gives the router's address as its contact, and the provider's
  call to that contact, through the router, rings the DID's extension with the box's
  own address on top of the Record-Route and in the SDP.

sipp answers wherever a request came from and sends its in-dialog requests to the
address it was given, so the calls alone would show nothing: the tests read the headers
each side got.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.device import phones
from tests.device.netlab import (
    INTERNET,
    INTERNET_HOST,
    LAN,
    LAN2,
    LAN2_HOST,
    LAN_HOST,
    ROUTER_INTERNET,
    TWIN,
    NetLab,
    secret_of,
)
from tests.infra import sip
from tests.infra.twin import Device

PUBLIC = ROUTER_INTERNET
REGISTRAR = "203.0.113.52"  # the second provider's, the one the box registers with
RELAY = range(10000, 10501)
CALLER_PORT, CALLEE_PORT = 5080, 5070
POLICY = ("calls:\n  country: FR\n"
          f"  public_address: {PUBLIC}\n  trunks:\n"
          f"    - {{name: provider, host: {INTERNET_HOST}, username: pbx-test, limit: 2}}\n"
          f"    - {{name: registered, host: {REGISTRAR}, username: pbx-reg, register: true}}\n"
          "  dids: {'+33140000000-+33140000009': '802'}\n")


@pytest.fixture(scope="module")
def site(lab: tuple[NetLab, Device]) -> Iterator[tuple[NetLab, Device, dict[str, str]]]:
    """The lab's twin behind the router's NAT, with the two trunks and their secrets."""
    net, dev = lab
    net.site_nat()
    net.add_address(INTERNET, REGISTRAR)
    dev.check(f"printf \"{POLICY}\" > /data/pbx/policy.yaml && systemctl restart pbx-agent && {sip.listening()}",
              timeout=240)
    keys = {"provider": secrets.token_urlsafe(12), "registered": secrets.token_urlsafe(12)}
    for name, secret in keys.items():
        dev.check(f"printf '%s\\n' '{secret}' | pbxagent trunks secret {name} && {sip.listening()}", timeout=240)
    yield net, dev, keys


def message(trace: Path, start: str, last: bool = False) -> str:
    """The first (or last) SIP message in a sipp trace whose first line starts with `start`."""
    blocks = re.split(r"^-{10,}.*$", trace.read_text(), flags=re.MULTILINE)  # sipp's separator lines
    found = [block[at.start():] for block in blocks if (at := re.search(rf"^{re.escape(start)}", block, re.MULTILINE))]
    assert found, f"{trace.name}: no {start!r} in {trace.read_text()[-3000:]}"
    return found[-1] if last else found[0]


def record_route(text: str) -> list[str]:
    """The hosts of a message's Record-Route entries, top first."""
    values = [line.split(":", 1)[1] for line in text.splitlines() if line.lower().startswith("record-route:")]
    return [re.search(r"sips?:([^:;>]+)", entry).group(1) for v in values for entry in v.split(",")]  # type: ignore[union-attr]


def media(text: str) -> tuple[str, int]:
    """The address and port an SDP body gives for its audio."""
    address = re.search(r"^c=IN IP4 (\S+)", text, re.MULTILINE)
    port = re.search(r"^m=audio (\d+)", text, re.MULTILINE)
    assert address and port, text
    return address.group(1), int(port.group(1))


def test_a_call_out_gives_the_provider_the_routers_address_and_the_phone_the_boxs(
        site: tuple[NetLab, Device, dict[str, str]], tmp_path: Path) -> None:
    _, dev, keys = site
    tag = uuid.uuid4().hex[:8]
    at_provider, at_phone = tmp_path / "provider.msg", tmp_path / "phone.msg"
    with phones.udp_arrivals(INTERNET, 6200, PUBLIC) as audio:
        with phones.provider(INTERNET, INTERNET_HOST, 5060, "pbx-test", keys["provider"], tmp_path,
                             messages=at_provider) as provider:
            done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "0123456789", tag,
                               messages=at_phone)
        assert done.returncode == 0, done.stdout[-3000:]
        assert provider.returncode == 0  # its digest checked, the call ended by a BYE
        # The phone's audio, relayed and masqueraded by the router: from its address.
        assert audio.packets() >= phones.AUDIO_PACKETS * 0.9
    invite = message(at_provider, "INVITE sip:", last=True)
    assert re.search(rf"^Via: SIP/2\.0/UDP {re.escape(PUBLIC)}[:;]", invite, re.MULTILINE), invite
    assert record_route(invite) == [PUBLIC, TWIN]  # the provider routes by the top one, the phone by its own
    address, port = media(invite)
    assert address == PUBLIC and port in RELAY
    answer = message(at_phone, "SIP/2.0 200 OK")
    address, port = media(answer[answer.index("v=0"):])
    assert address == TWIN and port in RELAY  # the phone talks to the relay's LAN face
    [record] = phones.records_of(dev, tag)
    assert (record["trunk"], record["code"]) == ("provider", 200)


def test_a_registered_trunks_contact_is_the_routers_and_the_providers_call_to_it_rings_the_did(
        site: tuple[NetLab, Device, dict[str, str]], tmp_path: Path) -> None:
    _, dev, keys = site
    registrations = tmp_path / "registrar.msg"
    with phones.registrar(INTERNET, REGISTRAR, 5060, "pbx-reg", keys["registered"], tmp_path,
                          registrations) as registrar:
        dev.check(f"systemctl restart kamailio && {sip.listening()}", timeout=240)  # its first REGISTER within 10 s
        registrar.wait(timeout=90)
    assert registrar.returncode == 0, registrations.read_text()[-3000:]  # its digest checked
    contacts = re.findall(r"^Contact: *(.*)$", registrations.read_text(), re.MULTILINE)
    assert contacts and all(c.startswith(f"<sip:registered@{PUBLIC}:5060") for c in contacts), contacts

    phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret_of(dev, "802"))
    tag = uuid.uuid4().hex[:8]
    at_phone = tmp_path / "phone.msg"
    with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802", messages=at_phone) as phone:
        done = phones.inbound_call(INTERNET, REGISTRAR, 5060, "+33612345678", "+33140000003", tag,
                                   contact="registered", target=PUBLIC)
    assert done.returncode == 0, done.stdout[-3000:]
    assert phone.returncode == 0
    invite = message(at_phone, "INVITE sip:")
    assert record_route(invite) == [TWIN, PUBLIC]  # the phone routes by the top one, the provider by its own
    address, port = media(invite)
    assert address == TWIN and port in RELAY
    [record] = phones.records_of(dev, tag)
    assert (record["trunk"], record["code"], record["source"]) == ("registered", 200, REGISTRAR)
