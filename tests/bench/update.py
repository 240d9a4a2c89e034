"""`make bench-update`: on the twin, install throughput versus a raw `dd` of the same
payload to the same slot (both read from tmpfs, both synced), time from install start to
the new slot marked good, the installer's peak RSS, the bundle's size overhead, and
power-cut trials (default 30) at random moments of an install and of a first boot."""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path

from pbxfw import config
from pbxfw.signing import bundler, keys

from tests.bench.boot import REPO
from tests.device.bundleserver import serving
from tests.device.powercut import status, trial
from tests.infra import boards
from tests.infra.power import Wiring

GOAL_RATIO = 0.8
INSTALL_WITH_RSS = ("python3 -c 'import resource, subprocess; "
                    "r = subprocess.run([\"pbxagent\", \"update\", \"install\", \"/run/bench.bundle\"], "
                    "capture_output=True, text=True); print(r.stdout + r.stderr); "
                    "print(\"maxrss\", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)'")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--board", default="qemu-u50")
    parser.add_argument("--recipe", default="recipes/pbx.yml")
    parser.add_argument("--keys", type=Path, default=Path.home() / ".config" / "pbxfw" / "keys")
    parser.add_argument("--power-cuts", type=int, default=30)
    args = parser.parse_args()
    cfg = config.load(config.board_spec(REPO, args.board, args.recipe))
    out = REPO / "out" / cfg.board.name
    built = json.loads((out / "build.json").read_text())
    slot = out / "rootfs.slot"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = bundler.manifest_for(slot, built["compatible"], "bench", built["security_version"], "bench")
        bundler.write(work / "bench.bundle", slot, manifest, [keys.FileSigner(args.keys / "dev.key")])
        overhead = (work / "bench.bundle").stat().st_size - slot.stat().st_size
        with serving(work) as server:
            twin = boards.fresh_twin(cfg.board, out / "disk.img", work, wiring=Wiring(guestfwd=(server.guestfwd,)))
            dut = twin.power_on()
            other = status(dut)["other_slot"]
            device = json.loads(dut.check("cat /etc/pbxfw/board.json"))["slots"][other]
            dut.check(f"python3 -c 'import shutil,urllib.request as u; shutil.copyfileobj("
                      f"u.urlopen(\"{server.url('bench.bundle')}\"), open(\"/run/bench.bundle\", \"wb\"))'", 600)
            offset = manifest.payload_size
            dut.check(f"tail -c {offset} /run/bench.bundle > /run/payload")
            dd = dut.check(f"{{ time -p dd if=/run/payload of={device} bs=64K conv=fsync 2>/dev/null; }} 2>&1 "
                           "| grep real", 600)
            dd_s = float(dd.split()[1])
            sha = dut.check("python3 -c 'import hashlib,time; d=open(\"/run/payload\",\"rb\").read(); "
                            "t=time.monotonic(); hashlib.sha256(d).digest(); print(time.monotonic()-t)'", 600)
            sha_s = float(sha.strip())
            started = time.monotonic()
            # The installer runs as a child, so its peak RSS is the children's maximum.
            result = dut.check(INSTALL_WITH_RSS, 600)
            written = float(re.search(r"written in ([\d.]+) s", result).group(1))  # type: ignore[union-attr]
            rss = int(re.search(r"maxrss (\d+)", result).group(1))  # type: ignore[union-attr]
            dut.check("rm -f /run/payload /run/bench.bundle")
            dut.reboot()
            committed = time.monotonic() - started
            assert status(dut)["last_result"]["result"] == "installed"

            rng = random.Random(7)
            passed = 0
            for number in range(args.power_cuts):
                try:
                    outcome = trial(twin, server.url("bench.bundle"), number % 2 == 1, rng,
                                    cfg.board.uboot.boot_attempts)
                    passed += 1
                except AssertionError as exc:
                    outcome = f"FAILED: {exc}"
                print(f"power cut {number + 1}/{args.power_cuts}: {outcome}", flush=True)
            twin.power_off()

    size = manifest.payload_size
    print()
    print(f"payload {size / 2**20:.1f} MiB, bundle header {overhead} bytes ({overhead / size * 100:.2f} % overhead)")
    print(f"raw dd to the slot (baseline): {dd_s:.1f} s = {size / dd_s / 2**20:.1f} MiB/s")
    print(f"install, verified write:       {written:.1f} s = {size / written / 2**20:.1f} MiB/s "
          f"(ratio {dd_s / written:.2f}, goal >= {GOAL_RATIO})")
    print(f"sha256 of the payload alone, in memory: {sha_s:.1f} s = {size / sha_s / 2**20:.1f} MiB/s "
          "(the floor under a verified write; emulated SHA-2 under TCG)")
    print(f"install start -> new slot marked good (incl. reboot): {committed:.0f} s")
    print(f"installer peak RSS: {rss / 1024:.1f} MiB")
    print(f"power-cut trials: {passed}/{args.power_cuts} left a good slot booted")
    return 0 if passed == args.power_cuts else 1


if __name__ == "__main__":
    raise SystemExit(main())
