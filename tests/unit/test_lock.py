"""The package lock (format, errors, request check) and the content-addressed .deb cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pbxfw import config
from pbxfw.errors import PbxfwError, StageError
from pbxfw.packages import archive, lock, resolver

from tests.unit.test_config import REPO

SHA_A = "a" * 64
SHA_B = "b" * 64


def locked(role: str, name: str, version: str, sha256: str, filename: str, size: int = 1,
           mirror: str = "http://deb.debian.org/debian", arch: str = "arm64") -> lock.LockedPackage:
    return lock.LockedPackage(role=role, name=name, version=version, arch=arch, size=size, sha256=sha256,
                              mirror=mirror, filename=filename)


def sample(request: str = "r" * 64) -> lock.Lock:
    return lock.Lock("trixie", "arm64", request, (
        locked("root", "libc6", "2.41-12", SHA_A, "pool/main/g/glibc/libc6_2.41-12_arm64.deb", size=100),
        locked("kernel", "linux-image-6.12-arm64", "6.12-1", SHA_B, "pool/main/l/linux/linux-image_6.12-1_arm64.deb",
               size=200),
    ))


def test_render_then_parse_gives_the_same_lock(tmp_path: Path) -> None:
    text = lock.to_text(sample(), "test")
    assert lock.parse(text, tmp_path / "x.lock") == sample()
    assert lock.to_text(lock.parse(text, tmp_path / "x.lock"), "test") == text


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace(SHA_A, "z" * 64), "x.lock:8: libc6: '" + "z" * 64 + "' is not a sha256"),
    (lambda t: t.replace(" 100 ", " 1o0 "), "x.lock:8: libc6: size '1o0' is not a number"),
    (lambda t: t.replace("root libc6", "rootfs libc6"), "x.lock:8: unknown entry 'rootfs'"),
    (lambda t: t.replace(" arm64 100", " 100"), "x.lock:8: a package line has 8 fields"),
    (lambda t: t.replace("format 1", "format 9"), "x.lock: lock format 9, this pbxfw reads format 1"),
    (lambda t: t.replace("suite trixie\n", ""), "x.lock: no 'suite' line"),
    (lambda t: t + t.splitlines()[7] + "\n", "x.lock:10: libc6 is locked twice as 'root'"),
])
def test_a_malformed_lock_names_file_line_and_reason(edit, message: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PbxfwError) as error:
        lock.parse(edit(lock.to_text(sample(), "test")), tmp_path / "x.lock")
    assert message in str(error.value)


def test_a_lock_made_for_another_package_set_is_refused(tmp_path: Path) -> None:
    cfg = config.load(config.board_spec(REPO, "qemu-u50", "recipes/pbx.yml"))
    path = tmp_path / "pbx.lock"
    path.write_text(lock.to_text(sample(lock.request_digest(cfg)), "test"))
    assert lock.load(path, cfg).request == lock.request_digest(cfg)
    debug = config.load(config.board_spec(REPO, "qemu-u50", "recipes/pbx.yml:recipes/debug.yml"))
    assert lock.request_digest(debug) != lock.request_digest(cfg)
    with pytest.raises(PbxfwError, match=r"pbx.lock: made for another package set.*run `make lock`"):
        lock.load(path, debug)
    with pytest.raises(PbxfwError, match=r"missing.lock: no package lock .*run `make lock`"):
        lock.load(tmp_path / "missing.lock", cfg)


def test_the_committed_lock_answers_the_default_recipe() -> None:
    cfg = config.load(config.board_spec(REPO, "qemu-u50", "recipes/pbx.yml"))
    locked = lock.load(REPO / "board/qemu-u50/pbx.lock", cfg)
    names = {p.name for p in locked.role("root")}
    assert set(cfg.packages) <= names
    assert cfg.excluded == ("apt",) and not names & {"apt", "libapt-pkg7.0"}
    assert locked.one("kernel").name.startswith("linux-image-")
    assert locked.one("initramfs").name == "busybox-static"
    assert {p.name for p in locked.role("bootstrap")} == set(lock.BOOTSTRAP_TOOLS)


def test_an_excluded_package_leaves_both_base_patterns() -> None:
    """apt counts itself essential, so the exclusion must reach `?essential` too."""
    assert lock.base_set(()) == ("?essential", "?priority(required)")
    assert lock.base_set(("apt", "sqv")) == (
        "?and(?essential,?not(?exact-name(apt)),?not(?exact-name(sqv)))",
        "?and(?priority(required),?not(?exact-name(apt)),?not(?exact-name(sqv)))",
    )


def test_changes_list_every_package_that_moved() -> None:
    old = sample()
    moved = locked("root", "libc6", "2.41-13", SHA_A, "f")
    added = locked("root", "zlib1g", "1.3", SHA_B, "g")
    new = lock.Lock("trixie", "arm64", old.request, (moved, old.packages[1], added))
    assert lock.changes(old, new) == ["libc6: 2.41-12 -> 2.41-13", "zlib1g: - -> 1.3"]
    assert lock.changes(old, old) == []


def mirror_with(tmp_path: Path, content: bytes) -> tuple[lock.LockedPackage, Path]:
    """A .deb on a file:// mirror (urllib fetches it exactly as it would over HTTP)."""
    mirror = tmp_path / "mirror"
    (mirror / "pool").mkdir(parents=True)
    (mirror / "pool/hello_1.0_all.deb").write_bytes(content)
    package = locked("root", "hello", "1.0", hashlib.sha256(content).hexdigest(), "pool/hello_1.0_all.deb",
                     size=len(content), mirror=f"file://{mirror}", arch="all")
    return package, mirror


