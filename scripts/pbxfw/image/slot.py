"""The slot image: a read-only squashfs root followed by a FIT with kernel and initramfs.

U-Boot cannot read squashfs, so the kernel does not live inside the file system: it
sits right after it (at the squashfs length rounded up to 4 KiB) as a FIT whose
images carry sha256 hashes that `bootm` checks. The pair is one file, written to one
partition, so kernel and root file system always update together.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from pbxfw.config import BuildConfig
from pbxfw.image.bootscript import FIT_CONFIG, FIT_RAMDISK
from pbxfw.stages import run

ALIGN = 4096
SQUASHFS_MAGIC = b"hsqs"


def fit_offset(head: bytes) -> int:
    """Where the FIT starts in a slot image beginning with `head` (at least 0x30 bytes):
    the squashfs length (bytes_used, little-endian u64 at 0x28) rounded up to ALIGN."""
    if head[:4] != SQUASHFS_MAGIC:
        raise ValueError("the slot image does not start with a squashfs")
    used = int.from_bytes(head[0x28:0x30], "little")
    return -(-used // ALIGN) * ALIGN


def fit_source(config: BuildConfig, kernel: Path, initramfs: Path) -> str:
    k = config.board.kernel
    return f"""/dts-v1/;
/ {{
    description = "pbxfw {config.board.name} kernel and initramfs";
    #address-cells = <1>;
    images {{
        kernel-1 {{
            description = "Linux";
            data = /incbin/("{kernel}");
            type = "kernel";
            arch = "{k.fit_arch}";
            os = "linux";
            compression = "{k.compression}";
            load = <{k.load_address:#x}>;
            entry = <{k.load_address:#x}>;
            hash-1 {{ algo = "sha256"; }};
        }};
        {FIT_RAMDISK} {{
            description = "pbxfw initramfs";
            data = /incbin/("{initramfs}");
            type = "ramdisk";
            arch = "{k.fit_arch}";
            os = "linux";
            compression = "none";
            hash-1 {{ algo = "sha256"; }};
        }};
    }};
    configurations {{
        default = "{FIT_CONFIG}";
        {FIT_CONFIG} {{
            kernel = "kernel-1";
            ramdisk = "{FIT_RAMDISK}";
        }};
    }};
}};
"""


def build_fit(config: BuildConfig, kernel_image: Path, initramfs: Path, work: Path) -> Path:
    kernel = work / "kernel.bin"
    data = kernel_image.read_bytes()
    kernel.write_bytes(gzip.compress(data, 9, mtime=0) if config.board.kernel.compression == "gzip" else data)
    its = work / "slot.its"
    its.write_text(fit_source(config, kernel, initramfs))
    fit = work / "slot.fit"
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(config.source_date_epoch))
    run(["mkimage", "-f", its, fit], env=env, capture=True)
    return fit


def build_squashfs(config: BuildConfig, root: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    epoch = str(config.source_date_epoch)
    run([
        "mksquashfs", root, dest,
        "-noappend", "-comp", "zstd", "-Xcompression-level", "15", "-b", "256K",
        "-mkfs-time", epoch, "-all-time", epoch, "-quiet", "-no-progress",
    ])


def assemble(squashfs: Path, fit: Path, dest: Path) -> None:
    """squashfs, zero padding to 4 KiB, FIT: the layout the boot script expects."""
    with dest.open("wb") as out:
        data = squashfs.read_bytes()
        out.write(data)
        out.write(b"\0" * (-len(data) % ALIGN))
        out.write(fit.read_bytes())

