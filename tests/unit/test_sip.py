"""The SIP service adapter: what kamailio gets from the agent's store."""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
from pathlib import Path

import pytest
from pbxagent import sip
from pbxagent.credentials import extensions
from pbxagent.credentials.passwords import Rules
from pbxagent.policy import site


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    return tmp_path


def test_ha1_is_rfc2617s() -> None:
    # RFC 2617's example user and realm, our secret: HA1 = MD5(user:realm:password).
    assert sip.ha1("Mufasa", "Circle Of Life", "testrealm@host.com") == hashlib.md5(
        b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()


def test_subscriber_table_holds_digests_not_secrets(tree: Path) -> None:
    extensions.ensure(("800", "801"), Rules(), 16)
    store = extensions.load()
    calls = site.compose(site.DEFAULTS, None)[0].calls._replace(concurrent=3)
    table = sip.subscriber_table(store, {"801": ("192.168.1.0/24", "2001:db8::/32")}, calls).splitlines()
    assert table[0] == ("id(int,auto) username(string) domain(string,null) ha1(string) ha1b(string) "
                        "permit(string,null) concurrent(int)")
    assert table[1].split(":")[:3] == ["1", "800", "pbx"]
    assert table[1].split(":")[3] == sip.ha1("800", store["800"].secret)
    assert table[1].endswith("::3")  # no permit list: null, SIP from anywhere; 3 calls at once
    assert table[2].endswith(":192.168.1.0/24,2001\\:db8\\:\\:/32:3")  # db_text escapes ':' in values
    assert all(e.secret not in "\n".join(table) for e in store.values())


def test_render_makes_the_certificate_once_and_private_files(tree: Path) -> None:
    extensions.ensure(("800",), Rules(), 16)
    first, changed = sip.write_inputs(site.load().policy)
    assert first[0] == "TLS certificate made on this device" and changed
    cert = (sip.tls_dir() / "cert.pem").read_bytes()
    assert b"BEGIN CERTIFICATE" in cert
    assert stat.S_IMODE((sip.tls_dir() / "key.pem").stat().st_mode) == 0o600
    again, changed = sip.write_inputs(site.load().policy)
    assert again[0] != "TLS certificate made on this device" and not changed  # kept, not remade or rewritten
    assert (sip.tls_dir() / "cert.pem").read_bytes() == cert
    for name in ("db/subscriber", "db/version", "tls.cfg", "key.pem"):
        assert stat.S_IMODE((sip.run_dir() / name).stat().st_mode) == 0o640
    assert "subscriber:7" in (sip.run_dir() / "db" / "version").read_text()


def test_kamailio_listens_on_loopback_and_the_boxs_ipv4_addresses_never_the_wildcard() -> None:
    own = ["192.168.50.10", "127.0.0.1", "fe80::1", "2001:db8::10", "169.254.3.4", "10.0.2.15"]
    assert sip.listen_addresses(own) == ["10.0.2.15", "192.168.50.10"]
    listen = sip.listen_config(sip.listen_addresses(own)).splitlines()
    assert listen[2:5] == ["listen=udp:127.0.0.1:5060", "listen=tcp:127.0.0.1:5060", "listen=tls:127.0.0.1:5061"]
    assert "listen=udp:192.168.50.10:5060" in listen and "listen=tls:10.0.2.15:5061" in listen
    assert not any("0.0.0.0" in line or "::" in line for line in listen)


def test_a_first_render_listens_on_loopback_and_the_addresses_follow_once_known(tree: Path) -> None:
    extensions.ensure(("800",), Rules(), 16)
    sip.write_inputs(site.load().policy)
    listen = sip.run_dir() / "listen.cfg"
    assert "listen=udp:127.0.0.1:5060" in listen.read_text() and listen.read_text().count("listen=") == 3
    assert sip.follow_addresses(["192.168.50.10"])  # the lease: kamailio must be restarted
    assert "listen=udp:192.168.50.10:5060" in listen.read_text()
    assert not sip.follow_addresses(["192.168.50.10", "fe80::1"])  # nothing kamailio listens on moved
    assert not sip.follow_addresses([])  # the link went down: the last address stays bound
    assert "192.168.50.10" in listen.read_text()
    assert sip.write_inputs(site.load().policy)[1] is False  # the next start keeps it
    assert "192.168.50.10" in listen.read_text()


def test_a_providers_contact_is_the_address_toward_the_internet_and_moving_it_restarts_kamailio(
        tree: Path) -> None:
    def contact() -> str:
        return next(line for line in (sip.run_dir() / "listen.cfg").read_text().splitlines() if "PBX_CONTACT" in line)

    assert sip.follow_addresses(["10.0.2.15", "192.168.50.10"], lambda: "192.168.50.10")
    assert contact() == '#!define PBX_CONTACT "192.168.50.10:5060"'
    assert sip.follow_addresses(["10.0.2.15", "192.168.50.10"], lambda: None)  # no route: the first address
    assert contact() == '#!define PBX_CONTACT "10.0.2.15:5060"'
    assert sip.follow_addresses(["10.0.2.15", "192.168.50.10"], lambda: "192.168.50.10")  # the route came back
    assert not sip.follow_addresses(["10.0.2.15", "192.168.50.10"], lambda: "192.168.50.10")
    assert sip.follow_addresses(["10.0.2.15", "192.168.50.10"], lambda: "198.51.100.9")  # not the box's: the first
    assert contact() == '#!define PBX_CONTACT "10.0.2.15:5060"'
    assert 'PBX_CONTACT "127.0.0.1:5060"' in sip.listen_config([])  # before any lease
    assert sip.LOOPBACK_ONLY in sip.listen_config([]).splitlines()  # what kamailio's unit waits on
    assert sip.LOOPBACK_ONLY not in sip.listen_config(["10.0.2.15"])


def test_behind_the_sites_router_its_address_is_the_contact_and_the_boxs_own(tree: Path) -> None:
    public = sip.public_config("198.51.100.7").splitlines()
    assert '#!define PBX_PUBLIC "198.51.100.7"' in public
    assert '#!define PBX_PUBLIC_CONTACT "198.51.100.7:5060"' in public  # uac's contact over kamailio.cfg's
    assert {"alias=udp:198.51.100.7:5060", "alias=tcp:198.51.100.7:5060", "alias=tls:198.51.100.7:5061"} <= set(public)
    assert "PBX_PUBLIC" not in sip.public_config("")  # kamailio.cfg's #!ifdef PBX_PUBLIC stays off
    cfg = (Path(__file__).parents[2] / "overlay/etc/kamailio/kamailio.cfg").read_text()
    assert 'import_file "/data/kamailio/public.cfg"' in cfg  # import: an older agent's /data has none


def _address_wait_command(tree: Path) -> list[str]:
    """kamailio's unit's wait for an address, as it ships, on the scratch tree."""
    unit = (Path(__file__).parents[2] / "overlay/etc/systemd/system/kamailio.service").read_text()
    line = re.search(r"^ExecStartPre=/bin/sh -c '((?:[^'\\]|\\\n)*)'", unit, re.MULTILINE)
    assert line, "kamailio.service: no ExecStartPre waiting for an address"
    script = line.group(1).replace("\\\n", "").replace("/data/", f"{tree}/data/").replace("/run/", f"{tree}/run/")
    return ["/bin/sh", "-c", script]


def test_kamailio_waiting_for_an_address_starts_when_the_guard_has_written_one(tree: Path) -> None:
    (tree / "run" / "kamailio").mkdir(parents=True)  # systemd's RuntimeDirectory
    assert not sip.end_address_wait()  # nobody waits
    sip.run_dir().mkdir(parents=True)
    (sip.run_dir() / "listen.cfg").write_text(sip.listen_config([]))
    waiting = subprocess.Popen(_address_wait_command(tree))
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            waiting.wait(1.0)  # loopback only: it waits
        assert sip.follow_addresses(["10.0.2.15"])
        assert sip.end_address_wait()
        assert waiting.wait(5.0) == 0
    finally:
        waiting.kill()
    assert not sip.end_address_wait()  # it started: the next move is a restart
    started = subprocess.run(_address_wait_command(tree), timeout=5.0)  # with an address: no wait
    assert started.returncode == 0


def test_addresses_seen_before_the_first_render_leave_the_directory_readable_by_the_service(tree: Path) -> None:
    assert sip.follow_addresses(["192.168.50.10"])
    assert stat.S_IMODE(sip.run_dir().stat().st_mode) == 0o750
    assert stat.S_IMODE((sip.run_dir() / "listen.cfg").stat().st_mode) == 0o640
