"""The flashable disk image: GPT, boot partition, boot state, slots A and B, data."""

from __future__ import annotations

import os
from pathlib import Path

from pbxagent.update import bootstate

from pbxfw.config import BuildConfig
from pbxfw.errors import StageError
from pbxfw.image.layout import ENV_COPIES, ENV_SIZE, FACTORY_OFFSET, Layout, derived_uuid, sfdisk_script
from pbxfw.stages import run


def fw_env_configs(config: BuildConfig, layout: Layout) -> dict[str, str]:
    """libubootenv's views of the bootstate partition, by file name under /etc: the
    boot state (two copies = redundant environment) and the factory identity block."""
    device = f"{config.board.storage.linux_partition_prefix}{layout.get('bootstate').number}"
    state = ["# device  offset  size  (two lines: redundant copies, see pbxfw.image.bootscript)"]
    state += [f"{device} {offset:#x} {ENV_SIZE:#x}" for offset in ENV_COPIES]
    identity = ["# device  offset  size  (the production line's identity block, see pbxfw.production.factory)",
                f"{device} {FACTORY_OFFSET:#x} {ENV_SIZE:#x}"]
    return {"fw_env.config": "\n".join(state) + "\n", "fw_env.factory.config": "\n".join(identity) + "\n"}


def boot_state_image(config: BuildConfig, work: Path) -> bytes:
    """Both copies of the initial boot state, made by U-Boot's own mkenvimage."""
    text = work / "bootstate.txt"
    state = bootstate.initial(config.board.uboot.boot_attempts).to_env()
    text.write_text("".join(f"{k}={v}\n" for k, v in state.items()))
    image = work / "bootstate.env"
    run(["mkenvimage", "-r", "-s", hex(ENV_SIZE), "-o", image, text])
    copy = image.read_bytes()
    return copy * len(ENV_COPIES)


def boot_partition(config: BuildConfig, layout: Layout, boot_script: Path, dest: Path) -> None:
    part = layout.get("boot")
    dest.unlink(missing_ok=True)
    volume_id = derived_uuid(config.board.name, "boot-fat")[:8]
    run(["mkfs.vfat", "-C", "-n", "BOOT", "-i", volume_id, "--invariant", dest, str(part.size_bytes // 1024)],
        capture=True)
    os.utime(boot_script, (config.source_date_epoch, config.source_date_epoch))
    run(["mcopy", "-m", "-i", dest, boot_script, "::boot.scr"],
        env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))


def data_partition(config: BuildConfig, layout: Layout, dest: Path) -> None:
    part = layout.get("data")
    dest.unlink(missing_ok=True)
    fs_uuid = derived_uuid(config.board.name, "data-fs").lower()
    env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(config.source_date_epoch))
    run(["mkfs.ext4", "-q", "-F", "-L", "data", "-U", fs_uuid, "-E", f"hash_seed={fs_uuid}",
         dest, f"{part.size_bytes // 1024}k"], env=env)


def write_at(disk: Path, offset: int, payload: Path | bytes, limit: int, what: str) -> None:
    size = payload.stat().st_size if isinstance(payload, Path) else len(payload)
    if size > limit:
        raise StageError(f"{what} is {size} bytes but its partition holds {limit}")
    with disk.open("r+b") as out:
        out.seek(offset)
        if isinstance(payload, bytes):
            out.write(payload)
            return
        with payload.open("rb") as src:
            while chunk := src.read(1 << 20):
                if chunk.count(0) == len(chunk):
                    out.seek(len(chunk), os.SEEK_CUR)  # keep the image sparse
                else:
                    out.write(chunk)


def assemble(layout: Layout, disk: Path, parts: dict[str, Path | bytes]) -> None:
    disk.unlink(missing_ok=True)
    with disk.open("wb") as out:
        out.truncate(layout.disk_bytes)
    run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", disk], stdin=sfdisk_script(layout), capture=True)
    for name, payload in parts.items():
        part = layout.get(name)
        write_at(disk, part.offset, payload, part.size_bytes, f"{name} image")
