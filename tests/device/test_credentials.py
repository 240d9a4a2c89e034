"""Secure first boot on a booted twin (factory credential seeded on /data): the
audit passes, SSH is key-only when turned on and closed again when off, secrets are
per extension and private, and a bad policy override changes nothing."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.infra.twin import Device

SSH_OPTIONS = "-o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=20"


def audit(device: Device) -> dict[str, Any]:
    result = device.run("pbxagent audit --json 2>/dev/null", timeout=120)
    report: dict[str, Any] = json.loads(result.output)
    assert result.status == (0 if report["passed"] else 1)
    return report


def failures(report: dict[str, Any]) -> list[dict[str, Any]]:
    checks = report["checks"]
    assert isinstance(checks, list) and len(checks) >= 9
    return [c for c in checks if not c["passed"]]


@pytest.mark.service_check
def test_audit_passes_after_first_boot(device: Device) -> None:
    report = audit(device)
    assert failures(report) == []
    assert report["passed"] is True
    assert device.check("pbxagent root status").strip() == "root: factory"


def test_extensions_have_their_own_private_secrets(device: Device) -> None:
    rows = json.loads(device.check("pbxagent extensions list --json"))
    assert [r["extension"] for r in rows] == [str(n) for n in range(800, 810)]
    assert {(r["secret"], r["pin"]) for r in rows} == {("set", "set")}  # no secret without asking
    revealed = json.loads(device.check("pbxagent extensions list --json --show-secrets"))
    assert len({r["secret"] for r in revealed}) == 10
    assert all(len(r["secret"]) >= 16 and r["extension"] not in r["pin"] for r in revealed)
    assert device.check("stat -c '%a %U' /data/pbx/secrets/extensions.json").strip() == "600 root"


def test_ssh_enable_is_key_only_and_disable_closes_it(device: Device) -> None:
    device.check("rm -f /tmp/k /tmp/k.pub && ssh-keygen -q -t ed25519 -N '' -f /tmp/k")
    device.check("pbxagent ssh enable --authorized-key /tmp/k.pub --port 4245", timeout=120)
    device.check("for i in $(seq 100); do ss -Hltn 'sport = :4245' | grep -q . && break; sleep 0.2; done")
    assert device.check("ls /etc/ssh/ | grep -c ssh_host_ || true").strip() == "0"  # host key lives on /data
    login = device.run(f"ssh {SSH_OPTIONS} -i /tmp/k -p 4245 root@127.0.0.1 echo key-login-ok", timeout=120)
    assert login.status == 0 and "key-login-ok" in login.output, login.output
    password = device.run(f"ssh {SSH_OPTIONS} -o PubkeyAuthentication=no "
                          "-o PreferredAuthentications=password,keyboard-interactive -p 4245 root@127.0.0.1 true",
                          timeout=120)
    assert password.status == 255
    assert "Permission denied (publickey)" in password.output  # the only method sshd offers
    report = audit(device)
    assert failures(report) == []
    device.check("pbxagent ssh disable", timeout=120)
    assert device.check("ss -Hltn 'sport = :4245'").strip() == ""
    assert device.run("systemctl is-enabled ssh.service").output.strip() == "masked"
    assert failures(audit(device)) == []


def test_rotated_root_password_goes_to_the_console_only(device: Device) -> None:
    output = device.check("pbxagent root rotate")
    match = re.search(r"one-time root password: (\S+)", output)  # /dev/console is this serial line
    assert match, output
    one_time = match.group(1)
    assert device.check("pbxagent root status").strip() == "root: rotated (must change at first login)"
    assert device.run(f"journalctl -b -o cat | grep -cF -- '{one_time}'").output.strip() == "0"
    # Set the harness's password back (a user's change): it is kept on /data.
    device.check(f"echo 'root:{device.password}' | chpasswd")
    device.check("for i in $(seq 60); do pbxagent root status | grep -q user-set && break; sleep 0.5; done")
    assert device.check("pbxagent root status").strip() == "root: user-set"
    assert device.run("test -e /data/pbx/credentials/root.initial").status == 1


def test_a_bad_policy_override_keeps_the_last_good_one(device: Device) -> None:
    device.check("printf 'passwords:\\n  pin_length: 3\\n' > /data/pbx/policy.yaml")
    try:
        report = audit(device)
        (policy_check,) = [c for c in failures(report) if c["id"] == "policy"]
        assert "/data/pbx/policy.yaml: passwords.pin_length: 3 is outside 6..12" in policy_check["evidence"]
        assert len(device.check("pbxagent password generate --kind pin 2>/dev/null").strip()) == 6
    finally:
        device.check("rm -f /data/pbx/policy.yaml")
    assert failures(audit(device)) == []
