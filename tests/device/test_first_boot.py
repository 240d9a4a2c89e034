"""First boots for real: an upgraded old box whose root password is the last 8
characters of its MAC, with the power cut in the middle of provisioning; and two first
boots of the same image, which must not share a secret."""

from __future__ import annotations

import json
from pathlib import Path

from pbxagent.credentials.passwords import Account, Kind, generate
from pbxfw.config import BuildConfig
from pbxfw.console import SerialConsole

from tests.infra import boards
from tests.infra.power import Wiring
from tests.infra.twin import Device

OLD_BOX_MAC = "52:54:00:9a:bc:de"
OLD_BOX_PASSWORD = "009ABCDE"  # the old firmware's rule: the MAC's last 8 characters


def secrets_of(dut: Device) -> set[str]:
    """Every extension secret of a twin (test twins only: they die with the test)."""
    rows = json.loads(dut.check("pbxagent extensions list --json --show-secrets"))
    return {row["secret"] for row in rows}


def test_old_box_mac_password_is_rotated_even_across_a_power_cut(
    build_config: BuildConfig, out_dir: Path, tmp_path: Path, twin_log: Path
) -> None:
    twin = boards.fresh_twin(build_config.board, out_dir / "disk.img", tmp_path, password=OLD_BOX_PASSWORD,
                             wiring=Wiring(mac=OLD_BOX_MAC))
    power = twin.power
    power.on()
    with twin_log.open("a") as log:
        console = SerialConsole(power.console_url, log=log)
        # Up to the line's end: the console delivers the line in pieces, and (\S+) alone
        # would match whatever part of the password had arrived.
        one_time = console.expect(r"one-time root password: (\S+)\r?\n", 300, "the rotated password").group(1)
        console.expect("root password was derived from a MAC address: rotated", 60, "the rotation step")
        power.cut()  # extension secrets are still being made
        console.close()

    power.on()
    dut = Device(power.console_url, one_time, twin_log)
    try:
        dut.console.expect("pbxagent: first-boot provisioning complete", 300, "provisioning finished by boot 2")
        new_password = generate(Kind.ADMIN, Account(user="root"))
        dut.console.login("root", one_time, new_password=new_password)
        second_boot = dut.boot_log().split("first-boot provisioning complete")[0].rsplit("U-Boot 20", 1)[-1]
        assert "one-time root password" not in second_boot  # shown once, kept, not regenerated
        dut.check("for i in $(seq 60); do pbxagent root status | grep -q user-set && break; sleep 0.5; done")
        assert dut.check("pbxagent root status").strip() == "root: user-set"
        report = json.loads(dut.run("pbxagent audit --json 2>/dev/null", timeout=120).output)
        assert [c for c in report["checks"] if not c["passed"]] == []
    finally:
        dut.close()
        power.off()


def test_two_first_boots_of_one_image_share_no_secret(build_config: BuildConfig, out_dir: Path,
                                                      tmp_path: Path) -> None:
    """The snapshot's first boot and a first boot now, of the same image."""
    image = out_dir / "disk.img"
    restored = boards.booted_twin(build_config.board, image, tmp_path / "restored")
    try:
        theirs = secrets_of(restored.dut)
    finally:
        restored.power_off()
    fresh = boards.fresh_twin(build_config.board, image, tmp_path / "fresh")
    try:
        ours = secrets_of(fresh.power_on())
    finally:
        fresh.power_off()
    assert len(ours) == 10 and len(theirs) == 10
    assert ours.isdisjoint(theirs)
