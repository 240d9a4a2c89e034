"""The package lock: the exact .debs an image is built from, committed next to the board.

`make lock` writes it (pbxfw.packages.resolver); every build reads only it. One line per package
so that a change of the archive shows up as a readable diff:

    # comments
    format 1
    suite trixie
    arch arm64
    request <sha256 of the requested package set>
    <role> <package> <version> <arch> <size> <sha256> <mirror> <pool path>

Roles: `root` is installed into the root file system; `bootstrap` is only used while
bootstrapping it; `kernel` and `initramfs` are unpacked on the host (the kernel image
and modules, busybox for the initramfs); `source` is one file (.dsc, upstream and Debian
tarballs) of a source package the build recompiles part of (pbxfw.image.kamailio), at
the version of its locked binary, with arch `source`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pbxfw.config import BuildConfig
from pbxfw.errors import PbxfwError
from pbxfw.packages.archive import Package

FORMAT = 1
ROLES = ("root", "bootstrap", "kernel", "initramfs", "source")
# Not kept in the image: mmdebstrap's eatmydata hook installs these for the bootstrap
# (dpkg without fsync, minutes faster under qemu-user) and removes them afterwards.
BOOTSTRAP_TOOLS = ("eatmydata", "libeatmydata1")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def base_set(excluded: tuple[str, ...]) -> tuple[str, ...]:
    """The apt patterns for the base: what mmdebstrap's minbase variant selects (the
    essential set, which to apt includes apt itself, and Priority: required), less the
    packages a recipe excludes. Part of the request, so that a change of rule asks for
    a new lock."""
    patterns = ("?essential", "?priority(required)")
    if not excluded:
        return patterns
    keep_out = ",".join(f"?not(?exact-name({name}))" for name in excluded)
    return tuple(f"?and({pattern},{keep_out})" for pattern in patterns)


@dataclass(frozen=True, kw_only=True)
class LockedPackage(Package):
    """An archive package and the part it plays in the image."""

    role: str

    @classmethod
    def of(cls, package: Package, role: str) -> LockedPackage:
        return cls(**{**vars(package), "depends": ""}, role=role)


@dataclass(frozen=True)
class Lock:
    suite: str
    arch: str
    request: str
    packages: tuple[LockedPackage, ...]

    def role(self, *roles: str) -> tuple[LockedPackage, ...]:
        return tuple(p for p in self.packages if p.role in roles)

    def one_version(self, name: str) -> str:
        """The locked version of the root package `name`."""
        found = [p.version for p in self.role("root") if p.name == name]
        if not found:
            raise PbxfwError(f"the lock installs no package {name}, which the board rebuilds from source")
        return found[0]

    def one(self, role: str) -> LockedPackage:
        found = self.role(role)
        if len(found) != 1:
            raise PbxfwError(f"the lock has {len(found)} '{role}' packages, expected one (run `make lock`)")
        return found[0]


def rebuilt_sources(config: BuildConfig) -> tuple[str, ...]:
    """The source packages the build recompiles part of, for this board."""
    return ("kamailio",) if config.board.kamailio.rebuilt else ()


def request_digest(config: BuildConfig) -> str:
    """What a lock answers: the suites, the arch, the kernel flavour and the package set."""
    material = {
        "suite": config.debian.suite,
        "mirrors": [config.debian.mirror, config.debian.security_mirror],
        "components": list(config.debian.components),
        "arch": config.board.arch,
        "kernel": config.board.kernel.flavour,
        "base": list(base_set(config.excluded)),
        "bootstrap": list(BOOTSTRAP_TOOLS),
        "packages": sorted(config.packages),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def to_text(lock: Lock, title: str) -> str:
    lines = [
        f"# pbxfw package lock: {title}",
        "# Written by `make lock`; builds use exactly these files. Do not edit by hand.",
        "# role package version arch size sha256 mirror path",
        f"format {FORMAT}",
        f"suite {lock.suite}",
        f"arch {lock.arch}",
        f"request {lock.request}",
    ]
    order = sorted(lock.packages, key=lambda p: (ROLES.index(p.role), p.name, p.filename))
    lines += [f"{p.role} {p.name} {p.version} {p.arch} {p.size} {p.sha256} {p.mirror} {p.filename}" for p in order]
    return "\n".join(lines) + "\n"


def parse(text: str, path: Path) -> Lock:
    """The lock in `text`; anything malformed is an error naming the file and line."""
    header: dict[str, str] = {}
    packages: list[LockedPackage] = []
    seen: set[tuple[str, str]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if fields[0] in ("format", "suite", "arch", "request"):
            if len(fields) != 2:
                raise PbxfwError(f"{where}: '{fields[0]}' takes one value")
            header[fields[0]] = fields[1]
            continue
        if fields[0] not in ROLES:
            raise PbxfwError(f"{where}: unknown entry '{fields[0]}' (expected format, suite, arch, request "
                             f"or a role: {', '.join(ROLES)})")
        if len(fields) != 8:
            raise PbxfwError(f"{where}: a package line has 8 fields (role package version arch size sha256 "
                             f"mirror path), this one has {len(fields)}")
        role, name, version, arch, size, sha256, mirror, filename = fields
        if not size.isdigit():
            raise PbxfwError(f"{where}: {name}: size '{size}' is not a number")
        if not _SHA256.fullmatch(sha256):
            raise PbxfwError(f"{where}: {name}: '{sha256}' is not a sha256")
        # A source package is several files, one line each.
        entry = (role, filename if role == "source" else name)
        if entry in seen:
            raise PbxfwError(f"{where}: {entry[1]} is locked twice as '{role}'")
        seen.add(entry)
        packages.append(LockedPackage(role=role, name=name, version=version, arch=arch, size=int(size), sha256=sha256,
                                      mirror=mirror, filename=filename))
    for key in ("format", "suite", "arch", "request"):
        if key not in header:
            raise PbxfwError(f"{path}: no '{key}' line")
    if header["format"] != str(FORMAT):
        raise PbxfwError(f"{path}: lock format {header['format']}, this pbxfw reads format {FORMAT}")
    return Lock(header["suite"], header["arch"], header["request"], tuple(packages))


def load(path: Path, config: BuildConfig) -> Lock:
    """The lock for `config`, refused when it was made for another package set."""
    if not path.is_file():
        raise PbxfwError(f"{path}: no package lock for this board and recipe (run `make lock`)")
    lock = parse(path.read_text(), path)
    if lock.request != request_digest(config) or lock.arch != config.board.arch:
        raise PbxfwError(f"{path}: made for another package set, suite or arch than "
                         f"{' + '.join(str(s) for s in config.sources)} (run `make lock`)")
    return lock


def changes(old: Lock | None, new: Lock) -> list[str]:
    """`package: old version -> new version` for every package added, removed or moved."""
    before = {(p.role, p.name): p.version for p in old.packages} if old else {}
    after = {(p.role, p.name): p.version for p in new.packages}
    moved = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    return [f"{name}: {before.get((role, name), '-')} -> {after.get((role, name), '-')}" for role, name in moved]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
