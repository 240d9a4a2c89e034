"""The call policy's decision point for the SIP service: a SIP redirect server on
loopback, run by the agent (a thread of `pbxagent run`).

kamailio sends each authenticated INVITE for a number that is no extension here, with
the caller's extension in `X-PBX-Caller` (it removes that header from anything it
receives). The answer is the policy's decision (pbxagent.calls.dialplan, the same
function as `pbxagent calls check`):

- allowed: `302` with the number in E.164 as the Contact (`sip:+4930...@pbx`);
- refused: `403`; `X-PBX-Refusal: pin` when the call PIN was wrong (the SIP service
  counts it as an authentication failure of the sender's address), `policy` otherwise.

Either way `X-PBX-Class` carries the call's kind for the call record. The reasons never
go back to the phone (they would tell a thief when and what may be called): they go to
the journal with the alert prefix `pbx-alert`.

Speaking SIP keeps kamailio to its own mechanics — a relay and a failure route, no
module beyond its base package — and the policy in one place, in Python.
"""

from __future__ import annotations

import datetime
import re
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from pbxagent.calls.dialplan import Decision

ADDRESS = ("127.0.0.1", 5064)
KAMAILIO = ("127.0.0.1", 5060)  # where its requests come from: its UDP listening socket
REMEMBERED = 64  # answers kept for retransmissions
CALLER = "X-PBX-Caller"
_COPIED = ("via", "from", "to", "call-id", "cseq")
_REQUEST = re.compile(r"INVITE sip:(?P<user>[^@;>\s]+)@\S+ SIP/2\.0")

Decide = Callable[[str, str, datetime.datetime], Decision]


class Answer(NamedTuple):
    response: str
    call: str  # the Call-ID, as in the call's record
    caller: str  # the extension kamailio named, "" if none
    decision: Decision | None  # None: no decision was made (a malformed request)


def answer(request: str, decide: Decide, now: datetime.datetime) -> Answer:
    """The response to one request from kamailio, and the decision it carries."""
    head = request.split("\r\n\r\n", 1)[0].split("\r\n")
    headers = [(line.split(":", 1)[0].strip().lower(), line) for line in head[1:]]
    caller, call = _last(headers, CALLER.lower()), _last(headers, "call-id")
    copied = [line + (";tag=pbx-policy" if name == "to" and ";tag=" not in line else "")
              for name, line in headers if name in _COPIED]
    match = _REQUEST.fullmatch(head[0])
    if match is None or not caller:
        return Answer(_response("400 Bad Request", copied), call, caller, None)
    try:
        decision = decide(match["user"], caller, now)
    except Exception as exc:  # a decision that fails refuses the call; it must not end the service
        return Answer(_response("500 Server Internal Error", copied, f"X-PBX-Error: {exc!r}"), call, caller, None)
    kind = f"X-PBX-Class: {decision.kind}"
    if decision.allowed:
        return Answer(_response("302 Moved Temporarily", copied, f"Contact: <sip:{decision.number}@pbx>", kind),
                      call, caller, decision)
    refusal = "pin" if any(r.startswith("wrong call PIN") for r in decision.reasons) else "policy"
    return Answer(_response("403 Forbidden", copied, f"X-PBX-Refusal: {refusal}", kind), call, caller, decision)


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


def decide_from_files(dialled: str, caller: str, now: datetime.datetime, log: Callable[[str], None]) -> Decision:
    """The decision with the policy, the caller's call PIN and its usage in force at each
    call (a change since the agent started counts at once); the attempt is counted."""
    from pbxagent.calls import limits
    from pbxagent.policy import site

    decision, locked = limits.decide(dialled, caller, now, site.load().policy, count=True)
    if locked:
        log(f"pbx-alert rate-lock from={caller}: {locked}; lift with `pbxagent calls unlock {caller}`")
    return decision


class Server:
    """Answers kamailio, and nothing but kamailio's own address. kamailio's ACK to an
    answer needs none; a retransmitted INVITE (the first decision of a boot loads the
    numbering plans, longer than SIP's 500 ms retransmission timer under emulation) gets
    the same answer again, decided once."""

    def __init__(self, sock: socket.socket, decide: Decide, log: Callable[[str], None],
                 kamailio: tuple[str, int] = KAMAILIO) -> None:
        self.sock, self.decide, self.log, self.kamailio = sock, decide, log, kamailio
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
            reply = answer(request, self.decide, datetime.datetime.now())
            self.answered[key] = reply.response.encode()
            while len(self.answered) > REMEMBERED:
                self.answered.popitem(last=False)
            self._log(reply)
        self.sock.sendto(self.answered[key], peer)

    def _log(self, reply: Answer) -> None:
        if reply.decision is not None and not reply.decision.allowed:
            self.log(alert(reply.call, reply.caller, reply.decision))
        elif reply.decision is None:
            status, *rest = [line for line in reply.response.splitlines() if line.startswith(("SIP/", "X-PBX-Error"))]
            self.log(f"pbx-alert call-refused call={reply.call} from={reply.caller or '?'}: {status} "
                     f"{' '.join(rest)}".rstrip())


def _transaction(request: str) -> str:
    """The top Via's branch: kamailio's transaction, the same in a retransmission."""
    found = re.search(r"^Via:[^\r\n]*?;branch=([^;\s]+)", request, re.MULTILINE | re.IGNORECASE)
    return found[1] if found else request
