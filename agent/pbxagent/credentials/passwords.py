"""Password, SIP secret and voicemail PIN policy (REQUIREMENTS §1): pure functions,
the same on the host and on the device.

Common-password and guessability checks use zxcvbn's frequency lists and estimator
(a maintained list, not one typed in here); it is imported only when a check needs it,
so later boots, which check nothing, never pay for loading it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple


class Kind(StrEnum):
    SECRET = "secret"  # SIP digest secret of an extension
    ADMIN = "admin"  # root and administrator passwords
    PIN = "pin"  # voicemail PIN


class Rules(NamedTuple):
    """The policy's figures (policy.yaml `passwords`); defaults are REQUIREMENTS §1."""

    min_length: int = 10
    max_length: int = 128
    min_upper: int = 2
    min_lower: int = 1
    min_digits: int = 2
    min_special: int = 1
    # Longest allowed straight run (1234, abcd, 7890) and repeated run (222, aaa).
    max_sequence: int = 3
    max_repeat: int = 2
    # Below this zxcvbn score (0-4) a candidate counts as guessable.
    min_score: int = 3
    pin_length: int = 6
    pin_max_length: int = 12


class Account(NamedTuple):
    """What a candidate must not contain: the account it belongs to."""

    extension: str = ""
    user: str = ""
    company: str = ""

    def words(self) -> list[str]:
        return [w for w in (self.extension, self.user, self.company) if w]


NOBODY = Account()
DEFAULT_RULES = Rules()


class Violation(NamedTuple):
    rule: str
    message: str


# Characters every SIP phone's keypad or web form takes, and no config format we write
# treats specially (no quotes, colons, @, %, #, backslashes).
UPPER = "ABCDEFGHJKLMNPQRSTUVWXYZ"
LOWER = "abcdefghijkmnpqrstuvwxyz"
DIGITS = "23456789"
SPECIALS = "-_.+*="
PHONE_SAFE = UPPER + LOWER + DIGITS + SPECIALS


def _position(ch: str) -> tuple[str, int] | None:
    """A character's place in an ordered alphabet, for spotting straight runs."""
    if ch.isdigit():
        return "digit", int(ch)
    if ch.isascii() and ch.isalpha():
        return "letter", ord(ch.lower()) - ord("a")
    return None


def _is_step(a: str, b: str, direction: int) -> bool:
    pa, pb = _position(a), _position(b)
    if pa is None or pb is None or pa[0] != pb[0]:
        return False
    if pa[0] == "digit":  # 7890 and 0987 are runs on a keypad
        return (pa[1] + direction) % 10 == pb[1]
    return pa[1] + direction == pb[1]


def longest_sequence(text: str) -> int:
    """Length of the longest straight run, ascending or descending."""
    best = 1 if text else 0
    for direction in (1, -1):
        length = 1
        for a, b in itertools.pairwise(text):
            length = length + 1 if _is_step(a, b, direction) else 1
            best = max(best, length)
    return best


def longest_repeat(text: str) -> int:
    best = 1 if text else 0
    length = 1
    for a, b in itertools.pairwise(text):
        length = length + 1 if a == b else 1
        best = max(best, length)
    return best


@cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


COMMON_PINS = Path(__file__).with_name("common-pins.txt")


@cache
def common_pins() -> frozenset[str]:
    """The digit-only common passwords, from a small file: a first boot makes a PIN for
    every extension, and the whole list would cost it 13 MiB."""
    lines = COMMON_PINS.read_text(encoding="ascii").splitlines()
    return frozenset(line for line in lines if line and not line.startswith("#"))


def _estimate(candidate: str, account: Account) -> dict[str, Any]:
    from zxcvbn import zxcvbn

    result: dict[str, Any] = zxcvbn(candidate[:72], user_inputs=account.words())  # its own limit
    return result


def _composition(candidate: str, rules: Rules) -> list[Violation]:
    found: list[Violation] = []
    if len(candidate) < rules.min_length:
        found.append(Violation("length", f"shorter than {rules.min_length} characters"))
    if len(candidate) > rules.max_length:
        found.append(Violation("length", f"longer than {rules.max_length} characters"))
    counts = {
        "upper": (sum(c.isupper() for c in candidate), rules.min_upper, "upper-case letters"),
        "lower": (sum(c.islower() for c in candidate), rules.min_lower, "lower-case letters"),
        "digits": (sum(c.isdigit() for c in candidate), rules.min_digits, "digits"),
        "special": (sum(not c.isalnum() for c in candidate), rules.min_special, "special characters"),
    }
    for rule, (have, need, what) in counts.items():
        if have < need:
            found.append(Violation(rule, f"needs at least {need} {what}"))
    return found


