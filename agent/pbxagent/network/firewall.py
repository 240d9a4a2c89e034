"""The nftables ruleset, compiled from the policy (pure: policy in, ruleset text out).

One table, `inet pbx`, owned by the agent. It is replaced in one transaction with the
add/flush idiom, so the ban sets (filled by the ban engine and the flood layers) keep
their elements and timeouts across re-applies, and the safe base table loaded at boot
(`inet pbx_base`, /etc/nftables.conf) goes in the same transaction.

The media relay's ports are a set of their own, `relay`, which no apply touches: the
relay's unit fills it when rtpengine has started and empties it when rtpengine stops
(overlay/etc/systemd/system/rtpengine-daemon.service.d/pbx.conf), so those ports are open
exactly while something listens on them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pbxagent.policy.network import Firewall, RateLimit, Rule, Service

TABLE = "inet pbx"
RELAY_SET = "relay"
BAN_SIZE = 262144
LEVEL1_BAN = "5m"
LEVEL2_BAN = "1h"
FAMILIES = (("4", "ip", "ipv4_addr"), ("6", "ip6", "ipv6_addr"))


class FirewallError(ValueError):
    pass


def rate(packets: int, seconds: int) -> str:
    """`packets` per `seconds` as an nft rate; nft knows only whole units, so the
    exact one is used when there is one, else the nearest rate above (never stricter
    than asked). The burst (= packets) keeps the allowance per interval."""
    for unit, length in (("second", 1), ("minute", 60), ("hour", 3600)):
        if (packets * length) % seconds == 0:
            return f"{packets * length // seconds}/{unit}"
    return f"{-(-packets * 60 // seconds)}/minute"


def _ports(span: tuple[int, int]) -> str:
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


def _split(networks: Iterable[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"4": [], "6": []}
    for net in networks:
        out[str(ipaddress.ip_network(net).version)].append(net)
    return {k: sorted(set(v), key=lambda n: ipaddress.ip_network(n)) for k, v in out.items()}


def check_block_list(block: Iterable[str], own: Iterable[str]) -> None:
    """Refuse a block-list entry that covers one of the device's own addresses."""
    addresses = [ipaddress.ip_address(a) for a in own]
    for entry in block:
        net = ipaddress.ip_network(entry)
        hit = next((a for a in addresses if a.version == net.version and a in net), None)
        if hit is not None:
            raise FirewallError(f"firewall.block: {entry} covers the device's own address {hit}")


def _rl_set(limit: RateLimit, fam: str) -> str:
    return f"rl_{limit.proto}{limit.port}_{limit.packets}_{limit.seconds}_{fam}"


def _sets(fw: Firewall) -> list[str]:
    lines = [f"add set {TABLE} {RELAY_SET} {{ type inet_service; flags interval; }}"]
    for fam, _, kind in FAMILIES:
        lines.append(f"add set {TABLE} ban{fam} {{ type {kind}; flags dynamic, timeout; size {BAN_SIZE}; }}")
        for name in ("trusted", "allow", "block"):
            lines.append(f"add set {TABLE} {name}{fam} {{ type {kind}; flags interval; auto-merge; }}")
        for pps in fw.flood_pps:
            lines.append(f"add set {TABLE} flood{pps}_{fam} {{ type {kind}; flags dynamic, timeout; timeout 10s; "
                         "size 65536; }")
        for limit in fw.rate_limits:
            timeout = max(2 * limit.seconds, 10)
            lines.append(f"add set {TABLE} {_rl_set(limit, fam)} {{ type {kind}; flags dynamic, timeout; "
                         f"timeout {timeout}s; size 65536; }}")
    return lines


def _elements(name: str, values: dict[str, list[str]]) -> list[str]:
    lines = []
    for fam, _, _ in FAMILIES:
        lines.append(f"flush set {TABLE} {name}{fam}")
        if values[fam]:
            lines.append(f"add element {TABLE} {name}{fam} {{ {', '.join(values[fam])} }}")
    return lines


def _service(svc: Service) -> list[str]:
    match = f"{svc.proto} dport {_ports(svc.ports)}"
    if svc.source == "any":
        return [f"{match} accept comment \"{svc.name}\""]
    return [f"{ip} saddr @trusted{fam} {match} accept comment \"{svc.name} (LAN)\"" for fam, ip, _ in FAMILIES]


def _rule(index: int, rule: Rule) -> list[str]:
    parts = []
    if rule.mac:
        parts.append(f"ether saddr {rule.mac}")
    if rule.proto != "any":
        parts.append(f"{rule.proto} dport {_ports(rule.ports)}" if rule.ports else f"meta l4proto {rule.proto}")
    comment = f"comment \"rule {index}\""
    if rule.source:
        ip = "ip" if ipaddress.ip_network(rule.source).version == 4 else "ip6"
        return [" ".join([f"{ip} saddr {rule.source}", *parts, rule.action, comment])]
    return [" ".join([*parts, rule.action, comment]) if parts else f"{rule.action} {comment}"]


