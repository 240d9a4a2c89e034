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

from pbxfw.errors import ConfigError

HEADER_VERSION = 1
SERVICE_STATES = ("enabled", "disabled", "masked")
# How `pbxfw flash` writes the image with the board's U-Boot: `gzwrite` inflates one
# compressed image onto the device; `raw` (a U-Boot built without gzwrite) sends the
# image's non-zero extents as they are and writes zero runs from a zeroed buffer.
FLASH_WRITES = ("gzwrite", "raw")

# Schema: a key maps to a type, a nested schema, or ANY_KEY for free-form mappings
# whose values must have the given type (package and service tables).
ANY_KEY = "*"
Schema = dict[str, Any]
SCHEMA: Schema = {
    "header": {"version": int, "includes": list},
    "board": {
        "name": str,
        "compatible": str,
        "arch": str,
        "kernel": {
            "flavour": str,
            "fit_arch": str,
            "compression": str,
            "load_address": str,
            "initramfs_modules": list,
            "rootfs_modules": list,
        },
        "console": str,
        "storage": {
            "uboot_interface": str,
            "uboot_device": int,
            "linux_partition_prefix": str,
        },
        "partitions": {ANY_KEY: int},
        "uboot": {
            "binary": str,
            "scratch_address": str,
            "fit_address": str,
            "boot_attempts": int,
            "version_match": str,
            "transfer_address": str,
            "verify_address": str,
            "flash_write": str,
        },
        "qemu": {"binary": str, "machine": str, "cpu": str, "memory_mib": int},
    },
    "debian": {"suite": str, "mirror": str, "security_mirror": str, "components": list},
    "packages": {ANY_KEY: bool},
    "services": {ANY_KEY: str},
    "overlays": list,
    "image": {"hostname": str, "source_date_epoch": int, "agent": bool},
}

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
    flash_write: str  # one of FLASH_WRITES


@dataclass(frozen=True)
class Qemu:
    binary: str
    machine: str
    cpu: str
    memory_mib: int


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


def validate(data: dict[str, Any], path: Path, schema: Schema = SCHEMA, prefix: str = "") -> None:
    """Check one file's fragment: every key known, every value of the right type."""
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"{path}: key {dotted!r} must be a string")
        expected = schema.get(key, schema.get(ANY_KEY))
        if expected is None:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{path}: unknown key '{dotted}' (known here: {known})")
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: '{dotted}' must be a mapping, got {type(value).__name__}")
            validate(value, path, expected, f"{dotted}.")
        elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{path}: '{dotted}' must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )


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
    for name in PARTITIONS:
        if partitions[name] <= 0:
            raise ConfigError(f"{where(f'board.partitions.{name}')}: board.partitions.{name} must be > 0 MiB")

    def address(key: str) -> int:
        text = req(key)
        if not re.fullmatch(r"0x[0-9a-fA-F]+", text):
            raise ConfigError(f"{where(key)}: {key} must be a hex address like 0x48000000, got {text!r}")
        return int(text, 16)

    compression = req("board.kernel.compression")
    if compression not in ("gzip", "none"):
        raise ConfigError(f"{where('board.kernel.compression')}: board.kernel.compression must be gzip or none")
    uboot_binary = Path(req("board.uboot.binary"))
    if not uboot_binary.is_file():
        raise ConfigError(
            f"{where('board.uboot.binary')}: board.uboot.binary: {uboot_binary} does not exist "
            "(installed by `make setup` from Debian's u-boot-qemu)"
        )
    services = merged.get("services", {})
    for unit, state in services.items():
        if state not in SERVICE_STATES:
            raise ConfigError(
                f"{where(f'services.{unit}')}: services.{unit} must be one of "
                f"{', '.join(SERVICE_STATES)}, got {state!r}"
            )
    overlays = tuple(Path(p) for p in merged.get("overlays", []))
    for overlay in overlays:
        if not overlay.is_dir():
            raise ConfigError(f"{where('overlays')}: overlays: directory {overlay} does not exist")
    attempts = req("board.uboot.boot_attempts")
    if not 1 <= attempts <= 9:
        # The boot script compares attempts with U-Boot's decimal `test`; one digit keeps it exact.
        raise ConfigError(f"{where('board.uboot.boot_attempts')}: board.uboot.boot_attempts must be 1..9")

    version_match = req("board.uboot.version_match")
    try:
        re.compile(version_match)
    except re.error as exc:
        raise ConfigError(f"{where('board.uboot.version_match')}: board.uboot.version_match: {exc}") from None

    flash_write = req("board.uboot.flash_write")
    if flash_write not in FLASH_WRITES:
        raise ConfigError(f"{where('board.uboot.flash_write')}: board.uboot.flash_write must be one of "
                          f"{', '.join(FLASH_WRITES)} (gzwrite needs U-Boot's gzwrite command), got {flash_write!r}")

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
