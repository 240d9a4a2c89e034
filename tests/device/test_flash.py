"""The production line on a blank twin (empty disk, U-Boot only), driven by `pbxfw
flash` over the twin's serial console with the user network's TFTP server as the
station's: flashed, booted, factory credential taken, audit passes; a wrong image, a
corrupted transfer and a console that shows no U-Boot each fail with their own exit
code and no label."""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pbxfw.config import BuildConfig
from pbxfw.production import flash, staging

from tests.device.test_credentials import audit, failures
from tests.infra.power import QemuPower, Wiring
from tests.infra.twin import Device

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:fa:c7:01"


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The station: its TFTP directory, logs, labels and factory key."""
    path = tmp_path_factory.mktemp("station")
    (path / "tftp").mkdir()
    (path / "factory.key").write_bytes(secrets.token_bytes(32))
    return path


def blank_twin(cfg: BuildConfig, image: Path, work: Path, tftp: Path) -> QemuPower:
    disk = work / "blank.img"
    disk.unlink(missing_ok=True)
    with disk.open("wb") as out:
        out.truncate(image.stat().st_size)
    return QemuPower(cfg.board, disk, work, Wiring(mac=MAC, tftp=tftp), disk_format="raw")


def pbxfw_flash(station: Path, image: Path, port: str, serial: str, scale: str = "1") -> int:
    argv = [sys.executable, "-m", "pbxfw.cli.main", "flash", "--image", str(image), "--port", port, "--mac", MAC,
            "--serial", serial, "--factory-key", str(station / "factory.key"), "--tftp-dir", str(station / "tftp"),
            "--label-out", str(station / "labels.csv"), "--station-log", str(station / "station.log"),
            "--console-log", str(station / "console.log")]
    return subprocess.run(argv, env=dict(os.environ, PBXFW_TIMEOUT_SCALE=scale), check=False).returncode


def labelled(station: Path) -> list[dict[str, str]]:
    path = station / "labels.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def last_result(station: Path) -> str:
    return (station / "station.log").read_text().splitlines()[-1]


def test_a_blank_twin_is_flashed_and_comes_up_with_its_factory_credential(
    build_config: BuildConfig, out_dir: Path, station: Path, tmp_path: Path, twin_log: Path
) -> None:
    image = out_dir / "disk.img"
    with blank_twin(build_config, image, tmp_path, station / "tftp") as twin:
        assert pbxfw_flash(station, image, twin.console_url, "U50-FLASH-1") == flash.Outcome.FLASHED
        (label,) = labelled(station)
        assert (label["serial"], label["mac"]) == ("U50-FLASH-1", MAC)
        credential = label["credential"]
        assert "result=flashed code=0" in last_result(station)
        for record in ("station.log", "console.log"):
            assert credential not in (station / record).read_text(), f"the credential is in {record}"

        # The tool left the board at its login prompt: the credential works once, must change.
        dev = Device(twin.console_url, credential, twin_log)
        try:
            dev.console.login("root", credential, wake=True, new_password="Vq7#mT2-pLx9!Rk4")
            dev.check("systemctl is-system-running --wait >/dev/null || true", 180)
            identity = dev.check("fw_printenv -c /etc/fw_env.factory.config PBX_SERIAL PBX_MAC")
            assert f"PBX_SERIAL=U50-FLASH-1\nPBX_MAC={MAC}" in identity
            assert failures(audit(dev)) == []
            # The login demanded a new password, and the one root chose is kept.
            assert dev.check("pbxagent root status").strip() == "root: user-set"
        finally:
            dev.close()

        # The same board, now running Linux: the tool never sees U-Boot and says so.
        assert pbxfw_flash(station, image, twin.console_url, "U50-FLASH-1", scale="0.1") == \
            flash.Outcome.UBOOT_NOT_REACHED
    assert len(labelled(station)) == 1
    assert "result=uboot_not_reached code=32" in last_result(station)


def test_another_boards_image_is_refused_by_what_u_boot_says(
    build_config: BuildConfig, other_board: BuildConfig, out_dir: Path, station: Path, tmp_path: Path
) -> None:
    other = tmp_path / other_board.board.name
    other.mkdir()
    (other / "disk.img").symlink_to(out_dir / "disk.img")
    built = json.loads((out_dir / "build.json").read_text())
    built["sources"] = [str(REPO / f"board/{other_board.board.name}/board.yaml"), *built["sources"][1:]]
    (other / "build.json").write_text(json.dumps(built))
    before = len(labelled(station))
    with blank_twin(build_config, out_dir / "disk.img", tmp_path, station / "tftp") as twin:
        assert pbxfw_flash(station, other / "disk.img", twin.console_url, "U50-FLASH-2") == flash.Outcome.WRONG_BOARD
    assert len(labelled(station)) == before
    assert "result=wrong_board code=31" in last_result(station)


def test_a_corrupted_transfer_is_caught_before_anything_is_written(
    build_config: BuildConfig, out_dir: Path, station: Path, tmp_path: Path
) -> None:
    """The twin's TFTP server serves the first file the station sends (the gzipped image,
    or the raw image's first extent) with one byte changed."""
    image = staging.load_image(out_dir / "disk.img")
    served = tmp_path / "served"
    served.mkdir()
    staged = staging.stage(image, station / "tftp").files[0]
    data = bytearray((station / "tftp" / staged.name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (served / staged.name).write_bytes(bytes(data))
    before = len(labelled(station))
    twin = blank_twin(build_config, out_dir / "disk.img", tmp_path, served)
    with twin:
        assert pbxfw_flash(station, out_dir / "disk.img", twin.console_url, "U50-FLASH-3") == \
            flash.Outcome.TRANSFER_FAILED
    assert len(labelled(station)) == before
    assert "result=transfer_failed code=33" in last_result(station)
    with twin.disk.open("rb") as disk:
        assert not any(disk.read(1 << 20)), "the disk was written after a failed transfer"
