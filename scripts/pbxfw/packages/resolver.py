"""`make lock`: resolve a recipe's package set to exact .debs with apt, from checked indices.

apt does the dependency resolution (the same solver mmdebstrap drives), but it never
downloads an index itself: pbxfw.packages.archive fetches each Packages index, checks it against
the gpgv-verified InRelease (falling back between compressions and by-hash when the
archive's front cache is out of step) and only then hands it to apt as its lists.
Sizes and sha256 in the lock come from those checked indices.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from debian import deb822

from pbxfw.config import BuildConfig
from pbxfw.errors import StageError
from pbxfw.packages import archive
from pbxfw.packages.lock import (
    BOOTSTRAP_TOOLS,
    Lock,
    LockedPackage,
    base_set,
    rebuilt_sources,
    request_digest,
)
from pbxfw.stages import log


def _list_name(mirror: str, rest: str) -> str:
    """apt's file name in its lists directory for a URI (scheme dropped, '/' -> '_')."""
    without_scheme = mirror.split("://", 1)[-1].rstrip("/")
    return f"{without_scheme}/{rest}".replace("/", "_")


def _apt_root(tmp: Path, config: BuildConfig, cache: Path) -> Path:
    """An apt configuration of its own: the target arch, no host state, checked lists."""
    lists = tmp / "var/lib/apt/lists"
    (lists / "partial").mkdir(parents=True)
    (tmp / "etc/apt").mkdir(parents=True)
    (tmp / "status").write_text("")
    arch = config.board.arch
    sources = []
    for suite in archive.suites_for(config.debian):
        sources.append(f"deb [arch={arch}] {suite.mirror} {suite.name} {' '.join(config.debian.components)}")
        for component in config.debian.components:
            index = archive.packages_index(suite, component, arch, cache)
            name = _list_name(suite.mirror, f"dists/{suite.name}/{component}/binary-{arch}/Packages")
            (lists / name).write_text(index)
        release = archive.release_path(suite, cache).read_bytes()
        (lists / _list_name(suite.mirror, f"dists/{suite.name}/InRelease")).write_bytes(release)
    (tmp / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    conf = tmp / "apt.conf"
    conf.write_text(
        f'Dir "{tmp}/";\n'
        f'Dir::State::status "{tmp}/status";\n'
        f'Dir::Etc::Trusted "{archive.KEYRING}";\n'
        f'APT::Architecture "{arch}";\n'
        f'APT::Architectures {{ "{arch}"; }};\n'
        'APT::Install-Recommends "false";\n'
        'Debug::NoLocking "true";\n'
    )
    return conf


def _apt_uris(conf: Path, wanted: list[str]) -> list[str]:
    """The URL of every package apt would install for `wanted` on an empty system."""
    result = subprocess.run(
        ["apt-get", "--print-uris", "-qq", "install", *wanted],
        env=dict(os.environ, APT_CONFIG=str(conf)),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StageError(f"apt cannot resolve the package set: {result.stderr.strip() or result.stdout.strip()}")
    return [urllib.parse.unquote(line.split("'")[1]) for line in result.stdout.splitlines() if line.startswith("'")]


def _index_entries(index: str, mirror: str, wanted: set[str]) -> dict[str, LockedPackage]:
    """The checked index entries whose Filename is in `wanted`, by Filename."""
    found = {}
    for paragraph in index.split("\n\n"):
        start = paragraph.find("\nFilename: ")
        if start < 0:
            continue
        filename = paragraph[start + 11:].split("\n", 1)[0]
        if filename not in wanted:
            continue
        fields = dict(line.split(": ", 1) for line in paragraph.splitlines() if ": " in line and line[0] != " ")
        found[filename] = LockedPackage(role="root", name=fields["Package"], version=fields["Version"],
                                        arch=fields["Architecture"], size=int(fields["Size"]),
                                        sha256=fields["SHA256"], mirror=mirror, filename=filename)
    return found


def source_files(index: str, mirror: str, name: str, version: str) -> list[LockedPackage]:
    """The files of source package `name` at `version` in a checked Sources index, as lock
    rows (sizes and sha256 from the index); none if the index does not have that version."""
    for paragraph in index.split("\n\n"):
        if not paragraph.startswith(f"Package: {name}\n") or f"\nVersion: {version}\n" not in paragraph:
            continue
        fields = deb822.Sources(paragraph)
        return [LockedPackage(role="source", name=name, version=version, arch="source", size=int(entry["size"]),
                              sha256=entry["sha256"], mirror=mirror, filename=f"{fields['Directory']}/{entry['name']}")
                for entry in fields["Checksums-Sha256"]]
    return []


def _source_rows(config: BuildConfig, name: str, version: str, cache: Path) -> list[LockedPackage]:
    """The files of source package `name` at `version`, from the first suite whose Sources
    index has it."""
    for suite in archive.suites_for(config.debian):
        for component in config.debian.components:
            rows = source_files(archive.sources_index(suite, component, cache), suite.mirror, name, version)
            if rows:
                return rows
    raise StageError(f"source package {name} {version} is in none of the suites' Sources indices")


def with_sources(config: BuildConfig, lock: Lock, cache: Path) -> Lock:
    """`lock` with the source rows of every package the board rebuilds, at the version of
    its locked binary; the rest of the lock stays as it is."""
    binaries = tuple(p for p in lock.packages if p.role != "source")
    rows = [row for name in rebuilt_sources(config)
            for row in _source_rows(config, name, lock.one_version(name), cache)]
    return Lock(lock.suite, lock.arch, lock.request, (*binaries, *rows))


def kernel_package(config: BuildConfig, cache: Path) -> archive.Package:
    """The concrete linux-image package behind the flavour's metapackage."""
    meta_name = f"linux-image-{config.board.kernel.flavour}"
    meta = archive.newest(meta_name, config.debian, config.board.arch, cache)
    concrete = meta.depends.split(",")[0].split()[0] if meta.depends else ""
    if not concrete.startswith("linux-image-"):
        raise StageError(f"{meta_name} {meta.version}: cannot find the kernel package in Depends: {meta.depends!r}")
    return archive.newest(concrete, config.debian, config.board.arch, cache)


def resolve(config: BuildConfig, cache: Path) -> Lock:
    started = time.monotonic()
    suites = archive.suites_for(config.debian)
    with tempfile.TemporaryDirectory(prefix="pbxfw-apt-") as tmp:
        log(f"    indices: {', '.join(s.name for s in suites)} ({config.board.arch}), checked against InRelease")
        conf = _apt_root(Path(tmp), config, cache)
        uris = _apt_uris(conf, [*base_set(config.excluded), *config.packages])
    by_mirror: dict[str, set[str]] = {}
    for uri in uris:
        mirror = max((s.mirror for s in suites if uri.startswith(s.mirror.rstrip("/") + "/")), key=len, default="")
        if not mirror:
            raise StageError(f"apt chose {uri}, which is on none of the recipe's mirrors")
        by_mirror.setdefault(mirror, set()).add(uri[len(mirror.rstrip("/")) + 1:])
    entries: dict[tuple[str, str], LockedPackage] = {}
    for suite in suites:
        for component in config.debian.components:
            index = archive.packages_index(suite, component, config.board.arch, cache)
            for filename, entry in _index_entries(index, suite.mirror, by_mirror.get(suite.mirror, set())).items():
                entries[(suite.mirror, filename)] = entry
    missing = [f"{m}/{f}" for m, files in by_mirror.items() for f in files if (m, f) not in entries]
    if missing:
        raise StageError(f"apt chose files no checked index lists: {', '.join(sorted(missing))}")
    pulled_back = sorted({p.name for p in entries.values()} & set(config.excluded))
    if pulled_back:
        raise StageError(f"the recipe excludes {', '.join(pulled_back)} (`false` under packages), but other "
                         "packages of the set depend on it")

    def newest(name: str, role: str) -> LockedPackage:
        return LockedPackage.of(archive.newest(name, config.debian, config.board.arch, cache), role)

    packages = [*entries.values(), *(newest(name, "bootstrap") for name in BOOTSTRAP_TOOLS),
                LockedPackage.of(kernel_package(config, cache), "kernel"), newest("busybox-static", "initramfs")]
    log(f"    {len(entries)} packages for the root file system, kernel and busybox-static "
        f"({time.monotonic() - started:.1f} s)")
    return with_sources(config, Lock(config.debian.suite, config.board.arch, request_digest(config),
                                     tuple(packages)), cache)
