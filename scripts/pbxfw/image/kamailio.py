"""kamailio's core rebuilt from Debian's source, for a board whose Debian binary cannot
run TLS safely (`board.kamailio.memory_align`, docs/boards.md).

Debian's kamailio on 32-bit ARM gives OpenSSL shared memory aligned to 4 bytes (TLSF) or
does not start at all (q_malloc and f_malloc assume 16); OpenSSL's 64-bit atomics in that
memory then fault. kamailio's KSR_MEMORY_ALIGN build option sets q_malloc's and f_malloc's
alignment. Only the `kamailio` binary is rebuilt, from the locked source package (the
version of the locked binary, files checked against the lock), in a build root of the
board's suite with that suite's cross compiler and Debian's build flags for the board's
arch; Debian's modules are used as they are (core and modules check each other's compile
flags when they load). The build root is not locked yet: it is cached as a tarball, and
the binary by all its inputs (the root's tarball among them).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pbxfw.config import BuildConfig
from pbxfw.errors import StageError
from pbxfw.packages import archive
from pbxfw.packages.lock import Lock, LockedPackage
from pbxfw.stages import log, run


@dataclass(frozen=True)
class Cross:
    triplet: str  # the cross compiler's GNU triplet
    # kamailio's ARCH as Debian's own build has it (an armv7l buildd: "arm", which also sets
    # its lock flags), so that the core's compile flags match the modules'.
    kamailio_arch: str
    packages: tuple[str, ...]  # the suite's cross compiler and C library for it


CROSS = {"armhf": Cross("arm-linux-gnueabihf", "arm", ("gcc-arm-linux-gnueabihf", "libc6-dev-armhf-cross"))}
BINARY = "usr/sbin/kamailio"
DIVERTED = "/usr/sbin/kamailio.debian"
# The build root: the board's Debian suite for the build host, with the suite's own cross
# compiler and C library, so that the core gets the compiler, headers and dpkg-buildflags
# defaults Debian's buildds gave the modules (on 32-bit ARM Debian 13 builds with 64-bit
# time_t: a core from an older suite's toolchain disagrees with the modules on every
# struct that holds a time, and TLS handshakes fail).
BUILD_TOOLS = ("bison", "flex")  # beside the buildd variant's build-essential


def _cross(arch: str) -> Cross:
    if arch not in CROSS:
        raise StageError(f"board.kamailio.memory_align: no cross build of kamailio for {arch} "
                         f"(known: {', '.join(CROSS)})")
    return CROSS[arch]


@dataclass(frozen=True)
class BuildRoot:
    tarball: Path
    sha256: str  # of the tarball, recorded when it was made (it is ~600 MiB)


def build_root(config: BuildConfig, cache: Path) -> BuildRoot:
    """The build root as a tarball, from the suite's archive, cached by suite and contents."""
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    wanted = [*BUILD_TOOLS, *_cross(config.board.arch).packages]
    suites = archive.suites_for(config.debian)
    key = hashlib.sha256(json.dumps([[s.mirror, s.name] for s in suites] + [host, wanted]).encode()).hexdigest()[:16]
    tarball = cache / "kamailio-build" / f"{host}-{config.debian.suite}-{key}.tar"
    digest = tarball.with_name(f"{tarball.name}.sha256")
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_name(f"{tarball.stem}.partial.tar")
        log(f"    build root: {config.debian.suite} ({host}) with {', '.join(wanted)}, from the archive")
        run(["mmdebstrap", "--quiet", "--format=tar", "--variant=buildd", f"--architectures={host}",
             f"--include={','.join(wanted)}", config.debian.suite, partial,
             *(f"deb {s.mirror} {s.name} {' '.join(config.debian.components)}" for s in suites)])
        partial.rename(tarball)
        digest.unlink(missing_ok=True)
    if not digest.is_file():
        digest.write_text(archive.sha256_file(tarball) + "\n")
    return BuildRoot(tarball, digest.read_text().strip())


def _cache_key(config: BuildConfig, sources: list[LockedPackage], root: BuildRoot) -> str:
    """Everything the rebuilt binary depends on."""
    return hashlib.sha256(json.dumps({
        "sources": sorted(p.sha256 for p in sources), "align": config.board.kamailio.memory_align,
        "root": root.sha256, "epoch": config.source_date_epoch, "arch": _cross(config.board.arch).kamailio_arch,
    }).encode()).hexdigest()


