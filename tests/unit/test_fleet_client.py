"""The box's side of fleet updates on the host: pbxagent's TUF client against a real
repository (pbxfw repo) served over loopback HTTP, installing into file-backed slots
with the real fw_setenv. Every attack leaves the slots, the boot state and the floor
as they were; the reports reach a collector signed and wait while it is down."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pbxagent import board
from pbxagent.errors import PolicyError
from pbxagent.policy import site
from pbxagent.policy.updates import UpdatePolicy, Window
from pbxagent.update import bootstate, bundle, fleet, health, installer, report
from pbxagent.update.fetcher import Limits, TargetSource
from pbxagent.update.rollout import Rollout
from pbxagent.update.state import Pending, Release, Result
from pbxfw.fleet import repository
from pbxfw.signing import bundler, keys
from tuf.api.metadata import TargetFile

from tests.unit.agent_tree import make_update_tree

BOARD = "qemu-u50"
COMPATIBLE = f"pbxfw,{BOARD}"
PAYLOAD_SIZE = 300_000
SLOT_SIZE = PAYLOAD_SIZE + 8192


class Mirror(http.server.SimpleHTTPRequestHandler):
    """The repository's static files with byte ranges, as nginx serves them;
    `misbehave` makes a file chunky (short reads), endless, trickling or silent."""

    misbehave: ClassVar[dict[str, str]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        mode = next((m for name, m in self.misbehave.items() if self.path.endswith(name)), None)
        if mode == "silent":
            time.sleep(3)
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-"))
        self.send_response(206 if start else 200)
        if mode in (None, "chunky"):
            self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        try:
            if mode == "chunky":  # as a slow link delivers it: reads come back short
                for offset in range(start, len(data), 4096):
                    self.wfile.write(data[offset:offset + 4096])
                    self.wfile.flush()
                    time.sleep(0.001)
                return
            self.wfile.write(data[start:])
            for _ in range(20_000 if mode else 0):
                self.wfile.write(b"\0" * (1 << 16) if mode == "endless" else b"\0")
                if mode == "trickle":
                    time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def repo(tmp_path: Path) -> repository.Repo:
    return repository.init(tmp_path / "repo", tmp_path / "repo-keys")


@pytest.fixture
def misbehave() -> dict[str, str]:
    """File name ending -> chunky, endless, trickle or silent, for the mirror serving it."""
    return {}


@pytest.fixture
def served(repo: repository.Repo, misbehave: dict[str, str]) -> Iterator[str]:
    handler = type("Handler", (Mirror,), {"misbehave": misbehave})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(repo.path)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def signing(tmp_path: Path) -> Path:
    keys.generate(tmp_path / "sign", "vendor")
    return tmp_path / "sign" / "vendor.key"


@pytest.fixture
def box(tmp_path: Path, repo: repository.Repo, signing: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A device tree trusting the bundle key and the repository's root, provisioned."""
    root = tmp_path / "box"
    make_update_tree(root, tmp_path, signing.with_suffix(".pub"), COMPATIBLE, SLOT_SIZE)
    anchor = root / "usr" / "share" / "pbxfw" / "tuf" / "root.json"
    anchor.parent.mkdir(parents=True)
    anchor.write_bytes((repo.metadata / "root.json").read_bytes())
    monkeypatch.setenv("PBXAGENT_ROOT", str(root))
    report.ensure_identity()
    return root


def policy(url: str, **changes: object) -> UpdatePolicy:
    return UpdatePolicy(url, 3600, 0, Window(0, 0), "auto", "")._replace(**changes)  # type: ignore[arg-type]


def poll(url: str) -> fleet.Poll:
    """What the box finds at `url` now."""
    return fleet.poll(policy(url), board.load(), int(time.time()))


def make_bundle(tmp_path: Path, signing: Path, version: str, security: int = 3, compatible: str = COMPATIBLE,
                build_id: str = "test") -> Path:
    payload = tmp_path / f"payload-{version}-{build_id}"
    payload.write_bytes(random.Random(version).randbytes(PAYLOAD_SIZE))
    dest = tmp_path / f"{version}-{build_id}.bundle"
    manifest = bundler.manifest_for(payload, compatible, version, security, build_id, chunk_size=4096)
    bundler.write(dest, payload, manifest, [keys.FileSigner(signing)])
    return dest


