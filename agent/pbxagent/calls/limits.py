"""The counting rules of the call policy, applied to each external call the SIP service
asks about (pbxagent.calls.redirect), after the number itself has been judged:

- **rate lock**: more than `calls.rate_lock` external call attempts from one extension
  within a minute (refused ones too: a thief trying numbers is what it is for) lock its
  external calling until an administrator lifts it (`pbxagent calls unlock EXT`);
- **daily counts**: at most `calls.daily_external` external calls placed per extension
  per local day, of which `calls.daily_international` international.

Emergency numbers and extensions are never counted or refused here. The counts and
locks live in one small file on /data, so a lock survives a reboot; `judge` is pure.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from pbxagent import atomic, paths
from pbxagent.calls import dialplan
from pbxagent.calls.dialplan import Decision
from pbxagent.policy.calls import CallPolicy

if TYPE_CHECKING:
    from pbxagent.policy.site import Policy

COUNTED = ("national", "international", "invalid")  # external attempts
RATE_WINDOW_S = 60.0


class Usage(NamedTuple):
    """One extension's external calling."""

    recent: tuple[float, ...] = ()  # epoch seconds of its attempts within the last minute
    day: str = ""  # the local day the counts are for
    external: int = 0  # calls placed that day
    international: int = 0
    locked: str = ""  # why and since when its external calls are locked; "" = not locked


def judge(decision: Decision, usage: Usage, now: datetime.datetime,
          policy: CallPolicy) -> tuple[Decision, Usage, str | None]:
    """The decision with the counting rules applied, the usage after this attempt, and
    the alert to log if the attempt locked the extension."""
    if decision.kind not in COUNTED:
        return decision, usage, None
    stamp = now.timestamp()
    recent = (*(t for t in usage.recent if stamp - t < RATE_WINDOW_S), stamp)
    day = now.date().isoformat()
    if usage.day != day:  # a new day's counts
        usage = usage._replace(day=day, external=0, international=0)
    usage = usage._replace(recent=recent)
    if usage.locked:
        return _refused(decision, f"external calls are locked: {usage.locked}; lift with "
                                  "`pbxagent calls unlock`"), usage, None
    if len(recent) > policy.rate_lock:
        why = (f"{len(recent)} external calls within a minute (calls.rate_lock {policy.rate_lock}) "
               f"at {now:%Y-%m-%d %H:%M}")
        return _refused(decision, f"external calls are now locked: {why}"), usage._replace(locked=why), why
    if not decision.allowed:
        return decision, usage, None
    if usage.external >= policy.daily_external:
        return _refused(decision, f"{usage.external} external calls today (calls.daily_external)"), usage, None
    international = decision.kind == "international"
    if international and usage.international >= policy.daily_international:
        return _refused(decision, f"{usage.international} international calls today "
                                  "(calls.daily_international)"), usage, None
    return decision, usage._replace(external=usage.external + 1,
                                    international=usage.international + international), None


def _refused(decision: Decision, reason: str) -> Decision:
    """Refused for `reason` too; an allowed decision's only reason said it was allowed."""
    kept = decision.reasons if not decision.allowed else ()
    return decision._replace(allowed=False, reasons=(*kept, reason))


def state_path() -> Path:
    return paths.data() / "state" / "calls.json"


@contextlib.contextmanager
def usage_table() -> Iterator[dict[str, Usage]]:
    """Every extension's usage, read and written back under a lock (the agent's decisions
    and `calls unlock` both change it)."""
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = _read(path)
        before = dict(table)
        yield table
        if table != before:
            atomic.write(path, json.dumps({ext: u._asdict() for ext, u in sorted(table.items())}, indent=1), 0o600)


def _read(path: Path) -> dict[str, Usage]:
    """A damaged file is an error, never an empty table: that would lift every lock. The
    SIP service then refuses external calls (fail closed) and the alert names the file."""
    try:
        raw = json.loads(path.read_text())
        return {str(ext): Usage(tuple(u["recent"]), u["day"], u["external"], u["international"], u["locked"])
                for ext, u in raw.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: damaged ({exc!r}); external calls are refused until it is repaired "
                         "or removed (removing it lifts every lock)") from exc


def decide(dialled: str, caller: str, at: datetime.datetime, policy: Policy,
           count: bool) -> tuple[Decision, str | None]:
    """The whole decision for a call from `caller`: the number judged with the caller's
    call PIN (pbxagent.calls.dialplan), then the counting rules with its usage on /data —
    recorded when `count` (a call the SIP service asks about), only read for a check.
    Returns the decision and the alert if this attempt locked the extension. Raises
    ValueError for a damaged state file, ExtensionError for a damaged store."""
    from pbxagent.credentials import extensions

    calling = extensions.load().get(caller)
    decision = dialplan.decide(dialled, caller, at, policy.calls, policy.extensions,
                               calling.call_pin if calling else "")
    if decision.kind not in COUNTED:
        return decision, None
    with usage_table() as table:
        decision, usage, locked_now = judge(decision, table.get(caller, Usage()), at, policy.calls)
        if count:
            table[caller] = usage
    return decision, locked_now


def locked() -> dict[str, str]:
    """Extensions whose external calls are locked, and why."""
    with usage_table() as table:
        return {ext: u.locked for ext, u in table.items() if u.locked}


def unlock(extension: str) -> bool:
    """Lift an extension's lock (and forget its last minute); False if it had none."""
    with usage_table() as table:
        usage = table.get(extension)
        if usage is None or not usage.locked:
            return False
        table[extension] = usage._replace(locked="", recent=())
        return True
