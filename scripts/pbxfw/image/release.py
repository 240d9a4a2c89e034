"""What a build is: its firmware version (display) and security version (the floor a
device raises after booting it; see pbxagent.update.installer)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from pbxfw.errors import PbxfwError


class Release(NamedTuple):
    version: str
    security_version: int


def read(repo: Path) -> Release:
    version = (repo / "VERSION").read_text().strip()
    text = (repo / "SECURITY_VERSION").read_text().strip()
    if not text.isdigit():
        raise PbxfwError(f"{repo / 'SECURITY_VERSION'}: must be a non-negative integer, got {text!r}")
    return Release(version, int(text))
