"""What the image says about its board (`/etc/pbxfw/board.json`), defined once: the
host's build writes it from the board file, the agent reads it (which board a bundle
must be for, the release running, each slot's block device, U-Boot's attempts)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pbxagent import paths
from pbxagent.errors import ContentError


@dataclass(frozen=True)
class BoardInfo:
    board: str
    compatible: str  # what a bundle's manifest must name
    arch: str
    version: str  # the release in the image (display)
    security_version: int
    boot_attempts: int  # per slot, as U-Boot's script counts them
    slots: dict[str, str]  # slot name -> its block device on Linux
    built: int  # the image's SOURCE_DATE_EPOCH: a clock before it is certainly wrong

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> BoardInfo:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ContentError(f"{source}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ContentError(f"{source}: not a JSON object")
        types = {"board": str, "compatible": str, "arch": str, "version": str, "security_version": int,
                 "boot_attempts": int, "slots": dict, "built": int}
        for key, kind in types.items():
            if not isinstance(data.get(key), kind):
                raise ContentError(f"{source}: {key} must be a {kind.__name__}, got {data.get(key)!r}")
        return cls(**{key: data[key] for key in types})


def load() -> BoardInfo:
    path = paths.board_info()
    return BoardInfo.from_json(path.read_text(), path)
