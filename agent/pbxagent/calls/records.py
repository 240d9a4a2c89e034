"""Call detail records. The SIP service writes one journal line per call attempt,

    pbx-cdr call=<Call-ID> from=801 to=802 class=internal trunk=- src=192.168.50.20
            start=<epoch> code=200 answer=<epoch or -> end=<epoch>

at its final answer (refused, failed, cancelled) or, for an answered call, when it ends.
Reading them back is pure (lines in, records and statistics out) so the host tests it;
only `journal_lines` touches the system.
"""

from __future__ import annotations

import datetime
import subprocess
from collections.abc import Iterable
from typing import NamedTuple

PREFIX = "pbx-cdr "
FIELDS = ("call", "from", "to", "class", "trunk", "src", "start", "code", "answer", "end")


class Cdr(NamedTuple):
    call: str  # the SIP Call-ID
    caller: str  # the authenticated extension
    dialled: str  # the request URI's user part
    kind: str  # internal, national, international
    trunk: str  # "" for none
    source: str  # the INVITE's source address
    start: int  # the INVITE's arrival, epoch seconds
    code: int  # the final SIP answer to the caller
    answer: int | None  # when answered, epoch seconds
    end: int

    @property
    def duration(self) -> int:
        return self.end - self.answer if self.answer is not None else 0


def parse(line: str) -> Cdr | None:
    """The record in a journal line; None if the line holds none or a damaged one."""
    _, found, text = line.partition(PREFIX)
    if not found:
        return None
    fields = dict(token.partition("=")[::2] for token in text.split())
    if any(name not in fields for name in FIELDS):
        return None
    try:
        return Cdr(fields["call"], fields["from"], fields["to"], fields["class"],
                   "" if fields["trunk"] == "-" else fields["trunk"], fields["src"], int(fields["start"]),
                   int(fields["code"]), None if fields["answer"] == "-" else int(fields["answer"]),
                   int(fields["end"]))
    except ValueError:
        return None


class Tally(NamedTuple):
    attempts: int
    answered: int
    seconds: int  # talk time of the answered ones


def stats(records: Iterable[Cdr], tz: datetime.tzinfo | None = None) -> dict[tuple[str, str, str], Tally]:
    """Per (local day, extension, class): attempts, answered calls and their talk time."""
    table: dict[tuple[str, str, str], Tally] = {}
    for cdr in records:
        day = datetime.datetime.fromtimestamp(cdr.start, tz).date().isoformat()
        key = (day, cdr.caller, cdr.kind)
        old = table.get(key, Tally(0, 0, 0))
        answered = cdr.answer is not None
        table[key] = Tally(old.attempts + 1, old.answered + answered, old.seconds + cdr.duration)
    return dict(sorted(table.items()))


def journal_lines(since: str | None) -> list[str]:
    """The SIP service's record lines from the journal; `since` as journalctl reads it
    (2026-12-04, "2026-12-04 08:00", today, "1h ago"). ValueError names a time it refused."""
    argv = ["journalctl", "--no-pager", "-o", "cat", "-u", "kamailio.service", "--grep", PREFIX.strip()]
    if since:
        argv += ["--since", since]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0 and "Failed to parse" in done.stderr:
        raise ValueError(f"--since: {since!r} is not a time journalctl reads (2026-12-04, today, \"1h ago\")")
    return done.stdout.splitlines()
