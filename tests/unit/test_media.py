"""The media relay's adapter (pbxagent.media) and its ports in the firewall."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
from pbxagent import media
from pbxagent.network import firewall, guard
from pbxagent.network.lan import IfAddr
from pbxagent.policy import site


def relay_policy(tmp_path: Path, ports: str) -> site.Policy:
    override = tmp_path / "policy.yaml"
    override.write_text(f"calls:\n  relay_ports: \"{ports}\"\n")
    return site.compose(site.DEFAULTS, override)[0]


def test_the_relay_runs_in_user_space_on_the_policys_ports_controlled_from_loopback(tmp_path: Path) -> None:
    parsed = configparser.ConfigParser()
    parsed.read_string(media.config(relay_policy(tmp_path, "20000-20099").calls))
    relay = parsed["rtpengine"]
    assert (relay["port-min"], relay["port-max"]) == ("20000", "20099")
    assert relay["table"] == "-1"  # no kernel module on the board
    assert relay["listen-ng"].startswith("127.0.0.1:")
    assert not {"listen-http", "listen-cli", "listen-tcp"} & set(relay)  # nothing else to reach


def test_behind_the_sites_router_each_address_of_the_relay_has_a_face_for_each_side(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBXAGENT_ROOT", str(tmp_path))
    assert media.interfaces("", ["192.168.50.10"]) == "--interface=any"
    assert media.interfaces("198.51.100.7", []) == "--interface=any"  # no address yet: the guard writes them
    assert media.interfaces("198.51.100.7", ["192.168.50.10"]) == \
        "--interface=lan/192.168.50.10 --interface=wan/192.168.50.10!198.51.100.7"
    cfg = (Path(__file__).parents[2] / "overlay/etc/kamailio/kamailio.cfg").read_text()
    assert '$var(from_side) = "lan"' in cfg and '$var(to_side) = "wan"' in cfg  # the names kamailio asks for
    assert media.follow_addresses("198.51.100.7", ["192.168.50.10"])
    assert not media.follow_addresses("198.51.100.7", ["192.168.50.10"])  # unchanged: no restart needed
    env = (media.run_dir() / "interfaces.env").read_text()
    assert env == "PBX_RELAY_INTERFACES=--interface=lan/192.168.50.10 --interface=wan/192.168.50.10!198.51.100.7\n"
    unit = (Path(__file__).parents[2] / "overlay/etc/systemd/system/rtpengine-daemon.service.d/pbx.conf").read_text()
    assert "EnvironmentFile=/run/pbx/relay/interfaces.env" in unit and "$PBX_RELAY_INTERFACES" in unit


def test_the_relays_ports_are_opened_by_its_unit_and_never_by_the_policy(tmp_path: Path) -> None:
    policy = relay_policy(tmp_path, "20000-20099")
    assert firewall.relay_open(policy.calls.relay_ports) == "add element inet pbx relay { 20000-20099 }\n"
    text = firewall.compile_ruleset(policy.firewall, ["10.0.2.0/24"])
    assert 'udp dport @relay accept comment "media relay, while it runs"' in text
    assert "20000" not in text and "10000" not in text  # the default policy opens no media ports itself
    assert "flush set inet pbx relay" not in text  # a re-apply keeps what the unit opened


def test_the_relay_follows_the_boxs_reachable_ipv4_addresses_only() -> None:
    addresses = [IfAddr("lo", "127.0.0.1/8"), IfAddr("lo", "::1/128"), IfAddr("eth0", "fe80::1/64"),
                 IfAddr("eth0", "192.168.50.10/24"), IfAddr("eth0", "2001:db8::10/64")]
    assert guard.relay_addresses(addresses) == ["192.168.50.10"]
    assert guard.relay_addresses([*addresses, IfAddr("eth0", "2001:db8::11/64")]) == ["192.168.50.10"]
