"""`make bench-agent`: what the agent's provisioning costs at boot, on the first boot
(everything per-device is made) and on a later boot (repair only), and its peak RSS.

All three boots use the same disk and QEMU's -kernel (same kernel, initramfs, slot),
so they differ only in what the agent does. Figures:
- kernel start -> "pbxagent: provisioned" and the provisioning unit's own duration,
  from the journal's monotonic clock (zero is kernel start);
- the agent's peak RSS, which it reports itself (getrusage);
- the baseline in the same run: a boot with the provisioning unit masked on the kernel
  command line; login-prompt time with the agent minus without it is the boot time the
  agent adds.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from pbxfw import config
from pbxfw.console import SerialConsole

from tests.bench.boot import REPO, boot, direct_boot_files
from tests.infra import boards

GOAL_FIRST_S = 5.0
GOAL_LATER_S = 1.0
GOAL_RSS_MIB = 30.0


def _agent_figures(console: SerialConsole) -> dict[str, float]:
    unit = console.run("systemctl show pbx-provision -p ExecMainStartTimestampMonotonic "
                       "-p ExecMainExitTimestampMonotonic --value").output.split()
    journal = console.run("journalctl -b -u pbx-provision -o short-monotonic --no-pager").output
    provisioned = re.search(r"\[\s*([\d.]+)\] .*pbxagent: provisioned", journal)
    rss = re.search(r"peak RSS ([\d.]+) MiB", journal)
    if provisioned is None or rss is None or len(unit) != 2:
        raise SystemExit(f"bench-agent: provisioning did not report as expected:\n{journal}")
    return {
        "kernel->provisioned": float(provisioned.group(1)),
        "unit": (int(unit[1]) - int(unit[0])) / 1e6,
        "rss": float(rss.group(1)),
    }


def _measured_boot(cfg: config.BuildConfig, disk: Path, work: Path, password: str) -> dict[str, float]:
    times, console, twin = boot(cfg.board, disk, work, direct_boot_files(REPO / "out" / cfg.board.name))
    try:
        console.login("root", password, wake=True)  # the prompt was consumed above
        return {"login": times["login prompt"], **_agent_figures(console)}
    finally:
        console.close()
        twin.off()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--board", default="qemu-u50")
    parser.add_argument("--recipe", default="recipes/pbx.yml")
    args = parser.parse_args()
    cfg = config.load(config.board_spec(REPO, args.board, args.recipe))
    out = REPO / "out" / cfg.board.name
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        disk, password = boards.prepare_disk(cfg.board, out / "disk.img", work)
        first = _measured_boot(cfg, disk, work, password)
        later = _measured_boot(cfg, disk, work, password)
        base, console, twin = boot(cfg.board, disk, work, direct_boot_files(out),
                                   append="systemd.mask=pbx-provision.service")
        console.close()
        twin.off()
    baseline = base["login prompt"]
    print(f"\nbench-agent: {cfg.board.name} ({cfg.board.qemu.cpu}, TCG, no KVM), QEMU -kernel boots of one disk")
    for name, run, goal in (("first boot", first, GOAL_FIRST_S), ("later boot", later, GOAL_LATER_S)):
        added = run["login"] - baseline
        print(f"  {name}: kernel start -> provisioned {run['kernel->provisioned']:5.1f} s; "
              f"provisioning unit {run['unit']:4.1f} s (goal {goal:.0f} s, ratio {run['unit'] / goal:.2f}); "
              f"login prompt {run['login']:5.1f} s = baseline {added:+.1f} s")
    print(f"  baseline (provisioning masked): login prompt {baseline:5.1f} s")
    rss = max(first["rss"], later["rss"])
    print(f"  agent peak RSS {rss:.1f} MiB (first {first['rss']:.1f}, later {later['rss']:.1f}); "
          f"goal {GOAL_RSS_MIB:.0f} MiB (ratio {rss / GOAL_RSS_MIB:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
