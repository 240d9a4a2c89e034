"""The few facts and actions the agent needs from the running system: systemd units
and listening sockets. Kept here so the rest of the agent stays pure."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pbxagent import paths


def systemctl(*args: str) -> str:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"systemctl {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout.strip()


def start_began(unit: str) -> float:
    """When the unit last left the inactive state, in time.monotonic()'s seconds (both
    are CLOCK_MONOTONIC); 0 if it never did."""
    return int(systemctl("show", "-P", "InactiveExitTimestampMonotonic", unit) or 0) / 1e6


def unit_state(unit: str) -> str:
    """`systemctl is-enabled` (enabled, disabled, masked, …); it exits non-zero for most."""
    done = subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True)
    return done.stdout.strip() or "not-found"


def is_active(unit: str) -> bool:
    return subprocess.run(["systemctl", "is-active", "--quiet", unit]).returncode == 0


def is_masked(unit: str) -> bool:
    """Read the mask link itself: no process to spawn on the boot path."""
    link = paths.root() / "etc" / "systemd" / "system" / unit
    return link.is_symlink() and str(link.readlink()) == "/dev/null"


def usage() -> str:
    """This process's CPU time and peak RSS, in the words the benches read off the journal."""
    import resource
    import time

    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return f"took {time.process_time():.2f} s of CPU, peak RSS {peak_kib / 1024:.1f} MiB"


def listening_tcp_ports() -> set[int]:
    """Local TCP ports in LISTEN state, IPv4 and IPv6 (from /proc/net, like ss -ltn)."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
