"""Crash-safe file replacement: after a power cut a file holds its old or its new
content, never a mix, and a committed write survives."""

from __future__ import annotations

import os
from pathlib import Path


def write(path: Path, data: bytes | str, mode: int = 0o600, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` with `data` (write to a temporary file beside it, fsync, rename,
    fsync the directory so the rename itself is durable)."""
    payload = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Not tempfile.mkstemp: importing tempfile costs more than a boot-time write here.
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def update(path: Path, data: bytes | str, mode: int = 0o600, owner: tuple[int, int] | None = None) -> bool:
    """`write` only when the content differs (flash is not rewritten at every boot);
    whether it wrote."""
    payload = data.encode() if isinstance(data, str) else data
    try:
        if path.read_bytes() == payload:
            return False
    except FileNotFoundError:
        pass
    write(path, payload, mode, owner)
    return True


def remove(path: Path) -> None:
    """Delete `path` durably (missing is fine)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_leftovers(directory: Path) -> None:
    """Drop temporary files a power cut left behind (they never became the real file)."""
    if not directory.is_dir():
        return
    for leftover in directory.glob(".*.tmp"):
        if leftover.is_file():
            leftover.unlink()
