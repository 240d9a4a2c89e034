"""root's credential: MAC-derived and default detection with the real libxcrypt,
rotation that survives a power cut, and keeping a user's change."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pbxagent.credentials import root, xcrypt
from pbxagent.credentials.passwords import Kind, Rules, check

from tests.unit.agent_tree import MAC, make_tree, shadow_root


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    return make_tree(tmp_path)


def seed_hash(password: str) -> None:
    path = root.hash_path()
    path.parent.mkdir(parents=True, mode=0o700)
    # sha512crypt: what old boards and `openssl passwd -6` write, and quick to test.
    path.write_text(xcrypt.hash_password(password, "$6$") + "\n")


@pytest.mark.parametrize("form", ["abcdef", "ABCDEF", "00abcdef", "00ABCDEF", "525400abcdef", "52:54:00:AB:CD:EF",
                                  "52-54-00-ab-cd-ef", "ab:cd:ef", "00:ab:cd:ef", "5254.00ab.cdef"])
def test_mac_candidates_cover_every_form_old_boards_used(form: str) -> None:
    assert form in root.mac_candidates(MAC)


def test_mac_candidates_reject_garbage() -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        root.mac_candidates("52:54:00")


def test_crypt_binding_round_trip_and_locked_hashes_never_match() -> None:
    for prefix in ("$y$", "$6$", "$1$"):
        crypt_hash = xcrypt.hash_password("pass-word", prefix)
        assert crypt_hash.startswith(prefix)
        assert xcrypt.verify("pass-word", crypt_hash)
        assert not xcrypt.verify("pass-wore", crypt_hash)
    assert not xcrypt.verify("", "*")
    assert not xcrypt.verify("x", "!$6$locked")


@pytest.mark.parametrize(("password", "verdict"), [("00ABCDEF", "derived"), ("ab:cd:ef", "derived"),
                                                   ("admin", "default"), ("Kx-7Rm.2Qz=9Wp", "clean")])
def test_classification(password: str, verdict: str) -> None:
    assert root.classify_hash(xcrypt.hash_password(password, "$6$"), (MAC,)) == verdict


def test_a_mac_derived_root_is_rotated_shown_once_and_kept_on_data(tree: Path) -> None:
    seed_hash("00abcdef")
    assert "rotated" in root.repair(Rules())
    console = (tree / "dev" / "console").read_text()
    password = root.initial_path().read_text().strip()
    assert f"one-time root password: {password}" in console
    assert check(password, Kind.ADMIN) == []
    stored = root.hash_path().read_text().strip()
    assert xcrypt.verify(password, stored)
    fields = shadow_root(tree)
    assert fields[1] == stored and fields[2] == "0"  # must change at first login
    for path in (root.hash_path(), root.initial_path()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert root.status() is root.Status.ROTATED
    # A later boot neither rotates again nor shows it again.
    assert root.repair(Rules()) == "root credential: rotated"
    assert (tree / "dev" / "console").read_text() == console
    assert root.hash_path().read_text().strip() == stored


def test_power_cut_after_the_password_was_written_reuses_it(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_hash("admin")

    def cut(*_: object) -> str:
        raise OSError("power cut")

    monkeypatch.setattr(xcrypt, "hash_password", cut)
    with pytest.raises(OSError):
        root.repair(Rules())
    pending = root.initial_path().read_text()
    monkeypatch.undo()
    monkeypatch.setenv("PBXAGENT_ROOT", str(tree))
    root.repair(Rules())
    assert root.initial_path().read_text() == pending
    assert xcrypt.verify(pending.strip(), root.hash_path().read_text().strip())


def test_power_cut_before_the_console_showed_it_shows_it_next_boot(tree: Path, monkeypatch: pytest.MonkeyPatch) \
        -> None:
    seed_hash("admin")
    monkeypatch.setattr(root, "_show_once", lambda *_: (_ for _ in ()).throw(OSError("power cut")))
    with pytest.raises(OSError):
        root.repair(Rules())
    monkeypatch.undo()
    monkeypatch.setenv("PBXAGENT_ROOT", str(tree))
    root.repair(Rules())
    assert root.initial_path().read_text().strip() in (tree / "dev" / "console").read_text()


def test_factory_credential_is_applied_and_not_rotated(tree: Path) -> None:
    seed_hash("Factory-Cred-7x9Q")
    assert root.repair(Rules()) == "root credential: factory"
    assert shadow_root(tree)[1] == root.hash_path().read_text().strip()
    assert shadow_root(tree)[2] != "0"
    assert (tree / "dev" / "console").read_text() == ""


def test_a_password_root_sets_is_kept_and_ends_the_one_time_password(tree: Path) -> None:
    seed_hash("admin")
    root.repair(Rules())
    new = xcrypt.hash_password("Chosen-by-4dmin-Q7")
    lines = (tree / "etc" / "shadow").read_text().replace(shadow_root(tree)[1], new)
    (tree / "etc" / "shadow").write_text(lines)
    assert "user-set" in root.sync()
    assert root.hash_path().read_text().strip() == new
    assert not root.initial_path().exists()
    assert root.status() is root.Status.USER_SET


def test_on_demand_rotation_makes_a_new_password(tree: Path) -> None:
    seed_hash("admin")
    root.repair(Rules())
    first = root.initial_path().read_text()
    root.rotate_now(Rules())
    assert root.initial_path().read_text() != first


def test_parallel_matching_finds_the_one_candidate_wherever_it_is() -> None:
    crypt_hash = xcrypt.hash_password("needle", "$6$")
    words = [f"hay{i}" for i in range(9)]
    for position in range(10):
        assert xcrypt.matches_any([*words[:position], "needle", *words[position:]], crypt_hash)
    assert not xcrypt.matches_any(words, crypt_hash)
    assert not xcrypt.matches_any([], crypt_hash)


def write_factory_block(tree: Path, block: bytes) -> None:
    """The bootstate partition as a file, with the production line's identity block."""
    from pbxfw.image.layout import FACTORY_OFFSET

    partition = tree / "bootstate.img"
    partition.write_bytes(bytes(FACTORY_OFFSET) + block)
    (tree / "etc" / "fw_env.factory.config").write_text(f"{partition} {FACTORY_OFFSET:#x} {len(block):#x}\n")


