"""root's entry in /etc/shadow. /etc is a volatile layer over the read-only root, so
the agent writes root's hash there at every boot from what it keeps on /data."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pbxagent import atomic, paths


def shadow_path() -> Path:
    return paths.root() / "etc" / "shadow"


@contextmanager
def _locked() -> Iterator[None]:
    """The lock passwd(1), chpasswd(8) and lckpwdf(3) take, so no edit is lost."""
    lock = paths.root() / "etc" / ".pwd.lock"
    with lock.open("a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        yield


def root_hash() -> str:
    for line in shadow_path().read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) >= 2:
            return fields[1]
    raise ValueError(f"{shadow_path()}: no entry for root")


def must_change() -> bool:
    """lastchg 0 is how shadow(5) says "change at next login"."""
    for line in shadow_path().read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root" and len(fields) >= 3:
            return fields[2] == "0"
    return False


def set_root(crypt_hash: str, change_at_login: bool) -> bool:
    """Write root's hash (and whether it must change at next login); False if unchanged."""
    path = shadow_path()
    with _locked():
        lines = path.read_text().splitlines()
        today = str(int(time.time() // 86400))
        out: list[str] = []
        changed = False
        for line in lines:
            fields = line.split(":")
            if fields[0] == "root" and len(fields) >= 3:
                lastchg = "0" if change_at_login else (fields[2] if fields[2] not in ("", "0") else today)
                if fields[1] != crypt_hash or fields[2] != lastchg:
                    fields[1], fields[2] = crypt_hash, lastchg
                    changed = True
                line = ":".join(fields)
            out.append(line)
        if changed:
            info = path.stat()
            atomic.write(path, "\n".join(out) + "\n", info.st_mode & 0o7777, (info.st_uid, info.st_gid))
        return changed
