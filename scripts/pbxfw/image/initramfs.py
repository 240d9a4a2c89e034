"""A minimal initramfs, built natively as a deterministic cpio (newc) archive.

It holds the target's static busybox, the modules needed to reach the root slot, and
an init that mounts the slot read-only, puts volatile overlays on /etc and /var, and
switches to systemd. Entries are sorted, owned by root, stamped with
SOURCE_DATE_EPOCH and numbered in order, and the gzip header carries no time, so the
same inputs always give the same bytes.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

MODE_DIR = 0o040755
MODE_FILE = 0o100644
MODE_EXEC = 0o100755
MODE_LINK = 0o120777
MODE_CHAR = 0o020600


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int
    data: bytes = b""  # file contents or symlink target
    rdev: tuple[int, int] = (0, 0)


def _header(ino: int, entry: Entry, mtime: int, namesize: int, filesize: int) -> bytes:
    fields = (
        ino,
        entry.mode,
        0,  # uid
        0,  # gid
        2 if entry.mode == MODE_DIR else 1,
        mtime,
        filesize,
        0,  # dev major
        0,  # dev minor
        entry.rdev[0],
        entry.rdev[1],
        namesize,
        0,  # check
    )
    return b"070701" + b"".join(f"{value:08X}".encode() for value in fields)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def cpio(entries: list[Entry], mtime: int) -> bytes:
    """Serialise entries as a newc archive, parents first, in sorted order."""
    paths = [e.path for e in entries]
    if len(set(paths)) != len(paths):
        duplicates = sorted({p for p in paths if paths.count(p) > 1})
        raise ValueError(f"duplicate initramfs entries: {duplicates}")
    out = io.BytesIO()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        name = entry.path.encode() + b"\0"
        header = _header(ino, entry, mtime, len(name), len(entry.data))
        out.write(header + name + _pad(len(header) + len(name)))
        out.write(entry.data + _pad(len(entry.data)))
    trailer = b"TRAILER!!!\0"
    header = _header(0, Entry("", 0), 0, len(trailer), 0)
    out.write(header + trailer + _pad(len(header) + len(trailer)))
    return out.getvalue()


def compress(archive: bytes) -> bytes:
    return gzip.compress(archive, compresslevel=9, mtime=0)


def init_script() -> bytes:
    return (Path(__file__).parent / "data" / "init.sh").read_bytes()


def entries(busybox: bytes, modules: list[tuple[str, bytes]]) -> list[Entry]:
    """The archive's contents: layout, busybox, init, and modules in load order."""
    dirs = ["bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys"]
    result = [Entry(d, MODE_DIR) for d in dirs]
    result += [
        Entry("bin/busybox", MODE_EXEC, busybox),
        Entry("bin/sh", MODE_LINK, b"busybox"),
        Entry("init", MODE_EXEC, init_script()),
        Entry("dev/console", MODE_CHAR, rdev=(5, 1)),
        Entry("etc/modules", MODE_FILE, "".join(f"{name}\n" for name, _ in modules).encode()),
    ]
    result += [Entry(f"lib/modules/{name}", MODE_FILE, data) for name, data in modules]
    return result


def build(busybox: bytes, modules: list[tuple[str, bytes]], mtime: int) -> bytes:
    return compress(cpio(entries(busybox, modules), mtime))
