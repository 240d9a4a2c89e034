"""The update bundle format, defined once: the host writes and signs it, the device and
the host verify it. This docstring is the layout's only description (docs/updates.md
points here).

    offset     size  field
    0          8     magic b"PBXFWBDL"
    8          4     format version, u32 big-endian (1)
    12         4     manifest length M, u32 big-endian (1 .. 4 MiB)
    16         4     signature count S, u32 big-endian (1 .. 16)
    20         M     manifest: UTF-8 JSON object (fields in MANIFEST_FIELDS)
    20+M       96*S  signatures: sha256 of the signer's raw ed25519 public key (32 bytes)
                     + ed25519 signature of the manifest bytes (64 bytes)
    ...              zero padding to a multiple of 4096
    P          N     payload: the slot image, N = manifest payload_size

Only the manifest is signed; it pins everything else: the payload by its sha256 and the
sha256 of every chunk, so the device checks each chunk before writing it and never has
to trust bytes it has not verified. The header's format version is repeated in the
manifest, so it is signed too.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

MAGIC = b"PBXFWBDL"
FORMAT = 1
HEADER = struct.Struct(">8sIII")
SIGNATURE = struct.Struct(">32s64s")
ALIGN = 4096
MAX_MANIFEST = 4 << 20
MAX_SIGNATURES = 16
CHUNK_SIZES = range(12, 25)  # 4 KiB .. 16 MiB, as powers of two

MANIFEST_FIELDS: dict[str, type] = {
    "format": int,
    "compatible": str,
    "version": str,
    "security_version": int,
    "build_id": str,
    "payload_size": int,
    "payload_sha256": str,
    "chunk_size": int,
    "chunks": list,
}


class Reason(enum.IntEnum):
    """Why a bundle is refused; the value is the exit status `update install` returns."""

    UNKNOWN_FORMAT = 10
    MALFORMED = 11
    BAD_SIGNATURE = 12
    UNKNOWN_KEY = 13
    REVOKED_KEY = 14
    OTHER_BOARD = 15
    BELOW_FLOOR = 16
    TOO_LARGE = 17
    TRUNCATED = 18
    CHUNK_MISMATCH = 19
    READBACK_MISMATCH = 20
    TARGET_MISMATCH = 21  # a fleet update's bundle disagrees with its signed TUF target


class Rejected(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def refusal(self) -> str:
        """How the device says it: `update refused (bad signature): …`."""
        return f"update refused ({self.reason.name.lower().replace('_', ' ')}): {self}"


@dataclass(frozen=True)
class Manifest:
    compatible: str
    version: str
    security_version: int
    build_id: str
    payload_size: int
    payload_sha256: str
    chunk_size: int
    chunks: tuple[str, ...]

    def encode(self) -> bytes:
        fields = {name: getattr(self, name) for name in MANIFEST_FIELDS if name != "format"}
        fields["chunks"] = list(self.chunks)
        return json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":")).encode()

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk `index` in the payload."""
        start = index * self.chunk_size
        return start, min(self.chunk_size, self.payload_size - start)


@dataclass(frozen=True)
class Header:
    manifest: Manifest
    manifest_bytes: bytes
    signatures: tuple[tuple[bytes, bytes], ...]
    payload_offset: int

    @property
    def total_size(self) -> int:
        return self.payload_offset + self.manifest.payload_size

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()


@dataclass(frozen=True)
class Trust:
    """The public keys a verifier accepts (by key id) and the key ids it refuses."""

    keys: dict[bytes, Ed25519PublicKey]
    revoked: frozenset[bytes]


def key_id(public: Ed25519PublicKey) -> bytes:
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).digest()


def load_trust(key_dirs: Iterable[Path], revoked_files: Iterable[Path] = ()) -> Trust:
    """Every `*.pub` (PEM) in the key directories; revoked key ids (hex, one per line,
    `#` comments) from `revoked` in those directories and from `revoked_files`."""
    keys: dict[bytes, Ed25519PublicKey] = {}
    revoked: set[bytes] = set()
    dirs = [Path(d) for d in key_dirs]
    for directory in dirs:
        for path in sorted(directory.glob("*.pub")):
            public = load_pem_public_key(path.read_bytes())
            if not isinstance(public, Ed25519PublicKey):
                raise ValueError(f"{path}: not an ed25519 public key")
            keys[key_id(public)] = public
    for path in [d / "revoked" for d in dirs] + [Path(f) for f in revoked_files]:
        if path.is_file():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                try:
                    ident = bytes.fromhex(text)
                except ValueError:
                    ident = b""
                if len(ident) != 32:
                    raise ValueError(f"{path}:{number}: not a key id (64 hex digits): {text!r}")
                revoked.add(ident)
    return Trust(keys, frozenset(revoked))


