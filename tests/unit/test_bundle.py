"""The update bundle format: writing and signing (host), every rejection, the parser
under fuzzing, and an install into file-backed slots with the real fw_setenv."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pbxagent import board
from pbxagent.update import bootstate, bundle, health, installer
from pbxagent.update.bundle import Reason, Rejected
from pbxfw.signing import bundler, keys

from tests.device.bundleserver import serving
from tests.unit.agent_tree import make_update_tree

COMPATIBLE = "pbxfw,qemu-u50"
CHUNK = 4096
PAYLOAD = bytes(range(256)) * 160 + b"tail"  # 10 full chunks and a short one


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    keys.generate(directory, "vendor")
    keys.generate(directory / "elsewhere", "stranger")
    return directory


def make_bundle(tmp: Path, keydir: Path, signer: str = "vendor.key", security: int = 3,
                compatible: str = COMPATIBLE, payload: bytes = PAYLOAD, name: str = "b.bundle") -> Path:
    source = tmp / f"{name}.payload"
    source.write_bytes(payload)
    manifest = bundler.manifest_for(source, compatible, "2.0.0", security, "test", chunk_size=CHUNK)
    dest = tmp / name
    bundler.write(dest, source, manifest, [keys.FileSigner(keydir / signer)])
    return dest


def trust(keydir: Path) -> bundle.Trust:
    return bundle.load_trust([keydir])


def rejection(path: Path, keydir: Path) -> Reason:
    with pytest.raises(Rejected) as caught:
        bundle.verify_file(path, trust(keydir))
    return caught.value.reason


def test_a_signed_bundle_verifies_and_its_payload_starts_aligned(tmp_path: Path, keydir: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    header, signer = bundle.verify_file(path, trust(keydir))
    assert signer == keys.FileSigner(keydir / "vendor.key").key_id
    assert header.payload_offset % 4096 == 0
    assert path.read_bytes()[header.payload_offset:] == PAYLOAD
    assert header.manifest.chunks[-1] and len(header.manifest.chunks) == 11


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_payload_bit_names_its_chunk(tmp_path: Path, keydir: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    header, _ = bundle.verify_file(path, trust(keydir))
    flip(path, header.payload_offset + 5 * CHUNK + 17)
    with pytest.raises(Rejected, match="chunk 5 ") as caught:
        bundle.verify_file(path, trust(keydir))
    assert caught.value.reason is Reason.CHUNK_MISMATCH


def test_a_slot_that_reads_back_different_is_a_read_back_failure(tmp_path: Path, keydir: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    header, _ = bundle.verify_file(path, trust(keydir))
    payload = bytearray(path.read_bytes()[header.payload_offset:])
    bundle.verify_payload(header.manifest, lambda offset, length: bytes(payload[offset:offset + length]), "slot")
    payload[len(payload) - 1] ^= 0x01  # the flash returned one bit wrong, in the last chunk
    with pytest.raises(Rejected) as refused:
        bundle.verify_payload(header.manifest, lambda offset, length: bytes(payload[offset:offset + length]),
                              "/dev/vda4 (read back)", Reason.READBACK_MISMATCH)
    last = len(header.manifest.chunks) - 1
    assert refused.value.reason == Reason.READBACK_MISMATCH
    assert str(refused.value).startswith(f"/dev/vda4 (read back): payload chunk {last} ")


def test_an_edited_manifest_breaks_the_signature(tmp_path: Path, keydir: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"security_version":3', b'"security_version":9'))
    assert rejection(path, keydir) is Reason.BAD_SIGNATURE


def test_keys_the_device_does_not_trust_or_has_revoked(tmp_path: Path, keydir: Path) -> None:
    stranger = make_bundle(tmp_path, keydir, signer="elsewhere/stranger.key")
    assert rejection(stranger, keydir) is Reason.UNKNOWN_KEY
    vendor = make_bundle(tmp_path, keydir, name="v.bundle")
    revoked = tmp_path / "revoked"
    revoked.write_text(f"# compromised\n{keys.FileSigner(keydir / 'vendor.key').key_id.hex()}\n")
    with pytest.raises(Rejected) as caught:
        bundle.verify_file(vendor, bundle.load_trust([keydir], [revoked]))
    assert caught.value.reason is Reason.REVOKED_KEY


def test_a_co_signed_bundle_needs_only_one_trusted_signature(tmp_path: Path, keydir: Path) -> None:
    source = tmp_path / "p"
    source.write_bytes(PAYLOAD)
    manifest = bundler.manifest_for(source, COMPATIBLE, "2", 1, "t", chunk_size=CHUNK)
    signers = [keys.FileSigner(keydir / "elsewhere" / "stranger.key"), keys.FileSigner(keydir / "vendor.key")]
    bundler.write(tmp_path / "c.bundle", source, manifest, signers)
    bundle.verify_file(tmp_path / "c.bundle", trust(keydir))


def test_truncated_bundles(tmp_path: Path, keydir: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    whole = path.read_bytes()
    for cut in (10, 200, len(whole) - 1):
        path.write_bytes(whole[:cut])
        assert rejection(path, keydir) is Reason.TRUNCATED, cut


def test_unknown_format_versions_and_foreign_files(tmp_path: Path, keydir: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    data = bytearray(path.read_bytes())
    data[8:12] = (2).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    assert rejection(path, keydir) is Reason.UNKNOWN_FORMAT
    path.write_bytes(b"\x7fELF" + bytes(100))
    assert rejection(path, keydir) is Reason.UNKNOWN_FORMAT


def test_device_checks_board_floor_and_slot_size(tmp_path: Path, keydir: Path) -> None:
    header, _ = bundle.verify_file(make_bundle(tmp_path, keydir), trust(keydir))
    manifest = header.manifest
    bundle.check_target(manifest, COMPATIBLE, floor=3, slot_bytes=len(PAYLOAD))
    cases = [
        (dict(compatible="pbxfw,qemu-u20", floor=0, slot_bytes=1 << 20), Reason.OTHER_BOARD),
        (dict(compatible=COMPATIBLE, floor=4, slot_bytes=1 << 20), Reason.BELOW_FLOOR),
        (dict(compatible=COMPATIBLE, floor=0, slot_bytes=len(PAYLOAD) - 1), Reason.TOO_LARGE),
    ]
    for kwargs, reason in cases:
        with pytest.raises(Rejected) as caught:
            bundle.check_target(manifest, **kwargs)  # type: ignore[arg-type]
        assert caught.value.reason is reason


def test_manifest_fields_are_checked_for_shape(keydir: Path) -> None:
    good = bundle.Manifest(COMPATIBLE, "1", 1, "b", 5000, "0" * 64, 4096, ("1" * 64, "2" * 64))
    assert bundle.parse_manifest(good.encode()) == good
    for field, value in (("payload_size", True), ("chunks", ["x"]), ("chunk_size", 1000), ("payload_size", 9000),
                         ("security_version", -1), ("extra", 1)):
        data = json.loads(good.encode())
        data[field] = value
        with pytest.raises(Rejected) as caught:
            bundle.parse_manifest(json.dumps(data).encode())
        assert caught.value.reason is Reason.MALFORMED, field


def test_a_bad_revoked_list_is_named_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "revoked").write_text("# ok\nnot-hex\n")
    with pytest.raises(ValueError, match=r"revoked:2: not a key id"):
        bundle.load_trust([tmp_path])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_fuzzed_headers_are_only_ever_rejected_cleanly(raw: bytes) -> None:
    with contextlib.suppress(Rejected):
        bundle.parse_header(bundle.MAGIC + (1).to_bytes(4, "big") + raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(bundle.MANIFEST_FIELDS), "x"]), json_values))
def test_fuzzed_manifests_are_only_ever_rejected_cleanly(fields: dict[str, object]) -> None:
    with contextlib.suppress(Rejected):
        bundle.parse_manifest(json.dumps(fields).encode())


def test_boot_state_transitions() -> None:
    start = bootstate.BootState.from_env({"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"})
    writing = bootstate.mark_bad(start, "B")
    assert writing.to_env() == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}
    trial = bootstate.mark_active(writing, "B", 3)
    assert trial.to_env() == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    fell_back = bootstate.mark_good(trial.with_attempts("B", 0), "A", 3)
    assert fell_back.to_env() == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}
    garbage = bootstate.BootState.from_env({"BOOT_ORDER": "C", "BOOT_A_LEFT": "x"})
    assert garbage.order == ("A", "B") and garbage.attempts("A") == 0


# --- an install on the host: file-backed slots and boot state, the real fw_setenv -----


@pytest.fixture
def device_tree(tmp_path: Path, keydir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    make_update_tree(root, tmp_path, keydir / "vendor.pub", COMPATIBLE, len(PAYLOAD) + 8192)
    monkeypatch.setenv("PBXAGENT_ROOT", str(root))
    return root


def test_install_writes_the_other_slot_and_switches_to_it(tmp_path: Path, keydir: Path, device_tree: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    message = installer.install(str(path))
    assert "slot B holds 2.0.0" in message
    assert Path(board.load().slots["B"]).read_bytes()[:len(PAYLOAD)] == PAYLOAD
    assert Path(board.load().slots["A"]).read_bytes() == b"\xee" * (len(PAYLOAD) + 8192)
    assert bootstate.read().to_env() == {"BOOT_ORDER": "B A", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    pending = installer.load_state().pending
    assert pending is not None and pending.slot == "B"

    # The new slot boots, is healthy: committed, floor raised to the bundle's.
    (device_tree / "run" / "pbx" / "slot").write_text("B\n")
    state, lines = health.settle_pending(installer.load_state(), "B")
    assert lines == []
    state, lines = health.commit(state, "B")
    assert any("security floor raised to 3" in line for line in lines)
    assert state.floor == 3 and state.pending is None
    assert state.last_result is not None and state.last_result.result == "installed"


def test_a_bad_chunk_is_never_written_and_a_refusal_changes_nothing(tmp_path: Path, keydir: Path,
                                                                     device_tree: Path) -> None:
    path = make_bundle(tmp_path, keydir)
    header, _ = bundle.verify_file(path, trust(keydir))
    flip(path, header.payload_offset + 5 * CHUNK)
    with pytest.raises(Rejected) as caught:
        installer.install(str(path))
    assert caught.value.reason is Reason.CHUNK_MISMATCH
    slot_b = Path(board.load().slots["B"]).read_bytes()
    assert slot_b[:5 * CHUNK] == PAYLOAD[:5 * CHUNK] and slot_b[5 * CHUNK:6 * CHUNK] == b"\xee" * CHUNK
    assert bootstate.read().to_env() == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "0"}

    before = (tmp_path / "bootstate").read_bytes()
    other_board = make_bundle(tmp_path, keydir, compatible="pbxfw,qemu-u20", name="o.bundle")
    with pytest.raises(Rejected):
        installer.install(str(other_board))
    assert (tmp_path / "bootstate").read_bytes() == before


def test_an_interrupted_download_resumes_at_the_last_durable_chunk(tmp_path: Path, keydir: Path, device_tree: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installer, "SYNC_EVERY", 4)
    monkeypatch.setattr(installer, "BATCH_BYTES", 4 * CHUNK)
    path = make_bundle(tmp_path, keydir)
    with serving(path.parent) as server:
        url = server.host_url(path.name)
        server.cut_after[path.name] = 9 * CHUNK + 100  # the connection drops inside chunk 9
        with pytest.raises(Rejected) as caught:
            installer.install(url)
        assert caught.value.reason is Reason.TRUNCATED
        progress = json.loads((device_tree / "data" / "pbx" / "update" / "progress.json").read_text())
        assert progress["next_chunk"] == 8
        writes: list[int] = []
        real_pwrite = os.pwrite

        def pwrite(fd: int, data: memoryview, offset: int) -> int:
            writes.append(offset)
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", pwrite)
        installer.install(url)  # a Range request from the first chunk not yet durable
    assert min(writes) == 8 * CHUNK
    assert Path(board.load().slots["B"]).read_bytes()[:len(PAYLOAD)] == PAYLOAD