def untouched() -> None:
    """Slots, boot state and floor as the box had them before."""
    slots = board.load().slots
    assert Path(slots["B"]).read_bytes() == b"\xee" * SLOT_SIZE
    assert bootstate.read().to_env() == {"BOOT_ORDER": "A B", "BOOT_A_LEFT": "3", "BOOT_B_LEFT": "3"}
    assert installer.load_state().floor == 0 and installer.load_state().pending is None


def release(repo: repository.Repo, tmp_path: Path, signing: Path, percent: float = 100, **bundle: object) -> Path:
    path = make_bundle(tmp_path, signing, "2.0.0", **bundle)  # type: ignore[arg-type]
    repository.add(repo, path)
    repository.rollout(repo, BOARD, "2.0.0", percent)
    return path


def test_a_release_rolled_out_to_the_box_is_installed(repo: repository.Repo, served: str, box: Path,
                                                    tmp_path: Path, signing: Path, misbehave: dict[str, str]) -> None:
    bundle = release(repo, tmp_path, signing)
    misbehave[".bundle"] = "chunky"
    found = poll(served)
    assert found.status == "offered", found.detail
    assert "slot B holds 2.0.0" in fleet.apply(found)
    header_and_payload = bundle.read_bytes()
    assert Path(board.load().slots["B"]).read_bytes()[:PAYLOAD_SIZE] == header_and_payload[-PAYLOAD_SIZE:]
    pending = installer.load_state().pending
    assert pending is not None and pending.release.version == "2.0.0" and pending.from_version == "1.0.0"
    assert bootstate.read().order == ("B", "A")
    held = fleet.metadata_summary()
    assert held["timestamp"]["version"] == repo.load("timestamp").signed.version and set(held) == set(fleet.ROLES)


def test_zero_percent_and_a_paused_rollout_install_nothing(repo: repository.Repo, served: str, box: Path,
                                                           tmp_path: Path, signing: Path) -> None:
    release(repo, tmp_path, signing, percent=0)
    found = poll(served)
    assert found.status == "waiting" and "out to 0.0 %" in found.detail and found.decision is not None
    assert found.decision.bucket is not None and 0 <= found.decision.bucket < 10_000
    repository.rollout(repo, BOARD, "2.0.0", 100, paused=True)
    found = poll(served)
    assert found.status == "waiting" and "paused" in found.detail
    untouched()


def test_the_timer_installs_only_inside_the_window_and_asks_for_the_reboot(
        repo: repository.Repo, served: str, box: Path, tmp_path: Path, signing: Path) -> None:
    release(repo, tmp_path, signing)
    now = int(time.time()) + 60
    later = time.localtime(now + 2 * 3600)
    opens = later.tm_hour * 60 + later.tm_min
    window = policy(served, window=Window(opens, (opens + 60) % 1440))  # in two hours, for one
    lines, reboot = fleet.timer(window, now, random.Random(1))
    assert not reboot and "outside the maintenance window" in lines[-1]
    untouched()
    written = fleet.schedule_path().stat().st_ino  # an atomic write is a new inode
    lines, reboot = fleet.timer(window, now + 60, random.Random(1))
    assert not reboot and lines[-1].startswith("next poll in ")  # polled a minute ago: not due again yet
    assert fleet.schedule_path().stat().st_ino == written  # an idle wake-up writes nothing
    lines, reboot = fleet.timer(window, now + 2 * 3600 + 60, random.Random(1))  # due: the wait was < 2 h
    assert reboot and "slot B holds 2.0.0" in lines[-1]


def test_a_frozen_repository_is_stale_not_up_to_date(repo: repository.Repo, served: str, box: Path,
                                                    tmp_path: Path, signing: Path) -> None:
    release(repo, tmp_path, signing)
    repository.timestamp(repo, now=datetime.now(UTC) - timedelta(days=2))  # a mirror replaying old metadata
    found = poll(served)
    assert found.status == "stale" and "expired" in found.detail
    untouched()


def test_a_clock_before_the_build_polls_nothing(repo: repository.Repo, served: str, box: Path) -> None:
    found = fleet.poll(policy(served), board.load(), board.load().built - 1)
    assert found.status == "clock"
    assert not (fleet.tuf_dir() / "timestamp.json").exists()


def test_rolled_back_metadata_is_refused(repo: repository.Repo, served: str, box: Path, tmp_path: Path,
                                         signing: Path) -> None:
    old = (repo.metadata / "timestamp.json").read_bytes()
    release(repo, tmp_path, signing, percent=0)
    assert poll(served).status == "waiting"
    (repo.metadata / "timestamp.json").write_bytes(old)
    found = poll(served)
    assert found.status == "refused" and "BadVersionNumberError" in found.detail
    untouched()


