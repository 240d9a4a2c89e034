"""Which networks count as the trusted LAN (REQUIREMENTS §2).

An interface's own segment is trusted only when it is private (RFC 1918 or IPv6 ULA):
a public segment is shared with strangers. The policy's allow-list is added. The
decision is a pure function of the addresses, so the host can test it; reading the
addresses and following their changes (netlink) happens at the edge.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
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


# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h: a dump of every interface address.
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
NLMSG_ERROR, NLMSG_DONE, RTM_NEWADDR, RTM_GETADDR = 2, 3, 20, 22
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFA_ADDRESS, IFA_LOCAL = 1, 2


def _align(length: int) -> int:
    return (length + 3) & ~3


def _parse_address(body: bytes) -> tuple[int, str] | None:
    """One RTM_NEWADDR message's body: the interface index and "address/prefix" (the
    local address, which on a point-to-point link is not IFA_ADDRESS, the peer's)."""
    family, prefixlen, _flags, _scope, index = _IFADDRMSG.unpack_from(body)
    attributes: dict[int, bytes] = {}
    offset = _align(_IFADDRMSG.size)
    while offset + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            break
        attributes[kind] = body[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    raw = attributes.get(IFA_LOCAL) or attributes.get(IFA_ADDRESS)
    if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return index, f"{socket.inet_ntop(family, raw)}/{prefixlen}"


def _interface_name(index: int) -> str | None:
    """None for an interface gone since the dump (a PPP or VPN link going down): its
    addresses went with it, and the guard reads them all again at that change's event."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


def read_addresses() -> list[IfAddr]:
    """The system's interface addresses, in one netlink dump from this process: an
    `ip -j address` exec costs tenths of a second under emulation (the guard reads them
    at its start and on each change, a first boot's lease included), importing pyroute2
    seconds."""
    request = _HEADER.pack(_HEADER.size + _IFADDRMSG.size, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    found: list[IfAddr] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as netlink:
        netlink.send(request + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        while True:
            data, offset = netlink.recv(1 << 16), 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, _sequence, _port = _HEADER.unpack_from(data, offset)
                body = data[offset + _HEADER.size:offset + length]
                if kind == NLMSG_DONE:
                    return sorted(found)
                if kind == NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("=i", body)[0], "netlink address dump failed")
                parsed = _parse_address(body) if kind == RTM_NEWADDR else None
                name = _interface_name(parsed[0]) if parsed else None
                if parsed and name:
                    found.append(IfAddr(name, parsed[1]))
                offset += _align(length)


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
