"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def systemctl_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """The agent's systemctl calls, recorded instead of run (the host's systemd is not the box's)."""
    calls: list[tuple[str, ...]] = []

    def systemctl(*args: str) -> str:
        calls.append(args)
        return ""

    monkeypatch.setattr("pbxagent.system.systemctl", systemctl)
    return calls
