"""Trunks and DIDs: their policy keys (pbxagent.policy.trunks), the DID lookup
(pbxagent.calls.dids), the secrets' store and `pbxagent trunks`, and the tables the SIP
service reads them from (pbxagent.sip)."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest
from pbxagent import sip
from pbxagent.calls import dids
from pbxagent.cli.main import main
from pbxagent.credentials import trunks as secrets
from pbxagent.policy import site

PROVIDER = ("calls:\n  country: GB\n  trunks:\n"
            "    - {name: provider, host: 198.51.100.7, username: '4420794600', limit: 3}\n"
            "    - {name: backup, host: sip.example.net, transport: tls, addresses: ['2001:db8::/48']}\n"
            "  dids: {'+442079460000': '801', '+442079460100-+442079460199': '802'}\n")


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    return tmp_path


def compose(tmp_path: Path, text: str) -> site.Policy:
    override = tmp_path / "policy.yaml"
    override.write_text(text)
    return site.compose(site.DEFAULTS, override)[0]


def test_trunks_have_safe_defaults_and_an_address_only_when_the_host_is_one(tmp_path: Path) -> None:
    provider, backup = compose(tmp_path, PROVIDER).calls.trunks
    assert (provider.port, provider.transport, provider.addresses, provider.limit) == \
        (5060, "udp", ("198.51.100.7/32",), 3)
    assert provider.uri == "sip:198.51.100.7:5060;transport=udp"
    assert (backup.port, backup.username, backup.addresses, backup.limit) == (5061, "", ("2001:db8::/48",), 4)
    assert site.compose(site.DEFAULTS, None)[0].calls.trunks == ()  # none by default: no external calls leave


@pytest.mark.parametrize(("text", "message"), [
    ("calls:\n  trunks: [{name: Provider, host: 198.51.100.7}]\n", r"calls\.trunks\[0\]\.name: 'Provider' is not"),
    ("calls:\n  trunks: [{name: p, host: 'bad host'}]\n", r"calls\.trunks\[0\]\.host: 'bad host' is not a host"),
    ("calls:\n  trunks: [{name: p, host: h.example, transport: sctp}]\n",
     r"calls\.trunks\[0\]\.transport: 'sctp' is not one of udp, tcp, tls"),
    ("calls:\n  trunks: [{name: p, host: h.example, limit: 0}]\n", r"calls\.trunks\[0\]\.limit: 0 is not"),
    ("calls:\n  trunks: [{name: p, host: h.example, secret: x}]\n", r"calls\.trunks\[0\]\.secret: unknown key"),
    ("calls:\n  trunks: [{name: p, host: h.example}, {name: p, host: i.example}]\n",
     r"calls\.trunks\[1\]\.name: 'p' names two trunks"),
    ("calls:\n  trunks: [{name: p, host: h.example, addresses: [nowhere]}]\n",
     r"calls\.trunks\[0\]\.addresses\[0\]: 'nowhere' is not an address"),
    ("calls:\n  trunks: [{name: p, host: h.example, register: yes please}]\n",
     r"calls\.trunks\[0\]\.register: 'yes please' is not true or false"),
    ("calls:\n  trunks: [{name: p, host: h.example, register: true}]\n",
     r"calls\.trunks\[0\]\.register: a registration needs the trunk's username"),
    ("calls:\n  dids: {'02079460000': '801'}\n", r"calls\.dids\.02079460000: is not an E\.164 number"),
    ("calls:\n  dids: {'+442079460000': 'reception'}\n", r"calls\.dids\.\+442079460000: 'reception' is not an"),
    ("calls:\n  dids: {'+442079460100-+442079460199': '802', '+442079460150': '803'}\n",
     r"calls\.dids\.\+442079460150: overlaps calls\.dids\.\+442079460100-\+442079460199"),
    ("calls:\n  dids: {'+442079460199-+442079460100': '802'}\n", r"ascending range"),
])
def test_a_bad_trunk_or_did_is_named_by_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(site.PolicyError, match=message):
        compose(tmp_path, text)


@pytest.mark.parametrize(("called", "extension"), [
    ("+442079460000", "801"), ("442079460000", "801"), ("02079460000", "801"),  # however the provider writes it
    ("+442079460150", "802"), ("+442079460200", None), ("+4420794601000", None), ("anonymous", None),
])
def test_a_did_rings_its_extension(tmp_path: Path, called: str, extension: str | None) -> None:
    assert dids.route(called, compose(tmp_path, PROVIDER).calls).extension == extension


def test_the_sip_service_gets_each_trunks_route_credentials_and_addresses(tree: Path) -> None:
    calls = compose(tree, PROVIDER).calls
    uacreg = sip.uacreg_table(calls.trunks, {"provider": "s3cr:t\\x"}).splitlines()
    assert uacreg[1] == ("1:provider:provider:pbx:4420794600:198.51.100.7::4420794600:s3cr\\:t\\\\x::"
                         "sip\\:198.51.100.7\\:5060;transport=udp:0:1:0::")
    assert uacreg[2].startswith("2:backup:backup:pbx:backup:sip.example.net:::-::sip\\:sip.example.net\\:5061;")
    # provider's secret missing: no row, so no wrong digest is ever sent
    assert len(sip.uacreg_table(calls.trunks, {}).splitlines()) == 2
    assert sip.address_table(calls.trunks).splitlines()[1:] == ["1:1:198.51.100.7:32:0:provider",
                                                               "2:1:2001\\:db8\\:\\::48:0:backup"]


@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_a_trunk_that_registers_has_its_row_enabled_with_an_expiry_the_others_stay_disabled(
        tree: Path, transport: str) -> None:
    registering = PROVIDER.replace("limit: 3}", f"limit: 3, register: true, transport: {transport}}}")
    provider, backup = compose(tree, registering).calls.trunks
    assert provider.register and not backup.register
    rows = sip.uacreg_table((provider, backup), {"provider": "s3cret"}).splitlines()
    assert rows[1].endswith(f":{sip.REGISTRATION_EXPIRES}:0:0::")  # expires, flags 0 (enabled), no delay
    assert rows[2].endswith(":0:1:0::")  # disabled: only its calls' route and credentials


def test_every_tls_connection_checks_the_peer_and_a_trunk_with_its_own_ca_trusts_only_that(tree: Path) -> None:
    provider, backup = compose(tree, PROVIDER.replace("limit: 3}", "limit: 3, transport: tls}")).calls.trunks
    config = sip.tls_config(Path("/c.pem"), Path("/k.pem"), (provider, backup), {"provider": Path("/p-ca.pem")})
    sections = {next(line for line in s.splitlines() if line.startswith("[")): s for s in config.split("\n\n")}
    assert "verify_certificate = no" in sections["[server:default]"]  # phones bring no certificate
    assert f"ca_path = {sip.SYSTEM_CAS}" in sections["[client:default]"]
    assert "verify_certificate = yes" in sections["[client:default]"]
    by_address = sections["[client:198.51.100.7:5061]"]
    assert "server_id = provider" in by_address and "ca_list = /p-ca.pem" in by_address
    by_name = sections["[client:any]"]
    assert "server_name = sip.example.net" in by_name and f"ca_path = {sip.SYSTEM_CAS}" in by_name
    assert all("require_certificate = yes" in s for n, s in sections.items() if n.startswith("[client"))
    assert "[client:" not in sip.tls_config(Path("/c.pem"), Path("/k.pem"), compose(tree, PROVIDER).calls.trunks[:1],
                                            {}).replace("[client:default]", "")  # udp: no profile


def test_a_trunks_ca_must_be_pem_certificates_and_a_bad_one_keeps_the_last(tree: Path) -> None:
    sip.ensure_certificate()
    good = (sip.tls_dir() / "cert.pem").read_bytes()  # a self-signed provider's certificate is its own CA
    assert secrets.set_ca("backup", good) == 1
    assert secrets.cas(["provider", "backup"]) == {"backup": secrets.ca_path("backup")}
    for bad in (b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                b"x" * (secrets.MAX_CA_BYTES + 1)):
        with pytest.raises(secrets.TrunkSecretError, match="trunk backup: "):
            secrets.set_ca("backup", bad)
    assert secrets.ca_path("backup").read_bytes() == good


@pytest.mark.parametrize(("state", "restarted"), [("running", True), ("start-pre", False)])
def test_a_new_secret_restarts_the_sip_service_unless_it_has_not_read_its_inputs_yet(
        tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], state: str,
        restarted: bool) -> None:
    (tree / "data" / "pbx").mkdir(parents=True)
    site.override_path().write_text(PROVIDER)
    sip.write_inputs(site.load().policy)
    calls: list[tuple[str, ...]] = []

    def systemctl(*args: str) -> str:  # kamailio.service in `state`
        calls.append(args)
        return state if args[0] == "show" else ""

    monkeypatch.setattr("pbxagent.system.systemctl", systemctl)
    monkeypatch.setattr("sys.stdin", io.StringIO("pr0vider-secret\n"))
    assert main(["trunks", "secret", "provider"]) == 0
    assert (("try-restart", "kamailio.service") in calls) == restarted
    assert "pr0vider-secret" in (sip.run_dir() / "db" / "uacreg").read_text()  # read as it starts, either way
    assert ("restarted" in capsys.readouterr().out) == restarted


def test_a_trunks_ca_comes_from_stdin_shows_in_the_list_and_is_forgotten_with_public(
        tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "data" / "pbx").mkdir(parents=True)
    site.override_path().write_text(PROVIDER)
    sip.ensure_certificate()
    pem = (sip.tls_dir() / "cert.pem").read_bytes()
    monkeypatch.setattr("pbxagent.system.systemctl", lambda *args: "")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(pem)))
    assert main(["trunks", "ca", "backup"]) == 0
    assert secrets.ca_path("backup").read_bytes() == pem
    sip.write_inputs(site.load().policy)  # as the restarted agent does
    copy = sip.run_dir() / "trunk-backup-ca.pem"  # what kamailio reads
    assert copy.read_bytes() == pem
    capsys.readouterr()
    assert main(["trunks", "list", "--json"]) == 0
    assert [t["ca"] for t in json.loads(capsys.readouterr().out)] == ["-", "own"]  # provider is udp
    assert main(["trunks", "ca", "backup", "--public"]) == 0
    assert not secrets.ca_path("backup").exists()
    sip.write_inputs(site.load().policy)
    assert not copy.exists() and "ca_list" not in (sip.run_dir() / "tls.cfg").read_text()
    assert main(["trunks", "ca", "nosuch", "--public"]) == 2


def test_a_trunks_secret_comes_from_stdin_and_is_rendered_for_the_sip_service_only(
        tree: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "data" / "pbx").mkdir(parents=True)
    site.override_path().write_text(PROVIDER)
    assert any("trunk provider has no secret" in step for step in sip.write_inputs(site.load().policy)[0])
    monkeypatch.setattr("sys.stdin", io.StringIO("pr0vider-secret\n"))
    monkeypatch.setattr("pbxagent.system.systemctl", lambda *args: "")
    assert main(["trunks", "secret", "provider"]) == 0
    assert secrets.load() == {"provider": "pr0vider-secret"}
    assert stat.S_IMODE(secrets.store_path().stat().st_mode) == 0o600
    assert "pr0vider-secret" in (sip.run_dir() / "db" / "uacreg").read_text()
    assert stat.S_IMODE((sip.run_dir() / "db" / "uacreg").stat().st_mode) == 0o640
    capsys.readouterr()
    assert main(["trunks", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["secret"], t["outbound"]) for t in listed] == \
        [("provider", "set", True), ("backup", "not set", False)]
    assert "pr0vider-secret" not in json.dumps(listed)
    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    assert main(["trunks", "secret", "nosuch"]) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["trunks", "secret", "provider"]) == 2  # empty: refused, the old one kept
    assert secrets.load() == {"provider": "pr0vider-secret"}
