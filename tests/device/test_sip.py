"""The SIP service on a booted twin: digest auth with the agent's per-extension
secrets, one answer for unknown user and wrong password, scanners unanswered, every
failure logged with the packet's source, TLS on 5061 with the device's certificate."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.infra import sip
from tests.infra.twin import Device


@pytest.fixture
def register(device: Device) -> Callable[..., str]:
    return sip.client_on(device)


def secret_of(device: Device, number: str) -> str:
    rows = json.loads(device.check("pbxagent extensions list --json --show-secrets 2>/dev/null"))
    return str(next(r["secret"] for r in rows if r["extension"] == number))


@pytest.mark.service_check
def test_register_needs_the_extensions_own_secret(device: Device, register: Callable[..., str]) -> None:
    assert register("800", secret_of(device, "800")) == "SIP/2.0 200 OK"
    assert register("801", secret_of(device, "800")) == "SIP/2.0 401 Unauthorized"  # another extension's


def test_unknown_user_and_wrong_password_look_the_same(device: Device, register: Callable[..., str]) -> None:
    wrong = register("802", "Wrong-Secret-77xx")
    unknown = register("999", "Wrong-Secret-77xx")
    assert wrong == unknown == "SIP/2.0 401 Unauthorized"
    log = device.check("journalctl -b -o cat -u kamailio | grep -c 'pbx-auth-failure src=127.0.0.1 ' || true")
    assert int(log.strip()) >= 2


def test_scanner_user_agents_get_no_answer(device: Device, register: Callable[..., str]) -> None:
    assert register("800", "x", "friendly-scanner") == "timeout"
    assert register("800", "x", "sipvicious 0.3") == "timeout"
    assert "pbx-scanner src=127.0.0.1" in device.check("journalctl -b -o cat -u kamailio | tail -20")


def test_tls_on_5061_with_the_devices_own_certificate(device: Device) -> None:
    subject = device.check(
        "python3 -c \"import socket,ssl; c=ssl.create_default_context(); c.check_hostname=False; "
        "c.verify_mode=ssl.CERT_NONE; s=c.wrap_socket(socket.create_connection(('127.0.0.1',5061),10)); "
        "print(s.version())\"")
    assert subject.strip() in ("TLSv1.2", "TLSv1.3")
    assert device.check("stat -c '%a %U' /data/pbx/tls/key.pem").strip() == "600 root"


def restart_agent(device: Device) -> None:
    """A policy change takes effect with the agent's restart: it writes fail2ban's
    thresholds and kamailio's tables, and both restart after it (they require it). Their
    units are active before they answer: wait for fail2ban's socket and the SIP port."""
    device.check(f"systemctl restart pbx-agent && {sip.listening()} && ( for i in $(seq 300); do "
                 "fail2ban-client ping >/dev/null 2>&1 && exit 0; sleep 0.2; done; exit 1 )", timeout=180)


def test_ban_thresholds_come_from_the_policy(device: Device) -> None:
    assert device.check("fail2ban-client get pbx-sip maxretry").strip() == "10"  # as booted
    device.check("printf 'bans:\\n  sip: {failures: 6, window: 300, ban: 7200}\\n' > /data/pbx/policy.yaml")
    try:
        restart_agent(device)
        assert device.check("fail2ban-client get pbx-sip maxretry").strip() == "6"
        assert device.check("fail2ban-client get pbx-sip bantime").strip() == "7200"
    finally:
        device.check("rm -f /data/pbx/policy.yaml")
        restart_agent(device)
    assert device.check("fail2ban-client get pbx-sip maxretry").strip() == "10"


def test_an_extensions_permit_list_refuses_its_secret_from_elsewhere(device: Device,
                                                                      register: Callable[..., str]) -> None:
    secret = secret_of(device, "804")
    device.check("printf 'extensions:\\n  permit: {\"804\": [10.9.9.0/24, \"2001:db8::/32\"]}\\n' "
                 "> /data/pbx/policy.yaml")
    try:
        restart_agent(device)
        assert register("804", secret) == "SIP/2.0 403 Forbidden"  # the right secret, from 127.0.0.1
        assert register("805", secret_of(device, "805")) == "SIP/2.0 200 OK"  # not listed: from anywhere
        assert "pbx-permit-refused src=127.0.0.1 user=804" in device.check("journalctl -b -o cat -u kamailio")
        device.check("printf 'extensions:\\n  permit: {\"804\": [10.9.9.0/24, 127.0.0.0/8]}\\n' "
                     "> /data/pbx/policy.yaml")
        restart_agent(device)
        assert register("804", secret) == "SIP/2.0 200 OK"
    finally:
        device.check("rm -f /data/pbx/policy.yaml")
        restart_agent(device)