def _compile(config: BuildConfig, dsc: LockedPackage, root: Path) -> Path:
    """Debian's rules file's own `make cfg` line, cross, with Debian's flags for the target
    arch and KSR_MEMORY_ALIGN; then the core alone, stripped as dh_strip does."""
    cross = _cross(config.board.arch)
    common = f"ARCH={cross.kamailio_arch} CC={cross.triplet}-gcc LIBDIR=lib/{cross.triplet}"
    # The files were checked against the lock's sha256, which came from the gpgv-checked
    # Sources index; the .dsc's own signature needs the uploader's key, which we do not have.
    script = f"""
cd /src; dpkg-source --no-check -x {Path(dsc.filename).name} tree >/dev/null; cd tree
export DEB_HOST_ARCH={config.board.arch}
make cfg quiet=silent prefix=/usr cfg_target=/etc/kamailio/ FLAVOUR=kamailio group_include=kstandard {common} \
    CC_EXTRA_OPTS="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS) -DVERSION_NODATE \
-DKSR_MEMORY_ALIGN={config.board.kamailio.memory_align}UL" LD_EXTRA_OPTS="$(dpkg-buildflags --get LDFLAGS)" >/dev/null
make -C src -j{os.cpu_count() or 1} quiet=silent {common} kamailio
{cross.triplet}-strip --remove-section=.comment --remove-section=.note src/kamailio
"""
    run(["chroot", root, "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", f"SOURCE_DATE_EPOCH={config.source_date_epoch}",
         "sh", "-ec", script], capture=True)
    return root / "src/tree/src/kamailio"


def core(config: BuildConfig, lock: Lock, cache: Path, work: Path) -> Path:
    """The rebuilt `kamailio` binary, from the cache or built into it."""
    sources = [p for p in lock.role("source") if p.name == "kamailio"]
    dsc = [p for p in sources if p.filename.endswith(".dsc")]
    if len(dsc) != 1:
        raise StageError("board.kamailio.memory_align is set, but the lock has no kamailio source package "
                         "(run `pbxfw lock --sources-only`)")
    root = build_root(config, cache)
    cached = cache / "kamailio-core" / _cache_key(config, sources, root) / "kamailio"
    if cached.is_file():
        log(f"    from the cache ({cached})")
        return cached
    tree = work / "kamailio-build"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "src").mkdir(parents=True)
    run(["tar", "--numeric-owner", "-xpf", root.tarball, "-C", tree])
    for package in sources:
        shutil.copyfile(archive.fetch(package, cache), tree / "src" / Path(package.filename).name)
    log(f"    {dsc[0].version}: core with KSR_MEMORY_ALIGN={config.board.kamailio.memory_align}, "
        f"{_cross(config.board.arch).triplet}-gcc from {config.debian.suite}")
    built = _compile(config, dsc[0], tree)
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, cached)
    shutil.rmtree(tree)
    return cached


def install(binary: Path, root: Path) -> None:
    """Put the rebuilt core in Debian's place, Debian's own diverted beside it, so dpkg
    knows whose file /usr/sbin/kamailio is."""
    run(["dpkg-divert", "--root", root, "--local", "--rename", "--divert", DIVERTED, "--add", f"/{BINARY}"],
        capture=True)
    shutil.copyfile(binary, root / BINARY)
    (root / BINARY).chmod(0o755)


def note(config: BuildConfig) -> str:
    """What the SBOM says of the rebuilt core."""
    return (f"/{BINARY} rebuilt from the source package with KSR_MEMORY_ALIGN={config.board.kamailio.memory_align}; "
            f"Debian's binary is diverted to {DIVERTED}")


def write_settings(config: BuildConfig, root: Path) -> None:
    """The board's allocator for kamailio.service (its EnvironmentFile)."""
    directory = root / "etc/default/kamailio.d"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pbxfw-board").write_text(
        "# Written by pbxfw from board.kamailio.memory_manager.\n"
        f"MEMORY_MANAGER={config.board.kamailio.memory_manager}\n")
