"""The boot health check that commits a slot: run once per boot by the agent's process
when the boot has finished (pbxagent.daemon), and by hand with `pbxagent boot check`.

A boot is good when the agent provisioned, the compiled firewall is loaded, the SIP
service runs and /data is mounted writable. A good boot gets its attempts back, and a
slot on probation after an update becomes the committed one (security floor raised).
A bad boot of a slot on probation reboots, so U-Boot's attempt counter runs out and the
old slot comes back; the old slot then reports the failed update, once.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

from pbxagent import atomic, board, paths
from pbxagent.update import bootstate, installer, report
from pbxagent.update.state import Pending, Result, UpdateState


class Finding(NamedTuple):
    name: str
    passed: bool
    detail: str


class Probe(NamedTuple):
    passed: bool
    detail: str
    settled: bool = True  # False: may still pass (a unit that is still starting)


def _provisioned() -> Probe:
    return Probe(paths.provisioned_marker().is_file(), "provisioning marker on /data")


def _firewall() -> Probe:
    done = subprocess.run(["nft", "list", "table", "inet", "pbx"], capture_output=True)
    return Probe(done.returncode == 0, "nftables table inet pbx loaded")


def _sip() -> Probe:
    # The check runs after multi-user.target, so kamailio's start job is over: only a
    # unit still starting is worth waiting for.
    state = subprocess.run(["systemctl", "is-active", "kamailio.service"], capture_output=True, text=True)
    current = state.stdout.strip()
    return Probe(current == "active", f"kamailio.service {current or 'unknown'}",
                   settled=current not in ("activating", "reloading"))


def _data() -> Probe:
    data = paths.root() / "data"
    writable = os.path.ismount(data) and not os.statvfs(data).f_flag & os.ST_RDONLY
    return Probe(writable, "/data mounted read-write")


CHECKS: dict[str, Callable[[], Probe]] = {
    "provisioned": _provisioned,
    "firewall": _firewall,
    "sip": _sip,
    "data": _data,
}


def run_checks(wait: float, interval: float = 1.0) -> list[Finding]:
    """Each check; one that may still pass is retried for up to `wait` seconds in all."""
    deadline = time.monotonic() + wait
    findings: list[Finding] = []
    for name, check in CHECKS.items():
        while True:
            outcome = check()
            if outcome.passed or outcome.settled or time.monotonic() >= deadline:
                break
            time.sleep(interval)
        findings.append(Finding(name, outcome.passed, outcome.detail))
    return findings


def settle_pending(current: UpdateState, running: str) -> tuple[UpdateState, list[str]]:
    """An update waiting for a slot that is not the one running failed: report it (once:
    the pending record goes) and put the running slot first again."""
    pending = current.pending
    if not pending or pending.slot == running:
        return current, []
    result = Result("failed", pending.release.version, pending.slot, int(time.time()),
                    f"slot {pending.slot} ({pending.release.version}) did not boot healthy; back on slot {running}")
    return replace(current, pending=None, last_result=result), [f"update FAILED: {result.message}"]


def commit(current: UpdateState, running: str) -> tuple[UpdateState, list[str]]:
    """The running slot is healthy: commit a pending update to it, raise the floor."""
    lines = []
    security_version = installer.running_release().security_version
    pending = current.pending
    if pending and pending.slot == running:
        result = Result("installed", pending.release.version, running, int(time.time()),
                        f"slot {running} runs {pending.release.version} and is healthy")
        current = replace(current, pending=None, last_result=result)
        security_version = max(security_version, pending.release.security_version)
        lines.append(f"update committed: {result.message}")
    if security_version > current.floor:
        current = current.with_floor(security_version)
        lines.append(f"security floor raised to {current.floor}")
    return current, lines


class Verdict(NamedTuple):
    healthy: bool
    reboot: bool  # an unhealthy slot on probation: reboot so U-Boot's attempts run out
    lines: list[str]  # what to report


def record(verdict: Verdict) -> None:
    atomic.write(paths.boot_verdict(), json.dumps(verdict._asdict(), indent=1) + "\n", 0o644)


def wait_for_boot(timeout: float) -> str:
    """Block until systemd has finished starting the boot's units (the check's subjects),
    or `timeout`: the state it reached (running, degraded, ...), which the checks judge."""
    try:
        done = subprocess.run(["systemctl", "is-system-running", "--wait"], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"still starting after {timeout:.0f} s"
    return done.stdout.strip() or "unknown"


def check_boot(wait: float = 90) -> Verdict:
    """The health check and what follows from it."""
    running = bootstate.booted_slot()
    before = installer.load_state()
    current, lines = settle_pending(before, running)
    findings = run_checks(wait)
    healthy = all(f.passed for f in findings)
    reboot = not healthy and current.pending is not None
    lines += [f"health {'ok  ' if f.passed else 'FAIL'} {f.name}: {f.detail}" for f in findings]
    boot = bootstate.read()
    if healthy:
        current, committed = commit(current, running)
        lines += committed
        bootstate.write(bootstate.mark_good(boot, running, board.load().boot_attempts))
        lines.append(f"slot {running} marked good")
    elif reboot:
        lines.append(f"slot {running} is on probation and unhealthy: rebooting "
                     f"({boot.attempts(running)} attempt(s) left before slot {bootstate.other(running)})")
    installer.save_state(current)
    if before.pending and current.last_result and current.last_result != before.last_result:
        lines.append(_queue_report(before.pending, current.last_result))
    return Verdict(healthy, reboot, lines)


def _queue_report(pending: Pending, result: Result) -> str:
    """The settled update's report, kept on /data until the collector has it (sent by
    pbx-update.service): only now, after the reboot, is the outcome known."""
    try:
        path = report.enqueue(result.result, pending.from_version, pending.release.version, result.time,
                              result.message)
    except (OSError, ValueError) as exc:
        return f"update report not queued: {exc}"
    return f"update report queued: {path.name}"
