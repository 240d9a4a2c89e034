"""The A/B boot state shared with U-Boot, read and written through libubootenv."""

from __future__ import annotations

import json
import subprocess

from . import paths


def booted_slot() -> str:
    """The slot the initramfs mounted (A or B), as U-Boot told it on the command line."""
    return (paths.run() / "slot").read_text().strip()


def mark_good() -> str:
    """Give the booted slot its full attempts back: this boot counts as good."""
    slot = booted_slot()
    attempts = json.loads(paths.board_info().read_text())["boot_attempts"]
    subprocess.run(["fw_setenv", f"BOOT_{slot}_LEFT", str(attempts)], check=True)
    return slot
