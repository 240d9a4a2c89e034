"""Fleet updates on the box: poll the release repository (TUF metadata through
python-tuf's client), decide whether this box takes the release being rolled out,
stream it into the verify-before-write installer in the maintenance window, and leave
the report to the health check after the reboot (pbxagent.update.report).

TUF gives what the signed bundle alone cannot: freshness (a frozen mirror shows as
expired metadata, `stale`), no rollback or mix-and-match of metadata, keys that can
be rotated out of the field, and a rollout policy no release key can forge. The bundle
stays the unit of trust for the payload: its signature, board, security floor and
chunk hashes are checked as for `update install`, and its manifest must equal the
TUF target's `custom` fields, its length and sha256 the target's.

The trust anchor ships read-only in the image (/usr/share/pbxfw/tuf/root.json); the
client's metadata lives in /data/pbx/update/tuf, re-seeded from the image whenever the
image's root is as new as the cached one or newer (python-tuf 5.1, Debian 13's, takes
its anchor from that directory; 7.0 takes it as `bootstrap`).

`pbxagent update check --timer` (pbx-update.timer, every few minutes) sends queued
reports, and polls only when the box's own schedule says so: the policy's interval
with full jitter (each wait drawn from 0..2x the interval) and a random delay after a
boot, so a fleet never polls in step.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pbxagent import atomic, board, paths
from pbxagent.board import BoardInfo
from pbxagent.policy.updates import UpdatePolicy
from pbxagent.update import report
from pbxagent.update.rollout import Rollout, bucket
from pbxagent.update.state import Release

# A wake-up of the timer with no poll due must stay cheap under emulation: TUF, the
# installer and cryptography are imported only when a poll or an install happens.
if TYPE_CHECKING:
    from pbxagent.update.bundle import Header
    from pbxagent.update.fetcher import Limits, TargetSource

ROLES = ("root", "timestamp", "snapshot", "targets", "releases", "rollout")
CUSTOM_FIELDS = ("compatible", "version", "security_version", "build_id", "payload_sha256")


def anchor() -> Path:
    return paths.root() / "usr" / "share" / "pbxfw" / "tuf" / "root.json"


def tuf_dir() -> Path:
    return paths.update_data() / "tuf"


def schedule_path() -> Path:
    return paths.update_data() / "fleet.json"


class Candidate(NamedTuple):
    """A release target as the TUF metadata signs it."""

    path: str
    length: int
    sha256: str
    custom: dict[str, Any]


class Decision(NamedTuple):
    install: bool
    status: str  # offered, current, waiting, refused, none
    detail: str
    bucket: int | None = None


# What a poll may find without anything being wrong (the rest: refused, stale,
# unreachable, clock).
FINE = ("offered", "current", "waiting", "none")


def decide(info: BoardInfo, floor: int, running: Release, fell_back_from: str | None, device_id: str, now: int,
           policy: Rollout | None, candidate: Candidate | None) -> Decision:
    """Whether this box installs the release its board's rollout names, and why.
    `fell_back_from`: the version this box last failed to boot healthy, not retried."""
    if policy is None:
        return Decision(False, "none", f"no rollout for {info.board}")
    if candidate is None:
        return Decision(False, "refused", f"the rollout names {policy.target}, which the releases role does not sign")
    if policy.sha256 != candidate.sha256:
        return Decision(False, "refused", f"the rollout's sha256 for {policy.target} is not its release's")
    custom = candidate.custom
    if custom.get("compatible") != info.compatible:
        return Decision(False, "refused", f"{candidate.path} is for {custom.get('compatible')!r}, "
                                          f"this box is {info.compatible!r}")
    if not isinstance(custom.get("security_version"), int) or custom["security_version"] < floor:
        return Decision(False, "refused", f"{candidate.path}: security version {custom.get('security_version')} "
                                          f"is below this box's floor {floor}")
    if custom.get("version") == running.version and custom.get("build_id") in (running.build_id, None, ""):
        return Decision(False, "current", f"running {running.version} already")
    if custom.get("version") == fell_back_from:
        return Decision(False, "refused", f"{fell_back_from} failed its health check on this box and fell back; "
                                          "not retried (roll out a newer release)")
    place = bucket(policy.rollout_id, device_id)
    if policy.paused:
        return Decision(False, "waiting", f"the rollout of {custom.get('version')} is paused", place)
    if now < policy.start:
        return Decision(False, "waiting", f"the rollout of {custom.get('version')} starts at {policy.start}", place)
    if not policy.includes(device_id, now):
        return Decision(False, "waiting", f"{custom.get('version')} is out to {policy.percent} % of the fleet; "
                                          f"this box's bucket {place} is not yet in", place)
    return Decision(True, "offered", f"{custom.get('version')} (security version {custom['security_version']}) "
                                     f"is out to {policy.percent} % and this box's bucket {place} is in", place)


class TargetVet:
    """The installer's extra checks for a bundle that came as a TUF target."""

    def __init__(self, candidate: Candidate, source: TargetSource) -> None:
        self.candidate, self.source = candidate, source

    def before_write(self, header: Header) -> None:
        from pbxagent.update import bundle

        m = header.manifest
        found = {"compatible": m.compatible, "version": m.version, "security_version": m.security_version,
                 "build_id": m.build_id, "payload_sha256": m.payload_sha256}
        differ = [key for key in CUSTOM_FIELDS if self.candidate.custom.get(key) != found[key]]
        if "manifest_sha256" in self.candidate.custom and \
                self.candidate.custom["manifest_sha256"] != header.manifest_sha256:
            differ.append("manifest_sha256")
        if differ:
            raise bundle.Rejected(bundle.Reason.TARGET_MISMATCH,
                                  f"{self.candidate.path}: the bundle's manifest disagrees with its TUF target on "
                                  f"{', '.join(differ)}")
        if header.total_size != self.candidate.length:
            raise bundle.Rejected(bundle.Reason.TARGET_MISMATCH,
                                  f"{self.candidate.path}: the bundle is {header.total_size} bytes, its TUF target "
                                  f"{self.candidate.length}")

    def after_payload(self) -> None:
        from pbxagent.update import bundle

        digest = self.source.whole_sha256()
        if digest is not None and digest != self.candidate.sha256:
            raise bundle.Rejected(bundle.Reason.TARGET_MISMATCH, f"{self.candidate.path}: sha256 {digest}, "
                                                                 f"its TUF target says {self.candidate.sha256}")


