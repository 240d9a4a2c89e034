"""`make bench-calls`: call setups between two extensions through the twin, on the test
network (tests/device/netlab.py) with sipp in the host namespaces — 801 on one LAN host
calls 802 on another, the box challenging every INVITE (auth included in each setup).

- the rate ramp: 15 s at each rate; the highest rate with >= 99 % of the calls answered;
- INVITE -> 200 latency (first INVITE to the 200, so the 407 round is in it), median
  and p99, at half that rate;
- the baseline in the same run: the same calls from the same sipp straight to the
  callee's sipp, no PBX in between;
- kamailio's memory (PSS of all its processes) idle and under the highest rate, and its
  memory settings;
- relayed calls: a remote phone behind NAT (803 on the home host) places N calls at once
  to 802, each with the 102 packets of sip-tester's G.711 recording echoed back, so the
  audio of each passes the box's media relay (rtpengine) twice each way; the most calls
  at once with < 1 % of the audio lost, against the same calls from a LAN phone whose
  audio goes directly (the baseline, same run); rtpengine's RSS idle and under load;
- the box's MemAvailable idle and at its lowest sample under load: with
  `--memory-mib 256` (`make bench-calls MEMORY=256`) on a twin the size of the smallest
  board, to check kamailio's and rtpengine's memory settings fit it.
"""

from __future__ import annotations

import csv
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from tests.bench.boot import REPO, build_config
from tests.device import phones
from tests.device.netlab import HOME, HOME_HOST, LAN, LAN2, LAN2_HOST, LAN_HOST, TWIN, lab_twin, secret_of
from tests.infra.twin import Device

RATES = (5, 10, 20, 40, 80, 160)  # call setups per second
STEP_S = 15
GOAL_ANSWERED = 0.99
CALLEE_PORT, CALLER_PORT = 5070, 5080
# Proportional set size: the processes share kamailio's shared memory, which RSS would
# count once per process.
KAMAILIO_PSS = ("for p in $(pgrep -x kamailio); do awk '/^Pss:/ {print $2}' /proc/$p/smaps_rollup; done | "
                "awk '{s+=$1} END {print s+0}'")
HOLD_MS = 200  # between the ACK and the BYE, so they cannot overtake each other on the way
AT_ONCE = (5, 10, 20, 40)  # relayed calls at once (calls.concurrent's ceiling is 50)
GOAL_DELIVERED = 0.99
AUDIO_HOLD_MS = 3000  # past the recording's 2.04 s
RELAY_RSS = "ps -C rtpengine -o rss= | awk '{s+=$1} END {print s+0}'"
MEM_AVAILABLE = "awk '/^MemAvailable:/ {print $2}' /proc/meminfo"


class Sample(NamedTuple):
    kib: int  # the measured processes' memory (PSS or RSS, see its command)
    available_kib: int  # the box's MemAvailable at the same moment


def sample(dev: Device, processes: str) -> Sample:
    kib, available = dev.check(f"{processes}; {MEM_AVAILABLE}").split()
    return Sample(int(kib), int(available))


class Step(NamedTuple):
    rate: int
    placed: int
    answered: int
    latencies_ms: list[float]

    @property
    def share(self) -> float:
        return self.answered / self.placed if self.placed else 0.0


@contextmanager
def callee(through_pbx: bool, secret: str) -> Iterator[None]:
    """802's phone on the second LAN host, answering every call until the block ends."""
    if through_pbx:
        phones.register(LAN2, LAN2_HOST, CALLEE_PORT, "802", secret)
    with phones.answering(LAN2, LAN2_HOST, CALLEE_PORT, "802", calls=None):
        time.sleep(1)
        yield


