"""The fleet-update part of the policy: where the box polls, how often, when it may
reboot into a new release and where it reports. Parsers for what a type cannot say."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from pbxagent.errors import PolicyError

MODES = ("auto", "check")


class Window(NamedTuple):
    """Minutes after local midnight; `start == end` is any time. May cross midnight."""

    start: int
    end: int

    def contains(self, minute: int) -> bool:
        if self.start == self.end:
            return True
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


class UpdatePolicy(NamedTuple):
    repository: str  # base URL holding metadata/ and targets/; "" = the box does not poll
    interval: int  # seconds between polls, on average (full jitter around it)
    boot_delay: int  # the first poll after a boot comes within this many seconds
    window: Window  # when the box may install and reboot by itself
    mode: str  # auto: install in the window; check: only find and report
    report_url: str  # where update reports are POSTed; "" = none


def url(path: Path, key: str, value: Any) -> str:
    if value == "":
        return ""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PolicyError(f"{path}: {key}: {value!r} is not an http:// or https:// URL")
    return str(value)


def window(path: Path, key: str, value: Any) -> Window:
    """"HH:MM-HH:MM" local time, or "" for any time."""
    if value == "":
        return Window(0, 0)
    try:
        start, end = (_minute(part) for part in value.split("-"))
    except ValueError:
        raise PolicyError(f"{path}: {key}: {value!r} is not HH:MM-HH:MM (or \"\" for any time)") from None
    if start == end:
        raise PolicyError(f"{path}: {key}: {value!r} is empty; use \"\" for any time")
    return Window(start, end)


def _minute(text: str) -> int:
    hours, minutes = text.strip().split(":")
    if not (hours.isdigit() and minutes.isdigit() and len(minutes) == 2 and int(hours) < 24 and int(minutes) < 60):
        raise ValueError(text)
    return int(hours) * 60 + int(minutes)
