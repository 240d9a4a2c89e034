"""`make bench-build`: build times from an empty cache, from a warm cache and after an
agent change, each against a plain mmdebstrap of the same package set in the same run.

The builds run from a clone of the repository's HEAD with a cache of their own, so the
user's cache and working tree are not touched:

- cold: empty cache (every .deb, index and wheel fetched, root file system bootstrapped);
- warm: the same cache less its root file system cache (.debs local, bootstrap re-run);
- incremental: a one-line change to the agent, everything cached.

Baseline: `mmdebstrap` with the build's own options and package set (the lock's root
packages, by name), straight from the archive — what a build without pbxfw's lock,
cache and later stages costs. Then the rootfs slot and the signed bundle sizes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pbxfw import config
from pbxfw.image import rootfs
from pbxfw.packages import archive, lock

REPO = Path(__file__).resolve().parents[2]
GOAL_RATIO = 1.2
GOAL_INCREMENTAL_S = 60.0
MIB = 1 << 20


def timed(argv: list[str], env: dict[str, str], cwd: Path, what: str) -> float:
    print(f"==> bench-build: {what}", flush=True)
    started = time.monotonic()
    subprocess.run(argv, env=env, cwd=cwd, check=True)
    seconds = time.monotonic() - started
    print(f"<== bench-build: {what}: {seconds:.0f} s", flush=True)
    return seconds


def plain_mmdebstrap(cfg: config.BuildConfig, locked: lock.Lock, output: Path) -> float:
    components = " ".join(cfg.debian.components)
    sources = [f"deb {s.mirror} {s.name} {components}" for s in archive.suites_for(cfg.debian)]
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(cfg.source_date_epoch))
    return timed(rootfs.mmdebstrap_argv(cfg, locked, sources, output), env, REPO,
                 "baseline: plain mmdebstrap of the same package set from the archive")


def main() -> int:
    parser = argparse.ArgumentParser(prog="tests.bench.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", default="qemu-u50")
    parser.add_argument("--recipe", default="recipes/pbx.yml")
    parser.add_argument("--keys", type=Path, required=True, help="trusted keys directory, as for `make image`")
    parser.add_argument("--signing-key", type=Path, required=True)
    args = parser.parse_args()
    spec = config.board_spec(REPO, args.board, args.recipe)
    cfg = config.load(spec)
    lock_rel = f"board/{args.board}/{Path(args.recipe.split(':')[0]).stem}.lock"
    locked = lock.load(REPO / lock_rel, cfg)

    with tempfile.TemporaryDirectory(prefix="pbxfw-bench-build-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        clone, cache = work / "repo", work / "cache"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = dict(os.environ, PBXFW_CACHE=str(cache), PYTHONPATH=str(clone / "scripts"))
        clone_spec = config.board_spec(clone, args.board, args.recipe)

        def build(name: str, what: str) -> float:
            return timed([sys.executable, "-m", "pbxfw.cli.main", "image", clone_spec, "--out", str(work / name),
                          "--lock", str(clone / lock_rel), "--trusted-keys", str(args.keys)], env, clone, what)

        baseline = plain_mmdebstrap(cfg, locked, work / "plain.tar")
        cold = build("cold", "cold build, empty cache")
        shutil.rmtree(cache / "rootfs")
        warm = build("warm", "warm build: .debs cached, no root file system cache")
        with (clone / "agent/pbxagent/__init__.py").open("a") as agent:
            agent.write("# bench-build: an agent change\n")
        incremental = build("incremental", "incremental build after an agent change")
        bundle = work / "incremental" / "bench.bundle"
        subprocess.run([sys.executable, "-m", "pbxfw.cli.main", "bundle", "create", "--out", str(work / "incremental"),
                        "--key", str(args.signing_key), "--output", str(bundle)], env=env, cwd=clone, check=True,
                       stdout=subprocess.DEVNULL)
        slot_mib = (work / "incremental" / "rootfs.slot").stat().st_size / MIB
        bundle_mib = bundle.stat().st_size / MIB
        debs_mib = sum(p.size for p in locked.packages) / MIB

    print(f"\nbench-build ({args.board}, {len(locked.role('root'))} root packages, {debs_mib:.0f} MiB of .debs)")
    print(f"  {'baseline: plain mmdebstrap':<44} {baseline:7.0f} s")
    ratio_goal, time_goal = f"goal ratio <= {GOAL_RATIO}", f"goal <= {GOAL_INCREMENTAL_S:.0f} s"
    for name, seconds, goal in (("cold build (empty cache)", cold, ratio_goal),
                                ("warm build (no rootfs cache)", warm, ratio_goal),
                                ("incremental build (agent change)", incremental, time_goal)):
        print(f"  {name:<44} {seconds:7.0f} s  ratio {seconds / baseline:.2f}  ({goal})")
    print(f"  {'rootfs slot':<44} {slot_mib:7.1f} MiB")
    print(f"  {'signed bundle (slot is squashfs/zstd + FIT)':<44} {bundle_mib:7.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
