"""A staged rollout, defined once: the policy file the `rollout` role signs (which release,
what share of the fleet, paused or not) and the cohort rule a box applies to itself.

A box's place in a rollout is a bucket in [0, 10000) from the sha256 of the rollout's id
and the box's own stable id (made at first boot): deterministic, so a box asks the same
question with the same answer on every poll, and monotone in the share, so raising it
only ever adds boxes. The id is the release's target path, the same for every step of
one release's rollout."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pbxagent.errors import ContentError

BUCKETS = 10_000


def bucket(rollout_id: str, device_id: str) -> int:
    digest = hashlib.sha256(b"pbxfw-rollout\0" + rollout_id.encode() + b"\0" + device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Rollout:
    rollout_id: str
    board: str
    target: str  # the release's target path in the repository
    sha256: str  # of the release's bundle, as its target says
    percent: float  # 0 .. 100, in steps of 0.01
    start: int  # seconds since the epoch; no box starts before
    paused: bool

    def includes(self, device_id: str, now: int) -> bool:
        """Whether a box with `device_id` may install this release at `now`."""
        if self.paused or now < self.start:
            return False
        return bucket(self.rollout_id, device_id) < round(self.percent * 100)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: Path | str) -> Rollout:
        try:
            data: dict[str, Any] = json.loads(text)
            rollout = cls(str(data["rollout_id"]), str(data["board"]), str(data["target"]), str(data["sha256"]),
                          float(data["percent"]), int(data["start"]), bool(data["paused"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ContentError(f"{source}: not a rollout policy ({type(exc).__name__}: {exc})") from None
        if not 0 <= rollout.percent <= 100:
            raise ContentError(f"{source}: percent: {rollout.percent} is outside 0..100")
        return rollout
