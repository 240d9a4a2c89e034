"""The release repository: static TUF metadata and targets any web server or CDN serves
(python-tuf's metadata API; spec 1.0, consistent snapshots, so only `timestamp.json`
changes in place).

    DIR/metadata/N.root.json  timestamp.json  N.snapshot.json  N.targets.json
                 N.releases.json  N.rollout.json
    DIR/targets/<board>/<sha256>.pbxfw-<board>-<version>.bundle
    DIR/targets/rollout/<sha256>.<board>.json

Roles, their keys (files in a key directory outside the repository, behind the
`Signer` interface of pbxfw.signing.keys) and expiries:

| role | keys | expires | signs |
|---|---|---|---|
| root | 2 of 3 | 365 days | the roles' keys |
| targets | 1, offline | 180 days | only the two delegations |
| releases | 1 (a threshold is possible) | 60 days | `*/*.bundle`, terminating |
| rollout | 1, online | 7 days | `rollout/*`, terminating: never a bundle |
| snapshot | 1, online | 7 days | the versions of targets, releases, rollout |
| timestamp | 1, online | 1 day | the snapshot's version |
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pbxagent.update import bundle
from pbxagent.update.rollout import Rollout
from securesystemslib.signer import Signature, SSlibKey
from securesystemslib.signer import Signer as TufSigner
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Key,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from pbxfw.errors import PbxfwError
from pbxfw.signing import keys

TOP = ("root", "targets", "snapshot", "timestamp")
DELEGATED = ("releases", "rollout")
EXPIRY = {"root": 365, "targets": 180, "releases": 60, "rollout": 7, "snapshot": 7, "timestamp": 1}
ROOT_KEYS, ROOT_THRESHOLD = 3, 2
PATHS = {"releases": ["*/*.bundle"], "rollout": ["rollout/*"]}
WARN_LEFT = 0.25  # `status` warns when less than this share of a role's period is left


class AdaptedSigner(TufSigner):
    """A pbxfw signer (file today, PKCS#11 tomorrow) as the signer python-tuf expects."""

    def __init__(self, signer: keys.Signer) -> None:
        self._signer = signer
        self._public = SSlibKey.from_crypto(signer.public_key)

    @property
    def public_key(self) -> SSlibKey:
        return self._public

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public.keyid, self._signer.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key, secrets_handler: Any = None) -> TufSigner:
        raise NotImplementedError("pbxfw signers are made from key files, not URIs")


def key_names(role: str) -> list[str]:
    return [f"root-{n}" for n in range(1, ROOT_KEYS + 1)] if role == "root" else [role]


def signers(key_dir: Path, role: str) -> list[AdaptedSigner]:
    """The role's signers from `key_dir` (NAME.key files)."""
    found = []
    for name in key_names(role):
        path = key_dir / f"{name}.key"
        if not path.is_file():
            raise PbxfwError(f"{path}: the {role} key is missing (pbxfw repo init makes the keys)")
        found.append(AdaptedSigner(keys.FileSigner(path)))
    return found


def _expiry(role: str, now: datetime) -> datetime:
    return (now + timedelta(days=EXPIRY[role])).replace(microsecond=0)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Repo:
    """A repository directory and the key directory that signs it."""

    path: Path
    key_dir: Path

    @property
    def metadata(self) -> Path:
        return self.path / "metadata"

    @property
    def targets(self) -> Path:
        return self.path / "targets"

    def load(self, role: str) -> Metadata[Any]:
        """The newest version of a role's metadata."""
        if role == "timestamp":
            return Metadata.from_file(str(self.metadata / "timestamp.json"))
        versions = sorted(int(p.name.split(".")[0]) for p in self.metadata.glob(f"*.{role}.json"))
        if not versions:
            raise PbxfwError(f"{self.metadata}: no {role} metadata (pbxfw repo init)")
        return Metadata.from_file(str(self.metadata / f"{versions[-1]}.{role}.json"))

    def write(self, md: Metadata[Any], role: str, extra: list[AdaptedSigner] | None = None) -> None:
        """Sign with the role's keys (and `extra`, e.g. the old root's) and write it."""
        md.signatures.clear()
        for signer in signers(self.key_dir, role) + (extra or []):
            md.sign(signer, append=True)
        name = "timestamp.json" if role == "timestamp" else f"{md.signed.version}.{role}.json"
        self.metadata.mkdir(parents=True, exist_ok=True)
        tmp = self.metadata / f".{name}.tmp"
        md.to_file(str(tmp), JSONSerializer(compact=False))
        tmp.replace(self.metadata / name)
        if role == "root":
            shutil.copyfile(self.metadata / name, self.metadata / "root.json")

    def write_next(self, md: Metadata[Any], role: str, now: datetime,
                   extra: list[AdaptedSigner] | None = None) -> None:
        """`md` as the role's next version, with a fresh expiry."""
        md.signed.version += 1
        md.signed.expires = _expiry(role, now)
        self.write(md, role, extra)

    def publish(self, changed: list[str], now: datetime | None = None) -> None:
        """New snapshot and timestamp over the targets roles' newest versions."""
        now = now or _now()
        snap = self.load("snapshot")
        for role in changed:
            snap.signed.meta[f"{role}.json"] = MetaFile(self.load(role).signed.version)
        self.write_next(snap, "snapshot", now)
        self.stamp(now)

    def stamp(self, now: datetime | None = None) -> None:
        now = now or _now()
        ts = self.load("timestamp")
        ts.signed.snapshot_meta = MetaFile(self.load("snapshot").signed.version)
        self.write_next(ts, "timestamp", now)


