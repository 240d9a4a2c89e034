"""Signed A/B updates on booted twins, with real U-Boot reboots: A→B→A from an HTTP
server on the host; every tampered bundle refused before it can do harm; power cuts at
random moments of an install and of the new slot's first boot always leave a good slot.
Bundles, server and twin: tests/device/updates.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

from pbxagent.update.bundle import Reason
from pbxfw.signing import keys

from tests.device.bundleserver import BundleServer
from tests.device.powercut import status, trial
from tests.device.updates import install
from tests.infra.twin import Device, Twin


def test_update_a_to_b_then_b_to_a(twin_console: Device, server: BundleServer) -> None:
    dut = twin_console
    before = status(dut)
    assert before["running_slot"] == "A" and before["pending"] is None
    code, output = install(dut, server, "v2.bundle")
    assert code == 0, output
    assert "bytes (100 %)" in output and "slot B holds 2.0.0" in output
    assert status(dut)["boot_order"] == ["B", "A"]

    dut.reboot()
    after = status(dut)
    assert after["running_slot"] == "B"
    assert after["last_result"]["result"] == "installed" and after["last_result"]["version"] == "2.0.0"
    assert after["security_floor"] == before["security_floor"] + 1
    assert after["attempts_left"]["B"] == 3

    code, output = install(dut, server, "v3.bundle")
    assert code == 0, output
    dut.reboot()
    back = status(dut)
    assert back["running_slot"] == "A" and back["slots"]["A"]["version"] == "3.0.0"
    assert back["security_floor"] == before["security_floor"] + 2


REFUSED = [
    ("edited.bundle", Reason.BAD_SIGNATURE),
    ("stranger.bundle", Reason.UNKNOWN_KEY),
    ("other-board.bundle", Reason.OTHER_BOARD),
    ("old.bundle", Reason.BELOW_FLOOR),
    ("truncated.bundle", Reason.TRUNCATED),
    ("oversize.bundle", Reason.TOO_LARGE),
]


def slot_hash(dut: Device, slot: str, offset: int = 0, length: int = 0) -> str:
    device = json.loads(dut.check("cat /etc/pbxfw/board.json"))["slots"][slot]
    if length:
        command = f"dd if={device} bs=64K skip={offset // 65536} count={length // 65536} 2>/dev/null | sha256sum"
    else:
        command = f"sha256sum {device}"
    return dut.check(command, timeout=300).split()[0]


def test_tampered_bundles_are_refused_and_change_nothing(twin_console: Device, server: BundleServer,
                                                        dev_key: Path) -> None:
    dut = twin_console
    running = status(dut)["running_slot"]
    other = "B" if running == "A" else "A"
    active_before = slot_hash(dut, running)
    env_before = dut.check("fw_printenv")
    for name, reason in REFUSED:
        code, output = install(dut, server, name)
        assert code == reason, f"{name}: {output}"
        assert dut.check("fw_printenv") == env_before, name

    dut.check(f"echo {keys.FileSigner(dev_key).key_id.hex()} > /data/pbx/update/revoked")
    code, output = install(dut, server, "v3.bundle")
    dut.check("rm /data/pbx/update/revoked")
    assert code == Reason.REVOKED_KEY, output
    assert dut.check("fw_printenv") == env_before

    bad_chunk_before = slot_hash(dut, other, 10 * 65536, 65536)
    code, output = install(dut, server, "flipped.bundle")
    assert code == Reason.CHUNK_MISMATCH and "chunk 10 " in output, output
    assert slot_hash(dut, other, 10 * 65536, 65536) == bad_chunk_before  # not one byte of it written
    env = status(dut)
    assert env["boot_order"][0] == running and env["attempts_left"][other] == 0  # never boots half-written
    assert slot_hash(dut, running) == active_before


POWER_CUTS = 2  # one in an install, one in a first boot; `make bench-update` runs 30 (docs/testing.md)


def test_power_cuts_during_install_and_first_boot_always_leave_a_good_slot(
    twin: Twin, twin_console: Device, server: BundleServer
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    for number in range(POWER_CUTS):
        outcome = trial(twin, server.url("v3.bundle"), during_boot=number % 2 == 1, rng=rng, attempts=3)
        print(f"power cut {number + 1}/{POWER_CUTS} (seed {seed}): {outcome}")
