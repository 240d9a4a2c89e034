"""`make repro`: two clean builds from the same lock and cache must give the same bytes.

The second build bootstraps its root file system anew (not from the rootfs cache) in
a network namespace with no interface but a downed loopback, so it also proves that
a warm cache is all a build needs. Each build signs a bundle with the same key;
ed25519 signatures are deterministic, so equal payloads give equal bundles.

With --first-build, build 1 is an image already built (`make test` passes the one it
has just built and tests): what is compared is then the very image under test, and
CI saves a build.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pbxfw.packages.archive import sha256_file
from pbxfw.stages import log

ARTEFACTS = ("rootfs.slot", "disk.img", "repro.bundle", "sbom.cdx.json")
# The slot's squashfs root: diffoscope's view of a slot difference (explain).
SLOT_ROOT = "work/rootfs.squashfs"
# What build 1 takes from a finished build: the artefacts except the bundle, which it signs
# itself, and what the bundle and explain() read.
TAKEN = ("rootfs.slot", "disk.img", "sbom.cdx.json", "build.json", SLOT_ROOT)


def _pbxfw(*args: str | Path, offline: bool = False) -> None:
    argv = [sys.executable, "-m", "pbxfw.cli.main", *map(str, args)]
    if offline:
        argv = ["unshare", "--net", "--", *argv]
    if subprocess.run(argv, check=False).returncode != 0:
        raise SystemExit(f"pbxfw repro: `{' '.join(argv)}` failed")


def take_build(built: Path, directory: Path, signing_key: Path) -> None:
    """Build 1 from a finished `pbxfw image` output: its artefacts copied (the device
    tests beside write only its snapshot/), and its bundle signed as a build of our own
    would be."""
    missing = [name for name in TAKEN if not (built / name).is_file()]
    if missing:
        raise SystemExit(f"pbxfw repro: --first-build {built}: not a finished build (no {', '.join(missing)})")
    log(f"=== repro: build 1 of 2 is {built}, already built")
    for name in TAKEN:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "--sparse=always", built / name, directory / name], check=True)
    _pbxfw("bundle", "create", "--out", directory, "--key", signing_key, "--output", directory / "repro.bundle")


def build_twice(config: str, lock: Path, keys: Path, signing_key: Path, out: Path,
                tuf_root: Path | None = None, first: Path | None = None) -> tuple[Path, Path]:
    builds = (out / "a", out / "b")
    for number, directory in enumerate(builds, 1):
        if directory.exists():
            shutil.rmtree(directory)
        if number == 1 and first is not None:
            take_build(first, directory, signing_key)
            continue
        fresh = number == 2
        log(f"=== repro: build {number} of 2 into {directory}"
            + (": fresh bootstrap, no network" if fresh else ""))
        started = time.monotonic()
        anchor: list[str | Path] = ["--tuf-root", tuf_root] if tuf_root else []
        _pbxfw("image", config, "--out", directory, "--lock", lock, "--trusted-keys", keys, *anchor,
               *(["--fresh-bootstrap"] if fresh else []), offline=fresh)
        _pbxfw("bundle", "create", "--out", directory, "--key", signing_key, "--output", directory / "repro.bundle")
        log(f"=== repro: build {number} took {time.monotonic() - started:.0f} s")
    return builds


def compare(a: Path, b: Path) -> list[str]:
    """The artefacts whose bytes differ, each with both hashes."""
    differ = []
    for name in ARTEFACTS:
        left, right = sha256_file(a / name), sha256_file(b / name)
        log(f"    {name:<14} {left}" + ("" if left == right else f"\n    {'':<14} {right}  DIFFERS"))
        if left != right:
            differ.append(name)
    return differ


def explain(a: Path, b: Path, name: str) -> None:
    """Where two artefacts differ, by diffoscope. A slot difference is shown on its
    squashfs root (file by file), which says far more than the image bytes."""
    if shutil.which("diffoscope") is None:
        log("    diffoscope is not installed (make setup); no details")
        return
    inner = SLOT_ROOT if name == "rootfs.slot" else name
    subprocess.run(["diffoscope", "--max-report-size", "2000000", "--text", "-", a / inner, b / inner], check=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pbxfw.image.repro", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="kas-style file list, as for `pbxfw image`")
    parser.add_argument("--lock", type=Path, required=True)
    parser.add_argument("--trusted-keys", type=Path, required=True)
    parser.add_argument("--signing-key", type=Path, required=True)
    parser.add_argument("--tuf-root", type=Path, help="the release repository's root.json, as for `pbxfw image`")
    parser.add_argument("--out", type=Path, required=True, help="the two builds go to OUT/a and OUT/b")
    parser.add_argument("--first-build", type=Path, metavar="DIR",
                        help="take build 1 from DIR, a finished `pbxfw image` output of the same commit and "
                             "lock (e.g. out/qemu-u50), instead of building it")
    args = parser.parse_args(argv)
    a, b = build_twice(args.config, args.lock, args.trusted_keys, args.signing_key, args.out, args.tuf_root,
                       args.first_build)
    log("=== repro: sha256 of each artefact (build 1; build 2 shown only where it differs)")
    differ = compare(a, b)
    if not differ:
        log(f"=== repro: identical: {', '.join(ARTEFACTS)}")
        return 0
    # ARTEFACTS lists causes before what is built from them (the disk and the bundle
    # hold the slot): the first difference explains the rest.
    explain(a, b, differ[0])
    log(f"=== repro: NOT reproducible: {', '.join(differ)} differ")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
