"""Writing update bundles (the format itself is `pbxagent.update.bundle`, shared with the device)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

from pbxagent.update.bundle import ALIGN, FORMAT, HEADER, MAGIC, SIGNATURE, Manifest, payload_offset

from pbxfw.errors import PbxfwError
from pbxfw.signing.keys import Signer

CHUNK_SIZE = 64 << 10


def manifest_for(payload: Path, compatible: str, version: str, security_version: int, build_id: str,
                 chunk_size: int = CHUNK_SIZE) -> Manifest:
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with payload.open("rb") as src:
        while data := src.read(chunk_size):
            whole.update(data)
            chunks.append(hashlib.sha256(data).hexdigest())
            size += len(data)
    if size == 0:
        raise PbxfwError(f"{payload}: empty payload")
    return Manifest(compatible, version, security_version, build_id, size, whole.hexdigest(), chunk_size,
                    tuple(chunks))


def header_bytes(manifest_bytes: bytes, signers: Sequence[Signer]) -> bytes:
    """Everything before the payload: fixed header, manifest, signatures, padding."""
    if not signers:
        raise PbxfwError("a bundle needs at least one signing key")
    parts = [HEADER.pack(MAGIC, FORMAT, len(manifest_bytes), len(signers)), manifest_bytes]
    parts += [SIGNATURE.pack(s.key_id, s.sign(manifest_bytes)) for s in signers]
    head = b"".join(parts)
    offset = payload_offset(len(manifest_bytes), len(signers))
    assert offset % ALIGN == 0
    return head + b"\0" * (offset - len(head))


def write(dest: Path, payload: Path, manifest: Manifest, signers: Sequence[Signer]) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    with tmp.open("wb") as out, payload.open("rb") as src:
        out.write(header_bytes(manifest.encode(), signers))
        while data := src.read(1 << 20):
            out.write(data)
    tmp.replace(dest)


def sign_build(out: Path, signers: Sequence[Signer], *, compatible: str | None = None, version: str | None = None,
               security_version: int | None = None, dest: Path | None = None) -> tuple[Path, Manifest]:
    """The build in `out` (its slot and build.json) as a signed bundle; what is not given
    comes from the build, the build id from git."""
    built = json.loads((out / "build.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    manifest = manifest_for(
        out / "rootfs.slot",
        compatible=compatible or built["compatible"],
        version=version or built["version"],
        security_version=built["security_version"] if security_version is None else security_version,
        build_id=commit.stdout.strip() or "unknown",
    )
    dest = dest or out / f"pbxfw-{built['board']}-{manifest.version}.bundle"
    write(dest, out / "rootfs.slot", manifest, signers)
    return dest, manifest
