"""`pbxfw flash`: flash and provision one board over its serial console.

The station serves files by TFTP (on the line a TFTP server's directory; in QEMU the
twin's user network serves the same directory). The steps, each with its own failure:

1. console: open the pyserial URL                                  -> NO_CONSOLE
2. U-Boot: wait for the banner, stop autoboot                      -> UBOOT_NOT_REACHED
3. board: U-Boot's `version` must match the image's board          -> WRONG_BOARD
4. transfer: DHCP, TFTP the image; size and crc32 checked          -> TRANSFER_FAILED
5. write: to the boot device, then the factory identity block
   (serial, MAC, root credential hash) into the bootstate
   partition                                                       -> WRITE_FAILED

6. verify: read the whole device back in chunks, crc32 of each
   against the host's (image with the identity block laid over)   -> CHECKSUM_MISMATCH
7. boot: reset; the agent must import the factory credential,
   finish provisioning and reach the login prompt                  -> BOOT_CHECK_FAILED

Steps 4 and 5 go one of two ways (`board.uboot.flash_write`): `gzwrite` sends the
gzipped image once and U-Boot inflates it onto the device; `raw`, for a U-Boot built
without gzwrite, sends only the image's non-zero extents, each written as it arrives,
and writes the zero runs from a zeroed buffer in RAM. What is sent is made by
`staging`; the boards of a run, the records and labels are `station`'s.

Only then is the board labelled. The credential's plaintext goes to the label output
only; the station log and the console log never hold it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import IO

from pbxfw import config
from pbxfw.console import LOGIN_PROMPT, ConsoleError, SerialConsole
from pbxfw.image.layout import ENV_SIZE, SECTOR
from pbxfw.production import factory
from pbxfw.production.staging import (
    VERIFY_CHUNK,
    Extent,
    Image,
    Region,
    Staged,
    Staging,
    factory_offset,
    regions,
    stage_block,
)
from pbxfw.production.uboot import UBoot


class Outcome(IntEnum):
    FLASHED = 0
    ERROR = 2  # bad arguments or files; nothing was done to the board
    NO_CONSOLE = 30
    WRONG_BOARD = 31
    UBOOT_NOT_REACHED = 32
    TRANSFER_FAILED = 33
    CHECKSUM_MISMATCH = 34
    BOOT_CHECK_FAILED = 35
    WRITE_FAILED = 36  # U-Boot could not write the boot device


class FlashFailed(Exception):
    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class Timings:
    steps: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time one step; a step entered again (a transfer per extent) adds up."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.steps[name] = self.steps.get(name, 0.0) + time.monotonic() - started


@dataclass(frozen=True)
class Job:
    """One board on the line: its console and the identity it is given."""

    port: str
    identity: factory.Identity


def transfer(uboot: UBoot, staged: Staged, address: int, server: str | None) -> None:
    try:
        if server:
            uboot.check(f"setenv serverip {server}")
        received = uboot.tftp(address, staged.name, timeout=60 + staged.size / (1 << 20))
    except ConsoleError as exc:
        raise FlashFailed(Outcome.TRANSFER_FAILED, f"TFTP of {staged.name} failed: {exc}") from None
    if received != staged.size:
        raise FlashFailed(Outcome.TRANSFER_FAILED, f"{staged.name}: {received} bytes arrived, {staged.size} sent")
    crc = uboot.crc32(address, received)
    if crc != staged.crc32:
        raise FlashFailed(Outcome.TRANSFER_FAILED,
                          f"{staged.name}: crc32 {crc:08x} on the board, {staged.crc32:08x} on the station")


def verify(uboot: UBoot, board: config.Board, expected: tuple[Region, ...],
           progress: Callable[[str], None]) -> None:
    iface, dev = board.storage.uboot_interface, board.storage.uboot_device
    for number, region in enumerate(expected, 1):
        try:
            uboot.check(f"{iface} read {board.uboot.verify_address:#x} {region.lba:#x} {region.blocks:#x}", 120)
        except ConsoleError as exc:
            raise FlashFailed(Outcome.CHECKSUM_MISMATCH, f"reading back sectors {region.lba}+{region.blocks} "
                                                         f"failed: {exc}") from None
        crc = uboot.crc32(board.uboot.verify_address, region.blocks * SECTOR)
        if crc != region.crc32:
            raise FlashFailed(Outcome.CHECKSUM_MISMATCH,
                              f"{iface} {dev} sectors {region.lba}+{region.blocks}: crc32 {crc:08x} read back, "
                              f"{region.crc32:08x} expected")
        progress(f"verify {number}/{len(expected)}")


def boot_check(console: SerialConsole, timeout: float) -> None:
    """Boot the flashed image once: the agent must take the factory credential and
    finish provisioning, and the login prompt must come up."""
    console.send("reset\r")
    try:
        for pattern, what in ((r"root credential: factory", "the agent to import the factory credential"),
                              (r"first-boot provisioning complete", "first-boot provisioning"),
                              (LOGIN_PROMPT, "the login prompt")):
            console.expect(pattern, timeout, what)
    except ConsoleError as exc:
        raise FlashFailed(Outcome.BOOT_CHECK_FAILED, str(exc)) from None


def gzwrite_buffer(total: int, largest: int = 4 << 20) -> int:
    """gzwrite's write buffer for an image of `total` bytes: a whole number of sectors
    that does not divide `total`. U-Boot 2023.01's gzwrite ends with a zero-block write
    when the image fills its last buffer exactly, which QEMU's virtio-blk refuses
    ("zero sized buffers are not allowed") and the command never returns; with a
    remainder, the last inflate writes it and ends the stream in the same call."""
    size = largest - SECTOR
    while total % size == 0:
        size -= SECTOR
    return size


def _write_gzip(uboot: UBoot, hw: config.Board, staged: Staged, total: int) -> None:
    iface, dev = hw.storage.uboot_interface, hw.storage.uboot_device
    try:
        uboot.check(f"gzwrite {iface} {dev} {hw.uboot.transfer_address:#x} {staged.size:#x} "
                    f"{gzwrite_buffer(total):#x}", 900)
    except ConsoleError as exc:
        raise FlashFailed(Outcome.WRITE_FAILED, f"gzwrite to {iface} {dev} failed: {exc}") from None


def _write_blocks(uboot: UBoot, hw: config.Board, address: int, offset: int, length: int, what: str) -> None:
    iface, dev = hw.storage.uboot_interface, hw.storage.uboot_device
    try:
        uboot.check(f"{iface} write {address:#x} {offset // SECTOR:#x} {-(-length // SECTOR):#x}", 300)
    except ConsoleError as exc:
        raise FlashFailed(Outcome.WRITE_FAILED, f"writing {what} to {iface} {dev} failed: {exc}") from None


def _write_raw(uboot: UBoot, hw: config.Board, pieces: tuple[tuple[Extent, Staged | None], ...], server: str | None,
               timings: Timings, progress: Callable[[str], None]) -> None:
    """Each data extent sent and written as it arrives; zero runs from a zeroed buffer
    at the read-back address (free until the verify step)."""
    zeroed, done, total = False, 0, sum(staged is not None for _, staged in pieces)
    for extent, staged in pieces:
        if staged is None:
            with timings.step("write"):
                if not zeroed:
                    try:
                        uboot.check(f"mw.l {hw.uboot.verify_address:#x} 0 {VERIFY_CHUNK // 4:#x}", 120)
                    except ConsoleError as exc:
                        raise FlashFailed(Outcome.WRITE_FAILED, f"zeroing the write buffer failed: {exc}") from None
                    zeroed = True
                _write_blocks(uboot, hw, hw.uboot.verify_address, extent.offset, extent.length,
                              f"{extent.length >> 20} MiB of zeros at {extent.offset:#x}")
            continue
        with timings.step("transfer"):
            transfer(uboot, staged, hw.uboot.transfer_address, server)
        with timings.step("write"):
            _write_blocks(uboot, hw, hw.uboot.transfer_address, extent.offset, extent.length, staged.name)
        done += 1
        progress(f"extent {done}/{total} sent and written")


def _write_identity(uboot: UBoot, hw: config.Board, block: Staged, server: str | None) -> None:
    transfer(uboot, block, hw.uboot.verify_address, server)
    _write_blocks(uboot, hw, hw.uboot.verify_address, factory_offset(hw), ENV_SIZE, "the factory identity block")


def _reach_uboot(uboot: UBoot, hw: config.Board) -> None:
    try:
        uboot.stop_autoboot(timeout=60)
    except ConsoleError as exc:
        raise FlashFailed(Outcome.UBOOT_NOT_REACHED, str(exc)) from None
    version = uboot.check("version")
    if not re.search(hw.uboot.version_match, version):
        raise FlashFailed(Outcome.WRONG_BOARD, f"the image is for {hw.name}, whose U-Boot matches "
                                               f"{hw.uboot.version_match!r}; this board's says {version.strip()!r}")


def flash_board(image: Image, staging: Staging, job: Job, root_hash: str, tftp_dir: Path, server: str | None,
                console_log: IO[str] | None, progress: Callable[[str], None]) -> Timings:
    """Steps 1-7 of the module docstring for one board; raises FlashFailed."""
    timings = Timings()
    hw = image.board
    largest = max(staged.size for staged in staging.files)
    if largest > hw.uboot.verify_address - hw.uboot.transfer_address:
        raise FlashFailed(Outcome.ERROR, f"a transfer of {largest} bytes does not fit between the board's "
                                         "transfer and verify addresses")
    with timings.step("stage"):
        block = factory.identity_block(job.identity, root_hash, image.sha256)
        staged_block = stage_block(block, job.identity.serial, tftp_dir)
        expected = regions(image.disk, {factory_offset(hw): block})
    try:
        console = SerialConsole(job.port, log=console_log, connect_timeout=5)
    except ConsoleError as exc:
        (tftp_dir / staged_block.name).unlink(missing_ok=True)
        raise FlashFailed(Outcome.NO_CONSOLE, str(exc)) from None
    try:
        uboot = UBoot(console)
        with timings.step("u-boot"):
            _reach_uboot(uboot, hw)
        progress("U-Boot reached, board matches")
        with timings.step("transfer"):
            try:
                uboot.check("setenv autoload no; dhcp", 60)
            except ConsoleError as exc:
                raise FlashFailed(Outcome.TRANSFER_FAILED, f"no DHCP lease for the transfer: {exc}") from None
            if staging.gzip:
                transfer(uboot, staging.gzip, hw.uboot.transfer_address, server)
        if staging.gzip:
            progress(f"transferred {staging.gzip.size / (1 << 20):.0f} MiB")
            with timings.step("write"):
                _write_gzip(uboot, hw, staging.gzip, image.size)
        else:
            _write_raw(uboot, hw, staging.pieces, server, timings, progress)
        with timings.step("write"):
            _write_identity(uboot, hw, staged_block, server)
        progress("written")
        with timings.step("verify"):
            verify(uboot, hw, expected, progress)
        with timings.step("boot check"):
            boot_check(console, 240)
        progress("booted, factory credential taken, provisioned")
    finally:
        console.close()
        (tftp_dir / staged_block.name).unlink(missing_ok=True)
    return timings
