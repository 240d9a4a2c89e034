"""A new slot whose kernel does not boot falls back by itself and reports the failure
once. (A slot that boots but fails its health check: tests/device/test_fleet.py, where
the fleet's report of the fallback is checked too.)"""

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
    assert dut.check("journalctl -b -o cat -u pbx-agent | grep -c 'update FAILED'").strip() == "1"
    assert "update FAILED" not in dut.check("pbxagent boot check --wait 5")  # reported once only

