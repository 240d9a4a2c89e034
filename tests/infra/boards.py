"""Twins for tests: a fresh one (a copy-on-write layer over the built image with a root
credential seeded, off), or a booted one restored from the image's snapshot.

The snapshot is made by a real first boot the first time a test needs it, and again
whenever the image or the machine changes (pbxfw.devtwin keys it). Whatever is wrong
with it — another image, no qemu-img, a corrupted layer, a restore QEMU refuses — is
said on the terminal, and the test gets a twin booted for real instead: never a twin of
a stale image.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import sys
from pathlib import Path

from pbxfw import devtwin
from pbxfw.config import Board
from pbxfw.console import ConsoleError

from tests.infra import timing
from tests.infra.power import QemuPower, Wiring
from tests.infra.twin import Twin

_known: dict[tuple[Path, int, int], devtwin.Snapshot] = {}


def say(message: str) -> None:
    """Printed at once (seen with -s or in a failing test's output) and in the summary."""
    print(f"twin: {message}", file=sys.stderr, flush=True)
    timing.notice(message)


def with_memory(board: Board, memory_mib: int) -> Board:
    """The board's twin with another amount of RAM (its snapshot is then another one)."""
    return dataclasses.replace(board, qemu=dataclasses.replace(board.qemu, memory_mib=memory_mib))


def prepare_disk(board: Board, image: Path, work: Path, password: str | None = None) -> tuple[Path, str]:
    """A layer over the built image with a root credential on /data (random unless
    `password` is given, e.g. an old box's): the disk and the password."""
    password = password or secrets.token_urlsafe(18)
    work.mkdir(parents=True, exist_ok=True)
    disk = devtwin.layer(image, work / "disk.qcow2")
    devtwin.seed_root_credential(board, disk, password, work)
    return disk, password


def fresh_twin(board: Board, image: Path, work: Path, password: str | None = None,
               wiring: Wiring | None = None) -> Twin:
    """An unbooted twin of the built image (see prepare_disk)."""
    disk, password = prepare_disk(board, image, work, password)
    return Twin(QemuPower(board, disk, work, wiring or Wiring()), password, work / "console.log")


def booted_twin(board: Board, image: Path, work: Path, wiring: Wiring | None = None) -> Twin:
    """A twin at its root shell after its first boot: restored from the snapshot when it
    can be, booted for real (and the snapshot made) when it cannot."""
    work.mkdir(parents=True, exist_ok=True)
    snapshot = _snapshot(board, image, work)
    if snapshot is not None:
        disk = devtwin.copy_snapshot(snapshot, work / "disk.qcow2")
        shutil.copyfile(snapshot.console_log, work / "console.log")  # the boot, as a test reads it
        twin = Twin(QemuPower(board, disk, work, wiring or Wiring()), snapshot.password, work / "console.log")
        try:
            twin.restore(devtwin.SNAPSHOT)
            return twin
        except ConsoleError as exc:
            say(f"{exc}: booting for real")
    twin = fresh_twin(board, image, work, wiring=wiring)
    twin.power_on()
    return twin


def image_key(image: Path) -> tuple[Path, int, int]:
    """Which build of an image this is, for what a session keeps per image: a rebuild
    between tests is another image."""
    stat = image.stat()
    return image.resolve(), stat.st_mtime_ns, stat.st_size


def _snapshot(board: Board, image: Path, work: Path) -> devtwin.Snapshot | None:
    memo = image_key(image)
    if memo in _known:
        return _known[memo]
    found, why = devtwin.find_snapshot(board, image)
    if found is None:
        say(f"{why}: making one from a real first boot")
        try:
            found = _make_snapshot(board, image, work / "snapshot")
        except (ConsoleError, OSError, RuntimeError) as exc:
            say(f"could not make a snapshot ({exc})")
            return None
    _known[memo] = found
    return found


def _make_snapshot(board: Board, image: Path, work: Path) -> devtwin.Snapshot:
    work.mkdir(parents=True, exist_ok=True)
    twin = fresh_twin(board, image, work)
    dut = twin.power_on()
    # Leave a shell a person can use (`make qemu`): the harness sets up its own on restore.
    dut.console.send("stty sane; export PS1='\\u@\\h:\\w\\$ ' TERM=vt100; unset PAGER SYSTEMD_COLORS\r")
    dut.console.expect(r"root@\S+:\S*# ", 30, "the shell prompt for people")
    assert isinstance(twin.power, QemuPower)
    twin.power.savevm(devtwin.SNAPSHOT)
    twin.power_off()
    snapshot = devtwin.record_snapshot(board, image, twin.power.disk, twin.password, twin.log_path)
    say(f"saved {snapshot.layer} (key {snapshot.key[:12]})")
    return snapshot