def publish_rollout(repo: repository.Repo, policy_: Rollout, role_key: str = "rollout") -> None:
    """A rollout file as someone holding `role_key` would publish it."""
    data = policy_.to_json().encode()
    ro = repo.load("rollout")
    target = TargetFile.from_data(f"rollout/{BOARD}.json", data, ["sha256"])
    (repo.targets / "rollout").mkdir(exist_ok=True)
    (repo.targets / "rollout" / f"{target.hashes['sha256']}.{BOARD}.json").write_bytes(data)
    ro.signed.targets[target.path] = target
    ro.signed.version += 1
    ro.signatures.clear()
    ro.sign(repository.AdaptedSigner(keys.FileSigner(repo.key_dir / f"{role_key}.key")))
    ro.to_file(str(repo.metadata / f"{ro.signed.version}.rollout.json"))
    repo.publish(["rollout"])


def test_a_rollout_signed_by_the_releases_key_is_not_a_rollout(repo: repository.Repo, served: str, box: Path,
                                                               tmp_path: Path, signing: Path) -> None:
    release(repo, tmp_path, signing, percent=0)
    assert poll(served).status == "waiting"
    target = repo.load("rollout").signed.targets[f"rollout/{BOARD}.json"]
    current = Rollout.from_json(next((repo.targets / "rollout").glob(f"{target.hashes['sha256']}.*")).read_bytes(),
                                "rollout")
    publish_rollout(repo, dataclasses.replace(current, percent=100.0), role_key="releases")
    found = poll(served)
    assert found.status == "refused" and "UnsignedMetadataError" in found.detail
    untouched()


def test_a_target_for_another_board_is_refused(repo: repository.Repo, served: str, box: Path, tmp_path: Path,
                                              signing: Path) -> None:
    other = make_bundle(tmp_path, signing, "2.0.0", compatible="pbxfw,qemu-u20")
    repository.add(repo, other)
    path = "qemu-u20/pbxfw-qemu-u20-2.0.0.bundle"
    sha = repo.load("releases").signed.targets[path].hashes["sha256"]
    publish_rollout(repo, Rollout(path, BOARD, path, sha, 100, 0, False))  # a rollout key gone astray
    found = poll(served)
    assert found.status == "refused" and "pbxfw,qemu-u20" in found.detail
    untouched()


def test_a_bundle_that_disagrees_with_its_target_is_refused_before_a_write(
        repo: repository.Repo, served: str, box: Path, tmp_path: Path, signing: Path) -> None:
    release(repo, tmp_path, signing)
    (stored,) = (repo.targets / BOARD).glob("*.bundle")
    # Same length, same signing key, another build: its signature is good, its manifest
    # is not the one the releases role signed.
    stored.write_bytes(make_bundle(tmp_path, signing, "2.0.0", build_id="tset").read_bytes())
    found = poll(served)
    assert found.status == "offered"
    with pytest.raises(bundle.Rejected, match="disagrees with its TUF target on build_id, manifest_sha256"):
        fleet.apply(found)
    untouched()


def test_endless_data_is_cut_at_the_target_length(repo: repository.Repo, served: str, box: Path, tmp_path: Path,
                                                  signing: Path, misbehave: dict[str, str]) -> None:
    release(repo, tmp_path, signing)
    misbehave[".bundle"] = "endless"
    found = poll(served)
    assert "slot B holds 2.0.0" in fleet.apply(found)  # the right bytes, and no more were read
    misbehave["timestamp.json"] = "endless"
    found = poll(served)
    assert found.status == "unreachable" and "exceeding the maximum allowed length" in found.detail


def test_a_trickling_or_silent_server_times_out(repo: repository.Repo, served: str, box: Path, tmp_path: Path,
                                                signing: Path, misbehave: dict[str, str]) -> None:
    release(repo, tmp_path, signing)
    found = poll(served)
    misbehave[".bundle"] = "trickle"
    source = TargetSource(found.target_url, PAYLOAD_SIZE * 2, Limits(timeout=2, min_rate=1 << 20, grace=0.5))
    with pytest.raises(OSError, match="B/s"), source.open_at(0) as stream:
        while stream.read(1 << 16):
            pass
    misbehave["timestamp.json"] = "silent"
    started = time.monotonic()
    slow = fleet.poll(policy(served), board.load(), int(time.time()), Limits(timeout=1))
    assert slow.status == "unreachable" and time.monotonic() - started < 10
    untouched()


