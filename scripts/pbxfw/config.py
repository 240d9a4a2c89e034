"""Resolve `board.yaml:recipe.yml` into one validated, typed build configuration.

The composition follows kas: files named on the command line are joined with ':',
each file may list `header.includes` (relative to itself), includes are merged first
and the including file after them, and later files win. Mappings merge key by key;
scalars and lists are replaced. Every file is checked against the schema on its own,
so an unknown key is reported with the file that wrote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pbxagent.settings import Setting, Surface, flatten

from pbxfw.errors import ConfigError

HEADER_VERSION = 1

# Every key a board or recipe file may set, declared once (pbxagent.settings): type,
# help, and the bounds a value must keep; `pbxfw show --settings` prints this list.
# Values that need the merged configuration (addresses, files, choices) are checked
# when it is built, naming the file that set them.
SETTINGS = Surface([
    Setting("header.version", int, "the file format", 1, 1),
    Setting("header.includes", list, "files merged before this one, relative to it"),
    Setting("board.name", str, "the board's name (board/<name>/)", 1, 64),
    Setting("board.compatible", str, "what an update bundle must name to be installed (e.g. pbxfw,qemu-u50)", 1, 128),
    Setting("board.arch", str, "Debian architecture (arm64, armhf)", 1, 16),
    Setting("board.kernel.flavour", str, "Debian kernel flavour: linux-image-<flavour>", 1, 64),
    Setting("board.kernel.fit_arch", str, "U-Boot's name for the architecture in the FIT"),
    Setting("board.kernel.compression", str, "the kernel in the FIT", choices=("gzip", "none")),
    Setting("board.kernel.load_address", str, "where U-Boot loads the kernel (hex)"),
    Setting("board.kernel.initramfs_modules", list, "modules the initramfs loads to reach the root"),
    Setting("board.kernel.rootfs_modules", list, "module trees (under kernel/) the slot ships"),
    Setting("board.console", str, "the serial console, as the kernel's console= names it"),
    Setting("board.storage.uboot_interface", str, "U-Boot's block interface for the boot device (mmc, virtio)"),
    Setting("board.storage.uboot_device", int, "U-Boot's device number on that interface", 0, 16),
    Setting("board.storage.linux_partition_prefix", str, "Linux's name of the device's partitions, without the "
            "number (/dev/mmcblk0p)"),
    Setting("board.partitions.*", int, "the size in MiB of each of boot, bootstate, rootfs_a, rootfs_b, data", 1,
            1 << 20),
    Setting("board.uboot.binary", str, "the U-Boot binary the twin boots"),
    Setting("board.uboot.scratch_address", str, "RAM the boot script reads boot state into (hex)"),
    Setting("board.uboot.fit_address", str, "RAM the FIT is read to (hex), below U-Boot on the smallest board"),
    # One digit: the boot script compares attempts with U-Boot's decimal `test`.
    Setting("board.uboot.boot_attempts", int, "boots a slot gets before U-Boot falls back", 1, 9),
    Setting("board.uboot.version_match", str, "pbxfw flash: a pattern U-Boot's `version` must match"),
    Setting("board.uboot.transfer_address", str, "pbxfw flash: RAM what the station sends goes to (hex)"),
    Setting("board.uboot.verify_address", str, "pbxfw flash: read-back buffer (hex), 64 MiB"),
    # gzwrite inflates one compressed image onto the device; raw (a U-Boot built without
    # gzwrite) sends the image's non-zero extents and writes zero runs from a zeroed buffer.
    Setting("board.uboot.flash_write", str, "pbxfw flash: how U-Boot writes the image",
            choices=("gzwrite", "raw")),
    # Debian's kamailio aligns its shared memory to 4 bytes on 32-bit ARM (TLSF) or will not
    # start there (q_malloc, f_malloc); OpenSSL's 64-bit atomics in that memory need 8.
    Setting("board.kamailio.memory_align", int, "0: Debian's kamailio binary; 8 or 16: its core rebuilt from "
            "the locked source with KSR_MEMORY_ALIGN set to this (docs/boards.md)", 0, 16),
    Setting("board.kamailio.memory_manager", str, "kamailio's allocator for shared and private memory (-x, -X)",
            choices=("tlsf", "qm", "fm")),
    Setting("board.qemu.binary", str, "the twin's QEMU system emulator"),
    Setting("board.qemu.machine", str, "the twin's QEMU machine"),
    Setting("board.qemu.cpu", str, "the twin's CPU"),
    Setting("board.qemu.memory_mib", int, "the twin's RAM in MiB", 64, 1 << 16),
    Setting("debian.suite", str, "Debian suite (trixie)"),
    Setting("debian.mirror", str, "the archive"),
    Setting("debian.security_mirror", str, "the security archive"),
    Setting("debian.components", list, "archive components"),
    Setting("packages.*", bool, "true: installed; false: kept out even where Debian's priorities would install it"),
    Setting("services.*", str, "a unit's state", choices=("enabled", "disabled", "masked")),
    Setting("overlays", list, "directories laid over the root, relative to the file naming them"),
    Setting("image.hostname", str, "the box's host name", 1, 63),
    Setting("image.source_date_epoch", int, "every timestamp in the image (reproducible builds)"),
    Setting("image.agent", bool, "install pbxagent"),
], ConfigError)

# The partition table every board must describe, in on-disk order.
PARTITIONS = ("boot", "bootstate", "rootfs_a", "rootfs_b", "data")


@dataclass(frozen=True)
class Kernel:
    flavour: str
    fit_arch: str  # U-Boot's name for the architecture in the FIT
    compression: str  # of the kernel image inside the FIT: gzip or none
    load_address: int
    initramfs_modules: tuple[str, ...]
    rootfs_modules: tuple[str, ...]


@dataclass(frozen=True)
class Storage:
    uboot_interface: str
    uboot_device: int
    linux_partition_prefix: str


@dataclass(frozen=True)
class UBoot:
    binary: Path
    scratch_address: int
    fit_address: int
    boot_attempts: int
    # `pbxfw flash`: a pattern the board's `version` output matches (another board's
    # image is refused), where the compressed image is loaded, and the read-back buffer.
    version_match: str
    transfer_address: int
    verify_address: int
    flash_write: str  # gzwrite | raw


@dataclass(frozen=True)
class Qemu:
    binary: str
    machine: str
    cpu: str
    memory_mib: int


@dataclass(frozen=True)
class Kamailio:
    memory_align: int  # 0: Debian's binary; else its core rebuilt with KSR_MEMORY_ALIGN=<n>
    memory_manager: str  # tlsf | qm | fm

    @property
    def rebuilt(self) -> bool:
        return self.memory_align != 0


@dataclass(frozen=True)
class Board:
    name: str
    compatible: str
    arch: str
    kernel: Kernel
    console: str
    storage: Storage
    partitions_mib: tuple[tuple[str, int], ...]
    uboot: UBoot
    qemu: Qemu
    kamailio: Kamailio


@dataclass(frozen=True)
class Debian:
    suite: str
    mirror: str
    security_mirror: str
    components: tuple[str, ...]


@dataclass(frozen=True)
class BuildConfig:
    sources: tuple[Path, ...]
    board: Board
    debian: Debian
    packages: tuple[str, ...]
    # `name: false`: kept out even where Debian's priorities would install it (apt).
    excluded: tuple[str, ...]
    services: tuple[tuple[str, str], ...]
    overlays: tuple[Path, ...]
    hostname: str
    source_date_epoch: int
    agent: bool


def board_spec(repo: Path, board: str, recipe: str) -> str:
    """The `board.yaml:recipe.yml` list for a board name and a recipe (itself `:`-joined)."""
    recipes = ":".join(str(repo / part) for part in recipe.split(":") if part)
    return f"{repo / 'board' / board / 'board.yaml'}:{recipes}"


def load(spec: str) -> BuildConfig:
    """Load a kas-style `a.yml:b.yml` specification into a validated configuration."""
    files = [Path(part) for part in spec.split(":") if part]
    if not files:
        raise ConfigError("no configuration files given (expected board.yaml:recipe.yml)")
    merged: dict[str, Any] = {}
    origins: dict[str, Path] = {}
    seen: list[Path] = []
    for path in files:
        _load_into(path, merged, origins, seen, stack=())
    return _build(merged, origins, tuple(seen))


def _load_into(
    path: Path,
    merged: dict[str, Any],
    origins: dict[str, Path],
    seen: list[Path],
    stack: tuple[Path, ...],
) -> None:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{path}: header.includes forms a cycle: {chain}")
    data = _read_yaml(path)
    validate(data, path)
    header = data.get("header", {})
    for include in header.get("includes", []):
        if not isinstance(include, str):
            raise ConfigError(f"{path}: header.includes: entries must be file names, got {include!r}")
        _load_into(path.parent / include, merged, origins, seen, (*stack, path))
    body = {k: v for k, v in data.items() if k != "header"}
    for overlay_index, overlay in enumerate(body.get("overlays", [])):
        # Overlay paths are relative to the file naming them, like includes.
        body["overlays"][overlay_index] = str((path.parent / overlay).resolve())
    merge(merged, body, origins, path)
    if path not in seen:
        seen.append(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    version = data.get("header", {}).get("version") if isinstance(data.get("header"), dict) else None
    if version != HEADER_VERSION:
        raise ConfigError(f"{path}: header.version must be {HEADER_VERSION}, got {version!r}")
    return data


def validate(data: dict[str, Any], path: Path) -> None:
    """Check one file's fragment: every key known, every value of the right type."""
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {key!r} must be a string")
    SETTINGS.check_all(path, flatten(data))


