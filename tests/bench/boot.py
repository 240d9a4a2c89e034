"""`make bench-boot`: boot time and image size of a board's image, against a baseline.

Milestones are read off the serial console as it happens: QEMU start -> U-Boot banner
-> "Starting kernel" -> login prompt, on a later boot (the first boot, timed too, also
makes the device's secrets). The baseline in the same run boots the same kernel,
initramfs and slot directly with QEMU's -kernel (no U-Boot, no A/B script), so the ratio
shows what the boot chain costs. Then systemd-analyze and its three
slowest units from the booted twin.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from pbxfw import config
from pbxfw.console import SerialConsole
from pbxfw.image import layout
from pbxfw.image.bootscript import kernel_args

from tests.infra import boards
from tests.infra.power import QemuPower

REPO = Path(__file__).resolve().parents[2]
GOAL_LOGIN_S = 20.0
GOAL_SLOT_MIB = 160.0


def milestones(console: SerialConsole, marks: list[tuple[str, str]], started: float) -> dict[str, float]:
    seen = {}
    for name, pattern in marks:
        console.expect(re.compile(pattern, re.MULTILINE), 300, name)
        seen[name] = time.monotonic() - started
    return seen


def direct_boot_files(out: Path) -> tuple[Path, Path]:
    """The kernel and initramfs the build put in the slot, for QEMU's -kernel."""
    return next((out / "work" / "kernel" / "boot").glob("vmlinuz-*")), out / "work" / "initrd.img"


def boot(
    board: config.Board, disk: Path, work: Path, direct: tuple[Path, Path] | None, append: str = ""
) -> tuple[dict[str, float], SerialConsole, QemuPower]:
    """Boot and time the milestones; `direct` = (kernel, initramfs) boots without U-Boot,
    with `append` added to the kernel command line."""
    extra: tuple[str, ...] = ()
    marks = [("U-Boot", r"U-Boot 20\d\d"), ("kernel", r"Starting kernel"), ("login prompt", r"login: ?$")]
    if direct is not None:
        disk_layout = layout.for_board(board)
        cmdline = kernel_args(board, disk_layout, "A", str(disk_layout.get("rootfs_a").number))
        extra = ("-kernel", str(direct[0]), "-initrd", str(direct[1]), "-append", f"{cmdline} {append}".strip())
        marks = [("login prompt", r"login: ?$")]
    twin = QemuPower(board, disk, work, extra=extra)
    twin.on()
    started = time.monotonic()
    console = SerialConsole(twin.console_url, log=(work / "console.log").open("a"))
    return milestones(console, marks, started), console, twin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--board", default="qemu-u50")
    parser.add_argument("--recipe", default="recipes/pbx.yml")
    args = parser.parse_args()
    cfg = config.load(config.board_spec(REPO, args.board, args.recipe))
    out = REPO / "out" / cfg.board.name
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        disk, password = boards.prepare_disk(cfg.board, out / "disk.img", work)
        # First boot: the agent makes every per-device secret (see bench-agent).
        first, console, twin = boot(cfg.board, disk, work, None)
        console.close()
        twin.off()
        times, console, twin = boot(cfg.board, disk, work, None)
        try:
            console.login("root", password, wake=True)  # the prompt was consumed above
            console.run("systemctl is-system-running --wait", timeout=300)
            analyze = console.run("systemd-analyze").output.strip()
            blame = console.run("systemd-analyze blame --no-pager | head -3").output.rstrip()
        finally:
            console.close()
            twin.off()

        # Baseline on the same disk, also a later boot: the boot state does not matter
        # without U-Boot.
        base, console, twin = boot(cfg.board, disk, work, direct_boot_files(out))
        console.close()
        twin.off()

    slot_mib = (out / "rootfs.slot").stat().st_size / 2**20
    disk_path = out / "disk.img"
    disk_mib = disk_path.stat().st_size / 2**20
    disk_alloc_mib = disk_path.stat().st_blocks * 512 / 2**20
    login = times["login prompt"]
    print(f"\nbench-boot: {cfg.board.name} ({cfg.board.qemu.cpu}, TCG, no KVM)")
    print(f"  QEMU start -> U-Boot banner     {times['U-Boot']:6.1f} s")
    print(f"  QEMU start -> Starting kernel   {times['kernel']:6.1f} s")
    print(f"  QEMU start -> login prompt      {login:6.1f} s   goal {GOAL_LOGIN_S:.0f} s "
          f"(ratio {login / GOAL_LOGIN_S:.2f}); first boot {first['login prompt']:.1f} s")
    print(f"  baseline, -kernel direct        {base['login prompt']:6.1f} s   "
          f"U-Boot A/B chain costs {login - base['login prompt']:+.1f} s (x{login / base['login prompt']:.2f})")
    print(f"  {analyze}")
    print("  slowest units:\n" + "\n".join(f"    {line.strip()}" for line in blame.splitlines()))
    print(f"  rootfs slot image   {slot_mib:7.1f} MiB   goal {GOAL_SLOT_MIB:.0f} MiB "
          f"(ratio {slot_mib / GOAL_SLOT_MIB:.2f})")
    print(f"  disk image          {disk_mib:7.1f} MiB   ({disk_alloc_mib:.1f} MiB allocated, sparse)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
