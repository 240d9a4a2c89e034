"""The image build, stage by stage: packages -> kernel -> rootfs -> sbom -> initramfs -> slot -> disk.

Outputs go to out/<board>/; downloads and the bootstrap cache go to the user's cache
directory (never the repository).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pbxagent.update.bootstate import SLOT_PARTITIONS

from pbxfw.config import BuildConfig
from pbxfw.errors import StageError
from pbxfw.image import bootscript, disk, initramfs, kamailio, kernel, layout, release, rootfs, sbom, slot
from pbxfw.packages import archive, localrepo
from pbxfw.packages import lock as locking
from pbxfw.stages import log, run, stage

REPO = Path(__file__).resolve().parents[3]


def cache_dir() -> Path:
    base = os.environ.get("PBXFW_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pbxfw"
    )
    return Path(base)


@dataclass(frozen=True)
class Outputs:
    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.img"

    @property
    def slot(self) -> Path:
        return self.directory / "rootfs.slot"

    @property
    def sbom(self) -> Path:
        return self.directory / "sbom.cdx.json"

    @property
    def manifest(self) -> Path:
        return self.directory / "build.json"


def busybox_binary(lock: locking.Lock, cache: Path, work: Path) -> bytes:
    package = lock.one("initramfs")
    dest = archive.unpack(package, cache, work / "busybox-static")
    for candidate in ("usr/bin/busybox", "bin/busybox"):
        if (dest / candidate).is_file():
            return (dest / candidate).read_bytes()
    raise StageError(f"{package.filename}: no busybox binary inside")


def build(config: BuildConfig, out: Path, lock_path: Path, trusted_keys: Path | None = None,
          fresh_bootstrap: bool = False, tuf_root: Path | None = None) -> Outputs:
    started = time.monotonic()
    out = out.resolve()
    outputs = Outputs(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    cache = cache_dir()
    board = config.board
    disk_layout = layout.for_board(board)
    rel = release.read(REPO)

    with stage(f"packages: the locked .debs ({lock_path}), from the cache or the archive"):
        lock = locking.load(lock_path, config)
        repo = localrepo.prepare(lock, cache)
        log(f"    {len(lock.packages)} packages checked against the lock; local repository {repo}")

    with stage("kernel: unpack Debian's package"):
        kernel_package = lock.one("kernel")
        log(f"    {kernel_package.name} {kernel_package.version}")
        unpacked = kernel.unpack(kernel_package, cache, work / "kernel")

    rebuilt_core = None
    if board.kamailio.rebuilt:
        with stage(f"kamailio: its core rebuilt from Debian's source (KSR_MEMORY_ALIGN="
                   f"{board.kamailio.memory_align})"):
            rebuilt_core = kamailio.core(config, lock, cache, work)

    with stage("rootfs: bootstrap with mmdebstrap"):
        tarball = rootfs.bootstrap(config, lock, repo, cache, fresh_into=work if fresh_bootstrap else None)

    root = work / "rootfs"
    with stage("rootfs: modules, overlay, agent, services, board files"):
        rootfs.unpack(tarball, root)
        kernel.install_modules(unpacked, root, board.kernel.rootfs_modules)
        rootfs.write_apt_sources(config, root)
        rootfs.apply_overlays(config, root)
        if config.agent:
            rootfs.install_agent(REPO / "agent", root, cache)
        rootfs.apply_services(config, root)
        kamailio.write_settings(config, root)
        if rebuilt_core:
            kamailio.install(rebuilt_core, root)
        prefix = board.storage.linux_partition_prefix
        rootfs.write_board_files(
            config,
            root,
            disk.fw_env_configs(config, disk_layout),
            rel,
            {slot: f"{prefix}{disk_layout.get(part).number}" for slot, part in SLOT_PARTITIONS.items()},
        )
        trusted = rootfs.install_trusted_keys(trusted_keys, root)
        log(f"    {trusted} trusted update key(s)" + ("" if trusted else ": this image will refuse every update"))
        anchor = rootfs.install_tuf_root(tuf_root, root)
        log(f"    release repository trust anchor: {anchor}")
        rootfs.remove_unshipped(root)
        rootfs.remove_machine_state(root)

    with stage("sbom: packages, licences, agent (CycloneDX)"):
        components = [
            *sbom.debian_components(root, config.debian.suite),
            sbom.kernel_component(kernel_package.name, kernel_package.version, board.arch, config.debian.suite),
            sbom.agent_component(rel.version),
            *sbom.python_components(root / "usr/lib/python3/dist-packages"),
            *([sbom.rebuilt_component("kamailio", lock.one_version("kamailio"), config.debian.suite,
                                      kamailio.note(config))] if rebuilt_core else []),
        ]
        bom = json.dumps(sbom.document(board.name, rel.version, config.source_date_epoch, components,
                                       {"pbxfw:debian-suite": config.debian.suite, "pbxfw:board": board.name,
                                        "pbxfw:lock-sha256": locking.digest(lock_path)}),
                         indent=1, sort_keys=True) + "\n"
        (root / "usr/share/pbxfw").mkdir(parents=True, exist_ok=True)
        (root / "usr/share/pbxfw/sbom.cdx.json").write_text(bom)
        outputs.sbom.write_text(bom)
        log(f"    {len(components)} components")

    with stage("initramfs: busybox-static and modules, as a deterministic cpio"):
        modules = kernel.initramfs_modules(unpacked, list(board.kernel.initramfs_modules))
        initrd = work / "initrd.img"
        initrd.write_bytes(initramfs.build(busybox_binary(lock, cache, work), modules, config.source_date_epoch))
        log(f"    {len(modules)} modules, {initrd.stat().st_size // 1024} KiB")

    with stage("slot: squashfs root + FIT (kernel, initramfs)"):
        squashfs = work / "rootfs.squashfs"
        slot.build_squashfs(config, root, squashfs)
        fit = slot.build_fit(config, unpacked.image, initrd, work)
        slot.assemble(squashfs, fit, outputs.slot)
        log(f"    slot image {outputs.slot.stat().st_size / 2**20:.1f} MiB")

    with stage("disk: boot script, boot state, partitions"):
        script = work / "boot.cmd"
        script.write_text(bootscript.script(board, disk_layout))
        scr = work / "boot.scr"
        run(["mkimage", "-q", "-A", board.kernel.fit_arch, "-T", "script", "-C", "none", "-n", "pbxfw A/B",
             "-d", script, scr], env=dict(os.environ, SOURCE_DATE_EPOCH=str(config.source_date_epoch)))
        boot = work / "boot.vfat"
        disk.boot_partition(config, disk_layout, scr, boot)
        data = work / "data.ext4"
        disk.data_partition(config, disk_layout, data)
        disk.assemble(
            disk_layout,
            outputs.disk,
            {
                "boot": boot,
                "bootstate": disk.boot_state_image(config, work),
                "rootfs_a": outputs.slot,
                "rootfs_b": outputs.slot,
                "data": data,
            },
        )
        outputs.manifest.write_text(json.dumps({
            "board": board.name,
            "version": rel.version,
            "security_version": rel.security_version,
            "compatible": board.compatible,
            "kernel": f"{kernel_package.name} {kernel_package.version}",
            "sources": [str(s) for s in config.sources],
            "slot_bytes": outputs.slot.stat().st_size,
            "disk_bytes": outputs.disk.stat().st_size,
        }, indent=2) + "\n")
    log(f"image ready: {outputs.disk} ({time.monotonic() - started:.0f} s)")
    return outputs