def test_decisions(box: Path) -> None:
    info = board.load()
    rollout = Rollout("r", BOARD, "t", "s" * 64, 100, 0, False)
    custom = {"compatible": COMPATIBLE, "version": "2.0.0", "security_version": 3, "build_id": "b"}
    offer = fleet.Candidate("t", 1, "s" * 64, custom)
    running = Release("1.0.0", 2)
    assert fleet.decide(info, 2, running, None, "d", 1, rollout, offer).install
    assert fleet.decide(info, 2, running, None, "d", 1, None, None).status == "none"
    assert "below this box's floor 4" in fleet.decide(info, 4, running, None, "d", 1, rollout, offer).detail
    assert fleet.decide(info, 2, Release("2.0.0", 3, "b"), None, "d", 1, rollout, offer).status == "current"
    assert "not retried" in fleet.decide(info, 2, running, "2.0.0", "d", 1, rollout, offer).detail
    assert "not its release's" in fleet.decide(info, 2, running, None, "d", 1, rollout,
                                               offer._replace(sha256="x" * 64)).detail
    later = dataclasses.replace(rollout, start=5)
    assert "starts at" in fleet.decide(info, 2, running, None, "d", 1, later, offer).detail


def test_the_schedule_spreads_polls_and_waits_after_a_boot(box: Path) -> None:
    pol = policy("http://repo", interval=3600, boot_delay=900)
    rng = random.Random(7)
    is_due, schedule = fleet.due({}, pol, 1000, rng)
    assert not is_due and 1000 <= schedule["next_poll"] <= 1900
    assert fleet.due(schedule, pol, schedule["next_poll"], rng)[0]
    assert Window(22 * 60, 4 * 60).contains(23 * 60) and Window(22 * 60, 4 * 60).contains(60)
    assert not Window(22 * 60, 4 * 60).contains(12 * 60) and Window(0, 0).contains(12 * 60)


class Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, object]]] = []
    answer = 200

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = self.answer  # once: the test changes it while this thread may still run
        self.send_response(answer)
        self.end_headers()
        if answer == 200:
            self.received.append(json.loads(body))


def test_a_settled_update_is_reported_signed_after_the_reboot_and_kept_while_the_collector_is_down(
        box: Path) -> None:
    handler: type[Collector] = type("Handler", (Collector,), {"received": [], "answer": 503})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/report"
    try:
        pending = Pending("B", "A", "0" * 64, Release("2.0.0", 3), "1.0.0")
        line = health._queue_report(pending, Result("failed", "2.0.0", "B", 1_800_000_000, "did not boot healthy"))
        assert line.startswith("update report queued")
        first = report.send_due(url, 1_800_000_000)
        assert "not sent" in first[0] and handler.received == []
        (entry,) = report.queued()
        assert entry["attempts"] == 1 and 30 <= entry["next_try"] - 1_800_000_000 <= 60 * 2
        assert report.send_due(url, 1_800_000_001) == []  # not yet: backing off
        handler.answer = 200
        assert "sent: HTTP 200" in report.send_due(url, entry["next_try"])[0]
        assert report.queued() == []
    finally:
        server.shutdown()
    (sent,) = handler.received
    body = sent["report"]
    assert isinstance(body, dict) and body["result"] == "fell_back" and body["from_version"] == "1.0.0"
    assert body["to_version"] == "2.0.0" and body["device_id"] == report.identity().device_id
    key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(str(sent["key"])))
    key.verify(bytes.fromhex(str(sent["signature"])), report.canonical(body))  # raises if forged


def test_update_policy_errors_name_the_key(tmp_path: Path, box: Path) -> None:
    for text, message in (("update: {window: '25:00-03:00'}", "update.window: '25:00-03:00' is not HH:MM-HH:MM"),
                          ("update: {repository: 'ftp://x'}", "update.repository: 'ftp://x' is not an http"),
                          ("update: {interval: 5}", "update.interval: 5 is outside 60..604800"),
                          ("update: {mode: sometimes}", "update.mode: must be one of auto, check")):
        override = tmp_path / "policy.yaml"
        override.write_text(text + "\n")
        with pytest.raises(PolicyError, match=message.replace("(", r"\(").replace(".", r"\.")):
            site.compose(site.DEFAULTS, override)
