"""Firewall changes that could lock the administrator out are applied on probation:
unless `pbxagent firewall confirm` comes within the window (60 s by default), a timer
applies the previous policy again. The proposed override waits in state/ until then;
a reboot before confirmation also comes back with the previous policy."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from pbxagent import atomic, paths
from pbxagent.network import guard
from pbxagent.policy import site
from pbxagent.policy.network import Firewall

UNIT = "pbx-firewall-rollback"
DEFAULT_WINDOW_S = 60
WINDOW_RANGE_S = (5, 600)

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


class Applied(NamedTuple):
    seconds: float  # compile, check and load the ruleset
    held_for: list[str]  # admission settings the change makes: on probation until confirmed
    exemptions: str  # what fail2ban was told


def apply(current: site.Policy, proposal: Path | None, window_s: int) -> Applied:
    """Apply `proposal` laid over the defaults (or the policy in force again). A change
    to who may reach the box is held on probation for `window_s`; any other change
    becomes the site policy at once."""
    low, high = WINDOW_RANGE_S
    if not low <= window_s <= high:
        raise ValueError(f"--rollback-after {window_s}: must be {low}..{high}")
    proposed = site.compose(site.DEFAULTS, proposal)[0] if proposal else current
    started = time.monotonic()
    addresses = guard.apply(proposed)
    took = time.monotonic() - started
    told = guard.exempt_sync(guard.segments(addresses))
    changes = risky(current.firewall, proposed.firewall)
    if proposal and changes:
        hold(proposal, window_s)
    elif proposal:
        install(proposal)
    return Applied(took, changes, told.message)


def roll_back(previous: site.Policy) -> str:
    """The change was not confirmed: apply the policy in force before it again."""
    discard()
    return guard.exempt_sync(guard.segments(guard.apply(previous))).message


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
