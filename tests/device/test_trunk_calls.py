"""Calls over a SIP trunk on the test network: the provider is sipp in the internet
namespace (tests/device/phones.py), the trunk's secret made by the test and set with
`pbxagent trunks secret` as an installer would:

- an allowed external call leaves through the trunk, answers the provider's 401 with
  the trunk's credentials (the provider checks the digest) and is answered, with its
  record naming the trunk; a provider that expects another secret refuses it;
- the trunk's limit of calls at once: a second call is 503;
- a call over the trunk is ended by the box after calls.max_duration: a BYE to the
  provider and to the phone, one record, an alert;
- a call the provider brings in from the trunk's address rings the DID's extension,
  however the provider writes the number; an unknown DID is 404; the same INVITE from
  any other address is challenged like a guest and never rings a phone;
- a trunk with `register: true` registers with the provider (its digest checked, its
  contact the box's address), and the provider's call to that contact rings the DID's
  extension;
- a bad trunk policy is named by key and the running trunks stay.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.device import phones
from tests.device.netlab import INTERNET, INTERNET_HOST, LAN, LAN2, LAN2_HOST, LAN_HOST, TWIN, NetLab, secret_of
from tests.infra import sip
from tests.infra.twin import Device

CALLEE_PORT, CALLER_PORT, PROVIDER_PORT = 5070, 5080, 5060
TRUNK_USER = "pbx-test"
ELSEWHERE = "203.0.113.51"  # an internet address that is no trunk's
POLICY = ("calls:\n  country: FR\n  trunks:\n"
          f"    - {{name: provider, host: {INTERNET_HOST}, username: {TRUNK_USER}, limit: 1}}\n"
          "  dids: {'+33140000000-+33140000009': '802'}\n")


@pytest.fixture(scope="module")
def trunk(lab: tuple[NetLab, Device]) -> Iterator[tuple[NetLab, Device, str]]:
    """The lab's twin with a trunk to the provider and DIDs to 802; the trunk's secret."""
    net, dev = lab
    secret = secrets.token_urlsafe(12)
    dev.check(f"printf \"{POLICY}\" > /data/pbx/policy.yaml && systemctl restart pbx-agent && {sip.listening()}",
              timeout=240)
    dev.check(f"printf '%s\\n' '{secret}' | pbxagent trunks secret provider && {sip.listening()}", timeout=240)
    net.add_address(INTERNET, ELSEWHERE)
    yield net, dev, secret


def test_an_external_call_answers_the_providers_challenge_with_the_trunks_secret(
        trunk: tuple[NetLab, Device, str], tmp_path: Path) -> None:
    _, dev, secret = trunk
    tag = uuid.uuid4().hex[:8]
    with phones.provider(INTERNET, INTERNET_HOST, PROVIDER_PORT, TRUNK_USER, secret, tmp_path) as provider:
        done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "0123456789", tag,
                           hold_ms=1000)
    assert done.returncode == 0, done.stdout[-3000:]
    assert provider.returncode == 0  # it checked the digest
    [record] = phones.records_of(dev, tag)
    assert (record["dialled"], record["kind"], record["trunk"], record["code"]) == \
        ("0123456789", "national", "provider", 200)
    assert record["answer"] is not None


def test_a_provider_expecting_another_secret_refuses_the_call(trunk: tuple[NetLab, Device, str],
                                                              tmp_path: Path) -> None:
    _, dev, secret = trunk
    tag = uuid.uuid4().hex[:8]
    with phones.provider(INTERNET, INTERNET_HOST, PROVIDER_PORT, TRUNK_USER, secret + "x", tmp_path) as provider:
        done = phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "0123456789", tag)
    assert done.returncode != 0 and provider.returncode != 0
    assert [(r["trunk"], r["code"]) for r in phones.records_of(dev, tag)] == [("provider", 403)]


def test_a_second_call_at_once_over_a_trunk_of_one_is_503(trunk: tuple[NetLab, Device, str], tmp_path: Path) -> None:
    _, dev, secret = trunk
    tag = uuid.uuid4().hex[:8]
    with phones.provider(INTERNET, INTERNET_HOST, PROVIDER_PORT, TRUNK_USER, secret, tmp_path):
        phones.call(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"), "0123456789", tag, calls=2,
                    hold_ms=4000)
    assert sorted(r["code"] for r in phones.records_of(dev, tag)) == [200, 503]
    assert "pbx-alert trunk-limit trunk=provider calls=1" in dev.check(
        "journalctl -u kamailio -o cat --since today | grep 'pbx-alert trunk-limit' | tail -1")


def test_the_box_ends_a_trunk_call_at_the_longest_with_a_bye_to_both_sides_and_one_record(
        trunk: tuple[NetLab, Device, str], tmp_path: Path) -> None:
    _, dev, secret = trunk
    tag = uuid.uuid4().hex[:8]
    longest = 60  # calls.max_duration's floor
    dev.check(f"printf \"{POLICY}  max_duration: {longest}\\n\" > /data/pbx/policy.yaml")  # read at each call
    try:
        with phones.provider(INTERNET, INTERNET_HOST, PROVIDER_PORT, TRUNK_USER, secret, tmp_path,
                             within_s=longest + 40) as provider:
            done = phones.call_until_hung_up(LAN, LAN_HOST, CALLER_PORT, "801", secret_of(dev, "801"),
                                             "0123456789", tag, within_s=longest + 30)
    finally:
        dev.check(f"printf \"{POLICY}\" > /data/pbx/policy.yaml")
    assert provider.returncode == 0  # the provider got its BYE: it bills no longer
    assert done.returncode == 0, done.stdout[-3000:]  # and the phone got its own
    [record] = phones.records_of(dev, tag)
    assert record["code"] == 200 and longest - 1 <= record["duration"] <= longest + 5
    assert f"pbx-alert longest-call call={record['call']}" in dev.check(
        "journalctl -u kamailio -o cat --since today | grep 'pbx-alert longest-call' | tail -1")


def test_a_did_from_the_trunk_rings_its_extension_however_the_number_is_written(
        trunk: tuple[NetLab, Device, str]) -> None:
    _, dev, _ = trunk
    phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret_of(dev, "802"))
    tag = uuid.uuid4().hex[:8]
    for did in ("+33140000005", "0140000007"):
        with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802") as phone:
            done = phones.inbound_call(INTERNET, INTERNET_HOST, PROVIDER_PORT, "+33612345678", did, tag)
        assert done.returncode == 0, done.stdout[-3000:]
        assert phone.returncode == 0
    got = [(r["caller"], r["dialled"], r["kind"], r["trunk"], r["code"], r["source"])
           for r in phones.records_of(dev, tag)]
    assert sorted(got) == sorted([("+33612345678", did, "inbound", "provider", 200, INTERNET_HOST)
                                  for did in ("+33140000005", "0140000007")])


def test_a_trunk_that_registers_gets_the_providers_calls_at_the_contact_it_registered(
        trunk: tuple[NetLab, Device, str], tmp_path: Path) -> None:
    _, dev, secret = trunk
    messages = tmp_path / "registrar.log"
    registering = POLICY.replace("limit: 1}", "limit: 1, register: true}")
    try:
        with phones.registrar(INTERNET, INTERNET_HOST, PROVIDER_PORT, TRUNK_USER, secret, tmp_path,
                              messages) as registrar:
            dev.check(f"printf \"{registering}\" > /data/pbx/policy.yaml && systemctl restart pbx-agent && "
                      f"{sip.listening()}", timeout=240)
            registrar.wait(timeout=60)  # uac's first REGISTER leaves within its 10 s timer
        assert registrar.returncode == 0, messages.read_text()[-3000:]  # it checked the digest
        contacts = re.findall(r"^Contact: *(.*)$", messages.read_text(), re.MULTILINE)
        assert contacts and all(c.startswith(f"<sip:provider@{TWIN}:5060") for c in contacts), contacts
        phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret_of(dev, "802"))
        tag = uuid.uuid4().hex[:8]
        with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802") as phone:
            done = phones.inbound_call(INTERNET, INTERNET_HOST, PROVIDER_PORT, "+33612345678", "+33140000003", tag,
                                       contact="provider")
        assert done.returncode == 0, done.stdout[-3000:]
        assert phone.returncode == 0
        got = [(r["dialled"], r["kind"], r["trunk"], r["code"]) for r in phones.records_of(dev, tag)]
        assert got == [("+33140000003", "inbound", "provider", 200)]
    finally:
        dev.check(f"printf \"{POLICY}\" > /data/pbx/policy.yaml && systemctl restart pbx-agent && {sip.listening()}",
                  timeout=240)


def test_an_unknown_did_is_404_and_no_other_address_is_taken_for_the_trunk(
        trunk: tuple[NetLab, Device, str]) -> None:
    _, dev, _ = trunk
    phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret_of(dev, "802"))
    tag = uuid.uuid4().hex[:8]
    unknown = phones.inbound_call(INTERNET, INTERNET_HOST, PROVIDER_PORT, "+33612345678", "+33149999999", tag)
    assert unknown.returncode != 0
    with phones.udp_arrivals(LAN2, CALLEE_PORT) as at_phone:
        challenged = phones.guest_call(INTERNET, ELSEWHERE, PROVIDER_PORT, "+33612345678", "+33140000005", tag)
        assert challenged.returncode == 0, challenged.stdout[-3000:]  # answered 407
        assert at_phone.packets() == 0
    assert [(r["dialled"], r["code"]) for r in phones.records_of(dev, tag)] == [("+33149999999", 404)]


def test_a_bad_trunk_policy_is_named_and_the_running_trunks_stay(trunk: tuple[NetLab, Device, str]) -> None:
    _, dev, _ = trunk
    before = dev.check("pbxagent trunks list --json 2>/dev/null")
    bad = POLICY.replace("'+33140000000-+33140000009': '802'",
                         "'+33140000000-+33140000009': '802', '+33140000005': '803'")
    try:
        dev.check(f"printf \"{bad}\" > /data/pbx/policy.yaml")
        after = dev.check("pbxagent trunks list --json 2>/tmp/warning")
        warning = dev.check("cat /tmp/warning")
    finally:
        dev.check(f"printf \"{POLICY}\" > /data/pbx/policy.yaml")
    assert "calls.dids.+33140000005: overlaps calls.dids.+33140000000-+33140000009" in warning
    assert "the last good policy is in force" in warning
    assert after == before and json.loads(before)[0]["secret"] == "set"
