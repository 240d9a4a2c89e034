"""Which networks count as the trusted LAN (REQUIREMENTS §2).

An interface's own segment is trusted only when it is private (RFC 1918 or IPv6 ULA):
a public segment is shared with strangers. The policy's allow-list is added. The
decision is a pure function of the addresses, so the host can test it; reading the
addresses and following their changes (netlink) happens at the edge.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PRIVATE: tuple[Network, ...] = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("fc00::/7"),
)


class IfAddr(NamedTuple):
    ifname: str
    address: str  # "192.168.1.10/24"


class Decision(NamedTuple):
    network: str
    trusted: bool
    reason: str


def _private(net: Network) -> str | None:
    for block in PRIVATE:
        if net.version == block.version and net.subnet_of(block):  # type: ignore[arg-type]
            return "ULA" if net.version == 6 else "RFC 1918"
    return None


def classify(addresses: Iterable[IfAddr], allow: Iterable[str] = ()) -> list[Decision]:
    """Every interface segment and allow-list entry, trusted or not, with the reason."""
    decisions: dict[str, Decision] = {}
    for ifname, address in addresses:
        interface = ipaddress.ip_interface(address)
        net = interface.network
        if interface.ip.is_loopback or interface.ip.is_link_local:
            continue
        kind = _private(net)
        if kind:
            decision = Decision(str(net), True, f"{ifname} {address}: private segment ({kind})")
        else:
            decision = Decision(str(net), False, f"{ifname} {address}: public segment, shared with strangers")
        if str(net) not in decisions or decision.trusted:
            decisions[str(net)] = decision
    for entry in allow:
        net = ipaddress.ip_network(entry, strict=False)
        decisions[str(net)] = Decision(str(net), True, "allow-list (policy lan.allow)")
    return sorted(decisions.values(), key=lambda d: (ipaddress.ip_network(d.network).version, d.network))


def trusted(addresses: Iterable[IfAddr], allow: Iterable[str] = ()) -> list[str]:
    return [d.network for d in classify(addresses, allow) if d.trusted]


def read_addresses() -> list[IfAddr]:
    """The system's interface addresses, from iproute2's JSON output: a one-shot read
    that costs a fraction of importing pyroute2, which only the long-running guard needs
    (to follow changes as netlink events)."""
    import json
    import subprocess

    done = subprocess.run(["ip", "-j", "address", "show"], capture_output=True, text=True, check=True)
    return sorted(
        IfAddr(link["ifname"], f"{info['local']}/{info['prefixlen']}")
        for link in json.loads(done.stdout)
        for info in link.get("addr_info", [])
        if "local" in info
    )


# An address standing for "the internet" (TEST-NET-1): the box's route to it names the
# address the outside reaches it at. Only looked up, never sent to.
INTERNET = "192.0.2.1"


def source_toward(destination: str = INTERNET) -> str | None:
    """The address the box sends from toward `destination` (the kernel's route lookup,
    `ip route get`); None without a route."""
    import json
    import subprocess

    done = subprocess.run(["ip", "-j", "route", "get", destination], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    found = json.loads(done.stdout or "[]")
    return str(found[0]["prefsrc"]) if found and "prefsrc" in found[0] else None
