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

Steps 4 and 5 go one of two ways (`board.uboot.flash_write`): `gzwrite` sends the
gzipped image once and U-Boot inflates it onto the device; `raw`, for a U-Boot built
without gzwrite, sends only the image's non-zero extents, each written as it arrives,
and writes the zero runs from a zeroed buffer in RAM.
6. verify: read the whole device back in chunks, crc32 of each
   against the host's (image with the identity block laid over)   -> CHECKSUM_MISMATCH
7. boot: reset; the agent must import the factory credential,
   finish provisioning and reach the login prompt                  -> BOOT_CHECK_FAILED

Only then is the board labelled. The credential's plaintext goes to the label output
only; the station log and the console log never hold it.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import IO

from pbxfw import config
from pbxfw.console import LOGIN_PROMPT, ConsoleError, SerialConsole
from pbxfw.errors import PbxfwError
from pbxfw.image import layout
from pbxfw.image.layout import ENV_SIZE, FACTORY_OFFSET, SECTOR
from pbxfw.packages.archive import sha256_file
from pbxfw.production import factory
from pbxfw.production.uboot import UBoot

VERIFY_CHUNK = 64 << 20
# The raw write's unit of "is this all zeros": small enough to skip the gaps inside a
# file system, large enough to keep the number of TFTP transfers low.
EXTENT_GRANULE = 1 << 20


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


@dataclass(frozen=True)
class Image:
    disk: Path
    board: config.Board
    version: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Region:
    lba: int
    blocks: int
    crc32: int


@dataclass(frozen=True)
class Staged:
    """A file in the TFTP directory, as the board must receive it."""

    name: str
    size: int
    crc32: int


@dataclass(frozen=True)
class Extent:
    """A stretch of the image for the raw write: sent and written, or all zeros."""

    offset: int
    length: int
    zero: bool


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


def load_image(disk: Path) -> Image:
    """The image and its board, from the build's manifest next to it."""
    manifest = disk.parent / "build.json"
    if not disk.is_file():
        raise PbxfwError(f"--image {disk}: no such file (make image)")
    try:
        built = json.loads(manifest.read_text())
        sources = ":".join(built["sources"])
        version = built["version"]
    except (OSError, ValueError, KeyError) as exc:
        raise PbxfwError(f"{manifest}: not a pbxfw build manifest ({exc})") from None
    if disk.stat().st_size % SECTOR:
        raise PbxfwError(f"--image {disk}: {disk.stat().st_size} bytes is not a whole number of sectors")
    board = config.load(sources).board
    return Image(disk, board, version, sha256_file(disk), disk.stat().st_size)


def factory_offset(board: config.Board) -> int:
    return layout.for_board(board).get("bootstate").offset + FACTORY_OFFSET


