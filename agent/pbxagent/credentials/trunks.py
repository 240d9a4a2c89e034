"""The trunks' digest secrets: given by the provider, typed in by the installer (read
from stdin, never from an argument a process listing would show), kept in one root-only
file on /data and rendered for the SIP service only (pbxagent.sip)."""

from __future__ import annotations

import json
from pathlib import Path

from pbxagent import atomic, paths

MAX_LENGTH = 128


class TrunkSecretError(ValueError):
    pass


def store_path() -> Path:
    return paths.data() / "secrets" / "trunks.json"


def load() -> dict[str, str]:
    """Trunk name -> secret; {} when none was set. A damaged file is named, not read as empty."""
    path = store_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        secrets = data["trunks"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items()):
            raise TypeError("a name or secret is not text")
        return dict(secrets)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrunkSecretError(f"{path}: unreadable trunk secrets ({exc.__class__.__name__}: {exc})") from None


def check(name: str, secret: str) -> str:
    """The secret as it will be stored, or why it cannot be."""
    if not secret:
        raise TrunkSecretError(f"trunk {name}: the secret is empty")
    if len(secret) > MAX_LENGTH:
        raise TrunkSecretError(f"trunk {name}: the secret is longer than {MAX_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in secret):
        raise TrunkSecretError(f"trunk {name}: the secret has a control character (a newline?)")
    return secret


def set_secret(name: str, secret: str) -> None:
    """One atomic write: a power cut keeps the old set or the new one."""
    secrets = load()
    secrets[name] = check(name, secret)
    atomic.write(store_path(), json.dumps({"version": 1, "trunks": dict(sorted(secrets.items()))}, indent=1) + "\n",
                 0o600)
