"""Firewall changes that could lock the administrator out are applied on probation:
unless `pbxagent firewall confirm` comes within the window (60 s by default), a timer
applies the previous policy again. The proposed override waits in state/ until then;
a reboot before confirmation also comes back with the previous policy."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pbxagent import atomic, paths
from pbxagent.policy import site
from pbxagent.policy.network import Firewall

UNIT = "pbx-firewall-rollback"
DEFAULT_WINDOW_S = 60

# Everything that decides who may reach the box; the rest (ping, AMI, rate limits,
# flood levels) cannot shut the administrator out.
ADMISSION = ("drop_all", "services", "rules", "allow", "block")


def pending_path() -> Path:
    return paths.data() / "state" / "policy.pending.yaml"


def risky(current: Firewall, proposed: Firewall) -> list[str]:
    """The admission settings the proposal changes (empty: safe to apply outright)."""
    return [name for name in ADMISSION if getattr(current, name) != getattr(proposed, name)]


def hold(proposal: Path, window_s: int) -> None:
    """Keep the proposal pending and arm the rollback timer."""
    atomic.write(pending_path(), proposal.read_bytes(), 0o600)
    subprocess.run(["systemctl", "stop", f"{UNIT}.timer"], capture_output=True)
    done = subprocess.run(["systemd-run", f"--unit={UNIT}", f"--on-active={window_s}s", "--quiet",
                           "/usr/sbin/pbxagent", "firewall", "rollback"], capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"cannot arm the rollback timer: {done.stderr.strip()}")


def install(proposal: Path) -> None:
    atomic.write(site.override_path(), proposal.read_bytes(), 0o600)


def confirm() -> None:
    pending = pending_path()
    if not pending.exists():
        raise ValueError("no firewall change is waiting for confirmation")
    subprocess.run(["systemctl", "stop", f"{UNIT}.timer"], capture_output=True)
    install(pending)
    atomic.remove(pending)


def discard() -> None:
    subprocess.run(["systemctl", "stop", f"{UNIT}.timer"], capture_output=True)
    atomic.remove(pending_path())
