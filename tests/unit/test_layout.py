"""Partition layout maths and the GPT script given to sfdisk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pbxfw.image import layout

SIZES = (("boot", 16), ("bootstate", 1), ("rootfs_a", 256), ("rootfs_b", 256), ("data", 256))


def test_partitions_are_aligned_back_to_back() -> None:
    lay = layout.compute("qemu-u50", "arm64", SIZES)
    assert lay.partitions[0].start == layout.ALIGN_SECTORS
    for before, after in zip(lay.partitions, lay.partitions[1:], strict=False):
        assert after.start == before.start + before.size
    for part in lay.partitions:
        assert part.start % layout.ALIGN_SECTORS == 0
        assert part.size_bytes == dict(SIZES)[part.name] * layout.MIB
    last = lay.partitions[-1]
    # 1 MiB of slack after the last partition for the backup GPT (33 sectors).
    assert lay.disk_sectors - (last.start + last.size) == layout.ALIGN_SECTORS
    assert [p.number for p in lay.partitions] == [1, 2, 3, 4, 5]


def test_ids_are_derived_from_the_board() -> None:
    a = layout.compute("qemu-u50", "arm64", SIZES)
    b = layout.compute("qemu-u50", "arm64", SIZES)
    c = layout.compute("qemu-u20", "armhf", SIZES)
    assert a == b
    assert a.disk_guid != c.disk_guid
    assert len({p.guid for p in a.partitions}) == len(a.partitions)


def test_bad_sizes_and_arches_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 MiB"):
        layout.compute("x", "arm64", (("boot", 0),))
    with pytest.raises(ValueError, match="riscv64"):
        layout.compute("x", "riscv64", SIZES)


def test_sfdisk_creates_the_computed_table(tmp_path: Path) -> None:
    lay = layout.compute("qemu-u50", "arm64", SIZES)
    disk = tmp_path / "disk.img"
    with disk.open("wb") as handle:
        handle.truncate(lay.disk_bytes)
    subprocess.run(["sfdisk", "--quiet", str(disk)], input=layout.sfdisk_script(lay), text=True, check=True)
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["id"] == lay.disk_guid
    for got, want in zip(table["partitions"], lay.partitions, strict=True):
        assert (got["start"], got["size"], got["name"], got["uuid"]) == (want.start, want.size, want.name, want.guid)
        assert got["type"] == want.type_guid
    assert table["partitions"][0].get("attrs") == "LegacyBIOSBootable"
