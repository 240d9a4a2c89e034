"""`pbxagent run` (pbx-agent.service): the agent's one process, started once per boot.
It does what four units did, each its own CPython start of a second or more
under emulation (issue 17):

1. provisioning, then the inputs of the SIP service and the media relay (/data/kamailio,
   /run/pbx/relay), in a forked copy of this process: the first boot's secrets, keys and
   certificate need cryptography and the password checks, whose memory leaves with the
   copy. kamailio starts beside this process from the inputs the last boot wrote, under
   the firewall nftables.service restored; the copy restarts it only when they changed
   (on a first boot there were none: it starts it). A failure there leaves the guard
   running and the relay stopped, and a first boot's SIP service too;
2. beside the copy, the guard's start (compiled firewall, saved bans, fail2ban's
   thresholds); once the copy has ended, the call policy's decision point for kamailio
   (pbxagent.calls.redirect, a thread), then READY: the logins, the relay and fail2ban
   are ordered after this unit. The network waits for less (pbx-network-gate.service):
   provisioning done and a compiled firewall in force (the one nftables.service restored
   on a later boot, or the guard's): the copy releases it as it ends provisioning if one
   is, otherwise this process once both are done;
3. the boot health check in another forked copy, once systemd has finished the boot;
4. the guard, following address changes until the unit stops.

A fork is not a new interpreter: nothing is loaded or imported again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from pbxagent import paths
from pbxagent.network import bans, boot_firewall, guard
from pbxagent.policy import site

Log = Callable[[str], None]
# The health check judges what systemd reached by then: a unit still starting after this
# long is as bad as a failed one.
BOOT_WAIT_S = 240.0


def notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(target)
        sock.send(message.encode())


def fork(work: Callable[[], int]) -> int:
    """Run `work` in a forked copy of this process; its pid. The copy exits with what
    `work` returns, 1 if it raises."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    code = 1
    try:
        code = work()
    except Exception:  # the copy reports anything and exits; the parent goes on
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def to_console(log: Log) -> Log:
    """`log`, and the same line on the local console: provisioning's progress is what a
    person at the box and the production line watch (the marker lines they wait for)."""
    try:
        console = paths.console().open("a", encoding="utf-8")
    except OSError:
        return log

    def both(line: str) -> None:
        log(line)
        console.write(f"pbxagent: {line}\n")
        console.flush()

    return both


def prepare(log: Log) -> int:
    """Provisioning, then the SIP service's inputs; 0 when both are done."""
    from pbxagent import media, provision, sip, system

    say = to_console(log)
    try:
        for step in provision.provision():
            say(step)
    except (OSError, ValueError) as exc:
        say(f"provisioning FAILED: {exc}; the SIP service keeps the last boot's inputs (none on a first boot: "
            "it stays stopped), the health check fails")
        return 1
    say("provisioned")  # the fixed marker the console tests and the production line wait for
    if paths.compiled_firewall().exists():
        release_network(log, "provisioned, a compiled firewall in force")
    policy = site.load().policy  # once for both
    steps, changed = sip.write_inputs(policy)
    for step in [*steps, *media.write_inputs(policy.calls)]:
        log(step)
    if changed:
        # Started from the last boot's inputs beside this process (or not at all on a
        # first boot): its port is behind the restored compiled table, or the base
        # table, which lets nothing in, until the guard applies this boot's.
        try:
            system.systemctl("restart", "--no-block", "kamailio.service")
            log("SIP service (re)started with the new inputs")
        except OSError as exc:  # masked, or no systemd: the health check finds it stopped
            log(f"SIP service not restarted: {exc}")
    return 0


def release_network(log: Log, why: str) -> None:
    """Let pbx-network-gate.service end, so systemd-networkd starts (once per boot)."""
    if not paths.network_ready().exists():
        _mark(paths.network_ready())
        log(f"network released: {why}")


def _mark(marker: Path) -> None:
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def check_health(log: Log) -> int:
    """The boot's health check, once systemd has finished starting the boot's units."""
    from pbxagent import system
    from pbxagent.update import health

    log(f"boot finished ({health.wait_for_boot(BOOT_WAIT_S)}): health check")
    verdict = health.check_boot()
    for line in verdict.lines:
        log(line)
    health.record(verdict)
    log(f"health check {system.usage()}")
    notify(f"STATUS=guarding; this boot {'healthy' if verdict.healthy else 'UNHEALTHY'}: {verdict.lines[-1]}")
    if verdict.reboot:
        system.systemctl("reboot", "--no-block")
    return 0 if verdict.healthy else 1


def _reap(pid: int, log: Log) -> None:
    code = exit_code(pid)
    log("health check done" if code == 0 else f"health check failed (exit {code})")


class _Stop(Exception):
    """Raised by the signal handler: a blocking select() returns at once."""


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def _start_call_policy(log: Log) -> None:
    """Without it kamailio's question times out and every external call is refused."""
    from pbxagent.calls import redirect

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(redirect.ADDRESS)
    except OSError as exc:
        sock.close()
        log(f"call policy not served, external calls are refused: {redirect.ADDRESS}: {exc.strerror}")
        return
    server = redirect.Server(
        sock, lambda dialled, caller, now, policy: redirect.decide_from_files(dialled, caller, now, policy, log),
        lambda: site.load().policy, log)
    threading.Thread(target=server.serve, daemon=True).start()


def run(log: Log) -> None:
    """Until SIGTERM. A provisioning failure does not end it: the guard keeps the box
    safe and the health check reports the failure (and falls back from an update)."""
    preparing = fork(lambda: prepare(log))
    loaded = site.load()
    if loaded.error:
        log(f"policy override not applied, the {loaded.origin} policy is in force: {loaded.error}")
    policy = loaded.policy
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with contextlib.suppress(_Stop):
        # Beside the copy, on the other core: on a first boot the network waits for both.
        now = guard.start(policy, log)
        # On a first boot the copy is usually still provisioning: with this marker it
        # releases the network as soon as it is done, not after kamailio's inputs too.
        _mark(paths.compiled_firewall())
        exit_code(preparing)
        release_network(log, "this boot's compiled firewall in force")
        _start_call_policy(log)
        notify("READY=1\nSTATUS=guarding; health check when the boot has finished")
        # After READY: nothing that starts after this unit needs the file the next boot reads.
        boot_firewall.save(policy.firewall, bans.current())
        if not paths.boot_verdict().exists():  # once per boot, not at every restart
            health = fork(lambda: check_health(log))
            threading.Thread(target=_reap, args=(health, log), daemon=True).start()
        guard.follow(log, now)
    guard.save_bans(always=True)
    log("bans and the boot firewall saved; agent stopped")