def seed() -> str:
    """Put the image's root in the client's directory when it is as new or newer."""
    cache = tuf_dir() / "root.json"
    shipped = json.loads(anchor().read_bytes())["signed"]["version"]
    try:
        cached = json.loads(cache.read_bytes())["signed"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        cached = 0
    if shipped >= cached:
        image_root = anchor().read_bytes()
        if not cache.exists() or cache.read_bytes() != image_root:  # no flash write per poll
            tuf_dir().mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic.write(cache, image_root, mode=0o644)
        return f"trust anchor: the image's root version {shipped}"
    return f"trust anchor: root version {cached} (rotated since the image's {shipped})"


def metadata_summary() -> dict[str, dict[str, Any]]:
    """Version and expiry of each role the client holds (its files; no network)."""
    found = {}
    for role in ROLES:
        try:
            signed = json.loads((tuf_dir() / f"{role}.json").read_bytes())["signed"]
        except (OSError, ValueError, KeyError):
            continue
        found[role] = {"version": signed.get("version"), "expires": signed.get("expires")}
    return found


class Poll(NamedTuple):
    status: str  # as Decision's, or: clock, unreachable, stale, refused
    detail: str
    decision: Decision | None = None
    candidate: Candidate | None = None
    target_url: str = ""


def poll(pol: UpdatePolicy, info: BoardInfo, now: int, limits: Limits | None = None) -> Poll:
    """Refresh the TUF metadata and decide. Never raises for what a mirror does."""
    from tuf.api import exceptions
    from tuf.ngclient import Updater

    from pbxagent.update import bootstate, installer
    from pbxagent.update.fetcher import DEFAULT, Fetcher

    if now < info.built:
        return Poll("clock", f"the clock ({now}) is before this image was built ({info.built}): "
                             "no metadata expiry can be judged until the time is set")
    seed()
    targets = tuf_dir() / "targets"
    targets.mkdir(exist_ok=True)  # python-tuf 5.1 does not make it
    # python-tuf 6.0 on takes the anchor as an argument; 5.1 reads it from metadata_dir
    anchor_arg: dict[str, Any] = {}
    if "bootstrap" in Updater.__init__.__code__.co_varnames:
        anchor_arg["bootstrap"] = (tuf_dir() / "root.json").read_bytes()
    try:
        updater = Updater(str(tuf_dir()), f"{pol.repository}/metadata/", str(targets), f"{pol.repository}/targets/",
                          Fetcher(limits or DEFAULT), **anchor_arg)
        updater.refresh()
        policy = _rollout(updater, info.board)
        candidate = None
        if policy is not None:
            found = updater.get_targetinfo(policy.target)
            if found is not None:
                candidate = Candidate(found.path, found.length, found.hashes.get("sha256", ""),
                                      dict(found.unrecognized_fields.get("custom") or {}))
    except exceptions.ExpiredMetadataError as exc:
        return Poll("stale", f"the repository's metadata has expired ({exc}): a frozen or replayed mirror, "
                             "or a clock far ahead; nothing is installed")
    except exceptions.DownloadError as exc:
        return Poll("unreachable", f"{pol.repository}: {exc}")
    except exceptions.RepositoryError as exc:
        return Poll("refused", f"{pol.repository}: {type(exc).__name__}: {exc}")
    except OSError as exc:
        return Poll("unreachable", f"{pol.repository}: {exc}")
    state = installer.load_state()
    running = installer.running_slot_release(state, bootstate.booted_slot())
    failed = state.last_result.version if state.last_result and state.last_result.result == "failed" else None
    decision = decide(info, state.floor, running, failed, report.ensure_identity(), now, policy, candidate)
    url = ""
    if candidate is not None:
        folder, _, name = candidate.path.rpartition("/")
        url = f"{pol.repository}/targets/{folder}/{candidate.sha256}.{name}"
    return Poll(decision.status, decision.detail, decision, candidate, url)


def _rollout(updater: Any, board_name: str) -> Rollout | None:
    """The board's rollout policy, as the `rollout` role signs it (small: in memory)."""
    info = updater.get_targetinfo(f"rollout/{board_name}.json")
    if info is None:
        return None
    path = updater.find_cached_target(info) or updater.download_target(info)
    return Rollout.from_json(Path(path).read_bytes(), info.path)


def apply(found: Poll, limits: Limits | None = None) -> str:
    """Stream the offered release into the inactive slot (installer checks and TUF's)."""
    from pbxagent.update import installer
    from pbxagent.update.fetcher import DEFAULT, TargetSource

    assert found.candidate is not None
    source = TargetSource(found.target_url, found.candidate.length, limits or DEFAULT)
    return installer.install(source, TargetVet(found.candidate, source))


# --- the timer's schedule ---------------------------------------------------------------


def _load_schedule() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(schedule_path().read_text())
        return data
    except (OSError, ValueError):
        return {}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def due(schedule: dict[str, Any], pol: UpdatePolicy, now: int, rng: random.Random) -> tuple[bool, dict[str, Any]]:
    """Whether a poll is due, and the schedule to keep: a new boot sets a first poll
    within `boot_delay`; after a poll the next one is drawn from 0..2x the interval."""
    schedule = dict(schedule)
    boot = _boot_id()
    if schedule.get("boot_id") != boot:
        schedule["boot_id"] = boot
        schedule["next_poll"] = now + int(rng.uniform(0, pol.boot_delay))
    return now >= schedule.get("next_poll", 0), schedule


def in_window(pol: UpdatePolicy, now: int) -> bool:
    local = time.localtime(now)
    return pol.window.contains(local.tm_hour * 60 + local.tm_min)


def check(pol: UpdatePolicy, now: int) -> Poll:
    """Poll now, outside the schedule (`update check`, `update apply`), and keep what
    was found as the last check."""
    found = poll(pol, board.load(), now)
    record(found, now, _load_schedule())
    return found


def record(found: Poll, now: int, schedule: dict[str, Any]) -> None:
    schedule["last_check"] = {"time": now, "status": found.status, "detail": found.detail,
                              "bucket": found.decision.bucket if found.decision else None,
                              "target": found.candidate.path if found.candidate else None}
    _save_schedule(schedule)


def _save_schedule(schedule: dict[str, Any]) -> None:
    atomic.write(schedule_path(), json.dumps(schedule, indent=1, sort_keys=True) + "\n", mode=0o644)


def timer(pol: UpdatePolicy, now: int | None = None, rng: random.Random | None = None) -> tuple[list[str], bool]:
    """What pbx-update.service does: send due reports, poll when due,
    install an offered release in the window when the mode is auto. Returns what
    happened, one line each, and whether the box should reboot into a new slot."""
    now = int(time.time()) if now is None else now
    rng = rng or random.Random()
    lines = report.send_due(pol.report_url, now, rng=rng) if pol.report_url else []
    if not pol.repository:
        return [*lines, "update.repository is not set: this box does not poll"], False
    if not anchor().exists():
        return [*lines, f"{anchor()}: missing: this image trusts no release repository"], False
    saved = _load_schedule()
    is_due, schedule = due(saved, pol, now, rng)
    if not is_due:
        if schedule != saved:  # a new boot's first wake-up; later ones write nothing
            _save_schedule(schedule)
        return [*lines, f"next poll in {schedule['next_poll'] - now} s"], False
    schedule["next_poll"] = now + int(rng.uniform(0, 2 * pol.interval))
    found = poll(pol, board.load(), now)
    record(found, now, schedule)
    lines.append(f"poll: {found.status}: {found.detail}")
    if found.status != "offered" or pol.mode != "auto":
        return lines, False
    if not in_window(pol, now):
        return [*lines, "outside the maintenance window: installing at a poll inside it"], False
    from pbxagent.update import bundle

    try:
        lines.append(apply(found))
    except bundle.Rejected as exc:
        lines.append(exc.refusal())
        return lines, False
    except OSError as exc:
        lines.append(f"download failed: {exc}")
        return lines, False
    return lines, True


def status() -> dict[str, Any]:
    """The fleet part of `update status --json`."""
    schedule = _load_schedule()
    me = report.identity() if (paths.update_data() / "device-id").exists() else None
    return {
        "anchor": str(anchor()) if anchor().exists() else None,
        "device_id": me.device_id if me else None,
        "report_key": me.public_key if me else None,
        "last_check": schedule.get("last_check"),
        "next_poll": schedule.get("next_poll"),
        "metadata": metadata_summary(),
        "queued_reports": [entry["envelope"]["report"] | {"attempts": entry["attempts"],
                                                          "next_try": entry["next_try"]}
                           for entry in report.queued()],
    }

