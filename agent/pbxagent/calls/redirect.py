"""The call policy's decision point for the SIP service: a SIP redirect server on
loopback, run by the agent (a thread of `pbxagent run`). kamailio asks it about two
kinds of call:

- **outbound**: an authenticated INVITE for a number that is no extension here, with the
  caller's extension in `X-PBX-Caller` (kamailio removes that header from anything it
  receives). The policy decides (pbxagent.calls.dialplan and .limits, the same as
  `pbxagent calls check`): allowed, `302`; refused, `403` with `X-PBX-Refusal: pin` when
  the call PIN was wrong (the SIP service counts it as an authentication failure of the
  sender's address), `policy` otherwise;
- **inbound**: an INVITE from a trunk's address, named in `X-PBX-Trunk` (kamailio's
  address table): the DID's extension (pbxagent.calls.dids), `302`; no DID, `404`.

A 302 names the target in `X-PBX-Target` (the number in E.164, or the extension) and,
when the call goes over a trunk, the trunk (`X-PBX-Trunk`), its limit of calls at once
(`X-PBX-Limit`) and the longest the call may last (`X-PBX-Max`, seconds). An allowed
external call with no trunk configured gets no trunk header: kamailio answers 503.
`X-PBX-Class` carries the call's kind for the call record. The reasons never go back to
the phone (they would tell a thief when and what may be called): they go to the journal
with the alert prefix `pbx-alert`.

Speaking SIP keeps kamailio to its own mechanics — a relay and a failure route, no
module beyond its base package — and the policy in one place, in Python.
"""

from __future__ import annotations

import datetime
import re
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from pbxagent.calls import dids
from pbxagent.calls.dialplan import Decision

if TYPE_CHECKING:
    from pbxagent.policy.calls import CallPolicy
    from pbxagent.policy.site import Policy

ADDRESS = ("127.0.0.1", 5064)
KAMAILIO = ("127.0.0.1", 5060)  # where its requests come from: its UDP listening socket
REMEMBERED = 64  # answers kept for retransmissions
CALLER = "X-PBX-Caller"
TRUNK = "X-PBX-Trunk"
_COPIED = ("via", "from", "to", "call-id", "cseq")
_REQUEST = re.compile(r"INVITE sip:(?P<user>[^@;>\s]+)@\S+ SIP/2\.0")

Decide = Callable[[str, str, datetime.datetime, "Policy"], Decision]


class Answer(NamedTuple):
    response: str
    call: str  # the Call-ID, as in the call's record
    caller: str  # the extension kamailio named, "" if none
    decision: Decision | None  # None: no outbound decision was made (inbound, or a malformed request)
    trunk: str = ""  # the trunk an inbound call came from


def answer(request: str, decide: Decide, now: datetime.datetime, policy: Callable[[], Policy]) -> Answer:
    """The response to one request from kamailio, and the decision it carries; `policy`
    gives the policy in force at this call (a change since the agent started counts at once)."""
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")
    headers = [(line.split(":", 1)[0].strip().lower(), line) for line in head[1:]]
    caller, call, trunk = _last(headers, CALLER.lower()), _last(headers, "call-id"), _last(headers, TRUNK.lower())
    copied = [line + (";tag=pbx-policy" if name == "to" and ";tag=" not in line else "")
              for name, line in headers if name in _COPIED]
    match = _REQUEST.fullmatch(head[0])
    if match is None or bool(caller) == bool(trunk):
        return Answer(_response("400 Bad Request", copied), call, caller, None, trunk)
    try:
        pol = policy()
        if trunk:
            return Answer(_inbound(match["user"], trunk, pol.calls, copied), call, "", None, trunk)
        decision = decide(match["user"], caller, now, pol)
    except Exception as exc:  # a decision that fails refuses the call; it must not end the service
        return Answer(_response("500 Server Internal Error", copied, f"X-PBX-Error: {exc!r}"), call, caller, None,
                      trunk)
    kind = f"X-PBX-Class: {decision.kind}"
    if decision.allowed:
        onward = _onward(pol.calls.trunks[0].name, pol.calls) if pol.calls.trunks else []
        return Answer(_response("302 Moved Temporarily", copied, f"Contact: <sip:{decision.number}@pbx>",
                                f"X-PBX-Target: {decision.number}", kind, *onward), call, caller, decision)
    refusal = "pin" if any(r.startswith("wrong call PIN") for r in decision.reasons) else "policy"
    return Answer(_response("403 Forbidden", copied, f"X-PBX-Refusal: {refusal}", kind), call, caller, decision)


