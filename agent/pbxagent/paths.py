"""Where the agent reads and keeps state on the device (overridable for host tests)."""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    """The file system root the agent acts on; tests point it at a scratch tree."""
    return Path(os.environ.get("PBXAGENT_ROOT", "/"))


def data() -> Path:
    """The data partition: everything that must survive an update."""
    return root() / "data" / "pbx"


def runtime() -> Path:
    """Volatile state written by the initramfs (which slot booted)."""
    return root() / "run" / "pbx"


def provisioned_marker() -> Path:
    """Written once the first boot's provisioning has completed."""
    return data() / "state" / "provisioned.json"


def boot_verdict() -> Path:
    """This boot's health verdict: there once the boot's check has run (tmpfs)."""
    return runtime() / "health.json"


def compiled_firewall() -> Path:
    """There once a compiled ruleset is in force this boot: the last boot's, loaded by
    nftables.service, or this boot's, applied by the guard's start."""
    return runtime() / "firewall-compiled"


def network_ready() -> Path:
    """Written by the agent once the network may come up (pbx-network-gate.service)."""
    return runtime() / "network-ready"


def update_data() -> Path:
    """The update state: slots, floor, fleet metadata, reports (survives both slots)."""
    return data() / "update"


def console() -> Path:
    """The local (serial) console: what a person at the box, or the production line,
    reads during boot."""
    return root() / "dev" / "console"


def board_info() -> Path:
    return root() / "etc" / "pbxfw" / "board.json"
