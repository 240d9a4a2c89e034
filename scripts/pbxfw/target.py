"""A QEMU twin as a test target: a private copy of the disk, QEMU with its serial
console on a local TCP port (QEMU waits for us, so no early output is lost), and a
clean shutdown. A real board needs none of this: the tests open its port directly.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

from . import layout, qemu
from .config import Board
from .layout import Layout
from .stages import run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def private_disk(source: Path, dest: Path) -> Path:
    """A sparse copy of the built image: tests may write to it, the build stays pristine."""
    run(["cp", "--sparse=always", source, dest])
    return dest


def seed_data_partition(disk: Path, layout: Layout, files: dict[str, tuple[bytes, int]], work: Path) -> None:
    """Replace the data partition with one holding `files` ({path: (content, mode)}),
    the way the production line leaves the factory credential for the agent."""
    tree = work / "data-seed"
    if tree.exists():
        shutil.rmtree(tree)
    for rel, (content, mode) in files.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_bytes(content)
        path.chmod(mode)
    part = layout.get("data")
    image = work / "data-seed.ext4"
    image.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", "data", "-d", tree, image, f"{part.size_bytes // 1024}k"])
    run(["dd", f"if={image}", f"of={disk}", "bs=1M", f"seek={part.offset // (1 << 20)}", "conv=notrunc,sparse",
         "status=none"])


def crypt_hash(password: str) -> str:
    """SHA-512 crypt(3) hash, as /etc/shadow wants it (openssl: Python 3.13 lost `crypt`)."""
    return run(["openssl", "passwd", "-6", "-stdin"], stdin=password, capture=True).strip()


def prepare_disk(board: Board, built: Path, work: Path, password: str | None = None) -> tuple[Path, str]:
    """A private copy of the built disk with a root credential on its data partition,
    as the production line would leave it: only the hash goes to the device, the
    plaintext stays with the caller. Random unless `password` is given (an old box)."""
    disk = private_disk(built, work / "disk.img")
    password = password or secrets.token_urlsafe(18)
    disk_layout = layout.for_board(board)
    seed_data_partition(
        disk, disk_layout, {"pbx/credentials/root.hash": (crypt_hash(password).encode() + b"\n", 0o600)}, work
    )
    return disk, password


class QemuTarget:
    def __init__(self, board: Board, disk: Path, log: Path, mac: str = qemu.DEFAULT_MAC,
                 guestfwd: tuple[str, ...] = (), tftp: Path | None = None, netdev: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.board = board
        self.disk = disk
        self.mac = mac
        self.guestfwd = guestfwd
        self.tftp = tftp
        self.netdev = netdev
        self.extra = extra
        self.port = free_port()
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def console_url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = qemu.command(
            self.board, self.disk, serial=f"tcp:127.0.0.1:{self.port},server=on,wait=on", mac=self.mac,
            guestfwd=self.guestfwd, tftp=self.tftp, netdev=self.netdev, extra=self.extra
        )
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def power_cut(self) -> None:
        """Pull the plug: no shutdown, no flush inside the guest."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> QemuTarget:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