def test_first_boot_imports_the_factory_hash_and_demands_a_change_until_root_sets_one(tree: Path) -> None:
    from pbxfw.production import factory

    crypt_hash = xcrypt.hash_password(factory.credential(MAC, None), "$6$")
    identity = factory.Identity(mac=MAC, serial="U50-000123")
    write_factory_block(tree, factory.identity_block(identity, crypt_hash, "0" * 64))
    assert root.repair(Rules()) == "root credential: factory"
    assert root.hash_path().read_text().strip() == crypt_hash
    assert shadow_root(tree)[1:3] == [crypt_hash, "0"]
    # A later boot (volatile /etc/shadow rebuilt from the image) still demands the change.
    (tree / "etc" / "shadow").write_text("root:*:20000:0:99999:7:::\n")
    root.repair(Rules())
    assert shadow_root(tree)[1:3] == [crypt_hash, "0"]
    # root chose a password with passwd(1): kept, and no longer must change.
    chosen = xcrypt.hash_password("Kx-7Rm.2Qz=9Wp", "$6$")
    (tree / "etc" / "shadow").write_text(f"root:{chosen}:20400:0:99999:7:::\n")
    root.sync()
    (tree / "etc" / "shadow").write_text("root:*:20000:0:99999:7:::\n")
    assert root.repair(Rules()) == "root credential: user-set"
    assert shadow_root(tree)[1] == chosen and shadow_root(tree)[2] != "0"


def test_a_blank_or_corrupt_factory_block_imports_nothing(tree: Path) -> None:
    write_factory_block(tree, bytes(0x4000))
    assert root.repair(Rules()) == "root credential: locked"
    assert not root.hash_path().exists()
