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
from pbxfw.packages.lock import Lock
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
BUILD_TOOLS = ("bison", "flex", "dpkg-dev", "make")


def _cross(arch: str) -> Cross:
    if arch not in CROSS:
        raise StageError(f"board.kamailio.memory_align: no cross build of kamailio for {arch} "
                         f"(known: {', '.join(CROSS)})")
    return CROSS[arch]


def build_root(config: BuildConfig, cache: Path) -> Path:
    """A tarball of the build root, from the suite's archive (cached by suite and contents)."""
    host = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    wanted = [*BUILD_TOOLS, *_cross(config.board.arch).packages]
    key = hashlib.sha256(json.dumps([config.debian.suite, config.debian.mirror, config.debian.security_mirror,
                                     host, wanted]).encode()).hexdigest()[:16]
    tarball = cache / "kamailio-build" / f"{host}-{config.debian.suite}-{key}.tar"
    if tarball.is_file():
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_name(f"{tarball.stem}.partial.tar")
    suite = config.debian.suite
    log(f"    build root: {suite} ({host}) with {', '.join(wanted)}, from the archive")
    run(["mmdebstrap", "--quiet", "--format=tar", "--variant=buildd", f"--architectures={host}",
         f"--include={','.join(wanted)}", suite, partial,
         f"deb {config.debian.mirror} {suite} main", f"deb {config.debian.mirror} {suite}-updates main",
         f"deb {config.debian.security_mirror} {suite}-security main"])
    partial.rename(tarball)
    return tarball


def _in_root(root: Path, script: str, epoch: int) -> None:
    run(["chroot", root, "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", f"SOURCE_DATE_EPOCH={epoch}",
         "sh", "-ec", script], capture=True)


def core(config: BuildConfig, lock: Lock, cache: Path, work: Path) -> Path:
    """The rebuilt `kamailio` binary, from the cache or built into it."""
    files = [p for p in lock.role("source") if p.name == "kamailio"]
    dsc = [p for p in files if p.filename.endswith(".dsc")]
    if len(dsc) != 1:
        raise StageError("board.kamailio.memory_align is set, but the lock has no kamailio source package "
                         "(run `pbxfw lock --sources-only`)")
    cross = _cross(config.board.arch)
    triplet, kamailio_arch = cross.triplet, cross.kamailio_arch
    tarball = build_root(config, cache)
    align = config.board.kamailio.memory_align
    key = hashlib.sha256(json.dumps({"sources": sorted(p.sha256 for p in files), "align": align,
                                     "root": archive.sha256_file(tarball), "epoch": config.source_date_epoch,
                                     "arch": kamailio_arch}).encode()).hexdigest()
    cached = cache / "kamailio-core" / key / "kamailio"
    if cached.is_file():
        log(f"    from the cache ({cached})")
        return cached
    root = work / "kamailio-build"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    run(["tar", "--numeric-owner", "-xpf", tarball, "-C", root])
    sources = root / "src"
    sources.mkdir()
    for package in files:
        shutil.copyfile(archive.fetch(package, cache), sources / Path(package.filename).name)
    log(f"    {dsc[0].version}: core with KSR_MEMORY_ALIGN={align}, {triplet}-gcc from {config.debian.suite}")
    # The files were checked against the lock's sha256, which came from the gpgv-checked
    # Sources index; the .dsc's own signature needs the uploader's key, which we do not have.
    # The rules file's own `make cfg` line, cross: Debian's flags for the target arch.
    _in_root(root, f"""
cd /src; dpkg-source --no-check -x {Path(dsc[0].filename).name} tree >/dev/null; cd tree
export DEB_HOST_ARCH={config.board.arch}
make cfg quiet=silent prefix=/usr cfg_target=/etc/kamailio/ FLAVOUR=kamailio group_include=kstandard \
    ARCH={kamailio_arch} CC={triplet}-gcc LIBDIR=lib/{triplet} \
    CC_EXTRA_OPTS="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS) -DVERSION_NODATE \
-DKSR_MEMORY_ALIGN={align}UL" LD_EXTRA_OPTS="$(dpkg-buildflags --get LDFLAGS)" >/dev/null
make -C src -j{os.cpu_count() or 1} quiet=silent ARCH={kamailio_arch} CC={triplet}-gcc LIBDIR=lib/{triplet} kamailio
{triplet}-strip --remove-section=.comment --remove-section=.note src/kamailio
""", config.source_date_epoch)
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sources / "tree/src/kamailio", cached)
    shutil.rmtree(root)
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
