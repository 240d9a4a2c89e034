"""Partition layout maths and the GPT description handed to sfdisk (pure functions).

Every partition starts on a 1 MiB boundary (eMMC erase blocks, SD allocation units)
and the disk ends with 1 MiB of slack for the backup GPT. GUIDs are derived from the
board name so two builds of the same board give the same table.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pbxfw.config import Board

SECTOR = 512
MIB = 1 << 20
ALIGN_SECTORS = MIB // SECTOR

# Redundant boot state: two copies, one after the other, at the start of `bootstate`.
ENV_SIZE = 0x4000
ENV_COPIES = (0, ENV_SIZE)
# The production line's identity block (pbxfw.production.factory), one more environment further
# on: no A/B boot state writer ever touches it.
FACTORY_OFFSET = 4 * ENV_SIZE

_NAMESPACE = uuid.UUID("6f1c1f8e-8a37-4bd5-9f0b-0a9c3f1d5e21")

# GPT partition types (UEFI spec, the Discoverable Partitions Specification and
# U-Boot's part_efi.h for the environment).
TYPE_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
TYPE_UBOOT_ENV = "3DE21764-95BD-54BD-A5C3-4ABE786F38A8"
TYPE_LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TYPE_ROOT = {
    "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    "armhf": "69DAD710-2CE4-4E3C-B16C-21A1D49ABED3",
}


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as Linux and U-Boot count
    name: str
    start: int  # sectors
    size: int  # sectors
    type_guid: str
    guid: str

    @property
    def offset(self) -> int:
        return self.start * SECTOR

    @property
    def size_bytes(self) -> int:
        return self.size * SECTOR


@dataclass(frozen=True)
class Layout:
    partitions: tuple[Partition, ...]
    disk_sectors: int
    disk_guid: str

    @property
    def disk_bytes(self) -> int:
        return self.disk_sectors * SECTOR

    def get(self, name: str) -> Partition:
        for partition in self.partitions:
            if partition.name == name:
                return partition
        raise KeyError(name)


def derived_uuid(board: str, what: str) -> str:
    """A stable UUID for `what` on `board` (same inputs, same ID)."""
    return str(uuid.uuid5(_NAMESPACE, f"{board}/{what}")).upper()


def _type_for(name: str, arch: str) -> str:
    if name == "boot":
        return TYPE_BASIC_DATA
    if name == "bootstate":
        return TYPE_UBOOT_ENV
    if name.startswith("rootfs_"):
        return TYPE_ROOT[arch]
    return TYPE_LINUX_DATA


def compute(board: str, arch: str, sizes_mib: tuple[tuple[str, int], ...]) -> Layout:
    """Place the partitions back to back on 1 MiB boundaries, starting at 1 MiB."""
    if arch not in TYPE_ROOT:
        raise ValueError(f"no GPT root partition type known for arch {arch!r}")
    start = ALIGN_SECTORS
    parts = []
    for number, (name, mib) in enumerate(sizes_mib, start=1):
        if mib <= 0:
            raise ValueError(f"partition {name} must be at least 1 MiB, got {mib}")
        size = mib * ALIGN_SECTORS
        parts.append(Partition(number, name, start, size, _type_for(name, arch), derived_uuid(board, name)))
        start += size
    return Layout(tuple(parts), start + ALIGN_SECTORS, derived_uuid(board, "disk"))


def for_board(board: Board) -> Layout:
    return compute(board.name, board.arch, board.partitions_mib)


def sfdisk_script(layout: Layout) -> str:
    """The table as an sfdisk script; the boot partition carries the legacy-bootable
    attribute because that is what U-Boot's distro boot scans for a boot script."""
    lines = ["label: gpt", f"label-id: {layout.disk_guid}", "unit: sectors", ""]
    for p in layout.partitions:
        attrs = ', attrs="LegacyBIOSBootable"' if p.name == "boot" else ""
        lines.append(
            f"start={p.start}, size={p.size}, type={p.type_guid}, uuid={p.guid}, name={p.name}{attrs}"
        )
    return "\n".join(lines) + "\n"