def step(rate: int, through_pbx: bool, secret: str, work: Path, during: float | None = None,
         dev: Device | None = None) -> tuple[Step, Sample | None]:
    """One rate for STEP_S seconds; with `during`, kamailio's memory and the box's
    MemAvailable sampled that far in."""
    calls = rate * STEP_S
    work = Path(tempfile.mkdtemp(dir=work))  # sipp's screen and response-time files, this step's only
    target = TWIN if through_pbx else f"{LAN2_HOST}:{CALLEE_PORT}"
    scenario = "setup.xml" if through_pbx else "direct.xml"
    argv = phones.sipp(LAN, LAN_HOST, CALLER_PORT, scenario, "-s", "802", "-key", "from", "801", "-au", "801",
                       "-ap", secret, "-d", str(HOLD_MS), "-r", str(rate), "-m", str(calls), "-l", str(rate * 10),
                       "-trace_rtt", "-rtt_freq", "1", "-recv_timeout", "5000", "-trace_screen", "-trace_err",
                       target=target, timeout_s=STEP_S * 4)
    run = subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load = None
    if during is not None and dev is not None:
        time.sleep(during)
        load = sample(dev, KAMAILIO_PSS)
    run.wait(timeout=STEP_S * 6)
    answered = max((_stat(path.read_text(), "Successful call") for path in work.glob("*_screen.log")), default=0)
    latencies = [float(row[1]) for path in work.glob("*_rtt.csv")
                 for row in list(csv.reader(path.open(), delimiter=";"))[1:] if len(row) > 1]
    if answered < calls:  # say why, from sipp's own error log
        errors = [line for path in work.glob("*_errors.log") for line in path.read_text().splitlines()
                  if "Aborting" in line or "timeout" in line.lower()]
        first = errors[0][:300] if errors else "no sipp error logged"
        print(f"    {calls - answered} not answered at {rate}/s; first: {first}")
    return Step(rate, calls, answered, latencies), load


def _stat(screen: str, name: str) -> int:
    found = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", screen)
    return int(found[-1]) if found else 0


def ramp(through_pbx: bool, secret: str, work: Path, dev: Device | None) -> tuple[list[Step], Sample | None]:
    steps: list[Step] = []
    load = None
    for rate in RATES:
        result, sampled = step(rate, through_pbx, secret, work, STEP_S / 2 if through_pbx else None, dev)
        steps.append(result)
        load = sampled if sampled is not None else load
        label = "twin" if through_pbx else "baseline"
        print(f"  {label} {rate:3d}/s: {result.answered}/{result.placed} answered "
              f"({result.share:.1%})", flush=True)
        if result.share < GOAL_ANSWERED:
            break
    return steps, load


class Media(NamedTuple):
    calls: int
    answered: bool
    there: float  # share of the audio that reached the callee
    back: float  # share of the echo that came back to the caller
    rss: Sample | None

    @property
    def delivered(self) -> float:
        return min(self.there, self.back)


def media_step(dev: Device, calls: int, relayed: bool, secret: str) -> Media:
    """`calls` calls at once to 802 with audio: from 803 behind NAT (relayed) or from 801
    on the LAN (direct); rtpengine's RSS sampled while they talk."""
    ns, host, caller = (HOME, HOME_HOST, "803") if relayed else (LAN, LAN_HOST, "801")
    expected = calls * phones.AUDIO_PACKETS
    sampled: list[Sample] = []
    sampler = threading.Timer(AUDIO_HOLD_MS / 2000 + 1, lambda: sampled.append(sample(dev, RELAY_RSS)))
    with phones.udp_arrivals(LAN2, 6000) as at_callee, phones.udp_arrivals(ns, 6100) as at_caller:
        sampler.start()
        done = phones.call(ns, host, CALLER_PORT, caller, secret, "802", f"bench{calls}", calls=calls,
                           hold_ms=AUDIO_HOLD_MS)
        sampler.join()
        there, back = at_callee.packets() / expected, at_caller.packets() / expected
    return Media(calls, done.returncode == 0, there, back, sampled[0] if sampled else None)


def media_ramp(dev: Device, relayed: bool, secret: str) -> list[Media]:
    results = []
    for calls in AT_ONCE:
        result = media_step(dev, calls, relayed, secret)
        results.append(result)
        print(f"  {'relayed' if relayed else 'direct'} {calls:2d} at once: {'all' if result.answered else 'not all'}"
              f" answered, audio there {result.there:.1%}, back {result.back:.1%}", flush=True)
        if not result.answered or result.delivered < GOAL_DELIVERED:
            break
    return results


def most_at_once(results: list[Media]) -> int:
    return max((r.calls for r in results if r.answered and r.delivered >= GOAL_DELIVERED), default=0)


def sustained(steps: list[Step]) -> int:
    return max((s.rate for s in steps if s.share >= GOAL_ANSWERED), default=0)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def mib(taken: Sample | None) -> str:
    return f"{taken.kib / 1024:.1f}" if taken is not None else "not sampled"


