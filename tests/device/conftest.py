"""The device under test: the QEMU twin booted from the built disk image, or a real
board on a serial port (--console). Tests only talk to it through its console."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from pbxfw import target
from pbxfw.config import BuildConfig
from pbxfw.console import ConsoleError

from tests.device.dut import Device

CONSOLE_LOG_KEY = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest, build_config: BuildConfig, tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[Device]:
    log_path = tmp_path_factory.mktemp("console") / "console.log"
    request.config.stash[CONSOLE_LOG_KEY] = log_path
    url = request.config.getoption("--console")
    if url:
        password = os.environ.get("PBXFW_ROOT_PASSWORD")
        if not password:
            pytest.fail("--console given but PBXFW_ROOT_PASSWORD is not set")
        dev = Device(url, password, log_path)
        dev.login(wake=True)
        yield dev
        dev.close()
        return

    out: Path = request.getfixturevalue("out_dir")
    work = tmp_path_factory.mktemp("dut")
    disk, password = target.prepare_disk(build_config.board, out / "disk.img", work)
    qemu_log = work / "qemu.log"
    with target.QemuTarget(build_config.board, disk, qemu_log) as twin:
        dev = Device(twin.console_url, password, log_path)
        try:
            dev.login()
        except ConsoleError:
            dev.close()
            raise
        yield dev
        dev.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests with their own twin first: the shared twin starts on first use and runs to
    the end of the session, and two emulated boards on two cores slow both down. A test
    of an own-twin module that also uses the shared twin waits for the shared group
    (it started the shared twin early and ran it beside every other own twin)."""
    items.sort(key=lambda item: item.get_closest_marker("own_twin") is None
               or "device" in getattr(item, "fixturenames", ()))


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