def regions(disk: Path, overlay: dict[int, bytes], chunk: int = VERIFY_CHUNK) -> tuple[Region, ...]:
    """crc32 of every `chunk` of the device as it must read after flashing: the image
    with `overlay` ({offset: bytes}) laid over it."""
    found = []
    with disk.open("rb") as src:
        offset = 0
        while data := src.read(chunk):
            view = bytearray(data)
            for at, payload in overlay.items():
                start, end = max(at, offset), min(at + len(payload), offset + len(view))
                if start < end:
                    view[start - offset:end - offset] = payload[start - at:end - at]
            found.append(Region(offset // SECTOR, len(view) // SECTOR, zlib.crc32(view)))
            offset += len(view)
    return tuple(found)


def extents(disk: Path, granule: int = EXTENT_GRANULE, largest: int = VERIFY_CHUNK) -> tuple[Extent, ...]:
    """The image as alternating runs of data and zeros at `granule` resolution, each
    run cut to at most `largest` bytes (what one transfer or one zero write covers)."""
    runs: list[Extent] = []
    with disk.open("rb") as src:
        offset = 0
        while data := src.read(granule):
            zero = data.count(0) == len(data)
            last = runs[-1] if runs else None
            if last is not None and last.zero == zero and last.length + len(data) <= largest:
                runs[-1] = Extent(last.offset, last.length + len(data), zero)
            else:
                runs.append(Extent(offset, len(data), zero))
            offset += len(data)
    return tuple(runs)


def _crc32_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def stage_image(image: Image, tftp_dir: Path) -> Staged:
    """The gzipped image in the TFTP directory, named by its sha256 (made once per image)."""
    name = f"pbxfw-{image.sha256[:16]}.img.gz"
    dest = tftp_dir / name
    if not dest.is_file():
        partial = dest.with_suffix(".part")
        with image.disk.open("rb") as src, gzip.GzipFile(partial, "wb", compresslevel=1, mtime=0) as out:
            while chunk := src.read(4 << 20):
                out.write(chunk)
        partial.replace(dest)
    return Staged(name, dest.stat().st_size, _crc32_file(dest))


@dataclass(frozen=True)
class Staging:
    """What the station sends of one image: the gzipped image (gzwrite), or the image
    as extents, the data ones staged and the zero ones (None) not sent (raw)."""

    gzip: Staged | None
    pieces: tuple[tuple[Extent, Staged | None], ...] = ()

    @property
    def files(self) -> list[Staged]:
        return [self.gzip] if self.gzip else [staged for _, staged in self.pieces if staged is not None]


def stage(image: Image, tftp_dir: Path) -> Staging:
    """The image in the TFTP directory as the board's write method needs it."""
    if image.board.uboot.flash_write == "raw":
        return Staging(None, stage_extents(image, tftp_dir))
    return Staging(stage_image(image, tftp_dir))


def stage_extents(image: Image, tftp_dir: Path) -> tuple[tuple[Extent, Staged | None], ...]:
    """The image's data extents as files in the TFTP directory (made once per image);
    zero extents are not sent (None)."""
    staged: list[tuple[Extent, Staged | None]] = []
    with image.disk.open("rb") as src:
        for extent in extents(image.disk):
            if extent.zero:
                staged.append((extent, None))
                continue
            src.seek(extent.offset)
            data = src.read(extent.length)
            dest = tftp_dir / f"pbxfw-{image.sha256[:16]}-{extent.offset:010x}.raw"
            if not dest.is_file() or dest.stat().st_size != len(data):
                partial = dest.with_suffix(".part")
                partial.write_bytes(data)
                partial.replace(dest)
            staged.append((extent, Staged(dest.name, len(data), zlib.crc32(data))))
    return tuple(staged)


def stage_block(block: bytes, serial: str, tftp_dir: Path) -> Staged:
    name = f"pbxfw-{serial}.factory"
    (tftp_dir / name).write_bytes(block)
    return Staged(name, len(block), zlib.crc32(block))


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


def station_line(when: str, job: Job, image: Image, outcome: Outcome, seconds: float, detail: str = "") -> str:
    """One line per board for the station log: never a credential."""
    line = (f"{when} serial={job.identity.serial} mac={job.identity.mac} image_sha256={image.sha256} "
            f"result={outcome.name.lower()} code={int(outcome)} duration={seconds:.1f}s")
    return line + (f" detail={json.dumps(detail)}" if detail else "")


def parse_batch(path: Path) -> list[Job]:
    """`PORT MAC SERIAL` per line; blank lines and # comments ignored."""
    jobs = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PbxfwError(f"--batch {path}: cannot read: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise PbxfwError(f"{path}:{number}: expected PORT MAC SERIAL, got {line.strip()!r}")
        try:
            identity = factory.Identity(factory.parse_mac(fields[1]), factory.parse_serial(fields[2]))
        except PbxfwError as exc:
            raise PbxfwError(f"{path}:{number}: {exc}") from None
        jobs.append(Job(fields[0], identity))
    serials = [job.identity.serial for job in jobs]
    if len(set(serials)) != len(serials):
        raise PbxfwError(f"{path}: a serial number appears twice")
    return jobs


def dry_run(image: Image, jobs: list[Job], keyed: bool, tftp_dir: Path | None, label_out: Path | None) -> str:
    """What `flash` would do, touching nothing (--dry-run)."""
    hw = image.board
    iface, dev = hw.storage.uboot_interface, hw.storage.uboot_device
    if hw.uboot.flash_write == "raw":
        runs = extents(image.disk)
        data = [run for run in runs if not run.zero]
        sent = sum(run.length for run in data)
        staging = (f"{len(data)} non-zero extents of the image ({sent >> 20} MiB of {image.size >> 20} MiB) as "
                   f"pbxfw-{image.sha256[:16]}-<offset>.raw")
        writing = [f"  dhcp; per data extent: tftpboot {hw.uboot.transfer_address:#x}, crc32 against the station's, "
                   f"{iface} write; zero runs ({(image.size - sent) >> 20} MiB) from a zeroed buffer at "
                   f"{hw.uboot.verify_address:#x}"]
    else:
        staging = f"pbxfw-{image.sha256[:16]}.img.gz (gzip)"
        writing = [f"  dhcp; tftpboot {hw.uboot.transfer_address:#x}; crc32 against the station's",
                   f"  gzwrite {iface} {dev}"]
    lines = [
        f"image {image.disk}: {hw.name} firmware {image.version}, {image.size} bytes, sha256 {image.sha256}",
        f"stage: {staging} and a factory identity block per board in {tftp_dir or '(no --tftp-dir)'}",
        f"credential: {'HMAC-SHA256(factory key, MAC)' if keyed else 'random (OS CSPRNG)'}; only its hash goes "
        "to the board",
    ]
    for number, job in enumerate(jobs, 1):
        lines += [
            f"board {number}/{len(jobs)}: serial {job.identity.serial}, MAC {job.identity.mac}, console {job.port}",
            "  stop U-Boot's autoboot; `version` must match " + repr(hw.uboot.version_match),
            *writing,
            f"  factory block to {iface} {dev} sector {factory_offset(hw) // SECTOR:#x}",
            f"  read back {-(-image.size // VERIFY_CHUNK)} chunks of {VERIFY_CHUNK >> 20} MiB, crc32 each",
            "  reset; wait for the factory credential import, provisioning and the login prompt",
            f"  label: {label_out or '(no --label-out)'}",
        ]
    return "\n".join(lines)


class Bar:
    """A per-board progress bar, one line per step (station terminals and CI logs alike)."""

    WIDTH = 24

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.done = name, total, 0
        self.started = time.monotonic()

    def __call__(self, what: str) -> None:
        self.done = min(self.done + 1, self.total)
        filled = self.WIDTH * self.done // self.total
        print(f"  {self.name} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {what} "
              f"({time.monotonic() - self.started:.1f} s)", flush=True)


@dataclass(frozen=True)
class Station:
    """Where the station serves files from and writes its records."""

    tftp_dir: Path
    server: str | None
    station_log: Path
    label_out: Path | None
    console_log: Path | None


def run_jobs(image: Image, jobs: list[Job], key: bytes | None, station: Station) -> Outcome:
    """Flash the boards one after another; returns the first failure (or FLASHED)."""
    from pbxfw.production import labels

    first_failure = Outcome.FLASHED
    staging = stage(image, station.tftp_dir)
    # The progress calls: U-Boot, the transfer(s), written, each verify chunk, booted.
    steps = 3 + len(staging.files) + -(-image.size // VERIFY_CHUNK)
    for number, job in enumerate(jobs, 1):
        print(f"==> board {number}/{len(jobs)}: {job.identity.serial} ({job.identity.mac}) on {job.port}", flush=True)
        started = time.monotonic()
        credential = factory.credential(job.identity.mac, key)
        outcome, detail, timings = Outcome.FLASHED, "", Timings()
        log = station.console_log.open("a", encoding="utf-8") if station.console_log else None
        try:
            timings = flash_board(image, staging, job, factory.crypt_hash(credential), station.tftp_dir,
                                  station.server, log, Bar(job.identity.serial, steps))
        except FlashFailed as exc:
            outcome, detail = exc.outcome, str(exc)
        except ConsoleError as exc:
            outcome, detail = Outcome.ERROR, str(exc)
        finally:
            if log:
                log.close()
        seconds = time.monotonic() - started
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with station.station_log.open("a", encoding="utf-8") as out:
            out.write(station_line(when, job, image, outcome, seconds, detail) + "\n")
        if outcome is Outcome.FLASHED:
            split = ", ".join(f"{name} {value:.1f} s" for name, value in timings.steps.items())
            print(f"<== {job.identity.serial}: flashed in {seconds:.1f} s ({split})", flush=True)
            if station.label_out:
                label = labels.Label(job.identity.serial, job.identity.mac, image.board.name, image.version,
                                     credential, when)
                print(f"    label: {labels.write(station.label_out, label)}")
        else:
            print(f"<== {job.identity.serial}: FAILED ({outcome.name.lower()}, exit {int(outcome)}): {detail}",
                  flush=True)
            if first_failure is Outcome.FLASHED:
                first_failure = outcome
    return first_failure
