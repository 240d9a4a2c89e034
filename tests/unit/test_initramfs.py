"""The initramfs archive is deterministic and readable by the real cpio tool."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pbxfw.image import initramfs

MODULES = [("virtio_blk.ko", b"\x7fELF-virtio"), ("squashfs.ko", b"\x7fELF-squashfs")]


def test_same_inputs_same_bytes() -> None:
    assert initramfs.build(b"busybox", MODULES, 1793491200) == initramfs.build(b"busybox", MODULES, 1793491200)


def test_gzip_header_carries_no_time() -> None:
    archive = initramfs.build(b"busybox", MODULES, 1793491200)
    assert archive[4:8] == b"\0\0\0\0"


def test_real_cpio_lists_and_extracts_it(tmp_path: Path) -> None:
    raw = gzip.decompress(initramfs.build(b"busybox-binary", MODULES, 1793491200))
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=raw, capture_output=True, check=True).stdout.decode()
    names = [line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.splitlines()]
    assert names == sorted(names)
    assert {"init", "bin/busybox", "bin/sh", "etc/modules", "lib/modules/virtio_blk.ko", "dev/console"} <= set(names)
    subprocess.run(["cpio", "-i", "--quiet", "--preserve-modification-time", "-D", str(tmp_path)], input=raw,
                   check=True)
    assert (tmp_path / "init").stat().st_mtime == 1793491200
    assert (tmp_path / "bin/busybox").read_bytes() == b"busybox-binary"
    out = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "etc/modules"], input=raw, capture_output=True,
                         check=True).stdout
    # Load order is kept: the init script loads them line by line.
    assert out == b"virtio_blk.ko\nsquashfs.ko\n"


def test_duplicate_entries_are_refused() -> None:
    entry = initramfs.Entry("etc", initramfs.MODE_DIR)
    with pytest.raises(ValueError, match="duplicate"):
        initramfs.cpio([entry, entry], 0)


@given(st.permutations(range(5)))
def test_entry_order_does_not_matter(order: list[int]) -> None:
    entries = [initramfs.Entry(f"f{i}", initramfs.MODE_FILE, bytes([i]) * i) for i in range(5)]
    assert initramfs.cpio([entries[i] for i in order], 7) == initramfs.cpio(entries, 7)
