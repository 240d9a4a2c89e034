"""The network guard on a booted twin: the compiled firewall replaces the base
ruleset, the trusted LAN follows address changes live, bans are listed, lifted, kept
across a reboot, never put on a trusted address; a bad policy changes nothing."""

from __future__ import annotations

import json

from tests.infra.twin import Device


def wait_for(device: Device, condition: str, seconds: int = 30) -> None:
    """Poll `condition` in a subshell (its `exit` must not end the login shell)."""
    device.check(f"( for i in $(seq {seconds * 5}); do {condition} && exit 0; sleep 0.2; done; {condition} )",
                 timeout=seconds + 30)


def test_compiled_firewall_replaced_the_base_ruleset(device: Device) -> None:
    device.check("systemctl is-active --wait pbx-agent.service || systemctl is-active pbx-agent.service", timeout=120)
    assert device.check("nft list tables").split() == ["table", "inet", "pbx"]
    chain = device.check("nft list chain inet pbx input")
    assert "policy drop" in chain and 'comment "refuse AMI"' in chain and "flood over 2000 pps" in chain


def test_trusted_lan_follows_address_changes(device: Device) -> None:
    status = json.loads(device.check("pbxagent lan status --json 2>/dev/null"))
    assert {"network": "10.0.2.0/24", "trusted": True,
            "reason": "eth0 10.0.2.15/24: private segment (RFC 1918)"} in status
    device.check("ip addr add 192.168.77.5/24 dev eth0")
    try:
        wait_for(device, "nft list set inet pbx trusted4 | grep -q 192.168.77.0/24")
        # ... and the ban engine exempts it too, in every jail, without a restart.
        wait_for(device, "fail2ban-client get pbx-sip ignoreip | grep -q 192.168.77.0/24 && "
                 "fail2ban-client get sshd ignoreip | grep -q 192.168.77.0/24", 60)
        device.check("ip addr add 198.51.100.5/24 dev eth0")
        device.check("sleep 2")
        assert "198.51.100" not in device.check("nft list set inet pbx trusted4")  # public: never trusted
    finally:
        device.check("ip addr del 192.168.77.5/24 dev eth0; ip addr del 198.51.100.5/24 dev eth0 || true")
    wait_for(device, "! nft list set inet pbx trusted4 | grep -q 192.168.77.0/24")
    wait_for(device, "! fail2ban-client get pbx-sip ignoreip | grep -q 192.168.77.0/24", 60)


def test_bans_list_remove_and_refuse_trusted(device: Device) -> None:
    device.check("pbxagent bans add 203.0.113.9 --seconds 600 2>/dev/null")
    listed = json.loads(device.check("pbxagent bans list --json 2>/dev/null"))
    assert [b["address"] for b in listed] == ["203.0.113.9"] and 590 <= listed[0]["expires_in"] <= 600
    refused = device.run("pbxagent bans add 10.0.2.2 2>&1")
    assert refused.status == 2
    assert "10.0.2.2 is in 10.0.2.0/24, which is trusted or allow-listed and never banned" in refused.output
    device.check("pbxagent bans remove 203.0.113.9")
    assert json.loads(device.check("pbxagent bans list --json 2>/dev/null")) == []


def test_a_bad_policy_is_refused_and_the_running_ruleset_stays(device: Device) -> None:
    before = device.check("nft list chain inet pbx input")
    for text, message in (
        ("firewall:\\n  services:\\n    - {name: sip, proto: udp, ports: 70000}\\n",
         "firewall.services[0].ports: '70000' is outside 1..65535"),
        ("firewall:\\n  block: [10.0.0.300/8]\\n", "firewall.block[0]: '10.0.0.300/8' is not an address"),
        ("firewall:\\n  colour: blue\\n", "firewall.colour: unknown key"),
        ("firewall:\\n  block: [10.0.0.0/8]\\n", "firewall.block: 10.0.0.0/8 covers the device's own address"),
    ):
        device.check(f"printf '{text}' > /tmp/policy.yaml")
        result = device.run("pbxagent firewall apply --policy /tmp/policy.yaml 2>&1", timeout=120)
        assert result.status == 2 and message in result.output, result.output
    assert device.check("nft list chain inet pbx input") == before


def test_drop_all_is_rolled_back_unless_confirmed(device: Device) -> None:
    device.check("printf 'firewall:\\n  drop_all: true\\n' > /tmp/drop-all.yaml")
    applied = device.check("pbxagent firewall apply --policy /tmp/drop-all.yaml --rollback-after 10 2>&1",
                           timeout=120)
    assert "it changes drop_all" in applied and "within 10 s" in applied
    assert 'comment "trusted LAN"' not in device.check("nft list chain inet pbx input")
    wait_for(device, "nft list chain inet pbx input | grep -q 'trusted LAN'", 90)  # rolled back by itself
    assert device.run("test -e /data/pbx/policy.yaml").status == 1  # never became the site policy
    try:
        device.check("pbxagent firewall apply --policy /tmp/drop-all.yaml --rollback-after 10", timeout=120)
        device.check("pbxagent firewall confirm", timeout=60)
        device.check("sleep 15")
        assert 'comment "trusted LAN"' not in device.check("nft list chain inet pbx input")
        assert "drop_all: true" in device.check("cat /data/pbx/policy.yaml")
    finally:
        device.check("rm -f /data/pbx/policy.yaml && pbxagent firewall apply", timeout=120)
    assert 'comment "trusted LAN"' in device.check("nft list chain inet pbx input")


def test_a_ban_survives_a_reboot(device: Device) -> None:
    """One ban from the CLI, one from fail2ban's action (stopping fail2ban at shutdown
    must not lift it); both are in force again before the box has an address."""
    device.check("pbxagent bans add 198.51.100.77 --seconds 3600 2>/dev/null")
    device.check("fail2ban-client set pbx-sip banip 198.51.100.78", timeout=120)
    wait_for(device, "pbxagent bans list 2>/dev/null | grep -q 198.51.100.78", 60)
    device.reboot()
    # Before the first address: the compiled firewall with both bans, not only the base table.
    order = device.check("journalctl -b -o cat | grep -E '^pbxfw firewall:|DHCPv4 address' | head -2").splitlines()
    assert order[0] == "pbxfw firewall: the last compiled ruleset and its 2 ban(s)", order
    assert "DHCPv4 address" in order[1], order
    device.check("systemctl is-active --wait pbx-agent.service || true", timeout=180)
    wait_for(device, "pbxagent bans list 2>/dev/null | grep -q 198.51.100.78", 60)
    left = json.loads(device.check("pbxagent bans list --json 2>/dev/null"))
    assert [b["address"] for b in left] == ["198.51.100.77", "198.51.100.78"]
    assert all(b["expires_in"] > 3000 for b in left)
    device.check("pbxagent bans remove 198.51.100.77 && pbxagent bans remove 198.51.100.78")
