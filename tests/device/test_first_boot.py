"""First boots on twins of their own: an upgraded old box whose root password is the
last 8 characters of its MAC, with the power cut in the middle of provisioning; and
two first boots of the same image, which must not share a secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pbxagent.passwords import Account, Kind, generate
from pbxfw import target
from pbxfw.config import BuildConfig
from pbxfw.console import SerialConsole

from tests.device.dut import Device

pytestmark = pytest.mark.own_twin

OLD_BOX_MAC = "52:54:00:9a:bc:de"
OLD_BOX_PASSWORD = "009ABCDE"  # the old firmware's rule: the MAC's last 8 characters


def secrets_of(dut: Device) -> set[str]:
    """Every extension secret of a twin (test twins only: they die with the test)."""
    rows = json.loads(dut.check("pbxagent extensions list --json --show-secrets"))
    return {row["secret"] for row in rows}


first_boot_secrets: dict[str, set[str]] = {}


def test_old_box_mac_password_is_rotated_even_across_a_power_cut(
    build_config: BuildConfig, out_dir: Path, tmp_path: Path, twin_log: Path
) -> None:
    board = build_config.board
    disk, _ = target.prepare_disk(board, out_dir / "disk.img", tmp_path, password=OLD_BOX_PASSWORD)
    with twin_log.open("a") as log, target.QemuTarget(board, disk, tmp_path / "qemu.log", mac=OLD_BOX_MAC) as twin:
        console = SerialConsole(twin.console_url, log=log)
        one_time = console.expect(r"one-time root password: (\S+)", 300, "the rotated password").group(1)
        console.expect("root password was derived from a MAC address: rotated", 60, "the rotation step")
        twin.power_cut()  # extension secrets are still being made
        console.close()

    with twin_log.open("a") as log, target.QemuTarget(board, disk, tmp_path / "qemu.log", mac=OLD_BOX_MAC) as twin:
        dut = Device(twin.console_url, one_time, twin_log)
        dut.console.expect("pbxagent: first-boot provisioning complete", 300, "provisioning finished by boot 2")
        new_password = generate(Kind.ADMIN, Account(user="root"))
        dut.console.login("root", one_time, new_password=new_password)
        second_boot = dut.boot_log().split("first-boot provisioning complete")[0].rsplit("U-Boot 20", 1)[-1]
        assert "one-time root password" not in second_boot  # shown once, kept, not regenerated
        dut.check("for i in $(seq 60); do pbxagent root status | grep -q user-set && break; sleep 0.5; done")
        assert dut.check("pbxagent root status").strip() == "root: user-set"
        report = json.loads(dut.run("pbxagent audit --json 2>/dev/null", timeout=120).output)
        assert [c for c in report["checks"] if not c["passed"]] == []
        first_boot_secrets["old box"] = secrets_of(dut)
        dut.close()


def test_two_first_boots_of_one_image_share_no_secret(device: Device) -> None:
    assert "old box" in first_boot_secrets, "the old-box first boot did not get as far as its secrets"
    ours = secrets_of(device)
    assert len(ours) == 10 and len(first_boot_secrets["old box"]) == 10
    assert ours.isdisjoint(first_boot_secrets["old box"])
