"""First-boot provisioning and repair at every boot (idempotent).

This part applies the factory root credential: the production line (or a test
harness) leaves only a crypt(3) hash on the data partition; the plaintext never
reaches the device.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import paths

FACTORY_ROOT_HASH = "credentials/root.hash"


def ensure_data_layout() -> Path:
    base = paths.data()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    (base / "credentials").mkdir(mode=0o700, exist_ok=True)
    return base


def apply_root_hash(base: Path) -> bool:
    """Install the stored root hash into the (volatile) shadow file; False if none."""
    stored = base / FACTORY_ROOT_HASH
    if not stored.is_file():
        return False
    crypt_hash = stored.read_text().strip()
    if not crypt_hash.startswith("$") or ":" in crypt_hash or "\n" in crypt_hash:
        raise ValueError(f"{stored}: not a crypt(3) hash")
    subprocess.run(["chpasswd", "-e"], input=f"root:{crypt_hash}\n", text=True, check=True)
    return True


def provision() -> list[str]:
    """Run every provisioning step; returns what was done, for the console and journal."""
    base = ensure_data_layout()
    done = [f"data layout at {base}"]
    done.append("root credential from factory hash" if apply_root_hash(base) else "root locked (no credential)")
    return done
