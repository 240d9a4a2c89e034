"""A new slot that cannot serve falls back by itself: a kernel that does not boot, and a
system that boots but fails its health check. Both report the failure once."""

from __future__ import annotations

from tests.device.bundleserver import BundleServer
from tests.device.powercut import status
from tests.device.updates import install
from tests.infra.twin import Device


def test_a_kernel_that_does_not_boot_falls_back_and_is_reported_once(twin_console: Device,
                                                                     server: BundleServer) -> None:
    dut = twin_console
    running = status(dut)["running_slot"]
    code, output = install(dut, server, "broken-kernel.bundle")
    assert code == 0, output
    dut.console.send("systemctl reboot\r")
    for _ in range(3):
        dut.console.expect("did not boot, resetting", 180, "the broken slot's failed boot")
    dut.console.expect("U-Boot 20", 120, "U-Boot after the last failed attempt")
    dut.login()
    after = status(dut)
    assert after["running_slot"] == running
    assert after["last_result"]["result"] == "failed" and after["last_result"]["version"] == "2.1.0"
    assert after["boot_order"][0] == running
    assert dut.check("journalctl -b -o cat -u pbx-boot-ok | grep -c 'update FAILED'").strip() == "1"
    assert "update FAILED" not in dut.check("pbxagent boot check --wait 5")  # reported once only


def test_an_unhealthy_new_slot_falls_back_by_itself(twin_console: Device, server: BundleServer) -> None:
    dut = twin_console
    running = status(dut)["running_slot"]
    other = "B" if running == "A" else "A"
    code, output = install(dut, server, "unhealthy.bundle")
    assert code == 0, output
    dut.console.send("systemctl reboot\r")
    for attempt in range(3):
        dut.console.expect(f"booting slot {other}", 180, f"attempt {attempt + 1} on the unhealthy slot")
    dut.console.expect(f"booting slot {running}", 300, "the old slot after the attempts ran out")
    dut.login()
    after = status(dut)
    assert after["running_slot"] == running and after["boot_order"][0] == running
    assert after["last_result"]["result"] == "failed" and after["last_result"]["version"] == "2.2.0"
    assert after["attempts_left"][running] == 3 and after["attempts_left"][other] == 0
