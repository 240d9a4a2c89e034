"""Signed A/B updates on a twin of their own, with real U-Boot reboots: A→B→A from an
HTTP server on the host; every tampered bundle refused before it can do harm; a slot
whose kernel does not boot falls back by itself and the failure is reported once."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbxagent.bundle import Reason
from pbxfw import bundler, keys
from pbxfw.config import BuildConfig
from pbxfw.slot import assemble, fit_offset

from tests.device.bundleserver import BundleServer, serving
from tests.device.conftest import CONSOLE_LOG_KEY
from tests.device.powercut import status, trial
from tests.infra import boards
from tests.infra.power import Wiring
from tests.infra.twin import Device, Twin


def make(dest: Path, payload: Path, signer: Path, *, compatible: str, security: int, version: str) -> Path:
    manifest = bundler.manifest_for(payload, compatible, version, security, "test")
    bundler.write(dest, payload, manifest, [keys.FileSigner(signer)])
    return dest


@pytest.fixture(scope="module")
def dev_key(request: pytest.FixtureRequest) -> Path:
    path = Path(request.config.getoption("--keys")) / "dev.key"
    if not path.is_file():
        pytest.fail(f"{path}: missing; `make image` creates it and the image trusts its public half")
    return path


@pytest.fixture(scope="module")
def bundles(dev_key: Path, out_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every bundle the tests serve, signed on the host like `make bundle` does."""
    work = tmp_path_factory.mktemp("bundles")
    built = json.loads((out_dir / "build.json").read_text())
    slot = out_dir / "rootfs.slot"
    # v2 and v3 raise the floor by one each; the rest carry v3's security version, so
    # they are refused (or accepted) for their defect alone, whichever test runs first.
    good = {"compatible": built["compatible"], "security": built["security_version"] + 2}
    make(work / "v2.bundle", slot, dev_key, version="2.0.0", compatible=good["compatible"],
         security=built["security_version"] + 1)
    make(work / "v3.bundle", slot, dev_key, version="3.0.0", **good)

    data = bytearray((work / "v3.bundle").read_bytes())
    header_end = len(data) - slot.stat().st_size
    flipped = bytearray(data)
    flipped[header_end + 10 * 65536 + 5] ^= 0x40  # in chunk 10
    (work / "flipped.bundle").write_bytes(bytes(flipped))
    (work / "edited.bundle").write_bytes(bytes(data).replace(b'"version":"3.0.0"', b'"version":"9.0.0"'))
    (work / "truncated.bundle").write_bytes(bytes(data[: len(data) // 2]))
    keys.generate(work / "stranger", "stranger")
    make(work / "stranger.bundle", slot, work / "stranger" / "stranger.key", version="2.0.0", **good)
    make(work / "other-board.bundle", slot, dev_key, version="2.0.0", compatible="pbxfw,qemu-u20",
         security=good["security"])
    make(work / "old.bundle", slot, dev_key, version="2.0.0", compatible=good["compatible"], security=0)
    big = work / "big.payload"
    with big.open("wb") as out:
        out.truncate(257 << 20)  # one MiB more than the 256 MiB slot
    make(work / "oversize.bundle", big, dev_key, version="2.0.0", **good)
    big.unlink()

    broken = bytearray(slot.read_bytes())
    kernel_at = fit_offset(bytes(broken[:0x30])) + 0x10000
    broken[kernel_at:kernel_at + 64] = bytes(64)  # the FIT's kernel hash no longer matches
    (work / "broken.payload").write_bytes(bytes(broken))
    make(work / "broken-kernel.bundle", work / "broken.payload", dev_key, version="2.1.0", **good)
    make(work / "unhealthy.bundle", unhealthy_slot(slot, work), dev_key, version="2.2.0", **good)
    return work


def unhealthy_slot(slot: Path, work: Path) -> Path:
    """The same slot with kamailio masked: it boots, and fails its health check."""
    tree = work / "unhealthy-root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", tree, slot], check=True)
    mask = tree / "etc" / "systemd" / "system" / "kamailio.service"
    mask.unlink(missing_ok=True)
    mask.symlink_to("/dev/null")
    squashfs = work / "unhealthy.squashfs"
    subprocess.run(["mksquashfs", tree, squashfs, "-noappend", "-comp", "zstd", "-Xcompression-level", "3",
                    "-quiet", "-no-progress"], check=True)
    shutil.rmtree(tree)
    original = slot.read_bytes()
    fit = work / "slot.fit"
    fit.write_bytes(original[fit_offset(original[:0x30]):])
    dest = work / "unhealthy.payload"
    assemble(squashfs, fit, dest)
    return dest


@pytest.fixture(scope="module")
def server(bundles: Path) -> Iterator[BundleServer]:
    with serving(bundles) as running:
        yield running


@pytest.fixture
def twin(build_config: BuildConfig, out_dir: Path, server: BundleServer, tmp_path: Path) -> Iterator[Twin]:
    """A twin after its first boot, running slot A, with the bundle server in reach."""
    booted = boards.booted_twin(build_config.board, out_dir / "disk.img", tmp_path,
                                Wiring(guestfwd=(server.guestfwd,)))
    yield booted
    booted.power_off()


@pytest.fixture
def twin_console(twin: Twin, request: pytest.FixtureRequest) -> Device:
    request.config.stash[CONSOLE_LOG_KEY] = twin.log_path
    return twin.dut


def install(dut: Device, server: BundleServer, name: str) -> tuple[int, str]:
    result = dut.run(f"pbxagent update install {server.url(name)}", timeout=600)
    return result.status, result.output


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


POWER_CUTS = 3  # `make bench-update` runs 30 (README, Tests)


def test_power_cuts_during_install_and_first_boot_always_leave_a_good_slot(
    twin: Twin, twin_console: Device, server: BundleServer
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    for number in range(POWER_CUTS):
        outcome = trial(twin, server.url("v3.bundle"), during_boot=number % 2 == 1, rng=rng, attempts=3)
        print(f"power cut {number + 1}/{POWER_CUTS} (seed {seed}): {outcome}")
