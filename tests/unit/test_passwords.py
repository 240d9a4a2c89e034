"""The password, secret and PIN policy (REQUIREMENTS §1): one accepted and rejected
vector per rule, and the generators checked against the policy they must pass."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pbxagent.credentials.passwords import Account, Kind, Rules, check, generate, longest_repeat, longest_sequence

GOOD = "Kx-7Rm.2Qz=9Wp"
NOBODY = Account()


def rules_broken(candidate: str, kind: Kind = Kind.SECRET, account: Account = NOBODY) -> set[str]:
    return {v.rule for v in check(candidate, kind, account)}


def test_a_strong_secret_passes() -> None:
    assert check(GOOD, Kind.SECRET) == []


@pytest.mark.parametrize(
    ("candidate", "rule"),
    [
        ("Kx-7Rm.2Q", "length"),  # 9 < 10
        ("K" * 2 + "x-7m.2qz=9wp" * 11, "length"),  # 134 > 128
        ("kx-7rm.2qz=9wp", "upper"),
        ("KX-7RM.2QZ=9WP", "lower"),
        ("Kx-7Rm.zQz=kWp", "digits"),
        ("Kx7Rm2Qz9WpTr", "special"),
        ("Kx-7Rm.1234=Wp", "sequence"),
        ("Kx-7Rm.7890=Wp", "sequence"),  # a keypad run wraps 9 -> 0
        ("Kx-abcd.2Qz=9W", "sequence"),
        ("Kx-7Rm.222=9Wp", "repeat"),
        ("Kx-7Rm.###2=9W", "repeat"),
        ("Kx-7Rm.2Qz=9Wpé", "charset"),
        ("Password12!!", "common"),  # common password, only decorated
        ("P@ssw0rd!2AB", "guessable"),  # l33t spelling fools nobody
    ],
)
def test_each_rule_rejects_its_vector(candidate: str, rule: str) -> None:
    assert rule in rules_broken(candidate)


def test_64_character_secrets_are_accepted() -> None:
    long = generate(Kind.SECRET, length=64)
    assert len(long) == 64
    assert check(long, Kind.SECRET) == []


@pytest.mark.parametrize(
    ("account", "candidate"),
    [
        (Account(extension="805"), "Kx-805Rm.2Qz=9Wp"),
        (Account(user="alice"), "Kx-ALICE.2Qz=9Wp"),
        (Account(company="Acme"), "Kx-acme.2Qz=9Wp"),
    ],
)
def test_account_info_is_rejected(account: Account, candidate: str) -> None:
    assert "account" in rules_broken(candidate, account=account)
    assert "account" not in rules_broken(GOOD, account=account)


@pytest.mark.parametrize(
    ("pin", "rule"),
    [
        ("12345", "length"),
        ("12a456", "digits-only"),
        ("123456", "sequence"),
        ("7654321", "sequence"),
        ("111111", "repeat"),
        ("121212", "repeat"),
        ("283283", "repeat"),
        ("480559", "account"),  # holds the extension, 559
    ],
)
def test_pin_rules(pin: str, rule: str) -> None:
    account = Account(extension="559")
    assert rule in rules_broken(pin, Kind.PIN, account)


def test_a_pin_equal_to_its_extension_is_rejected_and_a_random_one_passes() -> None:
    assert "account" in rules_broken("805805", Kind.PIN, Account(extension="805805"))
    assert check("480257", Kind.PIN, Account(extension="805")) == []


def test_common_pins_come_from_the_maintained_list() -> None:
    assert "common" in rules_broken("696969", Kind.PIN)  # zxcvbn's list, not ours


def test_run_and_repeat_measures() -> None:
    assert longest_sequence("xx1234y") == 4
    assert longest_sequence("dcba") == 4
    assert longest_sequence("a1b2") == 1
    assert longest_repeat("ab###c") == 3


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), extension=st.sampled_from(["", "800", "2345", "808"]))
def test_generated_secrets_always_pass_the_policy(seed: int, extension: str) -> None:
    account = Account(extension=extension)
    secret = generate(Kind.SECRET, account, choose=random.Random(seed).choice)
    assert len(secret) >= 16
    assert check(secret, Kind.SECRET, account) == []
    assert check(secret, Kind.ADMIN, Account(user="root")) == []


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), extension=st.sampled_from(["800", "808", "123456"]))
def test_generated_pins_always_pass_the_policy(seed: int, extension: str) -> None:
    pin = generate(Kind.PIN, Account(extension=extension), choose=random.Random(seed).choice)
    assert check(pin, Kind.PIN, Account(extension=extension)) == []


def test_tightened_rules_are_honoured() -> None:
    rules = Rules(min_length=20)
    assert "length" in {v.rule for v in check(GOOD, Kind.SECRET, rules=rules)}
    assert len(generate(Kind.SECRET, rules=rules)) >= 20


def test_generated_secrets_carry_at_least_90_bits() -> None:
    """Rejection sampling is uniform over the accepted strings, so the entropy is
    log2(alphabet^16 * acceptance rate); the rate is measured on the generator's own
    cheap rules (the estimator rejects essentially nothing random)."""
    from pbxagent.credentials import passwords

    rng = random.Random(7)
    strict = Rules(max_sequence=2, max_repeat=1)
    trials = 20000
    accepted = 0
    for _ in range(trials):
        candidate = "".join(rng.choice(passwords.PHONE_SAFE) for _ in range(16))
        accepted += not (passwords._composition(candidate, strict) + passwords._runs(candidate, strict))
    rate = accepted / trials
    bits = 16 * math.log2(len(passwords.PHONE_SAFE)) + math.log2(rate)
    assert bits >= 90, f"{bits:.1f} bits (acceptance {rate:.3f})"


def test_the_common_pin_list_is_exactly_zxcvbns_digit_only_passwords() -> None:
    from pbxagent.credentials.passwords import common_pins
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    expected = {w for w in FREQUENCY_LISTS["passwords"] if w.isdigit() and w.isascii()}
    assert common_pins() == expected and "123456" in expected and len(expected) > 1000


def test_a_pin_check_does_not_load_the_common_password_list() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom pbxagent.credentials.passwords import Kind, check\n"
            "assert [v.rule for v in check('159753', Kind.PIN)] == ['common']\n"
            "print('zxcvbn.frequency_lists' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
