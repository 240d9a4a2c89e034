"""Extensions and their per-device secrets: one random SIP secret, voicemail PIN and
call PIN (dialled for international calls, docs/calls.md) each, never shared, kept for
the SIP service in one root-only file on /data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from pbxagent import atomic, paths
from pbxagent.credentials.passwords import Account, Kind, Rules, Violation, check, generate


class ExtensionError(ValueError):
    pass


class Extension(NamedTuple):
    number: str
    secret: str
    pin: str
    call_pin: str  # "" in a store written before call PINs: `ensure` gives it one


def store_path() -> Path:
    return paths.data() / "secrets" / "extensions.json"


def load() -> dict[str, Extension]:
    path = store_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {num: Extension(num, item["secret"], item["pin"], item.get("call_pin", ""))
                for num, item in data["extensions"].items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise ExtensionError(f"{path}: unreadable extension store ({exc.__class__.__name__}: {exc})") from None


def save(extensions: dict[str, Extension]) -> None:
    """One atomic write for the whole set: a power cut keeps the old set or the new one."""
    ordered = dict(sorted(extensions.items(), key=lambda item: (len(item[0]), item[0])))
    data = {"version": 1, "extensions": {n: {"secret": e.secret, "pin": e.pin, "call_pin": e.call_pin}
                                         for n, e in ordered.items()}}
    atomic.write(store_path(), json.dumps(data, indent=1) + "\n", 0o600)


def _call_pin(number: str, voicemail_pin: str, rules: Rules) -> str:
    """A call PIN under the voicemail PIN's rules, never the same as that PIN: one
    overheard at the voicemail prompt must not open international calls."""
    while True:
        pin = generate(Kind.PIN, Account(extension=number), rules)
        if pin != voicemail_pin:
            return pin


def _fresh(number: str, rules: Rules, secret_length: int, taken: set[str]) -> Extension:
    account = Account(extension=number)
    while True:
        secret = generate(Kind.SECRET, account, rules, secret_length)
        if secret not in taken:
            pin = generate(Kind.PIN, account, rules)
            return Extension(number, secret, pin, _call_pin(number, pin, rules))


def _valid_number(number: str) -> str:
    if not number.isdigit() or not 2 <= len(number) <= 10:
        raise ExtensionError(f"extension {number!r}: must be 2 to 10 digits")
    return number


def ensure(numbers: tuple[str, ...], rules: Rules, secret_length: int) -> list[str]:
    """Give every declared extension that has none its secret and PINs, and a call PIN
    to any extension from a store older than call PINs; committed secrets are never
    regenerated. Returns the numbers that were created."""
    current = load()
    missing = [n for n in numbers if n not in current]
    without_call_pin = [n for n, e in current.items() if not e.call_pin]
    if not missing and not without_call_pin:
        return []
    for number in without_call_pin:
        ext = current[number]
        current[number] = ext._replace(call_pin=_call_pin(number, ext.pin, rules))
    taken = {e.secret for e in current.values()}
    for number in missing:
        current[number] = _fresh(_valid_number(number), rules, secret_length, taken)
        taken.add(current[number].secret)
    save(current)
    return missing


def add(first: str, count: int, rules: Rules, secret_length: int) -> list[str]:
    if not 1 <= count <= 1000:
        raise ExtensionError(f"--count {count}: must be 1..1000")
    start = int(_valid_number(first))
    numbers = [_valid_number(str(start + i).zfill(len(first))) for i in range(count)]
    current = load()
    clash = [n for n in numbers if n in current]
    if clash:
        raise ExtensionError(f"extension {clash[0]} already exists (rotate it instead)")
    taken = {e.secret for e in current.values()}
    for number in numbers:
        current[number] = _fresh(number, rules, secret_length, taken)
        taken.add(current[number].secret)
    save(current)
    return numbers


def rotate(numbers: list[str] | None, rules: Rules, secret_length: int) -> list[str]:
    """New secret and PINs for `numbers` (None: all)."""
    current = load()
    chosen = list(current) if numbers is None else numbers
    unknown = [n for n in chosen if n not in current]
    if unknown:
        raise ExtensionError(f"extension {unknown[0]}: no such extension")
    taken = {e.secret for n, e in current.items() if n not in chosen}
    for number in chosen:
        current[number] = _fresh(number, rules, secret_length, taken)
        taken.add(current[number].secret)
    save(current)
    return chosen


class Finding(NamedTuple):
    number: str
    what: str  # "secret", "pin" or "call_pin"
    problems: tuple[Violation, ...]


def audit(extensions: dict[str, Extension], rules: Rules, company: str = "") -> list[Finding]:
    """Every weak or shared secret and weak PIN, and a call PIN that is the voicemail
    PIN (evidence names rules, never values)."""
    findings: list[Finding] = []
    owners: dict[str, list[str]] = {}
    for ext in extensions.values():
        owners.setdefault(ext.secret, []).append(ext.number)
    for ext in extensions.values():
        account = Account(extension=ext.number, company=company)
        problems = list(check(ext.secret, Kind.SECRET, account, rules))
        shared = [n for n in owners[ext.secret] if n != ext.number]
        if shared:
            problems.append(Violation("shared", f"same secret as extension {', '.join(shared)}"))
        if problems:
            findings.append(Finding(ext.number, "secret", tuple(problems)))
        pin_problems = check(ext.pin, Kind.PIN, account, rules)
        if pin_problems:
            findings.append(Finding(ext.number, "pin", tuple(pin_problems)))
        call_pin_problems = list(check(ext.call_pin, Kind.PIN, account, rules))
        if ext.call_pin == ext.pin:
            call_pin_problems.append(Violation("shared", "same as the extension's voicemail PIN"))
        if call_pin_problems:
            findings.append(Finding(ext.number, "call_pin", tuple(call_pin_problems)))
    return findings
