"""`make bench-agent`: what the agent costs at boot, on the first boot (everything
per-device is made) and on a later boot (repair only), and its memory.

All three boots use the same disk and QEMU's -kernel (same kernel, initramfs, slot), so
they differ only in what the agent does. Figures, from the journal's monotonic clock
(zero is kernel start) and the agent's own reports:
- kernel start -> "pbxagent: provisioned", and the unit's start -> READY (provisioning,
  the SIP service's inputs, the guard's start: what the network and kamailio wait for);
- peak RSS of each of the agent's processes: the provisioning copy and the health
  check's copy (getrusage, as each reports it), and the agent itself once the boot's
  health check is done (VmHWM; VmRSS is its steady state);
- the baseline in the same run: a boot with the agent masked on the kernel command line
  (kamailio and fail2ban, which require it, do not start either); login-prompt time
  with the agent minus without it is the boot time the agent adds.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from pbxfw import config
from pbxfw.console import SerialConsole

from tests.bench.boot import REPO, boot, build_config, direct_boot_files
from tests.infra import boards
from tests.infra.twin import BOOT_VERDICT

GOAL_PEAK_FIRST_MIB = 30.0
GOAL_STEADY_MIB = 22.0
USAGE = re.compile(r"^(health check )?took [\d.]+ s of CPU, peak RSS ([\d.]+) MiB$", re.MULTILINE)


def _agent_figures(console: SerialConsole) -> dict[str, float]:
    console.run(f"for i in $(seq 600); do [ -e {BOOT_VERDICT} ] && break; sleep 0.5; done", timeout=330)
    # As Key=value lines: systemctl prints properties in its own order, not the asked one.
    unit = {key: int(value) for key, value in re.findall(r"^(\w+)=(\d+)\s*$", console.run(
        "systemctl show pbx-agent -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic -p MainPID"
    ).output, re.MULTILINE)}
    journal = console.run("journalctl -b -u pbx-agent -o short-monotonic --no-pager").output
    provisioned = re.search(r"\[\s*([\d.]+)\] .*pbxagent: provisioned", journal)
    peaks = {bool(m.group(1)): float(m.group(2))
             for m in USAGE.finditer(console.run("journalctl -b -u pbx-agent -o cat | sed 's/^pbxagent: //'").output)}
    status = console.run(f"grep -E '^Vm(HWM|RSS):' /proc/{unit.get('MainPID', 0)}/status").output
    memory = {k: int(v) / 1024 for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.MULTILINE)}
    if provisioned is None or len(peaks) != 2 or len(unit) != 3 or len(memory) != 2:
        raise SystemExit(f"bench-agent: the agent did not report as expected:\n{journal}\n{status}")
    return {
        "kernel->provisioned": float(provisioned.group(1)),
        "ready": (unit["ActiveEnterTimestampMonotonic"] - unit["ExecMainStartTimestampMonotonic"]) / 1e6,
        "provisioning": peaks[False],
        "health": peaks[True],
        "peak": memory["VmHWM"],
        "steady": memory["VmRSS"],
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
    cfg = build_config(__doc__)
    out = REPO / "out" / cfg.board.name
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        disk, password = boards.prepare_disk(cfg.board, out / "disk.img", work)
        first = _measured_boot(cfg, disk, work, password)
        later = _measured_boot(cfg, disk, work, password)
        base, console, twin = boot(cfg.board, disk, work, direct_boot_files(out),
                                   append="systemd.mask=pbx-agent.service systemd.mask=pbx-network-gate.service")
        console.close()
        twin.off()
    baseline = base["login prompt"]
    print(f"\nbench-agent: {cfg.board.name} ({cfg.board.qemu.cpu}, TCG, no KVM), QEMU -kernel boots of one disk")
    for name, run in (("first boot", first), ("later boot", later)):
        print(f"  {name}: kernel start -> provisioned {run['kernel->provisioned']:5.1f} s; agent start -> READY "
              f"{run['ready']:4.1f} s; login prompt {run['login']:5.1f} s = baseline {run['login'] - baseline:+.1f} s")
        peak = max(run["provisioning"], run["health"], run["peak"])
        print(f"    peak RSS {peak:.1f} MiB (provisioning copy {run['provisioning']:.1f}, health check copy "
              f"{run['health']:.1f}, agent {run['peak']:.1f}); agent steady {run['steady']:.1f} MiB")
    print(f"  baseline (agent masked): login prompt {baseline:5.1f} s")
    first_peak = max(first["provisioning"], first["health"], first["peak"])
    steady = max(first["steady"], later["steady"])
    print(f"  first-boot peak {first_peak:.1f} MiB: goal {GOAL_PEAK_FIRST_MIB:.0f} MiB (ratio "
          f"{first_peak / GOAL_PEAK_FIRST_MIB:.2f}); steady state {steady:.1f} MiB: goal {GOAL_STEADY_MIB:.0f} MiB "
          f"(ratio {steady / GOAL_STEADY_MIB:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
