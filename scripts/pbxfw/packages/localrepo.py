"""The locked .debs as a local apt repository, the only source mmdebstrap sees.

Each .deb is fetched once into the content-addressed cache (named by its sha256, checked
against the lock) and linked into a repository made for exactly one set of packages, so
a build with a warm cache needs no network, and apt can install nothing the lock lacks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from pbxfw.packages import archive
from pbxfw.packages.lock import Lock, LockedPackage
from pbxfw.stages import log, run


def repo_key(lock: Lock) -> str:
    material = "\n".join([lock.suite, lock.arch, *sorted(p.sha256 for p in lock.role("root", "bootstrap"))])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def fetch_all(packages: tuple[LockedPackage, ...], cache: Path) -> list[Path]:
    """Every package from the cache or the archive, checked; progress while downloading."""
    missing = [p for p in packages if not archive.cached_file(p, cache).exists()]
    total = sum(p.size for p in missing)
    if missing:
        log(f"    downloading {len(missing)} of {len(packages)} packages ({total / 2**20:.1f} MiB)")
    started, done = time.monotonic(), 0
    fetched: dict[LockedPackage, Path] = {}
    for number, package in enumerate(missing, 1):
        fetched[package] = archive.fetch(package, cache)
        done += package.size
        if number % 20 == 0 or number == len(missing):
            log(f"    {number}/{len(missing)} packages, {done / 2**20:.1f} / {total / 2**20:.1f} MiB, "
                f"{time.monotonic() - started:.0f} s")
    # The cached ones are checked against the lock too, on every build.
    return [fetched.get(package) or archive.fetch(package, cache) for package in packages]


def prepare(lock: Lock, cache: Path) -> Path:
    """The repository for the lock's root and bootstrap packages (`deb [trusted=yes] copy://REPO SUITE main`)."""
    repo = cache / "repo" / repo_key(lock)
    ready = repo / ".complete"
    packages = lock.role("root", "bootstrap")
    debs = fetch_all(packages, cache)
    if ready.exists():
        return repo
    if repo.exists():
        shutil.rmtree(repo)
    pool = repo / "pool"
    pool.mkdir(parents=True)
    for package, deb in zip(packages, debs, strict=True):
        os.link(deb, pool / f"{package.name}_{package.version.replace(':', '%3a')}_{package.arch}.deb")
    index = repo / "dists" / lock.suite / "main" / f"binary-{lock.arch}"
    index.mkdir(parents=True)
    (index / "Packages").write_text(run(["dpkg-scanpackages", "--multiversion", "pool"], cwd=repo, capture=True))
    # The codename must match the suite mmdebstrap is given: it picks Essential:yes there.
    (repo / "dists" / lock.suite / "Release").write_text(
        f"Suite: {lock.suite}\nCodename: {lock.suite}\nArchitectures: {lock.arch}\nComponents: main\n"
    )
    ready.write_text("")
    return repo
