"""Where the device suite's time goes: per test module, the tests, the boots the harness
started (power-ons and reboots), the snapshot restores, and the wall time of setup,
call and teardown. Printed as a table at the end of the run."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pytest

_counts = {"boots": 0, "restores": 0}
# What the harness had to say about twins (a snapshot made, refused, a restore failed):
# pytest captures the tests' output, so these go into the summary as well.
_notices: list[str] = []


def notice(message: str) -> None:
    _notices.append(message)


def count_boot() -> None:
    _counts["boots"] += 1


def count_restore() -> None:
    _counts["restores"] += 1


@dataclass
class ModuleTime:
    tests: int = 0
    boots: int = 0
    restores: int = 0
    seconds: float = 0.0


class Table:
    """A pytest plugin: counts per test item, summed per module."""

    def __init__(self) -> None:
        self.modules: dict[str, ModuleTime] = defaultdict(ModuleTime)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> object:
        before = dict(_counts)
        result = yield
        row = self.modules[item.nodeid.split("::")[0]]
        row.tests += 1
        row.boots += _counts["boots"] - before["boots"]
        row.restores += _counts["restores"] - before["restores"]
        return result

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.modules[report.nodeid.split("::")[0]].seconds += report.duration

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if _notices:
            terminalreporter.section("twins")
            for line in _notices:
                terminalreporter.write_line(f"twin: {line}")
        if not self.modules:
            return
        terminalreporter.section("time per module")
        terminalreporter.write_line(f"{'module':<40} {'tests':>5} {'boots':>5} {'restores':>8} {'seconds':>8}")
        total = ModuleTime()
        for name, row in sorted(self.modules.items(), key=lambda kv: -kv[1].seconds):
            terminalreporter.write_line(
                f"{name:<40} {row.tests:>5} {row.boots:>5} {row.restores:>8} {row.seconds:>8.0f}")
            total.tests += row.tests
            total.boots += row.boots
            total.restores += row.restores
            total.seconds += row.seconds
        terminalreporter.write_line(
            f"{'total':<40} {total.tests:>5} {total.boots:>5} {total.restores:>8} {total.seconds:>8.0f}")
