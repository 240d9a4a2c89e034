"""Signing keys: development key pairs on disk, and the one interface a signer offers.

A production signer (a PKCS#11 token, an HSM) only has to provide `key_id`, its
`public_key` and `sign`; the bundle writer and the release repository never see a
private key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from pbxagent.update.bundle import key_id

from pbxfw.errors import PbxfwError


class Signer(Protocol):
    @property
    def key_id(self) -> bytes: ...

    @property
    def public_key(self) -> Ed25519PublicKey: ...

    def sign(self, message: bytes) -> bytes: ...


class FileSigner:
    """An ed25519 private key in a PEM file (development and CI only)."""

    def __init__(self, path: Path) -> None:
        try:
            key = load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise PbxfwError(f"{path}: cannot load the signing key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise PbxfwError(f"{path}: not an ed25519 private key")
        self._key = key
        self.path = path

    @property
    def key_id(self) -> bytes:
        return key_id(self._key.public_key())

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """`name.key` (0600) and `name.pub` in `directory`; never overwrites a key."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    if private.exists() or public.exists():
        raise PbxfwError(f"{private}: a key named {name!r} already exists; choose another name")
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return private, public
