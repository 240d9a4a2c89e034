"""The device under test: a QEMU twin of the built disk image, restored for each test
from a booted snapshot (tests/infra), or a real board on a serial port (--console).
Tests only talk to it through its console."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from pbxfw.config import BuildConfig

from tests.device.fleetlab import collector, fleet_twin, mirror, releases  # noqa: F401  (fleet fixtures)
from tests.device.netlab import lab  # noqa: F401  (the test network)
from tests.device.updates import bundles, dev_key, server, twin, twin_console  # noqa: F401  (update fixtures)
from tests.infra import boards, timing
from tests.infra.twin import CONSOLE_LOG_KEY, Device


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(timing.Table(), "pbxfw-time-per-module")


@pytest.fixture(scope="session")
def real_board(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device | None]:
    """The board on --console, logged in once for the session; None for a twin."""
    url = request.config.getoption("--console")
    if not url:
        yield None
        return
    password = os.environ.get("PBXFW_ROOT_PASSWORD")
    if not password:
        pytest.fail("--console given but PBXFW_ROOT_PASSWORD is not set")
    dev = Device(url, password, tmp_path_factory.mktemp("console") / "console.log")
    dev.login(wake=True)
    yield dev
    dev.close()


@pytest.fixture
def device(request: pytest.FixtureRequest, real_board: Device | None, build_config: BuildConfig,
           tmp_path: Path) -> Iterator[Device]:
    """A board after its first boot, logged in as root. Each test gets its own twin in the
    same state (restored from the snapshot): nothing one test changes reaches another."""
    if real_board is not None:
        request.config.stash[CONSOLE_LOG_KEY] = real_board.log_path
        yield real_board
        return
    out: Path = request.getfixturevalue("out_dir")
    booted = boards.booted_twin(build_config.board, out / "disk.img", tmp_path)
    request.config.stash[CONSOLE_LOG_KEY] = booted.log_path
    yield booted.dut
    booted.power_off()
    (tmp_path / "disk.qcow2").unlink(missing_ok=True)  # a copy of the snapshot, ~0.5 GB


@pytest.fixture
def twin_log(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Console log of a test's own twin, attached to its report when it fails."""
    log_path = tmp_path / "console.log"
    request.config.stash[CONSOLE_LOG_KEY] = log_path
    return log_path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    log_path = item.config.stash.get(CONSOLE_LOG_KEY, None)
    if report.failed and log_path is not None and log_path.exists():
        text = log_path.read_text(encoding="utf-8", errors="replace")
        report.sections.append(("serial console (last 200 lines)", "\n".join(text.splitlines()[-200:])))
    return report