def init(path: Path, key_dir: Path, now: datetime | None = None) -> Repo:
    """A new repository; the keys that do not exist yet are made in `key_dir`."""
    now = now or _now()
    if (path / "metadata").exists():
        raise PbxfwError(f"{path}: already holds a repository")
    for role in (*TOP, *DELEGATED):
        for name in key_names(role):
            if not (key_dir / f"{name}.key").exists():
                keys.generate(key_dir, name)
    repo = Repo(path, key_dir)
    public = {role: [s.public_key for s in signers(key_dir, role)] for role in (*TOP, *DELEGATED)}
    root = Root(version=1, expires=_expiry("root", now), consistent_snapshot=True)
    for role in TOP:
        for key in public[role]:
            root.add_key(key, role)
        root.roles[role].threshold = ROOT_THRESHOLD if role == "root" else 1
    targets = Targets(version=1, expires=_expiry("targets", now))
    targets.delegations = Delegations(
        keys={k.keyid: k for role in DELEGATED for k in public[role]},
        roles={role: DelegatedRole(role, [k.keyid for k in public[role]], 1, True, PATHS[role])
               for role in DELEGATED},
    )
    repo.write(Metadata(root), "root")
    repo.write(Metadata(targets), "targets")
    for role in DELEGATED:
        repo.write(Metadata(Targets(version=1, expires=_expiry(role, now))), role)
    snap = Snapshot(version=1, expires=_expiry("snapshot", now),
                    meta={f"{r}.json": MetaFile(1) for r in ("targets", *DELEGATED)})
    repo.write(Metadata(snap), "snapshot")
    repo.write(Metadata(Timestamp(version=1, expires=_expiry("timestamp", now), snapshot_meta=MetaFile(1))),
               "timestamp")
    repo.targets.mkdir(parents=True, exist_ok=True)
    return repo


def board_of(compatible: str) -> str:
    return compatible.split(",", 1)[-1]


def add(repo: Repo, bundle_path: Path, now: datetime | None = None) -> str:
    """The bundle becomes a `releases` target under its board's path, its length and
    sha256 over the whole file, `custom` copied from its signed manifest."""
    with bundle_path.open("rb") as src:
        try:
            header = bundle.read_header(src)
        except bundle.Rejected as exc:
            raise PbxfwError(f"{bundle_path}: not a bundle: {exc}") from None
    m = header.manifest
    board = board_of(m.compatible)
    path = f"{board}/pbxfw-{board}-{m.version}.bundle"
    releases = repo.load("releases")
    if path in releases.signed.targets:
        raise PbxfwError(f"{path}: already in the repository (a release is never replaced; give it a new version)")
    target = TargetFile.from_file(path, str(bundle_path), ["sha256"])
    target.unrecognized_fields["custom"] = {
        "compatible": m.compatible, "version": m.version, "security_version": m.security_version,
        "build_id": m.build_id, "payload_sha256": m.payload_sha256, "manifest_sha256": header.manifest_sha256,
    }
    dest = repo.targets / board / f"{target.hashes['sha256']}.{Path(path).name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle_path, dest)
    releases.signed.targets[path] = target
    repo.write_next(releases, "releases", now or _now())
    repo.publish(["releases"], now)
    return path


def rollout(repo: Repo, board: str, version: str, percent: float, start: int | None = None,
            paused: bool = False, now: datetime | None = None) -> Rollout:
    """A rollout policy for the board's release `version`, signed by `rollout`."""
    if not 0 <= percent <= 100:
        raise PbxfwError(f"--percent {percent}: must be 0..100")
    path = f"{board}/pbxfw-{board}-{version}.bundle"
    release = repo.load("releases").signed.targets.get(path)
    if release is None:
        raise PbxfwError(f"{path}: no such release (pbxfw repo add)")
    policy_path = f"rollout/{board}.json"
    signed = repo.load("rollout")
    current = signed.signed.targets.get(policy_path)
    before = _policy(repo, current) if current else None
    if before and before.target == path and percent < before.percent and not paused:
        raise PbxfwError(f"--percent {percent}: below the {before.percent} already out; a share only grows "
                         "(--pause stops the rollout)")
    now = now or _now()
    policy = Rollout(path, board, path, release.hashes["sha256"], percent,
                     start if start is not None else (before.start if before and before.target == path
                                                     else int(now.timestamp())), paused)
    data = policy.to_json().encode()
    digest = hashlib.sha256(data).hexdigest()
    dest = repo.targets / "rollout" / f"{digest}.{board}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    signed.signed.targets[policy_path] = TargetFile.from_data(policy_path, data, ["sha256"])
    repo.write_next(signed, "rollout", now)
    repo.publish(["rollout"], now)
    return policy