def test_the_cache_is_content_addressed_and_a_corrupted_deb_is_replaced(tmp_path: Path) -> None:
    package, _ = mirror_with(tmp_path, b"!<arch>\nhello")
    cache = tmp_path / "cache"
    first = archive.fetch(package, cache)
    assert first.name == f"{package.sha256}.deb"
    first.write_bytes(b"!<arch>\nbit rot")
    assert archive.fetch(package, cache).read_bytes() == b"!<arch>\nhello"


def test_a_deb_that_does_not_match_the_lock_is_an_error_naming_it(tmp_path: Path) -> None:
    package, mirror = mirror_with(tmp_path, b"!<arch>\nhello")
    (mirror / "pool/hello_1.0_all.deb").write_bytes(b"!<arch>\nsomething else")
    with pytest.raises(StageError, match=r"hello 1.0 \(pool/hello_1.0_all.deb\): sha256 [0-9a-f]{64} does not match"):
        archive.fetch(package, tmp_path / "cache")
    assert not list((tmp_path / "cache/debs").iterdir())


def test_a_package_gone_from_archive_and_cache_names_it_and_the_way_out(tmp_path: Path) -> None:
    package, mirror = mirror_with(tmp_path, b"!<arch>\nhello")
    (mirror / "pool/hello_1.0_all.deb").unlink()
    with pytest.raises(StageError, match=r"hello 1.0 is not in the cache .*run `make lock`.*or restore the cache"):
        archive.fetch(package, tmp_path / "cache")


SOURCES = f"""Package: kamailio
Binary: kamailio, kamailio-tls-modules
Version: 6.0.1-1+deb13u2
Directory: pool/updates/main/k/kamailio
Checksums-Sha256:
 {SHA_A} 5793 kamailio_6.0.1-1+deb13u2.dsc
 {SHA_B} 13064707 kamailio_6.0.1.orig.tar.gz

Package: kamailio
Version: 6.0.1-1+deb13u1
Directory: pool/main/k/kamailio
Checksums-Sha256:
 {SHA_B} 13064707 kamailio_6.0.1.orig.tar.gz
"""


def test_a_rebuilt_source_is_locked_file_by_file_at_its_binarys_version(tmp_path: Path) -> None:
    rows = resolver.source_files(SOURCES, "http://security", "kamailio", "6.0.1-1+deb13u2")
    assert [(r.role, r.arch, r.size, r.sha256, r.filename) for r in rows] == [
        ("source", "source", 5793, SHA_A, "pool/updates/main/k/kamailio/kamailio_6.0.1-1+deb13u2.dsc"),
        ("source", "source", 13064707, SHA_B, "pool/updates/main/k/kamailio/kamailio_6.0.1.orig.tar.gz"),
    ]
    assert resolver.source_files(SOURCES, "http://security", "kamailio", "6.0.2-1") == []
    text = lock.to_text(lock.Lock("trixie", "arm64", "r" * 64, (*sample().packages, *rows)), "test")
    assert set(lock.parse(text, tmp_path / "x.lock").role("source")) == set(rows)
    dsc_line = next(line for line in text.splitlines() if line.endswith(".dsc"))
    with pytest.raises(PbxfwError, match=r"x\.lock:\d+: pool/updates/.*\.dsc is locked twice as 'source'"):
        lock.parse(text + dsc_line + "\n", tmp_path / "x.lock")


def test_the_u20s_lock_holds_the_kamailio_source_it_rebuilds_at_its_binarys_version() -> None:
    cfg = config.load(config.board_spec(REPO, "qemu-u20", "recipes/pbx.yml"))
    locked = lock.load(REPO / "board/qemu-u20/pbx.lock", cfg)
    sources = locked.role("source")
    assert {p.name for p in sources} == set(lock.rebuilt_sources(cfg)) == {"kamailio"}
    assert {p.version for p in sources} == {locked.one_version("kamailio")}
    assert sum(p.filename.endswith(".dsc") for p in sources) == 1
