"""Production line: factory credentials, labels, and the U-Boot dialogue of `pbxfw
flash` against a scripted U-Boot (its failure paths; the real twin is flashed in
tests/device/test_flash.py)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import json
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import segno
from pbxagent.credentials.passwords import Account, Kind, check
from pbxfw.errors import PbxfwError
from pbxfw.image.layout import ENV_SIZE
from pbxfw.production import factory, flash, labels, staging
from pbxfw.production.station import Station, parse_batch, run_jobs

from tests.infra.power import free_port
from tests.unit.fake_uboot import FakeUBoot
from tests.unit.test_config import REPO

MAC = "52:54:00:12:34:56"
KEY = bytes(range(32))


def test_known_vector_and_the_derivation_is_hmac_of_the_mac() -> None:
    assert factory.parse_mac("52-54-00-12-34-56") == MAC
    first = hmac.new(KEY, b"pbxfw-factory-root-v1" + bytes.fromhex("525400123456") + bytes(4), hashlib.sha256)
    expected = factory.encode(first.digest())
    # Counter 0 gives the credential unless the policy refused it; for this vector it does not.
    # Pinned: a change of the derivation would give every labelled board a new credential.
    assert factory.credential(MAC, KEY) == expected == "36sZ-UkBP-NWmx-FmJs"


@pytest.mark.parametrize("mac", [MAC, "00:11:22:33:44:55", "aa:bb:cc:dd:ee:ff", "02:00:00:00:00:01"])
def test_credentials_are_typeable_policy_strong_and_share_nothing_with_the_mac(mac: str) -> None:
    for key in (KEY, None):
        credential = factory.credential(mac, key)
        groups = credential.split("-")
        assert [len(g) for g in groups] == [4, 4, 4, 4]
        assert set("".join(groups)) <= set(factory.ALPHABET) and not set("0O1lI") & set(credential)
        assert check(credential, Kind.ADMIN, Account(user="root")) == []
        digits = mac.replace(":", "")
        assert not any(digits[i:i + 4] in credential.lower() for i in range(9))
    assert factory.credential(mac, KEY) != factory.credential(mac, bytes(32))
    assert factory.credential(mac, None) != factory.credential(mac, None)


def test_bad_identity_and_key_inputs_are_named(tmp_path: Path) -> None:
    assert factory.parse_mac("52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"
    with pytest.raises(PbxfwError, match=r"--mac: '52:54:00' is not a MAC"):
        factory.parse_mac("52:54:00")
    with pytest.raises(PbxfwError, match=r"--serial: 'a b'"):
        factory.parse_serial("a b")
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 8)
    with pytest.raises(PbxfwError, match=r"--factory-key .*short.key: 8 bytes; .* at least 32"):
        factory.load_key(short)


def test_label_record_and_printable_label() -> None:
    label = labels.Label("U50-000123", MAC, "qemu-u50", "0.1.0", "ASmt-GTMk-6rGM-JoQ4", "2026-11-24T09:00:00Z")
    row = next(csv.DictReader([",".join(labels.FIELDS), labels.csv_record(label)]))
    assert row == {"serial": "U50-000123", "mac": MAC, "board": "qemu-u50", "firmware": "0.1.0",
                   "credential": "ASmt-GTMk-6rGM-JoQ4", "flashed_at": "2026-11-24T09:00:00Z"}
    svg = ET.fromstring(labels.svg(label))
    text = "".join(svg.itertext())
    for value in ("U50-000123", MAC, "0.1.0", "ASmt-GTMk-6rGM-JoQ4"):
        assert value in text
    dark = sum(sum(row) for row in segno.make(labels.qr_payload(label), error="m").matrix_iter(border=1))
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}g/{http://www.w3.org/2000/svg}rect")) == dark


def test_the_gzwrite_buffer_never_divides_the_image() -> None:
    for total in (825229312, 10 << 20, (4 << 20) - 512, 4 << 20, 12345 * 512):
        size = flash.gzwrite_buffer(total)
        assert size % 512 == 0 and total % size != 0 and size <= 4 << 20


def test_read_back_checksums_lay_the_identity_block_over_the_image(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    block = b"\xff" * 3000
    expected = bytearray(disk.read_bytes())
    expected[3000:6000] = block  # across the 4 KiB chunk boundary
    found = staging.regions(disk, {3000: block}, chunk=4096)
    assert [(r.lba, r.blocks) for r in found] == [(0, 8), (8, 8), (16, 8), (24, 8)]
    assert [r.crc32 for r in found] == [zlib.crc32(expected[i:i + 4096]) for i in range(0, 16384, 4096)]


def test_a_batch_file_with_a_bad_line_is_named(tmp_path: Path) -> None:
    batch = tmp_path / "boards.txt"
    batch.write_text("# port mac serial\nsocket://127.0.0.1:1 52:54:00:00:00:01 U50-1\n\n"
                     "socket://127.0.0.1:2 52:54:00:00:00:02 U50-2  # second\n")
    assert [job.identity.serial for job in parse_batch(batch)] == ["U50-1", "U50-2"]
    batch.write_text("socket://127.0.0.1:1 52:54:00 U50-1\n")
    with pytest.raises(PbxfwError, match=r"boards.txt:1: --mac"):
        parse_batch(batch)


def small_image(tmp_path: Path, board: str) -> staging.Image:
    """A small disk image with the board's layout start and a build manifest."""
    out = tmp_path / "out"
    out.mkdir()
    disk = out / "disk.img"
    disk.write_bytes(b"GPT" + bytes((24 << 20) - 6) + b"END")
    (out / "build.json").write_text(json.dumps({
        "sources": [str(REPO / f"board/{board}/board.yaml"), str(REPO / "recipes/base.yml"),
                    str(REPO / "recipes/pbx.yml")], "version": "0.1.0"}))
    return staging.load_image(disk)


