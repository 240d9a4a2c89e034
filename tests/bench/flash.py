"""`make bench-flash`: time per board on the production line, console attach -> verified
boot, split into its steps, for the default image flashed onto blank twins.

Each trial starts a blank twin (empty disk, U-Boot only) whose user network serves the
station's TFTP directory, and runs the same code as `pbxfw flash`. The image is
staged once (as on a station, where it is made once per image) and timed on its own:
gzipped for a U-Boot with gzwrite, its non-zero extents for one without.
Baseline in the same run: the raw copy of the image onto a disk file on the host
(`dd`), what writing the bytes costs without a board in between.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pbxfw import config
from pbxfw.production import factory, flash, staging

from tests.infra.power import QemuPower, Wiring

REPO = Path(__file__).resolve().parents[2]
STEPS = ("u-boot", "transfer", "write", "verify", "boot check")


def trial(image: staging.Image, sent: staging.Staging, cfg: config.BuildConfig, work: Path, tftp: Path,
          number: int) -> dict[str, float]:
    disk = work / f"blank-{number}.img"
    with disk.open("wb") as out:
        out.truncate(image.size)
    mac = f"52:54:00:be:00:{number:02x}"
    with QemuPower(cfg.board, disk, work, Wiring(mac=mac, tftp=tftp), disk_format="raw") as twin:
        job = flash.Job(twin.console_url, factory.Identity(mac, f"BENCH-{number}"))
        started = time.monotonic()
        with (work / "console.log").open("a") as log:
            timings = flash.flash_board(image, sent, job, factory.crypt_hash(factory.credential(mac, None)), tftp,
                                        None, log, lambda _: None)
        total = time.monotonic() - started
    disk.unlink()
    return {**{step: timings.steps[step] for step in STEPS}, "total": total}


def main() -> int:
    parser = argparse.ArgumentParser(prog="tests.bench.flash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", default="qemu-u50")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    cfg = config.load(config.board_spec(REPO, args.board, "recipes/pbx.yml"))
    image = staging.load_image(REPO / "out" / args.board / "disk.img")
    with tempfile.TemporaryDirectory(prefix="pbxfw-bench-flash-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        tftp = work / "tftp"
        tftp.mkdir()
        started = time.monotonic()
        made = staging.stage(image, tftp)
        stage_s = time.monotonic() - started
        started = time.monotonic()
        subprocess.run(["dd", f"if={image.disk}", f"of={work / 'dd.img'}", "bs=4M", "conv=fsync", "status=none"],
                       check=True)
        dd_s = time.monotonic() - started
        (work / "dd.img").unlink()
        runs = []
        for number in range(1, args.trials + 1):
            runs.append(trial(image, made, cfg, work, tftp, number))
            print(f"  trial {number}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1].items()), flush=True)

    sent = sum(staged.size for staged in made.files)
    how = "gzipped" if made.gzip else f"sent raw in {len(made.files)} extents"
    print(f"\nbench-flash ({args.board}, image {image.size / (1 << 20):.0f} MiB, {how} {sent / (1 << 20):.0f} "
          f"MiB, {args.trials} blank twins; median, min-max)")
    print(f"  {'stage the image (once per image)':<44} {stage_s:6.1f} s")
    for name in (*STEPS, "total"):
        values = [run[name] for run in runs]
        print(f"  {name:<44} {statistics.median(values):6.1f} s  ({min(values):.1f}-{max(values):.1f})")
    write = statistics.median(run["write"] for run in runs)
    print(f"  {'baseline: dd of the image on the host':<44} {dd_s:6.1f} s  (board write / dd: {write / dd_s:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
