"""The update state on /data (`update/state.json`), typed: the security floor (only ever
raised), the release each slot holds, the update on probation and the last result. The
installer writes a pending update, the health check settles it, `update status` shows it.
The file's JSON shape is the one boxes in the field already have."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from pbxagent import atomic
from pbxagent.errors import ContentError


@dataclass(frozen=True)
class Release:
    version: str
    security_version: int
    build_id: str = ""


@dataclass(frozen=True)
class Pending:
    """An installed slot on probation until its first healthy boot."""

    slot: str
    from_slot: str
    manifest_sha256: str
    release: Release
    from_version: str = ""  # what ran before it (for the update report)


@dataclass(frozen=True)
class Result:
    result: str  # installed | failed
    version: str
    slot: str
    time: int
    message: str


@dataclass(frozen=True)
class UpdateState:
    floor: int = 0
    slots: dict[str, Release] = field(default_factory=dict)
    pending: Pending | None = None
    last_result: Result | None = None

    def with_floor(self, security_version: int) -> UpdateState:
        """The floor never goes down."""
        return replace(self, floor=max(self.floor, security_version))

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """The file's JSON shape (the one boxes in the field have)."""
        data: dict[str, Any] = {
            "floor": self.floor,
            "slots": {slot: asdict(release) for slot, release in self.slots.items()},
            "pending": None,
            "last_result": asdict(self.last_result) if self.last_result else None,
        }
        if self.pending:
            data["pending"] = {"slot": self.pending.slot, "from_slot": self.pending.from_slot,
                               "manifest_sha256": self.pending.manifest_sha256, **asdict(self.pending.release)}
            if self.pending.from_version:  # newer than the shape the first boxes wrote
                data["pending"]["from_version"] = self.pending.from_version
        return data

    @classmethod
    def from_json(cls, text: str, source: Path) -> UpdateState:
        try:
            data = json.loads(text)
            slots = {slot: _release(item) for slot, item in data.get("slots", {}).items()}
            pending = data.get("pending")
            last = data.get("last_result")
            return cls(
                floor=int(data.get("floor", 0)),
                slots=slots,
                pending=Pending(pending["slot"], pending["from_slot"], pending["manifest_sha256"],
                                _release(pending), str(pending.get("from_version", ""))) if pending else None,
                last_result=Result(last["result"], last["version"], last["slot"], int(last["time"]),
                                   last["message"]) if last else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ContentError(f"{source}: not an update state ({type(exc).__name__}: {exc})") from None


def _release(item: dict[str, Any]) -> Release:
    return Release(str(item["version"]), int(item["security_version"]), str(item.get("build_id", "")))


def load(path: Path) -> UpdateState:
    try:
        return UpdateState.from_json(path.read_text(), path)
    except FileNotFoundError:
        return UpdateState()


def save(path: Path, state: UpdateState) -> None:
    atomic.write(path, state.to_json())
