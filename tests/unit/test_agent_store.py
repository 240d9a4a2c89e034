"""Per-device state on /data: atomic files, extension secrets, and the provisioning
run that creates them once and only repairs afterwards."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pbxagent import atomic, provision
from pbxagent.credentials import extensions, root, xcrypt
from pbxagent.credentials.passwords import Rules
from pbxagent.policy import site

from tests.unit.agent_tree import make_tree


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    return make_tree(tmp_path)


def test_atomic_write_replaces_whole_and_private(tmp_path: Path) -> None:
    target = tmp_path / "d" / "file"
    atomic.write(target, "old")
    atomic.write(target, "new", 0o640)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["file"]


def test_a_failed_write_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file"
    atomic.write(target, "old")

    def power_cut(_: int) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError, match="power cut"):
        atomic.write(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_leftovers_of_a_cut_are_cleaned(tmp_path: Path) -> None:
    (tmp_path / ".extensions.json.123.tmp").write_text("half")
    (tmp_path / "extensions.json").write_text("whole")
    atomic.clean_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["extensions.json"]


def test_every_extension_gets_its_own_secret_once(tree: Path) -> None:
    numbers = tuple(str(n) for n in range(800, 810))
    assert extensions.ensure(numbers, Rules(), 16) == list(numbers)
    store = extensions.load()
    assert len({e.secret for e in store.values()}) == 10
    assert all(e.number not in e.pin and e.call_pin.isdigit() and e.call_pin != e.pin for e in store.values())
    assert stat.S_IMODE(extensions.store_path().stat().st_mode) == 0o600
    before = extensions.store_path().read_bytes()
    assert extensions.ensure(numbers, Rules(), 16) == []
    assert extensions.store_path().read_bytes() == before
    assert extensions.audit(store, Rules()) == []


def test_add_rotate_and_audit_weak_or_shared(tree: Path) -> None:
    assert extensions.add("900", 3, Rules(), 16) == ["900", "901", "902"]
    with pytest.raises(extensions.ExtensionError, match="extension 901 already exists"):
        extensions.add("901", 1, Rules(), 16)
    store = extensions.load()
    weak = {**store, "901": extensions.Extension("901", store["900"].secret, "901901", "538217"),
            "902": extensions.Extension("902", "secret", "538217", "538217")}
    found = {(f.number, f.what): {v.rule for v in f.problems} for f in extensions.audit(weak, Rules())}
    assert "shared" in found[("900", "secret")] and "shared" in found[("901", "secret")]
    assert "account" in found[("901", "pin")] and ("901", "call_pin") not in found
    assert found[("902", "call_pin")] == {"shared"}  # the voicemail PIN must not open international calls
    assert {"length", "upper", "digits", "common"} <= found[("902", "secret")]
    extensions.save(weak)
    old = extensions.load()["900"].secret
    extensions.rotate(["901", "902"], Rules(), 16)
    assert extensions.audit(extensions.load(), Rules()) == []
    assert extensions.load()["900"].secret == old
    with pytest.raises(extensions.ExtensionError, match="extension 555: no such extension"):
        extensions.rotate(["555"], Rules(), 16)


def test_a_store_from_before_call_pins_gets_them_and_keeps_its_secrets(tree: Path) -> None:
    extensions.ensure(("800", "801"), Rules(), 16)
    old = json.loads(extensions.store_path().read_text())
    for item in old["extensions"].values():
        del item["call_pin"]
    extensions.store_path().write_text(json.dumps(old))
    assert {e.call_pin for e in extensions.load().values()} == {""}
    assert extensions.ensure(("800", "801"), Rules(), 16) == []  # none created, but both completed
    store = extensions.load()
    assert all(e.call_pin.isdigit() for e in store.values())
    assert {n: (e.secret, e.pin) for n, e in store.items()} == {
        n: (item["secret"], item["pin"]) for n, item in old["extensions"].items()}


def test_first_boot_creates_later_boots_repair(tree: Path) -> None:
    steps = list(provision.provision())
    assert "first-boot provisioning complete" in steps
    assert provision.completed()
    snapshot = {p: p.read_bytes() for p in (tree / "data").rglob("*") if p.is_file()}
    again = list(provision.provision())
    assert "first-boot provisioning complete" not in again
    assert {p: p.read_bytes() for p in (tree / "data").rglob("*") if p.is_file()} == snapshot
    for directory in (tree / "data" / "pbx").iterdir():
        if directory.is_dir():
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_a_cut_between_steps_is_finished_by_the_next_boot(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tree / "data" / "pbx" / "credentials").mkdir(parents=True)
    root.hash_path().write_text(xcrypt.hash_password("00abcdef", "$6$") + "\n")

    def cut(*_: object) -> list[str]:
        raise OSError("power cut")

    monkeypatch.setattr(extensions, "ensure", cut)
    with pytest.raises(OSError):
        list(provision.provision())
    committed = root.hash_path().read_text()
    monkeypatch.undo()
    monkeypatch.setenv("PBXAGENT_ROOT", str(tree))
    list(provision.provision())
    assert root.hash_path().read_text() == committed  # the rotated password stands
    assert len(extensions.load()) == 10
    assert provision.completed()


def test_provisioning_remembers_the_policy_and_reports_a_bad_override(tree: Path) -> None:
    list(provision.provision())
    (tree / "data" / "pbx" / "policy.yaml").write_text("ssh:\n  port: -1\n")
    steps = list(provision.provision())
    assert any("ssh.port" in step and "stays in force" in step for step in steps)
    assert json.loads(site.last_good_path().read_text())["settings"]["ssh.port"] == 22