def _inbound(called: str, trunk: str, calls: CallPolicy, copied: list[str]) -> str:
    """A call a trunk brings in: its DID's extension, or 404 (no DID, or a trunk the
    policy no longer has)."""
    found = dids.route(called, calls)
    if found.extension is None or not any(t.name == trunk for t in calls.trunks):
        return _response("404 Not Found", copied, "X-PBX-Class: inbound")
    return _response("302 Moved Temporarily", copied, f"Contact: <sip:{found.extension}@pbx>",
                     f"X-PBX-Target: {found.extension}", "X-PBX-Class: inbound", *_onward(trunk, calls))


def _onward(trunk: str, calls: CallPolicy) -> list[str]:
    limit = next(t.limit for t in calls.trunks if t.name == trunk)
    return [f"{TRUNK}: {trunk}", f"X-PBX-Limit: {limit}", f"X-PBX-Max: {calls.max_duration}"]


def _last(headers: list[tuple[str, str]], name: str) -> str:
    """The last header of that name: kamailio appends X-PBX-Caller after removing any the
    phone sent, so even a copy that slipped past the removal comes before its own."""
    values = [line.split(":", 1)[1].strip() for key, line in headers if key == name]
    return values[-1] if values else ""


def _response(status: str, copied: list[str], *extra: str) -> str:
    return "\r\n".join([f"SIP/2.0 {status}", *copied, *extra, "Content-Length: 0"]) + "\r\n\r\n"


def alert(call: str, caller: str, decision: Decision) -> str:
    """The journal line for a refused call: what was dialled (any PIN masked) and why."""
    return (f"pbx-alert call-refused call={call} from={caller} dialled={decision.dialled} class={decision.kind}: "
            + "; ".join(decision.reasons))


def decide_from_files(dialled: str, caller: str, now: datetime.datetime, policy: Policy,
                      log: Callable[[str], None]) -> Decision:
    """The decision with the caller's call PIN and usage in force; the attempt is counted."""
    from pbxagent.calls import limits

    decision, locked = limits.decide(dialled, caller, now, policy, count=True)
    if locked:
        log(f"pbx-alert rate-lock from={caller}: {locked}; lift with `pbxagent calls unlock {caller}`")
    return decision


class Server:
    """Answers kamailio, and nothing but kamailio's own address. kamailio's ACK to an
    answer needs none; a retransmitted INVITE (the first decision of a boot loads the
    numbering plans, longer than SIP's 500 ms retransmission timer under emulation) gets
    the same answer again, decided once."""

    def __init__(self, sock: socket.socket, decide: Decide, policy: Callable[[], Policy], log: Callable[[str], None],
                 kamailio: tuple[str, int] = KAMAILIO) -> None:
        self.sock, self.decide, self.policy, self.log, self.kamailio = sock, decide, policy, log, kamailio
        self.answered: OrderedDict[str, bytes] = OrderedDict()

    def serve(self) -> None:
        """For as long as the agent runs."""
        while True:
            self.handle()

    def handle(self) -> None:
        """One datagram."""
        data, peer = self.sock.recvfrom(65535)
        if peer != self.kamailio or not data.startswith(b"INVITE "):
            return
        request = data.decode("utf-8", "replace")
        key = _transaction(request)
        if key not in self.answered:
            reply = answer(request, self.decide, datetime.datetime.now(), self.policy)
            self.answered[key] = reply.response.encode()
            while len(self.answered) > REMEMBERED:
                self.answered.popitem(last=False)
            self._log(reply)
        self.sock.sendto(self.answered[key], peer)

    def _log(self, reply: Answer) -> None:
        if reply.decision is not None and not reply.decision.allowed:
            self.log(alert(reply.call, reply.caller, reply.decision))
        elif reply.decision is None and not (reply.trunk and reply.response.startswith(("SIP/2.0 302",
                                                                                         "SIP/2.0 404"))):
            status, *rest = [line for line in reply.response.splitlines() if line.startswith(("SIP/", "X-PBX-Error"))]
            self.log(f"pbx-alert call-refused call={reply.call} from={reply.caller or '?'}: {status} "
                     f"{' '.join(rest)}".rstrip())


def _transaction(request: str) -> str:
    """The top Via's branch: kamailio's transaction, the same in a retransmission."""
    found = re.search(r"^Via:[^\r\n]*?;branch=([^;\s]+)", request, re.MULTILINE | re.IGNORECASE)
    return found[1] if found else request
