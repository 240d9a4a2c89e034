"""Disks for development and test twins: a copy-on-write layer over the built image with
a root credential seeded on its data partition, and booted snapshots of such a layer.

The built image never holds a credential. Like the production line, a twin gets only
the hash of one (on /data, where the agent takes it at first boot); the plaintext stays
with whoever made it. A snapshot is the layer of a twin that finished its first boot,
with the twin's RAM saved in it by QEMU's `savevm`: restoring it (`-loadvm`) is back at
a root shell in about a second. It is kept beside the image, keyed by the image's sha256
and everything else that went into it, and is used only while the key still matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pbxfw import qemu
from pbxfw.config import Board
from pbxfw.image import layout
from pbxfw.packages.archive import sha256_file
from pbxfw.production.factory import crypt_hash
from pbxfw.stages import run

ROOT_HASH = "pbx/credentials/root.hash"
SNAPSHOT = "booted"
# What a snapshot holds and how it was made; raise it when that changes.
SNAPSHOT_FORMAT = 1


def layer(image: Path, dest: Path) -> Path:
    """A qcow2 layer over the built image: every write of the twin lands in it."""
    dest.unlink(missing_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.resolve(), dest], capture=True)
    return dest


def seed_root_credential(board: Board, layer: Path, password: str, work: Path) -> None:
    """Replace the data partition in `layer` with one that holds only the hash of
    `password`, the way the production line leaves the factory credential."""
    tree = work / "data-seed"
    if tree.exists():
        shutil.rmtree(tree)
    hash_file = tree / ROOT_HASH
    hash_file.parent.mkdir(parents=True, mode=0o700)
    hash_file.write_text(crypt_hash(password) + "\n")
    hash_file.chmod(0o600)
    part = layout.for_board(board).get("data")
    image = work / "data-seed.ext4"
    image.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", "data", "-d", tree, image, f"{part.size_bytes // 1024}k"], capture=True)
    shutil.rmtree(tree)
    run(["qemu-io", "-f", "qcow2", "-c", f"write -q -s {image} {part.offset} {part.size_bytes}", layer], capture=True)
    image.unlink()


@dataclass(frozen=True)
class Snapshot:
    layer: Path
    password: str
    key: str

    @property
    def console_log(self) -> Path:
        """What the serial console showed from power-on to the saved shell."""
        return self.layer.with_name("console.log")


def snapshot_dir(board: Board, image: Path) -> Path:
    """One store per amount of RAM: a bench's smaller twin (`make bench-calls MEMORY=256`)
    keeps its own beside the board's default one instead of replacing it."""
    return image.parent / "snapshot" / f"{board.qemu.memory_mib}mib"


def _version(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size


@cache
def _image_sha256(path: Path, mtime_ns: int, size: int) -> str:
    """Once per version of the image (~0.8 GB): finding and recording a snapshot both need it."""
    return sha256_file(path)


def snapshot_key(board: Board, image: Path) -> str:
    """The image's sha256 and every input that shapes the saved machine."""
    inputs = {
        "format": SNAPSHOT_FORMAT,
        "image_sha256": _image_sha256(image.resolve(), *_version(image)),
        "uboot_sha256": sha256_file(board.uboot.binary),
        "machine": [board.qemu.binary, board.qemu.machine, board.qemu.cpu, board.qemu.memory_mib],
        "mac": qemu.DEFAULT_MAC,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def find_snapshot(board: Board, image: Path) -> tuple[Snapshot | None, str]:
    """The snapshot for this image, or None and why there is none usable."""
    store = snapshot_dir(board, image)
    meta_path = store / "snapshot.json"
    if not meta_path.is_file():
        return None, f"no snapshot in {store}"
    if shutil.which("qemu-img") is None:
        return None, "qemu-img is not installed (make setup)"
    try:
        meta = json.loads(meta_path.read_text())
        key, password, layer_path = str(meta["key"]), str(meta["password"]), store / str(meta["layer"])
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"{meta_path}: unreadable ({exc})"
    wanted = snapshot_key(board, image)
    if key != wanted:
        return None, f"{meta_path}: made from another image or machine (key {key[:12]}, this image {wanted[:12]})"
    if not (store / "console.log").is_file():
        return None, f"{store / 'console.log'}: missing (the boot's console log belongs to the snapshot)"
    check = subprocess.run(["qemu-img", "check", "-q", str(layer_path)], capture_output=True, text=True)
    if check.returncode != 0:
        return None, f"{layer_path}: corrupted ({(check.stderr or check.stdout).strip() or check.returncode})"
    listing = subprocess.run(["qemu-img", "snapshot", "-l", str(layer_path)], capture_output=True, text=True)
    if SNAPSHOT not in listing.stdout.split():
        return None, f"{layer_path}: holds no VM state named {SNAPSHOT!r}"
    return Snapshot(layer_path, password, key), ""


def record_snapshot(board: Board, image: Path, saved_layer: Path, password: str, console_log: Path) -> Snapshot:
    """Keep `saved_layer` (which holds the VM state) and the console log of its boot as
    this image's snapshot. The metadata goes last, so an interrupted store is never
    taken for a good one."""
    store = snapshot_dir(board, image)
    store.mkdir(parents=True, exist_ok=True)
    (store / "snapshot.json").unlink(missing_ok=True)
    dest = store / "booted.qcow2"
    shutil.move(saved_layer, dest)
    shutil.copyfile(console_log, store / "console.log")
    key = snapshot_key(board, image)
    meta = store / "snapshot.json.tmp"
    # The password of a development twin: it never leaves this build directory.
    meta.write_text(json.dumps({"key": key, "password": password, "layer": dest.name}) + "\n")
    meta.chmod(0o600)
    os.replace(meta, store / "snapshot.json")
    return Snapshot(dest, password, key)


def copy_snapshot(snapshot: Snapshot, dest: Path) -> Path:
    """A private copy to restore from: QEMU finds the VM state only in the top layer,
    and whatever the restored twin writes must not reach the snapshot."""
    dest.unlink(missing_ok=True)
    run(["cp", "--sparse=always", "--reflink=auto", snapshot.layer, dest], capture=True)
    return dest



@dataclass(frozen=True)
class Session:
    """A `make qemu` twin: its layer, root password, QEMU's extra arguments, and how it
    will come up (for the person at the terminal)."""

    disk: Path
    password: str
    extra: tuple[str, ...]
    how: str


def session(board: Board, image: Path, fresh: bool, password: str) -> Session:
    """Restore the image's snapshot when there is one and nothing asks otherwise (FRESH,
    a given password); else a new layer with a credential seeded for a real first boot.
    The layer keeps the built image as built; each session starts from it anew."""
    layer_path = image.with_name("qemu-session.qcow2")
    snapshot: Snapshot | None = None
    why = "FRESH=1" if fresh else "ROOT_PASSWORD given" if password else ""
    if not why:
        snapshot, why = find_snapshot(board, image)
    if snapshot is not None:
        copy_snapshot(snapshot, layer_path)
        return Session(layer_path, snapshot.password, ("-loadvm", SNAPSHOT),
                       "restored after its first boot at a root shell (press Enter)")
    password = password or secrets.token_urlsafe(12)
    layer(image, layer_path)
    with tempfile.TemporaryDirectory(prefix="pbxfw-qemu-") as work:
        seed_root_credential(board, layer_path, password, Path(work))
    return Session(layer_path, password, (), f"a real first boot ({why}); log in as root at `pbx login:`")
