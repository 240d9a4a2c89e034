"""`make bench-guard`: firewall apply time on the twin with 0, 10,000 and 100,000 banned
addresses (the 0-ban apply in the same run is the baseline; the ban set is kept across
applies, so the figure shows what a full ban list costs); then ban latency on a twin in
the namespace test network (tests/device/netlab.py): from a fresh internet address each
trial, ten wrong REGISTERs, then the time until the twin drops that address
(tests/bench/banprobe.py, run in the internet host's namespace); then a REGISTER flood
from another fresh internet address at 2,000 and 10,000 packets/s for 30 s while a LAN
phone keeps registering with its right secret (tests/bench/flood.py): the phone's
success rate and registration latency, and whether the flood layer banned the source.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from pbxfw import config
from pbxfw.console import SerialConsole

from tests.bench.boot import REPO, build_config
from tests.device.netlab import INTERNET, LAN, TWIN, NetLab, banned, lab_twin, secret_of
from tests.infra import boards
from tests.infra.power import QemuPower
from tests.infra.twin import Device

GOAL_APPLY_S = 1.0
GOAL_BAN_S = 1.0
GOAL_PHONE_OK = 0.99
FLOOD_RATES = (2_000, 10_000)
FLOOD_S = 30
BAN_TRIALS = 10
SIZES = (0, 10_000, 100_000)
RUNS = 3

# Runs in the guest: fills ban4 with `count` addresses from 100.64.0.0/10 in batches.
FILL = ("python3 -c 'import ipaddress,sys\n"
        "n=int(sys.argv[1]); base=int(ipaddress.ip_address(\"100.64.0.0\"))\n"
        "for s in range(0, n, 5000):\n"
        "  items=\", \".join(\"%s timeout 1h\" % ipaddress.ip_address(base+i) for i in range(s, min(n, s+5000)))\n"
        "  print(\"add element inet pbx ban4 { %s }\" % items)' {count} > /tmp/bans.nft && "
        "nft flush set inet pbx ban4 && nft -f /tmp/bans.nft")
COUNT = ("nft -j list set inet pbx ban4 | python3 -c 'import json,sys; "
         "print(sum(len(i[\"set\"].get(\"elem\", [])) for i in json.load(sys.stdin)[\"nftables\"] if \"set\" in i))'")
NFT_ALONE = "pbxagent firewall render > /tmp/fw.nft 2>/dev/null && { time -p nft -f /tmp/fw.nft; } 2>&1 | grep real"


def _apply_seconds(console: SerialConsole) -> float:
    output = console.run("pbxagent firewall apply 2>/dev/null", timeout=600).check()
    match = re.search(r"applied in ([\d.]+) s", output)
    if match is None:
        raise SystemExit(f"bench-guard: unexpected output: {output}")
    return float(match.group(1))


class Flood(NamedTuple):
    rate: int
    held: int  # packets/s the sender kept up
    attempts: int
    ok: int
    latencies: list[float]
    banned: bool


def flood(net: NetLab, dev: Device, rate: int, source: str, phone_secret: str) -> Flood:
    net.add_address(INTERNET, source)
    phone = net.spawn(LAN, [sys.executable, "-m", "tests.bench.flood", "phone", TWIN, "808", phone_secret,
                            str(FLOOD_S)])
    sender = net.spawn(INTERNET, [sys.executable, "-m", "tests.bench.flood", "send", TWIN, source, str(rate),
                                  str(FLOOD_S)])
    sent, _ = sender.communicate(timeout=FLOOD_S + 60)
    seen, _ = phone.communicate(timeout=FLOOD_S + 60)
    if sender.returncode or phone.returncode:
        raise SystemExit(f"bench-guard: flood at {rate}/s: sender exited {sender.returncode}, phone {phone.returncode}")
    result = json.loads(seen)
    return Flood(rate, int(sent.split()[1]), result["attempts"], result["ok"], result["latencies"],
                 banned(dev, source))


def on_the_test_network(board: config.Board, built: Path, work: Path) -> tuple[list[float], list[Flood]]:
    work.mkdir(exist_ok=True)
    found = []
    with lab_twin(board, built, work) as (net, dev):
        for trial in range(BAN_TRIALS):
            source = f"203.0.113.{60 + trial}"
            net.add_address(INTERNET, source)
            seconds = net.run(INTERNET, [sys.executable, "-m", "tests.bench.banprobe", TWIN, source, "807"]).strip()
            if seconds == "never" or not banned(dev, source):
                raise SystemExit(f"bench-guard: {source} was not banned (probe: {seconds})")
            found.append(float(seconds))
            print(f"  ban latency, trial {trial + 1}: {float(seconds):.2f} s", flush=True)
        secret = secret_of(dev, "808")
        floods = []
        for n, rate in enumerate(FLOOD_RATES):
            floods.append(flood(net, dev, rate, f"203.0.113.{80 + n}", secret))
            print(f"  flood {rate}/s: {floods[-1]}", flush=True)
    return found, floods


def main() -> int:
    cfg = build_config(__doc__)
    out = REPO / "out" / cfg.board.name
    results: dict[int, list[float]] = {}
    nft_times: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        disk, password = boards.prepare_disk(cfg.board, out / "disk.img", work)
        with QemuPower(cfg.board, disk, work) as twin:
            console = SerialConsole(twin.console_url, log=(work / "console.log").open("a"))
            console.login("root", password)
            console.run("systemctl is-active --wait pbx-agent.service", timeout=300)
            for size in SIZES:
                console.run(FILL.replace("{count}", str(size)), timeout=1800).check()
                results[size] = [_apply_seconds(console) for _ in range(RUNS)]
                held = int(console.run(COUNT, timeout=600).check().strip())
                nft_alone = float(console.run(NFT_ALONE, timeout=600).check().split()[-1])
                nft_times[size] = nft_alone
                print(f"  {size:7d} bans ({held} in the set after applying): "
                      f"{', '.join(f'{s:.2f}' for s in results[size])} s; nft -f alone {nft_alone:.2f} s", flush=True)
                if held != size:
                    raise SystemExit(f"bench-guard: {size} bans filled, {held} left after the applies")
            console.close()
        latencies, floods = on_the_test_network(cfg.board, out / "disk.img", work / "lab")
    base = statistics.median(results[0])
    print(f"\nbench-guard: {cfg.board.name} ({cfg.board.qemu.cpu}, TCG, no KVM), `pbxagent firewall apply` "
          f"(nft -c, then nft -f), median of {RUNS}")
    for size in SIZES:
        median = statistics.median(results[size])
        print(f"  {size:7d} banned: {median:5.2f} s  (x{median / base:.2f} of the 0-ban baseline; "
              f"goal {GOAL_APPLY_S:.0f} s, ratio {median / GOAL_APPLY_S:.2f}); the nft transaction alone "
              f"{nft_times[size]:.2f} s")
    median, worst = statistics.median(latencies), max(latencies)
    print(f"  ban latency (10th wrong REGISTER answered -> packets dropped), {BAN_TRIALS} internet addresses: "
          f"median {median:.2f} s, max {worst:.2f} s (goal {GOAL_BAN_S:.0f} s, ratio {median / GOAL_BAN_S:.2f})")
    for f in floods:
        share = f.ok / f.attempts
        times = sorted(f.latencies) or [float("nan")]
        print(f"  REGISTER flood {f.rate}/s for {FLOOD_S} s (sender held {f.held}/s), LAN phone beside it: "
              f"{f.ok}/{f.attempts} registered = {share:.1%} (goal {GOAL_PHONE_OK:.0%}, ratio "
              f"{share / GOAL_PHONE_OK:.2f}); latency median {statistics.median(times) * 1000:.0f} ms, "
              f"max {times[-1] * 1000:.0f} ms; flooding source {'banned' if f.banned else 'NOT banned'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