@pytest.fixture
def image(tmp_path: Path) -> staging.Image:
    return small_image(tmp_path, "qemu-u50")  # gzwrite


@pytest.fixture
def station(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Station]:
    monkeypatch.setenv("PBXFW_TIMEOUT_SCALE", "0.02")
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    yield Station(tftp, None, tmp_path / "station.log", tmp_path / "labels.csv", tmp_path / "console.log")


def flash_fake(image: staging.Image, station: Station, fault: str = "",
               version: str = "aarch64-linux-gnu-gcc") -> tuple[flash.Outcome, FakeUBoot]:
    board = FakeUBoot(station.tftp_dir, image.size, version=version, fault=fault)
    try:
        job = flash.Job(board.url, factory.Identity(MAC, "U50-000123"))
        return run_jobs(image, [job], KEY, station), board
    finally:
        board.close()


def test_a_good_run_writes_image_and_identity_labels_and_logs_no_secret(image: staging.Image,
                                                                       station: Station) -> None:
    outcome, board = flash_fake(image, station)
    assert outcome is flash.Outcome.FLASHED
    written = bytes(board.disk)
    offset = staging.factory_offset(image.board)
    block = written[offset:offset + ENV_SIZE]
    assert written[:offset] == image.disk.read_bytes()[:offset] and written.endswith(b"END")
    assert b"PBX_SERIAL=U50-000123\x00PBX_MAC=" + MAC.encode() in block
    credential = factory.credential(MAC, KEY)
    (row,) = list(csv.DictReader(station.label_out.open()))  # type: ignore[union-attr]
    assert row["credential"] == credential and row["serial"] == "U50-000123"
    for record in (station.station_log, station.console_log):
        assert credential not in record.read_text()  # type: ignore[union-attr]
    assert "result=flashed code=0" in station.station_log.read_text()
    assert not list(station.tftp_dir.glob("*.factory")), "the identity block stays on the station"
    assert gzip.decompress((station.tftp_dir / f"pbxfw-{image.sha256[:16]}.img.gz").read_bytes()) == \
        image.disk.read_bytes()


def test_extents_cover_the_image_and_split_data_from_zeros(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"x" + bytes(4095) + bytes(3 * 4096) + b"y" * 4096 * 5 + bytes(100))
    found = staging.extents(disk, granule=4096, largest=3 * 4096)
    assert [(e.offset, e.length, e.zero) for e in found] == [
        (0, 4096, False), (4096, 3 * 4096, True), (4 * 4096, 3 * 4096, False), (7 * 4096, 2 * 4096, False),
        (9 * 4096, 100, True)]


