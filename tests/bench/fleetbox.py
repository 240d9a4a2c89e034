"""`make bench-fleet`, the box's half, on the twin: the update service's CPU time and
peak RSS for an idle wake-up (no poll due), a poll with nothing new and the poll that
installs, against a bare `python3 -c pass` in the same run; and the time from `pbxfw repo
add` + `rollout --percent 100` to the collector holding the box's `committed` report,
step by step. The service is started by hand where pbx-update.timer would start it
(it wakes the service every 5 minutes), so the figure is the path's own time without
the timer's wait."""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from pathlib import Path

from pbxfw import config
from pbxfw.fleet import repository
from pbxfw.signing import bundler, keys

from tests.bench.boot import REPO
from tests.device.fleetlab import collecting, nginx, poll_here, run_update_service, wiring
from tests.infra import boards
from tests.infra.twin import Device

USAGE = re.compile(r"took ([\d.]+) s of CPU, peak RSS ([\d.]+) MiB")


def cpu_and_rss(journal: str) -> tuple[float, float]:
    found = USAGE.search(journal)
    if found is None:
        raise SystemExit(f"bench-fleet: no usage line in the update service's journal:\n{journal}")
    return float(found.group(1)), float(found.group(2))


def bare_python(dut: Device) -> float:
    """user + sys seconds of `python3 -c pass` (the floor of any Python service)."""
    out = dut.check("{ time -p python3 -c pass; } 2>&1")
    seconds = dict(line.split() for line in out.splitlines() if line.startswith(("user", "sys")))
    return float(seconds["user"]) + float(seconds["sys"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", default="qemu-u50")
    parser.add_argument("--recipe", default="recipes/pbx.yml")
    parser.add_argument("--keys", type=Path, default=Path.home() / ".config" / "pbxfw" / "keys")
    parser.add_argument("--releases", type=Path, default=Path.home() / ".config" / "pbxfw" / "releases")
    parser.add_argument("--repo-keys", type=Path, default=Path.home() / ".config" / "pbxfw" / "repo-keys")
    args = parser.parse_args()
    cfg = config.load(config.board_spec(REPO, args.board, args.recipe))
    out = REPO / "out" / cfg.board.name
    print(f"bench-fleet: the box's update service on the {cfg.board.name} twin")
    with tempfile.TemporaryDirectory(prefix="pbxfw-bench-fleetbox-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        shutil.copytree(args.releases, work / "releases")
        repo = repository.Repo(work / "releases", args.repo_keys)
        manifest = bundler.manifest_for(out / "rootfs.slot", cfg.board.compatible, "2.0.0", 100, "bench")
        bundle = work / "bench.bundle"
        bundler.write(bundle, out / "rootfs.slot", manifest, [keys.FileSigner(args.keys / "dev.key")])
        with nginx(repo.path, work / "nginx") as mirror, collecting() as (collector, reports):
            twin = boards.booted_twin(cfg.board, out / "disk.img", work / "twin", wiring(mirror, collector))
            dut = twin.dut
            poll_here(dut, interval=3600)
            floor = bare_python(dut)
            poll_cpu, poll_rss = cpu_and_rss(run_update_service(dut))
            idle_cpu, idle_rss = cpu_and_rss(run_update_service(dut))
            print(f"  python3 -c pass (baseline)   {floor:5.2f} s CPU")
            print(f"  idle wake-up, no poll due    {idle_cpu:5.2f} s CPU (x{idle_cpu / floor:.1f}), "
                  f"peak RSS {idle_rss:.1f} MiB")
            print(f"  poll, nothing new            {poll_cpu:5.2f} s CPU (x{poll_cpu / floor:.1f}), "
                  f"peak RSS {poll_rss:.1f} MiB (goal <= 30 MiB)", flush=True)

            started = time.monotonic()
            repository.add(repo, bundle)
            repository.rollout(repo, cfg.board.name, "2.0.0", 100)
            published = time.monotonic() - started
            dut.check("rm -f /data/pbx/update/fleet.json")  # the next wake-up polls (as after a boot)
            dut.console.send("systemctl start pbx-update.service\r")
            dut.console.expect("booting slot B", 900, "the install and the reboot")
            rebooting = time.monotonic() - started
            dut.login()
            booted = time.monotonic() - started
            run_update_service(dut)
            if not reports or reports[-1]["report"]["result"] != "committed":
                raise SystemExit(f"bench-fleet: no committed report reached the collector: {reports}")
            reported = time.monotonic() - started
            twin.power_off()
        print(f"  repo add + rollout 100 %     {published:6.1f} s")
        print(f"  ... polled, installed, U-Boot starts slot B {rebooting:6.1f} s")
        print(f"  ... logged in (health check ran) {booted:6.1f} s")
        print(f"  ... report at the collector  {reported:6.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
