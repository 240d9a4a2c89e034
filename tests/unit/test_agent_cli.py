"""The agent's command line on the host: exit codes and machine output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pbxagent.cli import main as cli


def run(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) \
        -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = cli.main(argv)
    out = capsys.readouterr()
    return status, out.out, out.err


def test_password_check_exit_codes_and_reasons(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["password", "check", "--kind", "pin", "--extension", "805"], "805805\n", monkeypatch, capsys)
    assert status == cli.REJECTED
    assert out.splitlines() == ["account: contains the extension number", "repeat: repeats one digit or a short "
                                "pattern (like 111111, 121212)"]
    status, out, _ = run(["password", "check", "--kind", "secret", "--json"], "Kx-7Rm.2Qz=9Wp\n", monkeypatch, capsys)
    assert status == cli.OK
    assert json.loads(out) == {"accepted": True, "reasons": []}


def test_generated_candidates_pass_the_check(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("secret", "pin", "admin"):
        status, generated, _ = run(["password", "generate", "--kind", kind, "--extension", "801"], "", monkeypatch,
                                   capsys)
        assert status == cli.OK
        status, out, _ = run(["password", "check", "--kind", kind, "--extension", "801"], generated, monkeypatch,
                             capsys)
        assert (status, out.strip()) == (cli.OK, "accepted")


def test_policy_check_names_the_file_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("passwords:\n  pin_length: 4\n")
    status, _, err = run(["policy", "check", str(bad)], "", monkeypatch, capsys)
    assert status == cli.ERROR
    assert f"{bad}: passwords.pin_length: 4 is outside 6..12" in err


def test_a_rollback_window_out_of_range_is_refused_before_anything_is_applied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    applied: list[object] = []
    monkeypatch.setattr("pbxagent.network.guard.apply", applied.append)
    status, _, err = run(["firewall", "apply", "--rollback-after", "3"], "", monkeypatch, capsys)
    assert status == cli.ERROR and "--rollback-after 3: must be 5..600" in err
    assert applied == []


def test_policy_keys_lists_every_setting_of_the_default_policy(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from pbxagent.policy import site
    from pbxagent.settings import flatten

    status, out, _ = run(["policy", "keys"], "", monkeypatch, capsys)
    listed = {line.split()[0] for line in out.splitlines()}
    import yaml

    shipped = set(flatten(yaml.safe_load(site.DEFAULTS.read_text()), depth=2))
    assert status == cli.OK and listed == shipped  # declared = shipped in the defaults, no more, no less
    assert "passwords.pin_length         int 6..12: a voicemail PIN's length" in out
