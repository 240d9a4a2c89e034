"""Read Debian archive indices and fetch .debs on the host, checked end to end.

The chain of trust is the archive's: InRelease is checked with gpgv against the
Debian archive keyring, Packages against the sha256 in InRelease, each .deb against
the sha256 in Packages. Nothing here bypasses a failed check; a failure is an error
that names the file and the mismatch.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from debian import deb822
from debian.debian_support import Version

from pbxfw.config import Debian
from pbxfw.errors import StageError
from pbxfw.stages import log, run

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    filename: str  # pool path, relative to the mirror
    size: int
    sha256: str
    mirror: str
    depends: str = ""  # only read to follow a metapackage (the kernel flavour)

    @property
    def url(self) -> str:
        return f"{self.mirror}/{self.filename}"


@dataclass(frozen=True)
class Suite:
    mirror: str
    name: str


def suites_for(debian: Debian) -> tuple[Suite, ...]:
    """The suites every image draws from: release, -updates and -security."""
    return (
        Suite(debian.mirror, debian.suite),
        Suite(debian.mirror, f"{debian.suite}-updates"),
        Suite(debian.security_mirror, f"{debian.suite}-security"),
    )


def _download(url: str, dest: Path) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, tmp.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise StageError(f"download {url} failed: {exc}") from None
    tmp.replace(dest)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_release(suite: Suite, cache: Path) -> deb822.Release:
    dest = release_path(suite, cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _download(f"{suite.mirror}/dists/{suite.name}/InRelease", dest)
    result = subprocess.run(
        ["gpgv", "--keyring", str(KEYRING), "--output", "-", str(dest)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise StageError(
            f"{suite.mirror}/dists/{suite.name}/InRelease: signature check failed: "
            f"{result.stderr.decode(errors='replace').strip()}"
        )
    return deb822.Release(result.stdout)


# Every form of the index the Release file may list, tried in this order. A stale
# cache in front of the archive can serve one form out of step with Release while
# another still matches; a form that does not match is never used.
INDEX_FORMS: tuple[tuple[str, Callable[[bytes], bytes]], ...] = (
    (".xz", lzma.decompress),
    (".gz", gzip.decompress),
    ("", lambda data: data),
)


def _fetch_verified(suite: Suite, name: str, entry: dict[str, str], cache: Path) -> Path | str:
    """The index file checked against its Release entry, or why it could not be.

    Tried by name, then by hash (the archive's by-hash path, which a cache cannot
    serve out of step: the address is the content's hash)."""
    dest = cache / "dists" / suite.name / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and sha256_file(dest) == entry["sha256"]:
        return dest
    directory = name.rsplit("/", 1)[0]
    problems = []
    for url in (f"{suite.mirror}/dists/{suite.name}/{name}",
                f"{suite.mirror}/dists/{suite.name}/{directory}/by-hash/SHA256/{entry['sha256']}"):
        try:
            _download(url, dest)
        except StageError as exc:
            problems.append(str(exc))
            continue
        actual = sha256_file(dest)
        if actual == entry["sha256"] and dest.stat().st_size == int(entry["size"]):
            return dest
        problems.append(f"{url}: sha256 {actual}, Release says {entry['sha256']}")
    dest.unlink(missing_ok=True)
    return "; ".join(problems)


def release_path(suite: Suite, cache: Path) -> Path:
    """Where the suite's InRelease lies once `packages_index` has checked it."""
    return cache / "dists" / suite.name / "InRelease"


# A front cache out of step with the archive usually catches up within minutes; a
# build waits this long (seconds, per retry) before calling the mirror out of step.
RETRY_PAUSES = (5.0, 20.0)


@lru_cache(maxsize=16)
def packages_index(suite: Suite, component: str, arch: str, cache: Path) -> str:
    """The suite's Packages index for one component and arch, checked against InRelease."""
    return _index(suite, f"{component}/binary-{arch}/Packages", cache)


def sources_index(suite: Suite, component: str, cache: Path) -> str:
    """The suite's Sources index for one component, checked against InRelease."""
    return _index(suite, f"{component}/source/Sources", cache)


def _index(suite: Suite, path: str, cache: Path) -> str:
    problems: list[str] = []
    for pause in (*RETRY_PAUSES, None):
        release = _verified_release(suite, cache)
        listed = {e["name"]: e for e in release.get("SHA256", [])}
        problems = []
        for suffix, decompress in INDEX_FORMS:
            name = path + suffix
            if name not in listed:
                continue
            result = _fetch_verified(suite, name, listed[name], cache)
            if isinstance(result, Path):
                if problems:
                    log(f"    {suite.name}: using {name} ({'; '.join(problems)})")
                return decompress(result.read_bytes()).decode()
            problems.append(result)
        if pause is not None:
            log(f"    {suite.name} {path}: no form of the index matches its Release file; "
                f"trying again in {pause:.0f} s")
            time.sleep(pause)
    raise StageError(
        f"{suite.mirror}/dists/{suite.name} {path}: no form of the index matches its "
        f"Release file ({'; '.join(problems) or 'none listed'}); the mirror is out of step"
    )


def _paragraphs(index: str, name: str) -> list[deb822.Packages]:
    """The index entries for one package; parsing all ~60,000 would take seconds."""
    pattern = re.compile(rf"^Package: {re.escape(name)}\n.*?(?=\n\n|\Z)", re.MULTILINE | re.DOTALL)
    return [deb822.Packages(match.group(0)) for match in pattern.finditer(index)]


def newest(name: str, debian: Debian, arch: str, cache: Path) -> Package:
    """The newest version of `name` across the suites (security and updates win when newer)."""
    suites = suites_for(debian)
    best: Package | None = None
    for suite in suites:
        for component in debian.components:
            for para in _paragraphs(packages_index(suite, component, arch, cache), name):
                candidate = Package(
                    name=name,
                    version=para["Version"],
                    arch=para["Architecture"],
                    filename=para["Filename"],
                    size=int(para["Size"]),
                    sha256=para["SHA256"],
                    mirror=suite.mirror,
                    depends=para.get("Depends", ""),
                )
                if best is None or Version(candidate.version) > Version(best.version):
                    best = candidate
    if best is None:
        names = ", ".join(s.name for s in suites)
        raise StageError(f"package {name} ({arch}) is in none of {names}")
    return best


def cached_file(package: Package, cache: Path) -> Path:
    """Where the content-addressed cache keeps a .deb (named by its sha256) or a source
    package's file (its sha256 and its own name, which dpkg-source reads)."""
    if package.filename.endswith(".deb"):
        return cache / "debs" / f"{package.sha256}.deb"
    return cache / "sources" / package.sha256 / Path(package.filename).name


def fetch(package: Package, cache: Path) -> Path:
    """The file from the cache, or downloaded into it; either way checked against its sha256."""
    dest = cached_file(package, cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if sha256_file(dest) == package.sha256:
            return dest
        log(f"    {dest}: corrupted in the cache ({package.name} {package.version}), fetching it again")
        dest.unlink()
    try:
        _download(package.url, dest)
    except StageError as exc:
        raise StageError(
            f"{package.name} {package.version} is not in the cache ({cache / 'debs'}) and {exc}. If the archive "
            f"no longer has it, run `make lock` to move to the archive's current versions, or restore the cache"
        ) from None
    actual = sha256_file(dest)
    if actual != package.sha256:
        dest.unlink()
        raise StageError(f"{package.name} {package.version} ({package.filename}): sha256 {actual} "
                         f"does not match {package.sha256}")
    return dest


def unpack(package: Package, cache: Path, dest: Path) -> Path:
    """Fetch a package (checked) and unpack it into a fresh `dest`, natively on the host."""
    deb = fetch(package, cache)
    if dest.exists():
        shutil.rmtree(dest)
    run(["dpkg-deb", "-x", deb, dest])
    return dest
