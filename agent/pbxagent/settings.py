"""One way to declare and check a configuration surface, the way mkosi declares each
setting once: its key, type, bounds, parser and help. The agent's policy and the host's
build configuration (which imports this, never the reverse) are both lists of
`Setting`s; validation, error messages and the help that `pbxagent policy keys` and
`pbxfw keys` print come from the same declaration, so they cannot drift apart.

Keys are dotted (`firewall.ping`); a `*` part matches any one key (`packages.*`). Every
error names the file, the key and the reason."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

# A parser gets the file, the key and the raw value, checks what a type cannot say and
# returns the typed value (raising the surface's error naming the item, e.g.
# firewall.services[2].ports).
Parser = Callable[[Path, str, Any], object]

_NAMES = {bool: "true or false", int: "an integer", str: "a string", list: "a list", dict: "a mapping"}


class Setting(NamedTuple):
    key: str
    kind: type
    help: str
    low: int = 0  # an int's lowest value, a string's or list's shortest length
    high: int = sys.maxsize
    parse: Parser | None = None
    choices: tuple[str, ...] = ()  # a string setting's only values

    def matches(self, key: str) -> bool:
        if self.key.endswith(".*"):  # any one name, dots and all (`services.ssh.service`)
            return key.startswith(self.key[:-1]) and len(key) > len(self.key) - 1
        return key == self.key


class Surface:
    """The settings of one configuration surface, checked with one error type."""

    def __init__(self, settings: Iterable[Setting], error: type[Exception]) -> None:
        self.settings = tuple(settings)
        self.error = error

    def find(self, key: str) -> Setting | None:
        return next((s for s in self.settings if s.matches(key)), None)

    def fail(self, path: Path, key: str, reason: str) -> Exception:
        return self.error(f"{path}: {key}: {reason}")

    def check(self, path: Path, key: str, value: Any) -> object:
        """The value checked against its setting; returns what its parser makes of it."""
        setting = self.find(key)
        if setting is None and any(s.key.startswith(f"{key}.") for s in self.settings):
            raise self.fail(path, key, f"must be a mapping, not {value!r}")
        if setting is None:
            raise self._unknown(path, key)
        kind = setting.kind
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(path, key, f"must be {_NAMES.get(kind, kind.__name__)}, not {value!r}")
        if isinstance(value, int | str | list) and not isinstance(value, bool):
            size = value if isinstance(value, int) else len(value)
            if not setting.low <= size <= setting.high:
                what = "" if isinstance(value, int) else "length "
                raise self.fail(path, key, f"{what}{size} is outside {setting.low}..{setting.high}")
        if setting.choices and value not in setting.choices:
            raise self.fail(path, key, f"must be one of {', '.join(setting.choices)}, not {value!r}")
        return setting.parse(path, key, value) if setting.parse else value

    def _unknown(self, path: Path, key: str) -> Exception:
        """Names the first part of `key` no setting has (`pasword`, not `pasword.min_length`)."""
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if not any(s.key == prefix or s.key.startswith(f"{prefix}.") for s in self.settings):
                parent = ".".join(parts[:depth - 1])
                known = sorted({s.key[len(parent) + 1 if parent else 0:].split(".")[0] for s in self.settings
                                if not parent or s.key.startswith(f"{parent}.")})
                return self.fail(path, prefix, f"unknown key (known here: {', '.join(known)})")
        return self.fail(path, key, "unknown key")

    def check_all(self, path: Path, flat: dict[str, Any]) -> None:
        for key, value in flat.items():
            self.check(path, key, value)

    def missing(self, flat: dict[str, Any]) -> list[str]:
        return sorted(s.key for s in self.settings if "*" not in s.key and s.key not in flat)

    def help(self) -> Iterator[str]:
        """One line per setting: key, type and bounds, help."""
        for s in self.settings:
            bounds = ""
            if s.kind is int and (s.low, s.high) != (0, sys.maxsize):
                bounds = f" {s.low}..{s.high}"
            elif s.kind in (str, list) and s.high != sys.maxsize:
                bounds = f" (length {s.low}..{s.high})"
            if s.choices:
                bounds = f" ({' | '.join(s.choices)})"
            yield f"{s.key:28} {s.kind.__name__}{bounds}: {s.help}"


def flatten(data: dict[str, Any], prefix: str = "", depth: int = 99) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, to `depth` levels of mappings (a mapping deeper
    than that is one value, e.g. a jail's thresholds)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and depth > 1:
            flat.update(flatten(value, f"{dotted}.", depth - 1))
        else:
            flat[dotted] = value
    return flat
