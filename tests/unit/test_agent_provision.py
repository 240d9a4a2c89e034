"""The agent's provisioning steps that can run on the host (PBXAGENT_ROOT = scratch tree).

Applying a valid hash runs chpasswd on the system and is covered by the device tests
(the harness logs in with the credential it seeded)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pbxagent import provision


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    return tmp_path


def test_data_layout_is_private(root: Path) -> None:
    base = provision.ensure_data_layout()
    assert base == root / "data" / "pbx"
    for path in (base, base / "credentials"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    # Idempotent: a second boot finds it in place.
    assert provision.ensure_data_layout() == base


def test_no_factory_hash_leaves_root_locked(root: Path) -> None:
    assert provision.apply_root_hash(provision.ensure_data_layout()) is False


@pytest.mark.parametrize("bad", ["plaintext-password", "$6$salt$hash:extra", "$6$a\nroot2:$6$b"])
def test_malformed_hash_is_refused_before_touching_shadow(root: Path, bad: str) -> None:
    base = provision.ensure_data_layout()
    (base / provision.FACTORY_ROOT_HASH).write_text(bad + "\n")
    with pytest.raises(ValueError, match=r"root\.hash: not a crypt\(3\) hash"):
        provision.apply_root_hash(base)
