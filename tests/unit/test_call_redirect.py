"""The call policy's SIP redirect server for kamailio (pbxagent.calls.redirect): the
decision of `calls check` as a SIP answer, the transaction's headers copied so kamailio
matches it, the reasons kept off the wire."""

from __future__ import annotations

import datetime
import socket

from pbxagent.calls import dialplan, redirect
from pbxagent.policy import site
from pbxagent.policy.trunks import DidRange, Trunk

NOON = datetime.datetime(2026, 12, 2, 12, 0)  # a Wednesday
CALL_PIN = "482913"


def request(dialled: str, caller: str | None = "801") -> str:
    lines = [f"INVITE sip:{dialled}@192.168.50.10 SIP/2.0",
             "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpolicy",
             "Via: SIP/2.0/UDP 192.168.50.20:5080;received=192.168.50.20;branch=z9hG4bKphone",
             "From: <sip:801@192.168.50.10>;tag=phone", "To: <sip:0123@192.168.50.10>",
             "Call-ID: abc@phone", "CSeq: 2 INVITE", "Contact: <sip:801@192.168.50.20:5080>",
             *([f"X-PBX-Caller: {caller}"] if caller else []), "Content-Length: 0"]
    return "\r\n".join(lines) + "\r\n\r\n"


PROVIDER = Trunk("provider", "198.51.100.7", 5060, "udp", "pbx1", ("198.51.100.7/32",), 3)


def french(*trunks: Trunk) -> site.Policy:
    pol = site.compose(site.DEFAULTS, None)[0]
    calls = pol.calls._replace(country="FR", classes={"801": "international"}, allowed_countries=(49,),
                               trunks=trunks, dids=(DidRange("+33140000000", "+33140000009", "802"),))
    return pol._replace(calls=calls)


def decide(dialled: str, caller: str, now: datetime.datetime, pol: site.Policy) -> dialplan.Decision:
    return dialplan.decide(dialled, caller, now, pol.calls, pol.extensions, CALL_PIN)


def no_trunk() -> site.Policy:
    return french()


def with_trunk() -> site.Policy:
    return french(PROVIDER, PROVIDER._replace(name="backup", limit=9))


