"""root's credential: keep it on /data, find the old boards' MAC-derived or well-known
defaults, rotate them to a random one-time password shown only on the local console.

Files (all on the data partition, root-only):
  credentials/root.hash     the hash in force (factory, rotated or set by the user)
  credentials/root.initial  a rotated one-time password, until root changes it
  state/root.json           what the agent knows about that hash (origin, verdict)
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from pbxagent import atomic, paths
from pbxagent.credentials import shadow, xcrypt
from pbxagent.credentials.passwords import Account, Kind, Rules, generate
from pbxagent.update import bootstate

# Defaults shipped by PBX and embedded vendors; the old boards' own was the MAC.
KNOWN_DEFAULTS = (
    "root", "admin", "password", "1234", "12345", "123456", "12345678", "toor", "pbx", "default",
    "changeme", "admin123", "password1", "coovox", "ippbx", "voip",
)  # fmt: skip


class Status(StrEnum):
    LOCKED = "locked"  # no password login at all
    DEFAULT = "default"  # a well-known default password
    DERIVED = "derived"  # derived from a MAC address (public: ARP, label)
    ROTATED = "rotated"  # the agent's random one-time password
    FACTORY = "factory"  # the production line's unique credential
    USER_SET = "user-set"  # changed by an administrator


class Record(NamedTuple):
    """What the agent knows about the hash in force."""

    crypt_hash: str = ""
    origin: str = ""
    verdict: str = ""  # "clean", "default" or "derived" for the MACs below
    macs: tuple[str, ...] = ()
    shown: bool = False
    must_change: bool = False  # a factory credential: root chooses a new one at first login


def hash_path() -> Path:
    return paths.data() / "credentials" / "root.hash"


def initial_path() -> Path:
    return paths.data() / "credentials" / "root.initial"


def record_path() -> Path:
    return paths.data() / "state" / "root.json"


def mac_candidates(mac: str) -> set[str]:
    """Every password an old board could have derived from `mac`: the last 8 or 6 hex
    digits or the whole address, any case, with or without separators."""
    digits = "".join(c for c in mac if c.isalnum()).lower()
    if len(digits) != 12:
        raise ValueError(f"{mac!r} is not a MAC address")
    pairs = [digits[i : i + 2] for i in range(0, 12, 2)]
    forms = {digits, digits[-8:], digits[-6:]}
    for sep in (":", "-", "."):
        joined = sep.join(pairs)
        forms |= {joined, joined[-8:], sep.join(pairs[-4:]), sep.join(pairs[-3:])}
    forms.add(f"{digits[0:4]}.{digits[4:8]}.{digits[8:12]}")  # Cisco style
    return {case(form) for form in forms for case in (str.lower, str.upper)}


def interface_macs() -> tuple[str, ...]:
    """MAC addresses of every Ethernet interface (type 1), sorted."""
    found: set[str] = set()
    for iface in sorted((paths.root() / "sys" / "class" / "net").glob("*")):
        try:
            if (iface / "type").read_text().strip() != "1":
                continue
            mac = (iface / "address").read_text().strip().lower()
        except OSError:
            continue
        if mac and mac != "00:00:00:00:00:00":
            found.add(mac)
    return tuple(sorted(found))


def classify_hash(crypt_hash: str, macs: tuple[str, ...]) -> str:
    """"default", "derived" or "clean" (locked hashes are clean: nothing to guess)."""
    if not crypt_hash.startswith("$"):
        return "clean"
    if xcrypt.matches_any(list(KNOWN_DEFAULTS), crypt_hash):
        return "default"
    candidates = sorted(set().union(*(mac_candidates(mac) for mac in macs))) if macs else []
    if xcrypt.matches_any(candidates, crypt_hash):
        return "derived"
    return "clean"


def _load_record() -> Record:
    try:
        data = json.loads(record_path().read_text())
        data["macs"] = tuple(data.get("macs", ()))
        return Record(**data)
    except (OSError, ValueError, TypeError):
        return Record()


def _save_record(record: Record) -> None:
    atomic.write(record_path(), json.dumps(record._asdict(), sort_keys=True) + "\n", 0o600)


def _is_crypt_hash(value: str) -> bool:
    return bool(value) and ":" not in value and "\n" not in value and (value.startswith("$") or value[0] in "!*")


def _stored_hash() -> str | None:
    path = hash_path()
    if not path.is_file():
        return None
    value = path.read_text().strip()
    if not _is_crypt_hash(value):
        raise ValueError(f"{path}: not a crypt(3) hash")
    return value


def _import_factory_hash() -> str | None:
    """First boot of a board from the production line: its credential's hash is in the
    factory identity block. The record (must change at first login) is committed before
    the hash, so a power cut in between imports it again rather than lose the demand."""
    crypt_hash = bootstate.factory_identity().get("PBX_ROOT_HASH", "")
    if not crypt_hash.startswith("$") or not _is_crypt_hash(crypt_hash):
        return None
    _save_record(_assess(crypt_hash, Status.FACTORY.value)._replace(must_change=True))
    atomic.write(hash_path(), crypt_hash + "\n", 0o600)
    return crypt_hash


def status(record: Record | None = None, crypt_hash: str | None = None) -> Status:
    record = record or _load_record()
    crypt_hash = crypt_hash if crypt_hash is not None else (_stored_hash() or shadow.root_hash())
    if not crypt_hash.startswith("$"):
        return Status.LOCKED
    if record.crypt_hash != crypt_hash or not record.verdict:
        record = _assess(crypt_hash, record.origin if record.crypt_hash == crypt_hash else "")
    if record.verdict in ("default", "derived"):
        return Status(record.verdict)
    return Status(record.origin) if record.origin in {s.value for s in Status} else Status.USER_SET


def _assess(crypt_hash: str, origin: str) -> Record:
    """Check a hash against every default and MAC-derived candidate; the record caches
    the verdict so later boots, with the same hash and MACs, skip the hashing."""
    macs = interface_macs()
    if not origin:
        pending = initial_path()
        if pending.is_file() and xcrypt.verify(pending.read_text().strip(), crypt_hash):
            origin = Status.ROTATED.value
        else:
            origin = Status.FACTORY.value if not record_path().exists() else Status.USER_SET.value
    return Record(crypt_hash, origin, classify_hash(crypt_hash, macs), macs)


def _show_once(password: str, reason: str) -> None:
    """The one place the plaintext goes: the local console, never stdout (journal) or
    the network. The installer reads it there or from root.initial as root."""
    with paths.console().open("a", encoding="utf-8") as console:
        console.write(
            f"\npbxagent: {reason}\n"
            f"pbxagent: one-time root password: {password}\n"
            f"pbxagent: it must be changed at first login; until then it is kept in {initial_path()}\n\n"
        )


def rotate(rules: Rules, reason: str) -> None:
    """Replace root's password with a random one that must change at first login.
    Resumable: a password written before a power cut but not yet committed is reused,
    so what the console showed stays true."""
    pending = initial_path()
    password = pending.read_text().strip() if pending.is_file() else ""
    committed = _stored_hash()
    if not password or (committed is not None and xcrypt.verify(password, committed)):
        password = generate(Kind.ADMIN, Account(user="root"), rules)
        atomic.write(pending, password + "\n", 0o600)
    crypt_hash = xcrypt.hash_password(password)
    atomic.write(hash_path(), crypt_hash + "\n", 0o600)
    record = Record(crypt_hash, Status.ROTATED.value, "clean", interface_macs(), shown=False)
    _save_record(record)
    shadow.set_root(crypt_hash, change_at_login=True)
    _show_once(password, reason)
    _save_record(record._replace(shown=True))


def repair(rules: Rules) -> str:
    """Provisioning's step: put the kept hash into /etc/shadow, rotate a default or
    MAC-derived one, show a pending one-time password once. Returns what happened."""
    stored = _stored_hash()
    if stored is None:
        stored = _import_factory_hash()
    crypt_hash = stored if stored is not None else shadow.root_hash()
    record = _load_record()
    if record.crypt_hash != crypt_hash or record.macs != interface_macs() or not record.verdict:
        same = record.crypt_hash == crypt_hash
        record = _assess(crypt_hash, record.origin if same else "")._replace(must_change=same and record.must_change)
        _save_record(record)
    if record.verdict in ("default", "derived"):
        what = "a well-known default" if record.verdict == "default" else "derived from a MAC address"
        rotate(rules, f"root's password was {what}; it has been replaced")
        return f"root password was {what}: rotated, must change at first login"
    must_change = record.origin == Status.ROTATED.value or record.must_change
    if stored is not None:
        shadow.set_root(crypt_hash, change_at_login=must_change)
    if record.origin == Status.ROTATED.value and not record.shown:
        _show_once(initial_path().read_text().strip(), "root's one-time password (not shown before a power cut)")
        record = record._replace(shown=True)
        _save_record(record)
    return f"root credential: {status(record, crypt_hash).value}"


def sync() -> str:
    """Keep a password root set with passwd(1) (in volatile /etc/shadow) on /data."""
    current = shadow.root_hash()
    if current == (_stored_hash() or ""):
        return "root credential unchanged"
    atomic.write(hash_path(), current + "\n", 0o600)
    atomic.remove(initial_path())
    record = _assess(current, Status.USER_SET.value)
    _save_record(record)
    return f"root credential kept on /data ({status(record, current).value})"


def rotate_now(rules: Rules) -> str:
    rotate(rules, "root's password was rotated on request")
    return "root password rotated; the one-time password is on the local console"
