"""The counting rules (pbxagent.calls.limits): the rate lock, the daily counts, the lock
kept on /data until `pbxagent calls unlock`, a damaged state file refusing rather than
forgetting its locks."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from pbxagent.calls import dialplan, limits
from pbxagent.cli.main import main
from pbxagent.policy import site
from pbxagent.policy.calls import CallPolicy

NOON = datetime.datetime(2026, 12, 2, 12, 0)


def calls(**changes: Any) -> CallPolicy:
    return site.compose(site.DEFAULTS, None)[0].calls._replace(country="FR", **changes)


def national(allowed: bool = True) -> dialplan.Decision:
    reason = "+33123456789: national, allowed" if allowed else "+33891123456 is a premium-rate number"
    return dialplan.Decision("0123456789", "+33123456789", "national", allowed, False, False, (reason,))


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    return tmp_path


def test_more_attempts_in_a_minute_than_the_rate_lock_lock_until_unlocked() -> None:
    policy, usage = calls(rate_lock=5), limits.Usage()
    for second in range(5):  # refused attempts count too
        decision, usage, alert = limits.judge(national(second % 2 == 0), usage, NOON.replace(second=second), policy)
        assert alert is None
    decision, usage, alert = limits.judge(national(), usage, NOON.replace(second=30), policy)
    assert not decision.allowed and alert is not None and alert.startswith("6 external calls within a minute")
    assert decision.reasons == (f"external calls are now locked: {alert}",)
    an_hour_later = limits.judge(national(), usage, NOON.replace(hour=13), policy)[0]
    assert not an_hour_later.allowed and "lift with `pbxagent calls unlock`" in an_hour_later.reasons[-1]


def test_attempts_spread_over_more_than_a_minute_do_not_lock() -> None:
    policy, usage = calls(rate_lock=5), limits.Usage()
    for minute in range(12):
        decision, usage, alert = limits.judge(national(), usage, NOON.replace(minute=minute), policy)
        assert decision.allowed and alert is None


def test_daily_counts_refuse_past_the_limit_and_start_again_the_next_day() -> None:
    policy, usage = calls(daily_external=3, daily_international=1, rate_lock=100), limits.Usage()
    international = national()._replace(kind="international")
    assert limits.judge(international, usage, NOON, policy)[0].allowed
    usage = limits.judge(international, usage, NOON, policy)[1]
    second = limits.judge(international, usage, NOON.replace(minute=1), policy)[0]
    assert not second.allowed and second.reasons == ("1 international calls today (calls.daily_international)",)
    for minute in range(2, 4):
        decision, usage, _ = limits.judge(national(), usage, NOON.replace(minute=minute), policy)
        assert decision.allowed
    assert not limits.judge(national(), usage, NOON.replace(minute=5), policy)[0].allowed
    assert limits.judge(national(), usage, NOON + datetime.timedelta(days=1), policy)[0].allowed


def test_emergency_calls_are_never_counted_or_refused() -> None:
    emergency = dialplan.Decision("112", "112", "emergency", True, False, False, ("emergency",))
    locked = limits.Usage(locked="6 external calls within a minute")
    assert limits.judge(emergency, locked, NOON, calls()) == (emergency, locked, None)


def test_a_lock_is_kept_on_data_and_lifted_by_the_cli(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with limits.usage_table() as table:
        table["801"] = limits.Usage(locked="6 external calls within a minute")
    assert limits.locked() == {"801": "6 external calls within a minute"}
    assert (limits.state_path().stat().st_mode & 0o777) == 0o600
    assert main(["calls", "unlock", "801"]) == 0 and "801's external calls unlocked" in capsys.readouterr().out
    assert limits.locked() == {}
    assert main(["calls", "unlock", "801"]) == 0 and "were not locked" in capsys.readouterr().out


def test_a_damaged_state_file_is_named_and_nothing_is_unlocked(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    limits.state_path().parent.mkdir(parents=True)
    limits.state_path().write_text('{"801": {"locked": ')
    with pytest.raises(ValueError, match=r"calls\.json: damaged"):
        limits.locked()
    assert main(["calls", "unlock", "801"]) == 2
    assert "calls.json: damaged" in capsys.readouterr().err
    assert limits.state_path().read_text() == '{"801": {"locked": '


def test_calls_check_shows_a_lock_without_counting_the_check(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "data" / "pbx").mkdir(parents=True)
    (tree / "data" / "pbx" / "policy.yaml").write_text("calls:\n  country: FR\n")
    check = ["calls", "check", "0123456789", "--extension", "801", "--at", "2026-12-02T12:00"]
    assert main(check) == 0 and capsys.readouterr().out.startswith("allowed: ")
    assert not limits.state_path().exists()  # a check places and counts no call
    with limits.usage_table() as table:
        table["801"] = limits.Usage(locked="6 external calls within a minute")
    assert main(check) == 1
    assert "external calls are locked: 6 external calls within a minute" in capsys.readouterr().out
