"""What the update tests share: the bundles they serve (signed on the host like `make
bundle` does, good and tampered), the loopback HTTP server the twin reaches through
QEMU's guestfwd, and a booted twin with that server in reach. Built once per session."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pbxfw.config import BuildConfig
from pbxfw.image.slot import assemble, fit_offset
from pbxfw.signing import bundler, keys

from tests.device.bundleserver import BundleServer, serving
from tests.infra import boards
from tests.infra.power import Wiring
from tests.infra.twin import CONSOLE_LOG_KEY, Device, Twin


def make(dest: Path, payload: Path, signer: Path, *, compatible: str, security: int, version: str) -> Path:
    manifest = bundler.manifest_for(payload, compatible, version, security, "test")
    bundler.write(dest, payload, manifest, [keys.FileSigner(signer)])
    return dest


@pytest.fixture(scope="session")
def dev_key(request: pytest.FixtureRequest) -> Path:
    path = Path(request.config.getoption("--keys")) / "dev.key"
    if not path.is_file():
        pytest.fail(f"{path}: missing; `make image` creates it and the image trusts its public half")
    return path


@pytest.fixture(scope="session")
def bundles(dev_key: Path, out_dir: Path, other_board: BuildConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
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
    make(work / "other-board.bundle", slot, dev_key, version="2.0.0", compatible=other_board.board.compatible,
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


@pytest.fixture(scope="session")
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
    (tmp_path / "disk.qcow2").unlink(missing_ok=True)


@pytest.fixture
def twin_console(twin: Twin, request: pytest.FixtureRequest) -> Device:
    request.config.stash[CONSOLE_LOG_KEY] = twin.log_path
    return twin.dut


def install(dut: Device, server: BundleServer, name: str) -> tuple[int, str]:
    result = dut.run(f"pbxagent update install {server.url(name)}", timeout=600)
    return result.status, result.output