def _runs(candidate: str, rules: Rules) -> list[Violation]:
    found: list[Violation] = []
    if longest_sequence(candidate) > rules.max_sequence:
        found.append(
            Violation("sequence", f"contains a straight run longer than {rules.max_sequence} (like 1234 or abcd)")
        )
    if longest_repeat(candidate) > rules.max_repeat:
        found.append(Violation("repeat", f"repeats a character more than {rules.max_repeat} times in a row"))
    return found


def _account_info(candidate: str, account: Account) -> list[Violation]:
    lowered = candidate.lower()
    labels = (("extension", account.extension, 2), ("user", account.user, 3), ("company", account.company, 3))
    return [
        Violation("account", f"contains the {label} name" if label != "extension" else "contains the extension number")
        for label, word, shortest in labels
        if len(word) >= shortest and word.lower() in lowered
    ]


def _guessability(candidate: str, account: Account, rules: Rules) -> list[Violation]:
    found: list[Violation] = []
    lowered = candidate.lower()
    # Digits and signs around a common word ("Password12!!") add next to nothing.
    core = lowered.strip("0123456789" + "".join(c for c in lowered if not c.isalnum()))
    if lowered in _common_passwords() or (len(core) >= 4 and core in _common_passwords()):
        found.append(Violation("common", "is a common password, or one with digits or signs around it"))
    result = _estimate(candidate, account)
    if result["score"] < rules.min_score:
        warning = result["feedback"]["warning"] or "easy to guess"
        found.append(Violation("guessable", f"scores {result['score']}/4 for strength: {warning}"))
    return found


def _pin(candidate: str, account: Account, rules: Rules) -> list[Violation]:
    if not candidate.isdigit() or not candidate.isascii():
        return [Violation("digits-only", "a PIN is digits only")]
    found: list[Violation] = []
    if len(candidate) < rules.pin_length:
        found.append(Violation("length", f"shorter than {rules.pin_length} digits"))
    if len(candidate) > rules.pin_max_length:
        found.append(Violation("length", f"longer than {rules.pin_max_length} digits"))
    if account.extension and account.extension in candidate:
        found.append(Violation("account", "contains the extension number"))
    if longest_sequence(candidate) == len(candidate):
        found.append(Violation("sequence", "is a straight run (like 123456)"))
    if any(candidate == candidate[:size] * (len(candidate) // size)
           for size in range(1, len(candidate) // 2 + 1) if len(candidate) % size == 0):
        found.append(Violation("repeat", "repeats one digit or a short pattern (like 111111, 121212)"))
    if candidate in common_pins():
        found.append(Violation("common", "is a common PIN"))
    return found


def check(candidate: str, kind: Kind, account: Account = NOBODY, rules: Rules = DEFAULT_RULES) -> list[Violation]:
    """Every rule the candidate breaks; empty means accepted."""
    if kind is Kind.PIN:
        return _pin(candidate, account, rules)
    found = _composition(candidate, rules) + _runs(candidate, rules) + _account_info(candidate, account)
    if not candidate.isascii() or any(not c.isprintable() for c in candidate):
        found.append(Violation("charset", "contains control or non-ASCII characters phones cannot type"))
    return found + _guessability(candidate, account, rules)


# Generated secrets are held to more than the policy asks: no straight run or repeat
# at all, so a phone user reading one out loud cannot misread it.
_GENERATED = Rules(max_sequence=2, max_repeat=1)

Chooser = Callable[[Sequence[str]], str]


def generate(kind: Kind, account: Account = NOBODY, rules: Rules = DEFAULT_RULES, length: int | None = None,
             choose: Chooser | None = None) -> str:
    """A random secret or PIN that passes `check` under `rules` (rejection sampling keeps
    the draw uniform over the accepted set). `choose` defaults to the OS CSPRNG
    (secrets.choice); seeded tests pass their own."""
    if choose is None:
        import secrets

        choose = secrets.choice
    if kind is Kind.PIN:
        size = max(length or rules.pin_length, rules.pin_length)
        while True:
            pin = "".join(choose("0123456789") for _ in range(size))
            if not check(pin, kind, account, rules):
                return pin
    size = max(length or 16, rules.min_length, 16)
    strict = rules._replace(max_sequence=_GENERATED.max_sequence, max_repeat=_GENERATED.max_repeat)
    while True:
        candidate = "".join(choose(PHONE_SAFE) for _ in range(size))
        # No estimator here: it rates uniform random strings of this length at its top
        # score (the property tests check that), and loading it would double the agent's
        # memory and first-boot time.
        if not (_composition(candidate, strict) + _runs(candidate, strict) + _account_info(candidate, account)):
            return candidate
