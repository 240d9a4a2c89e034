"""Twin disks on the host with the real qemu-img and qemu-io: the credential seeded into
a copy-on-write layer (only its hash, and the built image untouched), and a snapshot
used only while it is the one of this image, readable and holding its VM state."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pbxagent.credentials import xcrypt
from pbxfw import config, devtwin
from pbxfw.config import Board
from pbxfw.image import layout

from tests.infra import boards

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def board() -> Board:
    return config.load(config.board_spec(REPO, "qemu-u50", "recipes/pbx.yml")).board


def stand_in(path: Path, size: int) -> Path:
    """A sparse stand-in for the built disk, with one byte set."""
    with path.open("wb") as out:
        out.truncate(size)
        out.write(b"x")
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return stand_in(tmp_path / "disk.img", 1 << 20)


def read_file_in_data(board: Board, disk: Path, rel: str, work: Path) -> str:
    raw = work / "flat.img"
    subprocess.run(["qemu-img", "convert", "-O", "raw", disk, raw], check=True)
    part = layout.for_board(board).get("data")
    data = work / "data.ext4"
    subprocess.run(["dd", f"if={raw}", f"of={data}", "bs=1M", f"skip={part.offset >> 20}",
                    f"count={part.size_bytes >> 20}", "status=none"], check=True)
    return subprocess.run(["debugfs", "-R", f"cat {rel}", data], check=True, capture_output=True,
                          text=True).stdout


def test_the_credential_goes_into_the_layer_as_a_hash_only(board: Board, tmp_path: Path) -> None:
    image = stand_in(tmp_path / "disk.img", layout.for_board(board).disk_bytes)
    before = image.read_bytes()[:1 << 20]
    disk = devtwin.layer(image, tmp_path / "twin.qcow2")
    devtwin.seed_root_credential(board, disk, "Correct-Horse-42!", tmp_path)
    stored = read_file_in_data(board, disk, devtwin.ROOT_HASH, tmp_path).strip()
    assert stored.startswith("$6$") and "Correct-Horse-42!" not in stored
    assert xcrypt.matches_any(["Correct-Horse-42!"], stored)
    assert not xcrypt.matches_any(["Correct-Horse-43!"], stored)
    assert image.read_bytes()[:1 << 20] == before  # the built image is never written


def saved(board: Board, image: Path, tmp_path: Path, name: str = devtwin.SNAPSHOT) -> devtwin.Snapshot:
    """A layer with a (disk-only) internal snapshot, recorded as the image's."""
    disk = devtwin.layer(image, tmp_path / "booted.qcow2")
    subprocess.run(["qemu-img", "snapshot", "-c", name, disk], check=True)
    log = tmp_path / "boot.log"
    log.write_text("U-Boot 2023.01\n")
    return devtwin.record_snapshot(board, image, disk, "pw-of-the-twin", log)


def test_a_recorded_snapshot_is_found_with_its_password(board: Board, image: Path, tmp_path: Path) -> None:
    store = tmp_path / "snapshot" / f"{board.qemu.memory_mib}mib"
    assert devtwin.find_snapshot(board, image) == (None, f"no snapshot in {store}")
    made = saved(board, image, tmp_path)
    found, why = devtwin.find_snapshot(board, image)
    assert (found, why) == (made, "")
    assert found is not None and found.password == "pw-of-the-twin"
    assert found.console_log.read_text() == "U-Boot 2023.01\n"
    assert (store / "snapshot.json").stat().st_mode & 0o777 == 0o600


def test_a_snapshot_of_another_image_is_not_used(board: Board, image: Path, tmp_path: Path) -> None:
    saved(board, image, tmp_path)
    with image.open("r+b") as out:
        out.write(b"y")  # a rebuild
    found, why = devtwin.find_snapshot(board, image)
    assert found is None and "made from another image or machine" in why


def test_a_twin_with_other_ram_keeps_its_own_snapshot_beside_the_boards(board: Board, image: Path,
                                                                        tmp_path: Path) -> None:
    default = saved(board, image, tmp_path)
    smaller = boards.with_memory(board, 256)
    assert devtwin.find_snapshot(smaller, image)[0] is None
    (tmp_path / "other").mkdir()
    made = saved(smaller, image, tmp_path / "other")
    assert devtwin.find_snapshot(smaller, image) == (made, "")
    assert devtwin.find_snapshot(board, image) == (default, "")


def test_a_corrupted_layer_is_not_used(board: Board, image: Path, tmp_path: Path) -> None:
    made = saved(board, image, tmp_path)
    with made.layer.open("r+b") as out:
        out.seek(0)
        out.write(b"\0" * 64)  # the qcow2 header
    found, why = devtwin.find_snapshot(board, image)
    assert found is None and why.startswith(f"{made.layer}: corrupted")


def test_a_layer_without_the_machine_state_is_not_used(board: Board, image: Path, tmp_path: Path) -> None:
    made = saved(board, image, tmp_path, name="something-else")
    found, why = devtwin.find_snapshot(board, image)
    assert found is None and why == f"{made.layer}: holds no VM state named 'booted'"