def test_a_u_boot_without_gzwrite_gets_the_data_extents_and_zeros_from_ram(tmp_path: Path,
                                                                         station: Station) -> None:
    image = small_image(tmp_path, "qemu-u20")
    board = FakeUBoot(station.tftp_dir, image.size, version="arm-linux-gnueabihf-gcc (Debian) 12.2.0")
    board.disk[:] = b"\xff" * image.size  # what a used eMMC holds: every zero must be written
    try:
        job = flash.Job(board.url, factory.Identity(MAC, "U20-000001"))
        assert run_jobs(image, [job], KEY, station) is flash.Outcome.FLASHED
    finally:
        board.close()
    offset = staging.factory_offset(image.board)
    written, wanted = bytes(board.disk), image.disk.read_bytes()
    assert written[:offset] == wanted[:offset] and written[offset + ENV_SIZE:] == wanted[offset + ENV_SIZE:]
    sent = sorted(path.stat().st_size for path in station.tftp_dir.glob("*.raw"))
    assert sent == [1 << 20, 1 << 20] and not list(station.tftp_dir.glob("*.gz"))


@pytest.mark.parametrize(("fault", "version", "outcome"), [
    ("silent", "", flash.Outcome.UBOOT_NOT_REACHED),
    ("", "arm-linux-gnueabihf-gcc (Debian) 12.2.0", flash.Outcome.WRONG_BOARD),
    ("corrupt_tftp", "", flash.Outcome.TRANSFER_FAILED),
    ("flip_read", "", flash.Outcome.CHECKSUM_MISMATCH),
    ("no_boot", "", flash.Outcome.BOOT_CHECK_FAILED),
])
def test_each_failure_has_its_own_code_and_is_never_labelled(image: staging.Image, station: Station,
                                                            fault: str, version: str,
                                                            outcome: flash.Outcome) -> None:
    result, _ = flash_fake(image, station, fault, version or "aarch64-linux-gnu-gcc")
    assert result is outcome
    assert not station.label_out.exists()  # type: ignore[union-attr]
    assert f"result={outcome.name.lower()} code={int(outcome)}" in station.station_log.read_text()


def test_no_console_is_its_own_failure(image: staging.Image, station: Station) -> None:
    job = flash.Job(f"socket://127.0.0.1:{free_port()}", factory.Identity(MAC, "U50-000124"))
    assert run_jobs(image, [job], None, station) is flash.Outcome.NO_CONSOLE
    assert not station.label_out.exists()  # type: ignore[union-attr]


def test_a_batch_goes_on_after_a_failure_and_reports_the_first(image: staging.Image, station: Station) -> None:
    boards = [FakeUBoot(station.tftp_dir, image.size, fault="flip_read"), FakeUBoot(station.tftp_dir, image.size)]
    try:
        jobs = [flash.Job(board.url, factory.Identity(f"52:54:00:00:00:0{n}", f"U50-B{n}"))
                for n, board in enumerate(boards, 1)]
        assert run_jobs(image, jobs, KEY, station) is flash.Outcome.CHECKSUM_MISMATCH
    finally:
        for board in boards:
            board.close()
    assert [row["serial"] for row in csv.DictReader(station.label_out.open())] == ["U50-B2"]  # type: ignore[union-attr]
    results = [line.split(" result=")[1].split()[0] for line in station.station_log.read_text().splitlines()]
    assert results == ["checksum_mismatch", "flashed"]


def test_dry_run_shows_the_plan_and_touches_nothing(image: staging.Image, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from pbxfw.cli import main as cli

    argv = ["flash", "--image", str(image.disk), "--port", "socket://127.0.0.1:1", "--mac", MAC, "--serial", "U50-1",
            "--tftp-dir", str(tmp_path / "none"), "--station-log", str(tmp_path / "station.log")]
    assert cli.main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "board 1/1: serial U50-1" in plan and "gzwrite virtio 0" in plan and "random (OS CSPRNG)" in plan
    assert not (tmp_path / "station.log").exists()
    assert cli.main(argv) == 2
    assert "--tftp-dir" in capsys.readouterr().err
