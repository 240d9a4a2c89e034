"""The network part of the policy (REQUIREMENTS §2-§3): typed records and the parsers
that turn YAML values into them, each error naming the file and the exact key."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, NamedTuple

from pbxagent.errors import PolicyError

PROTOS = ("tcp", "udp")
MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class Service(NamedTuple):
    """A port the box offers, open to everyone ("any") or to the trusted LAN only."""

    name: str
    proto: str
    ports: tuple[int, int]
    source: str


class Rule(NamedTuple):
    """An ordered "common rule": matches protocol, port range, source and MAC."""

    action: str
    proto: str  # tcp, udp or any
    ports: tuple[int, int] | None
    source: str | None
    mac: str | None


class RateLimit(NamedTuple):
    """Auto-defense: at most `packets` per `seconds` from one source to a port."""

    proto: str
    port: int
    packets: int
    seconds: int


class Firewall(NamedTuple):
    ping: bool
    drop_all: bool
    refuse_ami: bool
    services: tuple[Service, ...]
    rules: tuple[Rule, ...]
    block: tuple[str, ...]
    allow: tuple[str, ...]
    rate_limits: tuple[RateLimit, ...]
    flood_pps: tuple[int, int]


def _fail(path: Path, key: str, message: str) -> PolicyError:
    return PolicyError(f"{path}: {key}: {message}")


def ports(path: Path, key: str, value: Any) -> tuple[int, int]:
    text = str(value)
    first, _, last = text.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        raise _fail(path, key, f"{text!r} is not a port or a range like 10000-10500")
    low, high = int(first), int(last or first)
    if not 1 <= low <= high <= 65535:
        raise _fail(path, key, f"{text!r} is outside 1..65535 or not ascending")
    return low, high


def network(path: Path, key: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise _fail(path, key, f"{value!r} is not an address or network (CIDR or address/mask)") from None


def networks(path: Path, key: str, value: Any) -> tuple[str, ...]:
    return tuple(network(path, f"{key}[{i}]", item) for i, item in enumerate(value))


def permits(path: Path, key: str, value: Any) -> dict[str, tuple[str, ...]]:
    """{extension: [networks]}: where each listed extension may register and call from."""
    found: dict[str, tuple[str, ...]] = {}
    for extension, nets in value.items():
        where = f"{key}.{extension}"
        if not str(extension).isdigit():
            raise _fail(path, where, "an extension number must be digits")
        if not isinstance(nets, list) or not 1 <= len(nets) <= 64:
            raise _fail(path, where, "must be a list of 1..64 addresses or networks")
        found[str(extension)] = networks(path, where, nets)
    return found


def mapping(path: Path, key: str, item: Any, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise _fail(path, key, "must be a mapping")
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise _fail(path, f"{key}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(item))
    if missing:
        raise _fail(path, f"{key}.{missing[0]}", "missing")
    return item


def choice(path: Path, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(path, key, f"{value!r} is not one of {', '.join(choices)}")
    return str(value)


def services(path: Path, key: str, value: Any) -> tuple[Service, ...]:
    found = []
    for i, raw in enumerate(value):
        where = f"{key}[{i}]"
        item = mapping(path, where, raw, {"name", "proto", "ports", "from"}, {"name", "proto", "ports"})
        found.append(Service(str(item["name"]), choice(path, f"{where}.proto", item["proto"], PROTOS),
                             ports(path, f"{where}.ports", item["ports"]),
                             choice(path, f"{where}.from", item.get("from", "any"), ("any", "lan"))))
    return tuple(found)


def rules(path: Path, key: str, value: Any) -> tuple[Rule, ...]:
    found = []
    for i, raw in enumerate(value):
        where = f"{key}[{i}]"
        item = mapping(path, where, raw, {"action", "proto", "ports", "source", "mac"}, {"action"})
        proto = choice(path, f"{where}.proto", item.get("proto", "any"), (*PROTOS, "any"))
        port_range = ports(path, f"{where}.ports", item["ports"]) if "ports" in item else None
        if port_range and proto == "any":
            raise _fail(path, f"{where}.ports", "a port needs proto tcp or udp")
        mac = str(item["mac"]).lower() if "mac" in item else None
        if mac is not None and not MAC.match(mac):
            raise _fail(path, f"{where}.mac", f"{item['mac']!r} is not a MAC address")
        source = network(path, f"{where}.source", item["source"]) if "source" in item else None
        found.append(Rule(choice(path, f"{where}.action", item["action"], ("accept", "drop")), proto, port_range,
                          source, mac))
    return tuple(found)


def rate_limits(path: Path, key: str, value: Any) -> tuple[RateLimit, ...]:
    found = []
    for i, raw in enumerate(value):
        where = f"{key}[{i}]"
        item = mapping(path, where, raw, {"proto", "port", "packets", "seconds"}, {"proto", "port", "packets",
                                                                                   "seconds"})
        low, high = ports(path, f"{where}.port", item["port"])
        if low != high:
            raise _fail(path, f"{where}.port", "one port, not a range")
        for field, (lowest, highest) in (("packets", (1, 200)), ("seconds", (1, 3600))):
            number = item[field]
            if isinstance(number, bool) or not isinstance(number, int) or not lowest <= number <= highest:
                raise _fail(path, f"{where}.{field}", f"{number!r} is outside {lowest}..{highest}")
        found.append(RateLimit(choice(path, f"{where}.proto", item["proto"], PROTOS), low, item["packets"],
                               item["seconds"]))
    return tuple(found)


def flood(path: Path, key: str, value: Any) -> tuple[int, int]:
    if (len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in value)
            or not 1 <= value[0] < value[1] <= 1_000_000):
        raise _fail(path, key, f"{value!r} must be two ascending packet rates, like [500, 2000]")
    return int(value[0]), int(value[1])


class Jail(NamedTuple):
    """A ban rule: `failures` within `window` seconds from one source -> banned `ban` s."""

    failures: int
    window: int
    ban: int


# The jails fail2ban runs (overlay/etc/fail2ban/jail.d/pbx.local), by policy name.
JAILS = {"sip": "pbx-sip", "sip_flood": "pbx-sip-flood", "ssh": "sshd", "ssh_long": "pbx-ssh-long"}
JAIL_BOUNDS = {"failures": (1, 1000), "window": (10, 86_400), "ban": (60, 604_800)}


def jail(path: Path, key: str, value: Any) -> Jail:
    if not isinstance(value, dict):
        raise _fail(path, key, "must be a mapping {failures, window, ban}")
    if set(value) != set(JAIL_BOUNDS):
        raise _fail(path, key, f"needs exactly failures, window and ban (seconds), got {sorted(value)}")
    for field, (low, high) in JAIL_BOUNDS.items():
        item = value[field]
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise _fail(path, f"{key}.{field}", f"must be an integer {low}..{high}, not {item!r}")
    return Jail(value["failures"], value["window"], value["ban"])


def render_jails(jails: dict[str, Jail]) -> str:
    """fail2ban settings for the policy's thresholds, laid over the image's jail file."""
    lines = ["# Written by pbxagent from the policy's bans section; do not edit."]
    for name, rule in sorted(jails.items()):
        lines += ["", f"[{JAILS[name]}]", f"maxretry = {rule.failures}", f"findtime = {rule.window}",
                  f"bantime = {rule.ban}"]
    return "\n".join(lines) + "\n"