def merge(
    into: dict[str, Any], update: dict[str, Any], origins: dict[str, Path], path: Path, prefix: str = ""
) -> None:
    """Merge `update` into `into`: mappings key by key, everything else replaced."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}
            merge(into[key], value, origins, path, f"{dotted}.")
        else:
            into[key] = value
            origins[dotted] = path


def _require(merged: dict[str, Any], dotted: str, sources: tuple[Path, ...]) -> Any:
    node: Any = merged
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            names = ", ".join(str(s) for s in sources)
            raise ConfigError(f"required key '{dotted}' is not set by any of: {names}")
        node = node[part]
    return node


def _build(merged: dict[str, Any], origins: dict[str, Path], sources: tuple[Path, ...]) -> BuildConfig:
    def req(key: str) -> Any:
        return _require(merged, key, sources)

    def where(key: str) -> str:
        return str(origins.get(key, sources[-1]))

    partitions = req("board.partitions")
    missing = [name for name in PARTITIONS if name not in partitions]
    extra = [name for name in partitions if name not in PARTITIONS]
    if missing or extra:
        raise ConfigError(
            f"{where('board.partitions')}: board.partitions must name exactly "
            f"{', '.join(PARTITIONS)} (missing: {missing or 'none'}, unknown: {extra or 'none'})"
        )

    def address(key: str) -> int:
        text = req(key)
        if not re.fullmatch(r"0x[0-9a-fA-F]+", text):
            raise ConfigError(f"{where(key)}: {key} must be a hex address like 0x48000000, got {text!r}")
        return int(text, 16)

    compression = req("board.kernel.compression")
    uboot_binary = Path(req("board.uboot.binary"))
    if not uboot_binary.is_file():
        raise ConfigError(
            f"{where('board.uboot.binary')}: board.uboot.binary: {uboot_binary} does not exist "
            "(installed by `make setup` from Debian's u-boot-qemu)"
        )
    services = merged.get("services", {})
    overlays = tuple(Path(p) for p in merged.get("overlays", []))
    for overlay in overlays:
        if not overlay.is_dir():
            raise ConfigError(f"{where('overlays')}: overlays: directory {overlay} does not exist")
    attempts = req("board.uboot.boot_attempts")

    version_match = req("board.uboot.version_match")
    try:
        re.compile(version_match)
    except re.error as exc:
        raise ConfigError(f"{where('board.uboot.version_match')}: board.uboot.version_match: {exc}") from None

    flash_write = req("board.uboot.flash_write")

    kamailio_settings = merged.get("board", {}).get("kamailio", {})
    align = kamailio_settings.get("memory_align", 0)
    if align not in (0, 8, 16):
        raise ConfigError(f"{where('board.kamailio.memory_align')}: board.kamailio.memory_align must be 0 "
                          f"(Debian's binary), 8 or 16, got {align}")

    board = Board(
        name=req("board.name"),
        compatible=req("board.compatible"),
        arch=req("board.arch"),
        kernel=Kernel(
            flavour=req("board.kernel.flavour"),
            fit_arch=req("board.kernel.fit_arch"),
            compression=compression,
            load_address=address("board.kernel.load_address"),
            initramfs_modules=tuple(req("board.kernel.initramfs_modules")),
            rootfs_modules=tuple(req("board.kernel.rootfs_modules")),
        ),
        console=req("board.console"),
        storage=Storage(
            uboot_interface=req("board.storage.uboot_interface"),
            uboot_device=req("board.storage.uboot_device"),
            linux_partition_prefix=req("board.storage.linux_partition_prefix"),
        ),
        partitions_mib=tuple((name, partitions[name]) for name in PARTITIONS),
        uboot=UBoot(
            binary=uboot_binary,
            scratch_address=address("board.uboot.scratch_address"),
            fit_address=address("board.uboot.fit_address"),
            boot_attempts=attempts,
            version_match=version_match,
            transfer_address=address("board.uboot.transfer_address"),
            verify_address=address("board.uboot.verify_address"),
            flash_write=flash_write,
        ),
        qemu=Qemu(
            binary=req("board.qemu.binary"),
            machine=req("board.qemu.machine"),
            cpu=req("board.qemu.cpu"),
            memory_mib=req("board.qemu.memory_mib"),
        ),
        kamailio=Kamailio(memory_align=align, memory_manager=kamailio_settings.get("memory_manager", "tlsf")),
    )
    wanted = merged.get("packages", {})
    packages = tuple(sorted(name for name, on in wanted.items() if on))
    excluded = tuple(sorted(name for name, on in wanted.items() if not on))
    return BuildConfig(
        sources=sources,
        board=board,
        debian=Debian(
            suite=req("debian.suite"),
            mirror=req("debian.mirror"),
            security_mirror=req("debian.security_mirror"),
            components=tuple(req("debian.components")),
        ),
        packages=packages,
        excluded=excluded,
        services=tuple(sorted(services.items())),
        overlays=overlays,
        hostname=req("image.hostname"),
        source_date_epoch=req("image.source_date_epoch"),
        agent=bool(merged.get("image", {}).get("agent", True)),
    )