def _field(data: dict[str, object], name: str) -> object:
    value = data[name]
    # bool is an int to Python; a manifest saying `true` for a size is malformed.
    if not isinstance(value, MANIFEST_FIELDS[name]) or isinstance(value, bool):
        raise Rejected(Reason.MALFORMED, f"manifest: {name} must be {MANIFEST_FIELDS[name].__name__}")
    return value


def _is_sha256(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest, checked for shape and consistency; anything else is MALFORMED."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejected(Reason.MALFORMED, f"manifest: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Rejected(Reason.MALFORMED, "manifest: not a JSON object")
    missing = sorted(set(MANIFEST_FIELDS) - set(data))
    unknown = sorted(set(data) - set(MANIFEST_FIELDS))
    if missing or unknown:
        raise Rejected(Reason.MALFORMED, f"manifest: missing {missing}, unknown {unknown}")
    values = {name: _field(data, name) for name in MANIFEST_FIELDS}
    if values["format"] != FORMAT:
        raise Rejected(Reason.UNKNOWN_FORMAT, f"manifest: format {values['format']}, this verifier reads {FORMAT}")
    size, chunk_size, chunks = values["payload_size"], values["chunk_size"], values["chunks"]
    assert isinstance(size, int) and isinstance(chunk_size, int) and isinstance(chunks, list)
    if chunk_size not in [1 << n for n in CHUNK_SIZES]:
        raise Rejected(Reason.MALFORMED, f"manifest: chunk_size {chunk_size} is not a power of two 4 KiB..16 MiB")
    if size < 1 or len(chunks) != -(-size // chunk_size):
        raise Rejected(Reason.MALFORMED, f"manifest: {len(chunks)} chunk hashes for a payload of {size} bytes")
    if not all(_is_sha256(c) for c in chunks) or not _is_sha256(values["payload_sha256"]):
        raise Rejected(Reason.MALFORMED, "manifest: hashes must be 64 lower-case hex digits")
    security = values["security_version"]
    assert isinstance(security, int)
    if security < 0:
        raise Rejected(Reason.MALFORMED, "manifest: security_version must not be negative")
    return Manifest(
        compatible=str(values["compatible"]),
        version=str(values["version"]),
        security_version=security,
        build_id=str(values["build_id"]),
        payload_size=size,
        payload_sha256=str(values["payload_sha256"]),
        chunk_size=chunk_size,
        chunks=tuple(str(c) for c in chunks),
    )


def header_size(manifest_len: int, signature_count: int) -> int:
    return HEADER.size + manifest_len + SIGNATURE.size * signature_count


def payload_offset(manifest_len: int, signature_count: int) -> int:
    return -(-header_size(manifest_len, signature_count) // ALIGN) * ALIGN


def parse_fixed_header(raw: bytes) -> tuple[int, int]:
    """(manifest length, signature count) from the first HEADER.size bytes."""
    if len(raw) < HEADER.size:
        raise Rejected(Reason.TRUNCATED, f"bundle: {len(raw)} bytes, shorter than its {HEADER.size}-byte header")
    magic, version, manifest_len, count = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise Rejected(Reason.UNKNOWN_FORMAT, "bundle: not a pbxfw bundle (bad magic)")
    if version != FORMAT:
        raise Rejected(Reason.UNKNOWN_FORMAT, f"bundle: format version {version}, this verifier reads {FORMAT}")
    if not 1 <= manifest_len <= MAX_MANIFEST or not 1 <= count <= MAX_SIGNATURES:
        raise Rejected(Reason.MALFORMED, f"bundle: manifest of {manifest_len} bytes with {count} signatures")
    return manifest_len, count


def parse_header(raw: bytes) -> Header:
    """The header from the start of a bundle (at least up to the end of its signatures)."""
    manifest_len, count = parse_fixed_header(raw)
    end = header_size(manifest_len, count)
    if len(raw) < end:
        raise Rejected(Reason.TRUNCATED, f"bundle: header needs {end} bytes, got {len(raw)}")
    manifest_bytes = raw[HEADER.size:HEADER.size + manifest_len]
    sigs = tuple(SIGNATURE.unpack_from(raw, HEADER.size + manifest_len + i * SIGNATURE.size) for i in range(count))
    return Header(parse_manifest(manifest_bytes), manifest_bytes, sigs, payload_offset(manifest_len, count))


def check_signatures(header: Header, trust: Trust) -> bytes:
    """The id of a trusted, unrevoked key whose signature verifies; else the reason."""
    reasons: list[tuple[Reason, str]] = []
    for ident, signature in header.signatures:
        public = trust.keys.get(ident)
        if ident in trust.revoked:
            reasons.append((Reason.REVOKED_KEY, f"signed by revoked key {ident.hex()[:16]}"))
        elif public is None:
            reasons.append((Reason.UNKNOWN_KEY, f"signed by unknown key {ident.hex()[:16]}"))
        else:
            try:
                public.verify(signature, header.manifest_bytes)
                return ident
            except InvalidSignature:
                reasons.append((Reason.BAD_SIGNATURE, f"signature of key {ident.hex()[:16]} does not verify"))
    # Report the most telling reason: a bad signature from a trusted key beats the rest.
    reason, _ = min(reasons, key=lambda r: [Reason.BAD_SIGNATURE, Reason.REVOKED_KEY, Reason.UNKNOWN_KEY].index(r[0]))
    raise Rejected(reason, "bundle: " + "; ".join(text for _, text in reasons))


def check_target(manifest: Manifest, compatible: str, floor: int, slot_bytes: int) -> None:
    """The checks against the device itself, all before a byte is written."""
    if manifest.compatible != compatible:
        raise Rejected(Reason.OTHER_BOARD, f"bundle is for {manifest.compatible!r}, this board is {compatible!r}")
    if manifest.security_version < floor:
        raise Rejected(
            Reason.BELOW_FLOOR,
            f"bundle security version {manifest.security_version} is below this device's floor {floor}",
        )
    if manifest.payload_size > slot_bytes:
        raise Rejected(
            Reason.TOO_LARGE, f"payload of {manifest.payload_size} bytes does not fit the {slot_bytes}-byte slot"
        )


def verify_chunk(manifest: Manifest, index: int, data: bytes | memoryview,
                 mismatch: Reason = Reason.CHUNK_MISMATCH) -> None:
    offset, length = manifest.chunk_range(index)
    if len(data) != length:
        raise Rejected(Reason.TRUNCATED, f"payload ends at byte {offset + len(data)} of {manifest.payload_size}")
    if hashlib.sha256(data).hexdigest() != manifest.chunks[index]:
        raise Rejected(mismatch, f"payload chunk {index} (bytes {offset}..{offset + length}) "
                                 "does not match the signed manifest")


def verify_payload(manifest: Manifest, read: Callable[[int, int], bytes], where: str,
                   mismatch: Reason = Reason.CHUNK_MISMATCH) -> None:
    """Every chunk and then the whole payload, read through `read(offset, length)` (a
    bundle file, or a slot read back after writing: `mismatch` says which failed)."""
    whole = hashlib.sha256()
    for index in range(len(manifest.chunks)):
        data = read(*manifest.chunk_range(index))
        try:
            verify_chunk(manifest, index, data, mismatch)
        except Rejected as exc:
            raise Rejected(exc.reason, f"{where}: {exc}") from None
        whole.update(data)
    if whole.hexdigest() != manifest.payload_sha256:
        raise Rejected(mismatch, f"{where}: payload sha256 does not match the signed manifest")


def read_header(src: BinaryIO) -> Header:
    """Read and parse the header from a stream positioned at the start of a bundle."""
    fixed = src.read(HEADER.size)
    manifest_len, count = parse_fixed_header(fixed)
    rest = src.read(header_size(manifest_len, count) - HEADER.size)
    return parse_header(fixed + rest)


def verify_file(path: Path, trust: Trust) -> tuple[Header, bytes]:
    """Everything a bundle file can be checked for without a device: its signature, its
    size and every chunk. Returns the header and the signing key's id."""
    with path.open("rb") as src:
        header = read_header(src)
        signer = check_signatures(header, trust)
        size = path.stat().st_size
        if size < header.total_size:
            raise Rejected(Reason.TRUNCATED, f"{path}: {size} bytes, the manifest needs {header.total_size}")
        verify_payload(header.manifest, lambda offset, length: os.pread(src.fileno(), length,
                                                                        header.payload_offset + offset), str(path))
    return header, signer