def _limits(limits: Iterable[RateLimit]) -> list[str]:
    """Auto-defense: per source, over `packets` in `seconds` on the port is dropped. UDP
    counts every packet (it has no sessions); TCP counts connection attempts, so an open
    session is never cut by its own traffic."""
    return [f"{'ct state new ' if limit.proto == 'tcp' else ''}{limit.proto} dport {limit.port} "
            f"update @{_rl_set(limit, fam)} {{ {ip} saddr limit rate over "
            f"{rate(limit.packets, limit.seconds)} burst {limit.packets} packets }} drop comment "
            f"\"auto-defense {limit.packets}/{limit.seconds}s\""
            for limit in limits for fam, ip, _ in FAMILIES]


def _input(fw: Firewall) -> list[str]:
    rules = ['iif "lo" accept']
    rules += [f"{ip} saddr @allow{fam} accept comment \"allow-list\"" for fam, ip, _ in FAMILIES]
    if not fw.drop_all:
        rules += [f"{ip} saddr @trusted{fam} accept comment \"trusted LAN\"" for fam, ip, _ in FAMILIES]
    rules += [f"{ip} saddr @ban{fam} drop comment \"banned\"" for fam, ip, _ in FAMILIES]
    rules += [f"{ip} saddr @block{fam} drop comment \"block-list\"" for fam, ip, _ in FAMILIES]
    # Flood layers and limits come before "established": a UDP flood from one source port
    # is "established" once the box has answered its first packet, and would pass them all
    # (measured: 10,000 REGISTERs/s from one port, never banned, LAN phones 0 %). Only
    # replies to what the box itself started (an update download, DNS) skip them.
    rules.append("ct state established,related ct direction reply accept")
    level1, level2 = fw.flood_pps
    for pps, ban in ((level2, LEVEL2_BAN), (level1, LEVEL1_BAN)):
        rules += [f"update @flood{pps}_{fam} {{ {ip} saddr limit rate over {pps}/second burst {pps} packets }} "
                  f"add @ban{fam} {{ {ip} saddr timeout {ban} }} drop comment \"flood over {pps} pps\""
                  for fam, ip, _ in FAMILIES]
    # The administrator's ordered rules keep their place before every limit.
    for index, rule in enumerate(fw.rules):
        rules += _rule(index, rule)
    rules += _limits(fw.rate_limits)
    rules += ["ct state established,related accept", "ct state invalid drop"]
    rules += ["icmp type { destination-unreachable, time-exceeded, parameter-problem } accept",
              "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
              "nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept"]
    if fw.ping:
        rules += ["icmp type echo-request limit rate 10/second accept",
                  "icmpv6 type echo-request limit rate 10/second accept"]
    rules += ["udp sport 67 udp dport 68 accept comment \"DHCP\"",
              "udp sport 547 udp dport 546 accept comment \"DHCPv6\""]
    if fw.refuse_ami:
        rules.append("tcp dport 5038 drop comment \"refuse AMI\"")
    for svc in fw.services:
        rules += _service(svc)
    rules.append(f"udp dport @{RELAY_SET} accept comment \"media relay, while it runs\"")
    return rules


def compile_ruleset(fw: Firewall, trusted: Iterable[str], own: Iterable[str] = ()) -> str:
    """The complete nft script for the policy and the current trusted networks."""
    check_block_list(fw.block, own)
    lines = ["# Generated by pbxagent from the policy; applied in one transaction (nft -f).",
             f"add table {TABLE}"]
    lines += _sets(fw)
    lines += [f"add chain {TABLE} input {{ type filter hook input priority filter; policy drop; }}",
              f"add chain {TABLE} forward {{ type filter hook forward priority filter; policy drop; }}",
              f"flush chain {TABLE} input", f"flush chain {TABLE} forward"]
    lines += _elements("trusted", _split(trusted))
    lines += _elements("allow", _split(fw.allow))
    lines += _elements("block", _split(fw.block))
    lines += [f"add rule {TABLE} input {rule}" for rule in _input(fw)]
    # The safe base table goes in the same transaction ("add" first: deleting a table
    # that is not there would fail the whole script).
    lines += ["add table inet pbx_base", "delete table inet pbx_base"]
    return "\n".join(lines) + "\n"


def relay_open(ports: tuple[int, int]) -> str:
    """What the relay's unit applies once rtpengine runs: its ports, opened."""
    return f"add element {TABLE} {RELAY_SET} {{ {_ports(ports)} }}\n"


def trusted_update(trusted: Iterable[str]) -> str:
    """Only the trusted sets: what an address change needs (one transaction)."""
    return "\n".join(_elements("trusted", _split(trusted))) + "\n"