def main() -> int:
    cfg = build_config(__doc__)
    with tempfile.TemporaryDirectory() as tmp, lab_twin(cfg.board, REPO / "out" / cfg.board.name / "disk.img",
                                                        Path(tmp) / "lab") as (_, dev):
        work = Path(tmp)
        # One extension places every call: its calls-at-once limit (2 by default) must
        # not be what is measured.
        dev.check("printf 'calls:\\n  concurrent: 50\\n' > /data/pbx/policy.yaml && systemctl restart pbx-agent",
                  timeout=300)
        dev.check("( for i in $(seq 600); do systemctl is-active -q kamailio && ss -Hlun 'sport = :5060' | grep -q . "
                  "&& exit 0; sleep 0.2; done; exit 1 )", timeout=180)
        secret, callee_secret = secret_of(dev, "801"), secret_of(dev, "802")
        memory = dev.check("ps -C kamailio -o args= | head -1").strip()
        idle = sample(dev, KAMAILIO_PSS)
        with callee(False, callee_secret):
            base_steps, _ = ramp(False, secret, work, None)
        with callee(True, callee_secret):
            twin_steps, loaded = ramp(True, secret, work, dev)
        best = sustained(twin_steps)
        half = max(1, best // 2)
        # The calls the ramp's last step aborted never sent a BYE: their dialogs would hold
        # 801's places (calls.concurrent) until they time out.
        dev.check("systemctl restart kamailio && ( for i in $(seq 600); do ss -Hlun 'sport = :5060' | grep -q . "
                  "&& exit 0; sleep 0.2; done; exit 1 )", timeout=180)
        with callee(True, callee_secret):
            at_half, _ = step(half, True, secret, work)
        with callee(False, callee_secret):
            base_half, _ = step(half, False, secret, work)
        relay_idle = sample(dev, RELAY_RSS)
        with callee(True, callee_secret):
            relayed = media_ramp(dev, True, secret_of(dev, "803"))
            direct = media_ramp(dev, False, secret)
    base_best = sustained(base_steps)
    harness_bound = len(base_steps) <= len(twin_steps) and base_steps[-1].share < GOAL_ANSWERED
    print(f"\nbench-calls: {cfg.board.name} ({cfg.board.qemu.cpu}, TCG, no KVM), extension to extension on the "
          f"test network, sipp {STEP_S} s per rate, goal >= {GOAL_ANSWERED:.0%} answered")
    print(f"  sustained: {best} call setups/s through the twin (auth included); baseline without a PBX: "
          f"{base_best}/s{' or more (the ramp top)' if base_best == RATES[-1] else ''}; ratio "
          f"{best / base_best if base_best else float('nan'):.2f}"
          + ("; the baseline failed at the same step, so the figure is this harness's limit, not the twin's"
             if harness_bound else ""))
    for label, result in (("twin", at_half), ("baseline", base_half)):
        print(f"  at {half}/s, {label}: INVITE -> 200 median {statistics.median(result.latencies_ms or [0]):.0f} ms,"
              f" p99 {percentile(result.latencies_ms, 0.99):.0f} ms ({result.answered}/{result.placed} answered)")
    if base_half.latencies_ms and at_half.latencies_ms:
        base_ms = max(statistics.median(base_half.latencies_ms), 1.0)  # sipp counts whole ms
        print(f"  latency ratio twin/baseline (median, baseline taken as >= 1 ms): "
              f"x{statistics.median(at_half.latencies_ms) / base_ms:.0f}")
    print(f"  kamailio PSS (all processes): idle {idle.kib / 1024:.1f} MiB, under {twin_steps[-1].rate}/s "
          f"{mib(loaded)} MiB; started as `{memory}`")
    most, base_most = most_at_once(relayed), most_at_once(direct)
    top = f" or more (the ramp top, {AT_ONCE[-1]})"
    print(f"  relayed calls at once with < {1 - GOAL_DELIVERED:.0%} audio lost (20 ms packets, echoed): {most}"
          f"{top if most == AT_ONCE[-1] else ''}; direct media baseline: {base_most}"
          f"{top if base_most == AT_ONCE[-1] else ''}; ratio {most / base_most if base_most else float('nan'):.2f}")
    print(f"  rtpengine RSS: idle {relay_idle.kib / 1024:.1f} MiB, with {relayed[-1].calls} relayed calls "
          f"{mib(relayed[-1].rss)} MiB")
    under_load = [s.available_kib for s in (loaded, *(r.rss for r in relayed)) if s is not None]
    lowest = f"{min(under_load) / 1024:.0f} MiB" if under_load else "not sampled"
    print(f"  the box's MemAvailable with {cfg.board.qemu.memory_mib} MiB of RAM: "
          f"idle {idle.available_kib / 1024:.0f} MiB, lowest under load {lowest}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
