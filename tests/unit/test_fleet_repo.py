"""The release repository against python-tuf's own client (tuf.ngclient) over HTTP on
loopback: a round trip, and each attack a mirror or a man in the middle could try."""

from __future__ import annotations

import functools
import http.server
import random
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pbxagent.update.rollout import Rollout, bucket
from pbxfw.errors import PbxfwError
from pbxfw.fleet import repository
from pbxfw.signing import bundler, keys
from tuf.api import exceptions
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater

BOARD = "qemu-u50"


@pytest.fixture
def repo(tmp_path: Path) -> repository.Repo:
    return repository.init(tmp_path / "repo", tmp_path / "keys")


def make_bundle(tmp_path: Path, version: str, security: int = 1) -> Path:
    payload = tmp_path / f"payload-{version}"
    payload.write_bytes(random.Random(version).randbytes(200_000))
    if not (tmp_path / "sign" / "dev.key").exists():
        keys.generate(tmp_path / "sign", "dev")
    dest = tmp_path / f"{version}.bundle"
    manifest = bundler.manifest_for(payload, f"pbxfw,{BOARD}", version, security, "test")
    bundler.write(dest, payload, manifest, [keys.FileSigner(tmp_path / "sign" / "dev.key")])
    return dest


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(repo: repository.Repo) -> Iterator[str]:
    handler = functools.partial(Quiet, directory=str(repo.path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def client(repo: repository.Repo, url: str, home: Path) -> Updater:
    """A box: its trust anchor is the repository's first root, as the image ships it."""
    (home / "targets").mkdir(parents=True, exist_ok=True)
    anchor = (repo.metadata / "1.root.json").read_bytes()
    if not (home / "root.json").exists():
        (home / "root.json").write_bytes(anchor)
    return Updater(str(home), f"{url}/metadata/", str(home / "targets"), f"{url}/targets/", bootstrap=anchor)


def sign_as(repo: repository.Repo, md: Metadata, role: str, name: str) -> None:  # type: ignore[type-arg]
    """An attacker holding the key NAME writes `md` as the newest version of `role`."""
    md.signatures.clear()
    md.sign(repository.AdaptedSigner(keys.FileSigner(repo.key_dir / f"{name}.key")))
    md.to_file(str(repo.metadata / f"{md.signed.version}.{role}.json"))


def test_a_release_and_its_rollout_reach_the_client(repo: repository.Repo, served: str, tmp_path: Path) -> None:
    path = repository.add(repo, make_bundle(tmp_path, "2.0.0", security=3))
    policy = repository.rollout(repo, BOARD, "2.0.0", 10)
    box = client(repo, served, tmp_path / "box")
    box.refresh()
    info = box.get_targetinfo(path)
    assert info is not None and info.custom["version"] == "2.0.0" and info.custom["security_version"] == 3
    assert info.custom["compatible"] == f"pbxfw,{BOARD}"
    found = box.get_targetinfo(f"rollout/{BOARD}.json")
    assert found is not None
    downloaded = Rollout.from_json(Path(box.download_target(found)).read_bytes(), "rollout")
    assert downloaded == policy and downloaded.sha256 == info.hashes["sha256"] and downloaded.percent == 10
    assert Path(box.download_target(info)).read_bytes() == (tmp_path / "2.0.0.bundle").read_bytes()


def test_a_frozen_repository_is_refused(tmp_path: Path, served: str, repo: repository.Repo) -> None:
    repository.add(repo, make_bundle(tmp_path, "2.0.0"), now=datetime.now(UTC) - timedelta(days=2))
    with pytest.raises(exceptions.ExpiredMetadataError):
        client(repo, served, tmp_path / "box").refresh()


def test_an_older_timestamp_is_a_rollback(repo: repository.Repo, served: str, tmp_path: Path) -> None:
    old = (repo.metadata / "timestamp.json").read_bytes()
    repository.add(repo, make_bundle(tmp_path, "2.0.0"))
    client(repo, served, tmp_path / "box").refresh()
    (repo.metadata / "timestamp.json").write_bytes(old)
    with pytest.raises(exceptions.BadVersionNumberError):
        client(repo, served, tmp_path / "box").refresh()


def test_mixing_in_another_versions_snapshot_is_refused(repo: repository.Repo, served: str, tmp_path: Path) -> None:
    repository.add(repo, make_bundle(tmp_path, "2.0.0"))
    version = repo.load("snapshot").signed.version
    shutil.copyfile(repo.metadata / f"{version - 1}.snapshot.json", repo.metadata / f"{version}.snapshot.json")
    with pytest.raises(exceptions.BadVersionNumberError):
        client(repo, served, tmp_path / "box").refresh()


def test_a_replaced_bundle_on_the_mirror_is_refused(repo: repository.Repo, served: str, tmp_path: Path) -> None:
    path = repository.add(repo, make_bundle(tmp_path, "2.0.0"))
    (stored,) = (repo.targets / BOARD).glob("*.bundle")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1
    stored.write_bytes(bytes(data))
    box = client(repo, served, tmp_path / "box")
    box.refresh()
    info = box.get_targetinfo(path)
    assert info is not None
    with pytest.raises(exceptions.LengthOrHashMismatchError):
        box.download_target(info)


def test_each_delegation_signs_only_its_own_paths(repo: repository.Repo, served: str, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "2.0.0")
    # The releases key signs a rollout file; the rollout key signs a bundle.
    releases = repo.load("releases")
    releases.signed.targets[f"rollout/{BOARD}.json"] = TargetFile.from_data(f"rollout/{BOARD}.json", b"{}")
    releases.signed.version += 1
    sign_as(repo, releases, "releases", "releases")
    ro = repo.load("rollout")
    ro.signed.targets[f"{BOARD}/evil.bundle"] = TargetFile.from_file(f"{BOARD}/evil.bundle", str(bundle))
    ro.signed.version += 1
    sign_as(repo, ro, "rollout", "rollout")
    repo.publish(["releases", "rollout"])
    box = client(repo, served, tmp_path / "box")
    box.refresh()
    assert box.get_targetinfo(f"rollout/{BOARD}.json") is None
    assert box.get_targetinfo(f"{BOARD}/evil.bundle") is None


def test_a_root_signed_below_its_threshold_is_refused(repo: repository.Repo, served: str, tmp_path: Path) -> None:
    root = repo.load("root")
    root.signed.version += 1
    sign_as(repo, root, "root", "root-1")  # 1 of the 2 it needs
    with pytest.raises(exceptions.UnsignedMetadataError):
        client(repo, served, tmp_path / "box").refresh()


def test_a_rotated_out_timestamp_key_signs_nothing(repo: repository.Repo, served: str, tmp_path: Path) -> None:
    keys.generate(tmp_path / "new", "timestamp")
    old = tmp_path / "old-timestamp.key"
    shutil.copyfile(repo.key_dir / "timestamp.key", old)
    assert repository.rotate(repo, "timestamp", tmp_path / "new" / "timestamp.key") == 2
    client(repo, served, tmp_path / "box").refresh()  # root v2, then a timestamp by the new key
    ts = repo.load("timestamp")
    ts.signed.version += 1
    ts.signatures.clear()
    ts.sign(repository.AdaptedSigner(keys.FileSigner(old)))
    ts.to_file(str(repo.metadata / "timestamp.json"))
    with pytest.raises(exceptions.UnsignedMetadataError):
        client(repo, served, tmp_path / "box").refresh()


def test_a_share_only_grows_and_is_checked(repo: repository.Repo, tmp_path: Path) -> None:
    repository.add(repo, make_bundle(tmp_path, "2.0.0"))
    repository.rollout(repo, BOARD, "2.0.0", 10)
    with pytest.raises(PbxfwError, match=r"--percent 5: below the 10\.0 already out"):
        repository.rollout(repo, BOARD, "2.0.0", 5)
    assert repository.rollout(repo, BOARD, "2.0.0", 10, paused=True).paused
    with pytest.raises(PbxfwError, match=r"qemu-u50/pbxfw-qemu-u50-9\.9\.9\.bundle: no such release"):
        repository.rollout(repo, BOARD, "9.9.9", 10)
    with pytest.raises(PbxfwError, match=r"already in the repository"):
        repository.add(repo, tmp_path / "2.0.0.bundle")


def test_status_names_every_role_and_warns_before_expiry(repo: repository.Repo, tmp_path: Path) -> None:
    repository.add(repo, make_bundle(tmp_path, "2.0.0"))
    roles, releases, rollouts = repository.status(repo, now=datetime.now(UTC) + timedelta(hours=20))
    by_role = {r.role: r for r in roles}
    assert set(by_role) == {"root", "targets", "snapshot", "timestamp", "releases", "rollout"}
    assert by_role["root"].threshold == 2 and by_role["root"].keys == 3
    assert by_role["timestamp"].left < repository.WARN_LEFT < by_role["snapshot"].left
    assert list(releases) == [f"{BOARD}/pbxfw-{BOARD}-2.0.0.bundle"] and rollouts == []
    assert repository.timestamp(repo) == ["timestamp"]


def test_cohorts_hold_their_share_and_raising_it_only_adds() -> None:
    ids = [f"device-{n}" for n in range(100_000)]
    for percent in (1, 10, 50):
        inside = sum(bucket("qemu-u50/pbxfw-qemu-u50-2.0.0.bundle", i) < percent * 100 for i in ids)
        assert abs(inside / len(ids) - percent / 100) < 0.01
    policy = Rollout("r", BOARD, "t", "0" * 64, 10, 0, False)
    wider = Rollout("r", BOARD, "t", "0" * 64, 20, 0, False)
    assert all(wider.includes(i, 1) for i in ids[:5000] if policy.includes(i, 1))
    assert not Rollout("r", BOARD, "t", "0" * 64, 100, 0, True).includes("device-1", 1)  # paused
    assert not Rollout("r", BOARD, "t", "0" * 64, 100, 50, False).includes("device-1", 10)  # not started
