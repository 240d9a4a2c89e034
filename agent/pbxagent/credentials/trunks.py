"""The trunks' digest secrets: given by the provider, typed in by the installer (read
from stdin, never from an argument a process listing would show), kept in one root-only
file on /data and rendered for the SIP service only (pbxagent.sip).

A TLS trunk's own certificate authority, when its provider names one (a private CA, or
its self-signed certificate): the only one its certificate is then checked against,
instead of the system's public ones. Not secret, but the installer's word, kept on /data
beside the secrets."""

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


MAX_CA_BYTES = 64 * 1024


def ca_path(name: str) -> Path:
    return paths.data() / "trunk-ca" / f"{name}.pem"


def set_ca(name: str, pem: bytes) -> int:
    """Keep `pem` as the trunk's CA if it holds certificates and nothing else that
    counts: how many. A bad file is refused and the old one kept."""
    from cryptography import x509

    if len(pem) > MAX_CA_BYTES:
        raise TrunkSecretError(f"trunk {name}: the CA file is larger than {MAX_CA_BYTES} bytes")
    try:
        found = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise TrunkSecretError(f"trunk {name}: not PEM certificates ({exc})") from None
    atomic.write(ca_path(name), pem, 0o644)
    return len(found)


def cas(names: list[str]) -> dict[str, Path]:
    """The trunks among `names` that have a CA of their own."""
    return {name: ca_path(name) for name in names if ca_path(name).exists()}
