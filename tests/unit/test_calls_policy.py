"""The call policy's decision (pbxagent.calls.dialplan) and its policy keys: classes,
PINs, windows, blocked ranges and countries, on numbers from libphonenumber's own
example data, so a number's type is the numbering plan's, not a guess typed in here."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pbxagent.calls import dialplan
from pbxagent.cli.main import main
from pbxagent.policy import site
from pbxagent.policy.calls import CallPolicy

T = phonenumbers.PhoneNumberType
WEEKDAY_NOON = datetime.datetime(2026, 12, 2, 12, 0)  # a Wednesday
SATURDAY_NOON = datetime.datetime(2026, 12, 5, 12, 0)
WEEKDAY_NIGHT = datetime.datetime(2026, 12, 2, 22, 30)


def example(region: str, kind: int, fmt: int = phonenumbers.PhoneNumberFormat.E164) -> str:
    number = phonenumbers.example_number_for_type(region, kind)
    assert number is not None, (region, kind)
    return phonenumbers.format_number(number, fmt).replace(" ", "")


def policy(**changes: Any) -> tuple[CallPolicy, tuple[str, ...]]:
    pol = site.compose(site.DEFAULTS, None)[0]
    return pol.calls._replace(country="FR", **changes), pol.extensions


CALL_PIN = "482913"  # extension 801's in these tests


def decide(dialled: str, extension: str = "801", at: datetime.datetime = WEEKDAY_NOON, call_pin: str = CALL_PIN,
           **changes: Any) -> dialplan.Decision:
    calls, extensions = policy(**changes)
    return dialplan.decide(dialled, extension, at, calls, extensions, call_pin)


def test_extensions_and_emergency_numbers_always_connect() -> None:
    assert decide("805", classes={"801": "internal"}).kind == "internal"
    for number in ("112", "15", "17"):  # 15 and 17: France's own, from its short-number data
        found = decide(number, classes={"801": "internal"}, at=WEEKDAY_NIGHT)
        assert (found.kind, found.allowed) == ("emergency", True), found


def test_without_the_sites_country_no_external_number_is_read() -> None:
    calls, extensions = policy()
    found = dialplan.decide(example("FR", T.FIXED_LINE), "801", WEEKDAY_NOON, calls._replace(country=""), extensions,
                             CALL_PIN)
    assert not found.allowed and "calls.country is not set" in found.reasons[0]


def test_national_calls_by_class_with_premium_and_shared_cost_refused() -> None:
    landline = example("FR", T.FIXED_LINE, phonenumbers.PhoneNumberFormat.NATIONAL)
    assert decide(landline).allowed and decide(landline).kind == "national"
    assert "class internal: no national calls" in decide(landline, classes={"801": "internal"}).reasons[0]
    premium, shared = example("FR", T.PREMIUM_RATE), example("FR", T.SHARED_COST)
    assert decide(premium).reasons == (f"{premium} is a premium-rate number (allow it with calls.allowed)",)
    assert "shared-cost" in decide(shared).reasons[0]
    assert decide(premium, allowed=(premium[:5],)).allowed  # explicitly allowed by the site


def test_international_needs_the_class_the_country_the_window_and_the_pin() -> None:
    german = example("DE", T.FIXED_LINE)
    dialled = "00" + german[1:]  # France's international prefix
    with_pin = f"*7482913*{dialled}"
    cls = {"801": "international"}
    assert "class national: no international calls" in decide(with_pin).reasons[0]
    assert "+49 is not an allowed country" in decide(with_pin, classes=cls).reasons[0]
    allowed = decide(with_pin, classes=cls, allowed_countries=(49,))
    assert allowed.allowed and allowed.needs_pin and allowed.number == german
    assert allowed.dialled == f"*7<PIN>*{dialled}"  # the PIN is never shown back
    no_pin = decide(dialled, classes=cls, allowed_countries=(49,))
    assert not no_pin.allowed and "need extension 801's call PIN" in no_pin.reasons[-1]
    wrong = decide(f"*7482914*{dialled}", classes=cls, allowed_countries=(49,))
    assert not wrong.allowed and wrong.reasons == ("wrong call PIN for extension 801 (an authentication failure)",)
    none_yet = decide(f"*7{CALL_PIN}*{dialled}", classes=cls, allowed_countries=(49,), call_pin="")
    assert not none_yet.allowed and "wrong call PIN" in none_yet.reasons[0]  # no PIN matches an empty one
    for at in (SATURDAY_NOON, WEEKDAY_NIGHT):
        late = decide(with_pin, classes=cls, allowed_countries=(49,), at=at)
        assert not late.allowed and "allowed only mon,tue,wed,thu,fri 08:00-18:00" in late.reasons[0], late


def test_satellite_and_listed_prefixes_are_refused_even_to_an_international_class() -> None:
    cls = {"801": "international"}
    for number in ("+881612345678", "+88213900000"):
        found = decide(f"*7482913*{number}", classes=cls, allowed_countries=(49,))
        assert not found.allowed and any("no country's code" in r for r in found.reasons), found
    assert "(calls.blocked)" in decide("*7482913*+881612345678", classes=cls).reasons[0]


@given(st.text(alphabet="0123456789*#+ ", max_size=24), st.sampled_from(["801", "899"]))
def test_any_dial_string_gets_a_decision_with_reasons_and_no_pin_shown(dialled: str, extension: str) -> None:
    pin = "482913"
    found = decide(f"*7{pin}*{dialled}", extension, classes={"801": "international"})
    assert found.reasons and (found.allowed or found.kind != "internal")
    assert pin not in found.dialled or dialled.count(pin)


@pytest.mark.parametrize(("text", "message"), [
    ("calls:\n  classes: {'801': vip}\n", r"calls\.classes\.801: 'vip' is not one of internal, national"),
    ("calls:\n  window_international: 'mon-fri'\n", r"calls\.window_international: 'mon-fri' is not like"),
    ("calls:\n  window_national: 'funday 08:00-10:00'\n", r"calls\.window_national: 'funday' is not a day"),
    ("calls:\n  window_national: 'mon 08:00-08:00'\n", r"calls\.window_national: '08:00-08:00' is empty"),
    ("calls:\n  country: XX\n", r"calls\.country: 'XX' is not a region code"),
    ("calls:\n  allowed_countries: ['+999']\n", r"calls\.allowed_countries\[0\]: '\+999' is not a country"),
    ("calls:\n  blocked: ['881']\n", r"calls\.blocked\[0\]: '881' is not an E\.164 prefix"),
    ("calls:\n  default_class: everything\n", r"calls\.default_class: must be one of internal"),
    ("calls:\n  relay_ports: 100-200\n", r"calls\.relay_ports: '100-200' reaches below 1024"),
    ("calls:\n  relay_ports: 10000-10002\n", r"calls\.relay_ports: '10000-10002' is too small for one relayed"),
    ("calls:\n  relay_ports: 5000-6000\n", r"calls\.relay_ports: '5000-6000' covers SIP's ports"),
    ("calls:\n  relay_ports: 10500-10000\n", r"calls\.relay_ports: '10500-10000' is outside 1\.\.65535 or not"),
    ("calls:\n  relay_ports: rtp\n", r"calls\.relay_ports: 'rtp' is not a port or a range"),
    ("calls:\n  public_address: router.example\n", r"calls\.public_address: 'router\.example' is not an IPv4"),
    ("calls:\n  public_address: 192.168.1.1\n", r"calls\.public_address: 192\.168\.1\.1 is no public address"),
    ("calls:\n  public_address: 172.20.0.1\n", r"calls\.public_address: 172\.20\.0\.1 is no public address"),
    ("calls:\n  public_address: 127.0.0.1\n", r"calls\.public_address: 127\.0\.0\.1 is no public address"),
    ("calls:\n  public_address: 2001:db8::1\n", r"calls\.public_address: '2001:db8::1' is not an IPv4"),
])
def test_a_bad_call_policy_is_named_by_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    override = tmp_path / "policy.yaml"
    override.write_text(text)
    with pytest.raises(site.PolicyError, match=message):
        site.compose(site.DEFAULTS, override)


def test_a_public_address_is_the_routers_and_none_by_default(tmp_path: Path) -> None:
    assert site.compose(site.DEFAULTS, None)[0].calls.public_address == ""
    override = tmp_path / "policy.yaml"
    override.write_text("calls:\n  public_address: 198.51.100.7\n")
    assert site.compose(site.DEFAULTS, override)[0].calls.public_address == "198.51.100.7"


def test_windows_may_wrap_the_week_and_the_night(tmp_path: Path) -> None:
    override = tmp_path / "policy.yaml"
    override.write_text("calls:\n  country: FR\n  window_national: 'fri-mon 20:00-06:00'\n")
    hours = site.compose(site.DEFAULTS, override)[0].calls.windows["national"]
    assert hours.days == frozenset({4, 5, 6, 0})
    assert hours.contains(5, 23 * 60) and hours.contains(0, 5 * 60) and not hours.contains(2, 23 * 60)


def test_the_cli_says_why_and_exits_1_on_a_refusal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    (tmp_path / "data" / "pbx").mkdir(parents=True)
    (tmp_path / "data" / "pbx" / "policy.yaml").write_text("calls:\n  country: FR\n")
    premium = example("FR", T.PREMIUM_RATE)
    assert main(["calls", "check", premium, "--extension", "801", "--at", "2026-12-02T12:00"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"REFUSED: {premium} -> {premium} (national) from extension 801 at Wed 2026-12-02 12:00")
    assert main(["calls", "check", "0123456789", "--extension", "801", "--at", "noon"]) == 2
    assert "--at: 'noon' is not a time" in capsys.readouterr().err
