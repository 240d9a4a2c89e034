"""What the production line gives each board: its factory root credential and the
factory identity block (pure functions; `pbxfw flash` moves them to the board).

Credential: with a factory key, HMAC-SHA256(key, "pbxfw-factory-root-v1" || MAC || n)
read as an integer and written in a typeable alphabet (no 0/O, 1/l/I), for the first
n whose result passes the agent's admin password policy and shares no 4 hex digits
with the MAC; without a key, the same from the OS CSPRNG. The key never leaves the
factory machine: only the credential's crypt(3) hash goes to the board.

Identity block: one U-Boot environment (crc32 + variables, U-Boot's mkenvimage) at
FACTORY_OFFSET in the bootstate partition, away from the two A/B copies, so no boot
state writer ever touches it. Linux reads it with `fw_printenv -c
/etc/fw_env.factory.config`; the agent imports the root hash from it on first boot.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pbxagent.credentials import xcrypt
from pbxagent.credentials.passwords import Account, Kind, check

from pbxfw.errors import PbxfwError
from pbxfw.image.layout import ENV_SIZE
from pbxfw.stages import run

# Typeable: no characters that read alike on a label (0 O o, 1 l I), none that need a
# shift on most layouts beyond letters, and '-' between groups of four.
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz"
GROUPS, GROUP_LEN = 4, 4
KEY_MIN_BYTES = 32
_CONTEXT = b"pbxfw-factory-root-v1"
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-]?)[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


@dataclass(frozen=True)
class Identity:
    mac: str  # aa:bb:cc:dd:ee:ff
    serial: str


def parse_mac(text: str) -> str:
    if not _MAC.match(text.strip()):
        raise PbxfwError(f"--mac: {text!r} is not a MAC address (six hex pairs)")
    digits = re.sub(r"[:-]", "", text.strip()).lower()
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def parse_serial(text: str) -> str:
    if not _SERIAL.match(text):
        raise PbxfwError(f"--serial: {text!r} must be 1-32 letters, digits, '.', '_' or '-'")
    return text


def load_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise PbxfwError(f"--factory-key {path}: cannot read: {exc.strerror}") from None
    if len(key) < KEY_MIN_BYTES:
        raise PbxfwError(f"--factory-key {path}: {len(key)} bytes; a factory key needs at least {KEY_MIN_BYTES}")
    return key


def encode(material: bytes) -> str:
    """The first GROUPS x GROUP_LEN base-56 digits of `material`, grouped with '-'."""
    number = int.from_bytes(material, "big")
    chars = []
    for _ in range(GROUPS * GROUP_LEN):
        number, digit = divmod(number, len(ALPHABET))
        chars.append(ALPHABET[digit])
    return "-".join("".join(chars[i:i + GROUP_LEN]) for i in range(0, len(chars), GROUP_LEN))


def _shares_mac_digits(credential: str, mac: str) -> bool:
    hexdigits = mac.replace(":", "")
    text = credential.lower().replace("-", "")
    return any(hexdigits[i:i + 4] in text for i in range(len(hexdigits) - 3))


def acceptable(credential: str, mac: str) -> bool:
    """Passes the agent's default admin policy and shares no 4 hex digits with the MAC."""
    return not check(credential, Kind.ADMIN, Account(user="root")) and not _shares_mac_digits(credential, mac)


def credential(mac: str, key: bytes | None) -> str:
    """The board's factory root credential: derived from (key, MAC), or random."""
    mac_bytes = bytes.fromhex(mac.replace(":", ""))
    for counter in range(1000):
        if key is None:
            material = secrets.token_bytes(32)
        else:
            material = hmac.new(key, _CONTEXT + mac_bytes + counter.to_bytes(4, "big"), hashlib.sha256).digest()
        candidate = encode(material)
        if acceptable(candidate, mac):
            return candidate
    raise PbxfwError("no acceptable credential in 1000 candidates (is the password policy satisfiable?)")


def crypt_hash(credential: str) -> str:
    """sha512crypt, not the yescrypt Debian uses for passwd: a 93-bit random credential
    gains nothing from yescrypt's memory cost, while the device pays it on first boot for
    every default and MAC-derived candidate it checks the hash against (measured under
    emulation: 11.7 s and 55 MiB with yescrypt)."""
    return xcrypt.hash_password(credential, "$6$")


def identity_block(identity: Identity, root_hash: str, image_sha256: str) -> bytes:
    """The factory identity block: U-Boot environment format, made by mkenvimage."""
    with tempfile.TemporaryDirectory(prefix="pbxfw-factory-") as tmp:
        text, image = Path(tmp) / "factory.txt", Path(tmp) / "factory.env"
        text.write_text(
            f"PBX_SERIAL={identity.serial}\nPBX_MAC={identity.mac}\nPBX_ROOT_HASH={root_hash}\n"
            f"PBX_IMAGE_SHA256={image_sha256}\n"
        )
        run(["mkenvimage", "-s", hex(ENV_SIZE), "-o", image, text])
        return image.read_bytes()
