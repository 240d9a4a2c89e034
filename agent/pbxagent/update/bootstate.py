"""The A/B boot state shared with U-Boot, defined once: the host renders U-Boot's script
and the image's initial state from these names, the agent reads and changes the state.

U-Boot's script boots the first slot in BOOT_ORDER that has attempts left and takes one
away; Linux gives them back when the boot proved good. The operations are named as RAUC
names them (mark good, mark bad, mark active) and are pure functions over `BootState`;
`read` and `write` go through libubootenv (fw_printenv, fw_setenv -s), which writes the
older of the two copies, so a torn write leaves the previous state in the other copy.
Where this differs from RAUC: docs/updates.md.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace

from pbxagent import paths

SLOTS = ("A", "B")
# The partition each slot lives in (pbxfw's layout names them).
SLOT_PARTITIONS = {"A": "rootfs_a", "B": "rootfs_b"}
ORDER_VAR = "BOOT_ORDER"


def attempts_var(slot: str) -> str:
    return f"BOOT_{slot}_LEFT"


STATE_VARS = (ORDER_VAR, *(attempts_var(slot) for slot in SLOTS))


@dataclass(frozen=True)
class BootState:
    order: tuple[str, ...]
    left: tuple[tuple[str, int], ...]  # (slot, attempts left), in SLOTS order

    def attempts(self, slot: str) -> int:
        return dict(self.left)[slot]

    def with_attempts(self, slot: str, count: int) -> BootState:
        return replace(self, left=tuple((s, count if s == slot else n) for s, n in self.left))

    def to_env(self) -> dict[str, str]:
        env = {ORDER_VAR: " ".join(self.order)}
        env.update({attempts_var(slot): str(n) for slot, n in self.left})
        return env

    @classmethod
    def from_env(cls, env: dict[str, str]) -> BootState:
        order = tuple(s for s in env.get(ORDER_VAR, " ".join(SLOTS)).split() if s in SLOTS) or SLOTS
        left = []
        for slot in SLOTS:
            try:
                left.append((slot, max(0, int(env.get(attempts_var(slot), "0")))))
            except ValueError:
                left.append((slot, 0))
        return cls(order, tuple(left))


def initial(attempts: int) -> BootState:
    """A new image's state: slot A first, every slot with its full attempts."""
    return BootState(SLOTS, tuple((slot, attempts) for slot in SLOTS))


def other(slot: str) -> str:
    return SLOTS[1 - SLOTS.index(slot)]


def mark_bad(state: BootState, slot: str) -> BootState:
    """No attempts left: U-Boot never boots `slot` (while it is being written)."""
    return state.with_attempts(slot, 0)


def mark_active(state: BootState, slot: str, attempts: int) -> BootState:
    """Boot `slot` next, `attempts` times at most; then the other slot again."""
    return replace(state.with_attempts(slot, attempts), order=(slot, other(slot)))


def mark_good(state: BootState, slot: str, attempts: int) -> BootState:
    """The running `slot` proved good: full attempts, and first in line. Unlike RAUC's
    mark-good this also puts it first: after a fallback the failed slot is still first
    in BOOT_ORDER (with no attempts), and the good one must lead again."""
    return mark_active(state, slot, attempts)


def booted_slot() -> str:
    """The slot the initramfs mounted (A or B), as U-Boot told it on the command line."""
    return (paths.runtime() / "slot").read_text().strip()


def _config() -> list[str]:
    return ["-c", str(paths.root() / "etc" / "fw_env.config")]


def read() -> BootState:
    done = subprocess.run(["fw_printenv", *_config()], capture_output=True, text=True, check=True)
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return BootState.from_env(env)


def factory_identity() -> dict[str, str]:
    """The production line's identity block (serial, MAC, root hash; pbxfw.production.factory);
    empty on a board that never went through it or whose block fails its CRC."""
    config = paths.root() / "etc" / "fw_env.factory.config"
    if not config.is_file():
        return {}
    done = subprocess.run(["fw_printenv", "-c", str(config)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or "Bad CRC" in done.stderr:
        return {}
    pairs = (line.split("=", 1) for line in done.stdout.splitlines() if line.startswith("PBX_") and "=" in line)
    return dict(pairs)


def write(state: BootState) -> None:
    """All variables in one fw_setenv call: one write of one copy."""
    script = paths.runtime() / "bootstate.script"
    script.write_text("".join(f"{name}={value}\n" for name, value in state.to_env().items()))
    try:
        subprocess.run(["fw_setenv", *_config(), "-s", str(script)], check=True, capture_output=True)
    finally:
        script.unlink(missing_ok=True)