def headers(response: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in response.split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            found.setdefault(name, []).append(value.strip())
    return found


def test_an_allowed_number_is_redirected_to_its_e164_form_with_the_transaction_kept() -> None:
    reply = redirect.answer(request("0123456789"), decide, NOON, no_trunk)
    assert reply.response.startswith("SIP/2.0 302 Moved Temporarily\r\n")
    got = headers(reply.response)
    assert got["Contact"] == ["<sip:+33123456789@pbx>"] and got["X-PBX-Class"] == ["national"]
    assert got["Via"] == ["SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpolicy",
                          "SIP/2.0/UDP 192.168.50.20:5080;received=192.168.50.20;branch=z9hG4bKphone"]
    assert got["To"] == ["<sip:0123@192.168.50.10>;tag=pbx-policy"] and got["CSeq"] == ["2 INVITE"]
    assert reply.caller == "801" and reply.decision is not None and reply.decision.allowed


def test_a_wrong_pin_is_refused_as_an_authentication_failure_without_reasons_on_the_wire() -> None:
    reply = redirect.answer(request("*7111111*0049301234567"), decide, NOON, no_trunk)
    got = headers(reply.response)
    assert reply.response.startswith("SIP/2.0 403 Forbidden\r\n")
    assert got["X-PBX-Refusal"] == ["pin"] and got["X-PBX-Class"] == ["international"]
    assert "PIN" not in reply.response.replace("X-PBX-Refusal: pin", "")  # no reasons, no PIN
    assert reply.decision is not None
    line = redirect.alert(reply.call, reply.caller, reply.decision)
    assert line.startswith("pbx-alert call-refused call=abc@phone from=801 dialled=*7<PIN>*0049301234567 "
                           "class=international: ")
    assert "111111" not in line and "wrong call PIN for extension 801" in line


def test_policy_refusals_and_the_right_pin() -> None:
    night = redirect.answer(request(f"*7{CALL_PIN}*0049301234567"), decide, NOON.replace(hour=22), no_trunk)
    assert night.response.startswith("SIP/2.0 403") and headers(night.response)["X-PBX-Refusal"] == ["policy"]
    satellite = redirect.answer(request(f"*7{CALL_PIN}*00881612345678"), decide, NOON, no_trunk)
    assert satellite.response.startswith("SIP/2.0 403")
    right = redirect.answer(request(f"*7{CALL_PIN}*0049301234567"), decide, NOON, no_trunk)
    assert headers(right.response)["Contact"] == ["<sip:+49301234567@pbx>"]


def test_the_caller_is_the_header_kamailio_appended_last() -> None:
    forged = request("0123456789").replace("Contact: <sip:801", "X-PBX-Caller: 802\r\nContact: <sip:801")
    assert forged.index("X-PBX-Caller: 802") < forged.index("X-PBX-Caller: 801")
    assert redirect.answer(forged, decide, NOON, no_trunk).caller == "801"


def test_a_request_without_the_caller_or_a_failed_decision_is_refused() -> None:
    nobody = redirect.answer(request("0123456789", caller=None), decide, NOON, no_trunk)
    assert nobody.response.startswith("SIP/2.0 400")

    def broken(dialled: str, caller: str, now: datetime.datetime, pol: site.Policy) -> dialplan.Decision:
        raise RuntimeError("numbering plan missing")

    failed = redirect.answer(request("0123456789"), broken, NOON, no_trunk)
    assert failed.decision is None and failed.response.startswith("SIP/2.0 500")
    assert headers(failed.response)["Call-ID"] == ["abc@phone"]  # kamailio still matches it


def test_the_server_answers_kamailio_once_per_transaction_and_nobody_else() -> None:
    calls: list[str] = []
    logged: list[str] = []

    def counting(dialled: str, caller: str, now: datetime.datetime, pol: site.Policy) -> dialplan.Decision:
        calls.append(dialled)
        return decide(dialled, caller, now, pol)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as kamailio, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        for each in (sock, kamailio, stranger):
            each.bind(("127.0.0.1", 0))
            each.settimeout(0.5)
        server = redirect.Server(sock, counting, no_trunk, logged.append, kamailio.getsockname())
        invite = request("0049301234567").encode()  # international without a PIN: refused
        replies = []
        for _ in range(2):  # the INVITE and its retransmission
            kamailio.sendto(invite, sock.getsockname())
            server.handle()
            replies.append(kamailio.recv(65535))
        assert replies[0] == replies[1] and replies[0].startswith(b"SIP/2.0 403")
        assert calls == ["0049301234567"] and len(logged) == 1 and logged[0].startswith("pbx-alert call-refused")
        kamailio.sendto(invite.replace(b"INVITE sip:", b"ACK sip:", 1), sock.getsockname())
        server.handle()
        stranger.sendto(request("0123456789").encode(), sock.getsockname())
        server.handle()
        for silent in (kamailio, stranger):
            try:
                unexpected = silent.recv(65535)
            except TimeoutError:
                continue
            raise AssertionError(f"answered: {unexpected[:40]!r}")
        assert calls == ["0049301234567"]


def test_an_allowed_call_leaves_through_the_first_trunk_with_its_limit_and_the_longest_call() -> None:
    got = headers(redirect.answer(request("0123456789"), decide, NOON, with_trunk).response)
    assert got["X-PBX-Target"] == ["+33123456789"]
    assert (got["X-PBX-Trunk"], got["X-PBX-Limit"], got["X-PBX-Max"]) == (["provider"], ["3"], ["7200"])
    assert "X-PBX-Trunk" not in headers(redirect.answer(request("0123456789"), decide, NOON, no_trunk).response)


def inbound(called: str, trunk: str) -> str:
    return request(called, caller=None).replace("Content-Length: 0", f"X-PBX-Trunk: {trunk}\r\nContent-Length: 0")


def test_a_trunk_call_rings_its_did_extension_however_the_provider_writes_the_number() -> None:
    for called in ("+33140000005", "33140000005", "0140000005"):
        reply = redirect.answer(inbound(called, "backup"), decide, NOON, with_trunk)
        assert reply.response.startswith("SIP/2.0 302"), called
        got = headers(reply.response)
        assert (got["X-PBX-Target"], got["X-PBX-Class"], got["X-PBX-Trunk"], got["X-PBX-Limit"]) == \
            (["802"], ["inbound"], ["backup"], ["9"])
        assert reply.decision is None and reply.trunk == "backup"


def test_an_unknown_did_or_trunk_is_404_and_a_request_naming_both_or_neither_is_400() -> None:
    assert redirect.answer(inbound("+33140000010", "provider"), decide, NOON, with_trunk).response \
        .startswith("SIP/2.0 404")
    assert redirect.answer(inbound("+33140000005", "gone"), decide, NOON, with_trunk).response \
        .startswith("SIP/2.0 404")
    both = inbound("+33140000005", "provider").replace("Content-Length", "X-PBX-Caller: 801\r\nContent-Length")
    assert redirect.answer(both, decide, NOON, with_trunk).response.startswith("SIP/2.0 400")
