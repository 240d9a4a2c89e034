"""A twin that can lose power, and the power-cut trial the update test and
`make bench-update` share: cut the power at a random moment of an install or of the
new slot's first boot, power on, and check a good slot booted with a valid state."""

from __future__ import annotations

import json
import random
import time
from typing import Any

from tests.infra.twin import BOOT_VERDICT, Device, Twin


def status(dut: Device) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(dut.check("pbxagent update status --json 2>/dev/null"))
    return result


def trial(twin: Twin, url: str, during_boot: bool, rng: random.Random, attempts: int) -> str:
    """One cut; returns what happened. Raises AssertionError when the box is not good."""
    dut = twin.dut
    before = status(dut)["running_slot"]
    if during_boot:
        result = dut.run(f"pbxagent update install {url}", timeout=600)
        assert result.status == 0, result.output
        dut.console.send("systemctl reboot\r")
        dut.console.expect("Starting kernel", 180, "the new slot's kernel")
        delay = rng.uniform(0.0, 25.0)
        what = f"first boot of the new slot, {delay:.1f} s after the kernel started"
    else:
        dut.console.send(f"pbxagent update install {url} >/dev/null 2>&1\r")
        delay = rng.uniform(0.5, 9.0)
        what = f"install, {delay:.1f} s after it started"
    time.sleep(delay)
    twin.power_cut()
    dut = twin.power_on()  # logged in: boot finished, health check done
    after = status(dut)
    running = after["running_slot"]
    assert after["pending"] is None, f"cut during {what}: an update is still pending on slot {running}"
    assert after["attempts_left"][running] == attempts, f"cut during {what}: slot {running} not marked good"
    assert after["boot_order"][0] == running and sorted(after["boot_order"]) == ["A", "B"]
    if not during_boot and running != before:  # the install had finished: then it must be committed
        last = after["last_result"]
        assert last["result"] == "installed" and last["slot"] == running, f"cut during {what}: {last}"
    verdict = json.loads(dut.check(f"cat {BOOT_VERDICT}"))
    assert verdict["healthy"], f"cut during {what}: health check failed: {verdict['lines']}"
    return f"cut during {what}: slot {running} booted and is good"
