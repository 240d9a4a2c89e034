"""The station: boards one after another (`--batch` or one board), the station log,
labels, progress bars, and the plan `--dry-run` prints. Each board's flash itself is
`pbxfw.production.flash`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pbxfw.console import ConsoleError
from pbxfw.errors import PbxfwError
from pbxfw.image.layout import SECTOR
from pbxfw.production import factory
from pbxfw.production.flash import FlashFailed, Job, Outcome, Timings, flash_board
from pbxfw.production.staging import VERIFY_CHUNK, Image, extents, factory_offset, stage


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