def _policy(repo: Repo, target: TargetFile) -> Rollout:
    board = target.path.split("/", 1)[1].removesuffix(".json")
    path = repo.targets / "rollout" / f"{target.hashes['sha256']}.{board}.json"
    return Rollout.from_json(path.read_bytes(), path)


def timestamp(repo: Repo, now: datetime | None = None) -> list[str]:
    """Re-sign timestamp; the online roles (rollout, snapshot) too when less than half
    of their period is left. Returns the roles re-signed."""
    now = now or _now()
    changed = []
    ro = repo.load("rollout")
    if ro.signed.expires - now < timedelta(days=EXPIRY["rollout"]) / 2:
        repo.write_next(ro, "rollout", now)
        changed.append("rollout")
    if changed or repo.load("snapshot").signed.expires - now < timedelta(days=EXPIRY["snapshot"]) / 2:
        repo.publish(changed, now)
        return [*changed, "snapshot", "timestamp"]
    repo.stamp(now)
    return ["timestamp"]


def rotate(repo: Repo, role: str, new_key: Path, replaces: str | None = None, now: datetime | None = None) -> int:
    """Replace one key of a top-level role through a new root version signed by the old
    root's keys and, when a root key is replaced, by the new one too (both thresholds).
    `replaces` names the key file it replaces (`root-2`; the role's own by default); that
    file is kept as `NAME.key.revoked-vN` and the new key takes its name. The role's
    metadata is re-signed with the new key. Returns the new root version."""
    if role not in TOP:
        raise PbxfwError(f"--role {role}: one of {', '.join(TOP)} (the delegations' keys are in targets)")
    name = replaces or key_names(role)[0]
    if name not in key_names(role):
        raise PbxfwError(f"--replaces {name}: not a {role} key (one of {', '.join(key_names(role))})")
    now = now or _now()
    old_path = repo.key_dir / f"{name}.key"
    old_public = SSlibKey.from_crypto(keys.FileSigner(old_path).public_key)
    new_signer = AdaptedSigner(keys.FileSigner(new_key))
    root = repo.load("root")
    if old_public.keyid not in root.signed.roles[role].keyids:
        raise PbxfwError(f"{old_path}: not a {role} key of root version {root.signed.version}")
    root.signed.revoke_key(old_public.keyid, role)
    root.signed.add_key(new_signer.public_key, role)
    repo.write_next(root, "root", now, extra=[new_signer] if role == "root" else [])
    old_path.replace(repo.key_dir / f"{name}.key.revoked-v{root.signed.version}")
    shutil.copyfile(new_key, old_path)
    old_path.chmod(0o600)
    if role == "targets":
        repo.write_next(repo.load("targets"), "targets", now)
        repo.publish(["targets"], now)
    elif role == "snapshot":
        repo.publish([], now)
    elif role == "timestamp":
        repo.stamp(now)
    return int(root.signed.version)


@dataclass(frozen=True)
class RoleStatus:
    role: str
    version: int
    expires: datetime
    left: float  # share of the role's period still left
    keys: int
    threshold: int


def status(repo: Repo, now: datetime | None = None) -> tuple[list[RoleStatus], dict[str, dict[str, Any]],
                                                            list[Rollout]]:
    """Roles (version, expiry, share left), release targets and rollouts."""
    now = now or _now()
    root = repo.load("root").signed
    targets = repo.load("targets").signed
    found = []
    for role in (*TOP, *DELEGATED):
        md = repo.load(role).signed
        period = timedelta(days=EXPIRY[role])
        if role in TOP:
            keyids, threshold = root.roles[role].keyids, root.roles[role].threshold
        else:
            assert targets.delegations is not None and targets.delegations.roles is not None
            delegated = targets.delegations.roles[role]
            keyids, threshold = delegated.keyids, delegated.threshold
        found.append(RoleStatus(role, md.version, md.expires, (md.expires - now) / period, len(keyids), threshold))
    releases = {path: dict(t.unrecognized_fields.get("custom", {})) | {"length": t.length}
                for path, t in repo.load("releases").signed.targets.items()}
    rollouts = [_policy(repo, t) for t in repo.load("rollout").signed.targets.values()]
    return found, releases, rollouts

