"""Fleet updates on the twin: its update service polls a real nginx serving the release
repository the image trusts, takes a release only when the rollout includes it,
installs, reboots, commits, and only then reports — signed — to the collector. A
frozen repository is reported as stale; a release that fails its health check falls
back and is reported as such."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pbxagent.update.bootstate import attempts_var
from pbxagent.update.report import canonical
from pbxfw.config import BuildConfig
from pbxfw.fleet import repository

from tests.device.fleetlab import fleet_status, run_update_service
from tests.infra.twin import Twin


def verified(report: dict[str, Any], key_hex: str) -> dict[str, Any]:
    """The report, after checking its signature against the key the box showed."""
    assert report["key"] == key_hex
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(key_hex)).verify(bytes.fromhex(report["signature"]),
                                                                       canonical(report["report"]))
    body: dict[str, Any] = report["report"]
    return body


def test_a_rollout_reaches_the_box_in_steps_and_the_commit_is_reported_after_the_reboot(
        fleet_twin: Twin, releases: repository.Repo, bundles: Path, build_config: BuildConfig,
        collector: tuple[int, list[dict[str, Any]]]) -> None:
    dut = fleet_twin.dut
    board = build_config.board.name
    assert dut.check("systemctl is-enabled pbx-update.timer").strip() == "enabled"
    repository.add(releases, bundles / "v2.bundle")
    repository.rollout(releases, board, "2.0.0", 0)
    assert "waiting: 2.0.0 is out to 0.0 %" in dut.check("pbxagent update check")
    repository.rollout(releases, board, "2.0.0", 100, paused=True)
    assert "paused" in dut.check("pbxagent update check")
    before = fleet_status(dut)
    assert before["running_slot"] == "A" and before["fleet"]["last_check"]["status"] == "waiting"
    assert before["fleet"]["metadata"]["rollout"]["version"] >= 3

    repository.rollout(releases, board, "2.0.0", 100)
    dut.console.send("systemctl start pbx-update.service\r")
    dut.console.expect("booting slot B", 900, "the update service installing the release and rebooting")
    dut.login()
    after = fleet_status(dut)
    assert after["running_slot"] == "B" and after["last_result"]["result"] == "installed"
    run_update_service(dut)  # (the timer may have sent it already, 90 s after boot)
    (sent,) = collector[1]
    report = verified(sent, after["fleet"]["report_key"])
    assert report["result"] == "committed" and report["to_version"] == "2.0.0" and report["board"] == board
    assert report["device_id"] == after["fleet"]["device_id"] and fleet_status(dut)["fleet"]["queued_reports"] == []


def test_a_frozen_repository_is_reported_stale_and_installs_nothing(
        fleet_twin: Twin, releases: repository.Repo, bundles: Path, build_config: BuildConfig) -> None:
    dut = fleet_twin.dut
    repository.add(releases, bundles / "v2.bundle", now=datetime.now(UTC) - timedelta(days=3))
    repository.rollout(releases, build_config.board.name, "2.0.0", 100, now=datetime.now(UTC) - timedelta(days=3))
    journal = run_update_service(dut)
    state = fleet_status(dut)
    assert state["fleet"]["last_check"]["status"] == "stale", journal
    assert state["pending"] is None and state["boot_order"][0] == "A" and "B" not in state["slots"]


def test_a_release_that_fails_its_health_check_falls_back_and_is_reported(
        fleet_twin: Twin, releases: repository.Repo, bundles: Path, build_config: BuildConfig,
        collector: tuple[int, list[dict[str, Any]]]) -> None:
    dut = fleet_twin.dut
    repository.add(releases, bundles / "unhealthy.bundle")
    repository.rollout(releases, build_config.board.name, "2.2.0", 100)
    assert "slot B holds 2.2.0" in dut.check("pbxagent update apply 2>&1", timeout=900)
    # One attempt instead of three: the countdown itself is test_fallback's subject, the
    # report of the way back is this test's.
    dut.check(f"fw_setenv {attempts_var('B')} 1")
    dut.console.send("systemctl reboot\r")
    dut.console.expect("booting slot B", 300, "the one attempt on the new slot")
    dut.console.expect("booting slot A", 300, "the old slot after the unhealthy one gave up")
    dut.login()
    after = fleet_status(dut)
    assert after["running_slot"] == "A" and after["boot_order"][0] == "A"
    assert after["last_result"]["result"] == "failed" and after["attempts_left"]["B"] == 0
    journal = run_update_service(dut)
    check = fleet_status(dut)["fleet"]["last_check"]
    assert check["status"] == "refused" and "not retried" in check["detail"], journal  # not installed again
    (sent,) = collector[1]
    report = verified(sent, after["fleet"]["report_key"])
    assert report["result"] == "fell_back" and report["to_version"] == "2.2.0"
