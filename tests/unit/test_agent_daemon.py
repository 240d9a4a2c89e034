"""The agent's one process at boot (pbxagent.daemon): provisioning and the SIP service's
inputs in a forked copy, what the console shows, and what a failure leaves in place.
The guard and the health check it runs after are the device tests' subject."""

from __future__ import annotations

from pathlib import Path

import pytest
from pbxagent import daemon, paths, provision, sip

from tests.unit.agent_tree import make_tree


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    return make_tree(tmp_path)


def test_a_forked_copy_returns_its_exit_status_and_a_raise_is_a_failure() -> None:
    assert daemon.exit_code(daemon.fork(lambda: 0)) == 0
    assert daemon.exit_code(daemon.fork(lambda: 7)) == 7

    def broken() -> int:
        raise RuntimeError("a bug in a step")

    assert daemon.exit_code(daemon.fork(broken)) == 1


def test_the_copy_provisions_and_renders_and_the_console_shows_the_markers(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pbxagent.system.systemctl", lambda *args: "")
    journal: list[str] = []
    code = daemon.exit_code(daemon.fork(lambda: daemon.prepare(journal.append)))
    assert code == 0
    console = paths.console().read_text().splitlines()
    assert "pbxagent: first-boot provisioning complete" in console
    assert console[-1] == "pbxagent: provisioned"
    assert provision.completed()
    assert (sip.run_dir() / "db" / "subscriber").read_text().count(":pbx:") == 10


def test_the_sip_service_is_restarted_only_when_its_inputs_changed(
        tree: Path, systemctl_calls: list[tuple[str, ...]]) -> None:
    calls = systemctl_calls
    journal: list[str] = []
    assert daemon.prepare(journal.append) == 0  # a first boot: no inputs yet, so it was not started
    assert calls == [("restart", "--no-block", "kamailio.service")]
    assert daemon.prepare(journal.append) == 0  # a later boot: kamailio started from them already
    assert calls == [("restart", "--no-block", "kamailio.service")]
    assert journal[-2].endswith("the TLS files for the SIP service: unchanged")
    extensions = sip.run_dir() / "db" / "subscriber"
    extensions.write_text(extensions.read_text().replace(":pbx:", ":other-realm:", 1))  # what an update could change
    assert daemon.prepare(journal.append) == 0
    assert len(calls) == 2 and ":other-realm:" not in extensions.read_text()
    assert journal[-1] == "SIP service (re)started with the new inputs"


def test_a_failed_restart_is_logged_and_the_render_stands(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def masked(*args: str) -> str:
        raise OSError("systemctl restart --no-block kamailio.service: Unit kamailio.service is masked.")

    monkeypatch.setattr("pbxagent.system.systemctl", masked)
    journal: list[str] = []
    assert daemon.prepare(journal.append) == 0
    assert journal[-1] == ("SIP service not restarted: systemctl restart --no-block kamailio.service: "
                           "Unit kamailio.service is masked.")
    assert (sip.run_dir() / "db" / "subscriber").exists()


def test_a_failed_provisioning_leaves_the_sip_service_without_inputs(tree: Path) -> None:
    (tree / "data").mkdir()
    (tree / "data" / "pbx").write_text("not a directory")
    journal: list[str] = []
    assert daemon.prepare(journal.append) == 1
    assert journal[-1].startswith("provisioning FAILED: ") and "none on a first boot: it stays stopped" in journal[-1]
    assert "pbxagent: provisioning FAILED" in paths.console().read_text()
    assert not (sip.run_dir() / "db" / "subscriber").exists()
    assert not provision.completed()


def test_sd_notify_reaches_the_socket_systemd_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        daemon.notify("READY=1\nSTATUS=guarding")
        assert listener.recv(100) == b"READY=1\nSTATUS=guarding"
    monkeypatch.delenv("NOTIFY_SOCKET")
    daemon.notify("READY=1")  # not under systemd: nothing to tell, no error


def test_the_network_is_released_after_provisioning_only_behind_a_compiled_firewall(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pbxagent.system.systemctl", lambda *args: "")
    journal: list[str] = []
    assert daemon.prepare(journal.append) == 0  # the base table: the guard's start releases it
    assert not paths.network_ready().exists()
    paths.compiled_firewall().touch()
    assert daemon.prepare(journal.append) == 0
    assert paths.network_ready().exists()
    assert "network released: provisioned, a compiled firewall in force" in journal
    daemon.release_network(journal.append, "again")
    assert not any("again" in line for line in journal)  # once per boot


def test_a_failed_provisioning_keeps_the_network_waiting(tree: Path) -> None:
    paths.compiled_firewall().parent.mkdir(parents=True)
    paths.compiled_firewall().touch()
    (tree / "data").mkdir()
    (tree / "data" / "pbx").write_text("not a directory")
    assert daemon.prepare(lambda line: None) == 1
    assert not paths.network_ready().exists()
