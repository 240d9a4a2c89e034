"""Built artefacts, unpacked once per session for inspection."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def slot(out_dir: Path) -> Path:
    return out_dir / "rootfs.slot"


@pytest.fixture(scope="session")
def rootfs(slot: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slot's file system as the device sees it, unpacked with squashfs-tools."""
    dest = tmp_path_factory.mktemp("slot") / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest), str(slot)], check=True, capture_output=True)
    return dest
