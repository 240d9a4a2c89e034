"""Module selection for the initramfs: dependencies first, built-ins skipped."""

from __future__ import annotations

import pytest
from pbxfw.errors import StageError
from pbxfw.image import kernel

DEP = """\
kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz kernel/lib/crc16.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/fs/mbcache.ko.xz:
kernel/lib/crc16.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
"""


def test_dependencies_come_first() -> None:
    order = kernel.load_order(["ext4", "virtio_blk"], kernel.parse_modules_dep(DEP), set())
    assert order.index("kernel/fs/jbd2/jbd2.ko.xz") < order.index("kernel/fs/ext4/ext4.ko.xz")
    assert order.index("kernel/lib/crc16.ko.xz") < order.index("kernel/fs/ext4/ext4.ko.xz")
    assert order[-1] == "kernel/drivers/block/virtio_blk.ko.xz"
    assert len(order) == len(set(order)) == 5


def test_builtin_modules_are_skipped() -> None:
    order = kernel.load_order(["virtio_pci", "overlay"], kernel.parse_modules_dep(DEP), {"virtio_pci"})
    assert order == ["kernel/fs/overlayfs/overlay.ko.xz"]


def test_unknown_module_is_an_error() -> None:
    with pytest.raises(StageError, match=r"'squashfs' is neither built in nor in modules\.dep"):
        kernel.load_order(["squashfs"], kernel.parse_modules_dep(DEP), set())


def test_module_names_normalise_dashes() -> None:
    assert kernel.module_name("kernel/drivers/net/virtio-net.ko.zst") == "virtio_net"
