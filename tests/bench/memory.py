"""`make bench-memory`: how little RAM each board's image needs. Every built board's
image gets a first boot with 256, 384 and 512 MiB (and the board's own size as the
baseline) and is asked four things: does it reach the login prompt, does `pbxagent
audit` pass, does the SIP service register an extension (the client runs on the twin
against 127.0.0.1), and how much is `MemAvailable` once boot has finished. The image's
minimum RAM is the smallest size that answers yes to the first three.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from pbxfw import config
from pbxfw.console import ConsoleError

from tests.infra import boards, sip
from tests.infra.twin import Device

REPO = Path(__file__).resolve().parents[2]
SIZES_MIB = (256, 384, 512)


@dataclasses.dataclass
class Answer:
    memory_mib: int
    login: bool = False
    audit: bool = False
    register: bool = False
    available_mib: float = 0.0
    shell_s: float = 0.0  # power-on to a logged-in shell, boot finished
    note: str = ""

    @property
    def works(self) -> bool:
        return self.login and self.audit and self.register


def register_once(dut: Device) -> bool:
    """One extension registers with its own secret: the SIP service works."""
    first = json.loads(dut.check("pbxagent extensions list --json --show-secrets 2>/dev/null"))[0]
    return sip.client_on(dut)(first["extension"], first["secret"], "pbxfw-bench") == "SIP/2.0 200 OK"


def ask(board: config.Board, image: Path, memory_mib: int, work: Path) -> Answer:
    answer = Answer(memory_mib)
    twin = boards.fresh_twin(boards.with_memory(board, memory_mib), image, work)
    started = time.monotonic()
    try:
        dut = twin.power_on()
        answer.login, answer.shell_s = True, time.monotonic() - started
        report = json.loads(dut.run("pbxagent audit --json 2>/dev/null", timeout=300).output)
        answer.audit = bool(report["passed"])
        answer.register = register_once(dut)
        meminfo = dut.check("grep MemAvailable /proc/meminfo")
        answer.available_mib = int(re.findall(r"\d+", meminfo)[0]) / 1024
        answer.note = dut.check("systemctl --failed --no-legend --plain | awk '{print $1}' | paste -sd, -").strip()
    except (ConsoleError, ValueError, KeyError) as exc:
        answer.note = str(exc).splitlines()[0][:120]
        log = (work / "console.log").read_text(errors="replace")
        if "Out of memory" in log or "oom-kill" in log:
            answer.note = "out of memory: " + answer.note
    finally:
        twin.power_off()
    return answer


def summary(name: str, answers: list[Answer]) -> str:
    """The smallest RAM that works, against the largest tried (the board's own size)."""
    baseline = max(answers, key=lambda a: a.memory_mib)
    working = [a for a in answers if a.works]
    if not working:
        return f"  {name}: works with none of the sizes tried"
    least = min(working, key=lambda a: a.memory_mib)
    return (f"  {name}: minimum RAM {least.memory_mib} MiB; MemAvailable there {least.available_mib:.0f} MiB "
            f"against {baseline.available_mib:.0f} MiB with {baseline.memory_mib} MiB "
            f"(ratio of RAM {least.memory_mib / baseline.memory_mib:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--boards", nargs="+", default=["qemu-u50", "qemu-u20"])
    parser.add_argument("--recipe", default="recipes/pbx.yml")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES_MIB))
    args = parser.parse_args()
    results: dict[str, list[Answer]] = {}
    for name in args.boards:
        cfg = config.load(config.board_spec(REPO, name, args.recipe))
        image = REPO / "out" / name / "disk.img"
        if not image.is_file():
            print(f"bench-memory: {name}: no image at {image} (`make image BOARD={name}`): not measured")
            continue
        for size in [*args.sizes, cfg.board.qemu.memory_mib]:
            with tempfile.TemporaryDirectory() as tmp:
                print(f"==> {name} with {size} MiB", flush=True)
                answer = ask(cfg.board, image, size, Path(tmp))
            results.setdefault(name, []).append(answer)
            print(f"<== {name} {size} MiB: login {answer.login} audit {answer.audit} SIP {answer.register} "
                  f"MemAvailable {answer.available_mib:.0f} MiB {answer.note}", flush=True)

    yes = {True: "yes", False: "no"}
    print("\nbench-memory: first boot with the RAM given (TCG, no KVM)")
    print(f"  {'board':10} {'RAM':>5} {'login':>6} {'audit':>6} {'SIP':>5} {'MemAvailable':>13} {'to shell':>9}  note")
    for name, answers in results.items():
        for a in answers:
            print(f"  {name:10} {a.memory_mib:5d} {yes[a.login]:>6} {yes[a.audit]:>6} {yes[a.register]:>5} "
                  f"{a.available_mib:10.0f} MiB {a.shell_s:8.1f} s  {a.note}")
    for name, answers in results.items():
        print(summary(name, answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
