"""Trunks and DIDs, the part of the call policy that faces the provider: where external
calls go (`calls.trunks`) and which extension rings for each number the provider brings
in (`calls.dids`). A trunk's digest secret is no policy value: it is kept on /data
(pbxagent.credentials.trunks) and rendered for the SIP service only.

External calls leave through the first trunk listed; every trunk's `addresses` may
bring calls in, and nothing else is taken for a trunk. A trunk with `register: true`
registers the box with the provider (kamailio's uac module), so a provider that sends
calls only to a registered contact can reach it; its calls still come in only from its
`addresses`.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, NamedTuple

from pbxagent.errors import PolicyError
from pbxagent.policy.network import choice, mapping, network

TRANSPORTS = ("udp", "tcp", "tls")
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_USER = re.compile(r"[A-Za-z0-9._+-]{1,64}")
_E164 = re.compile(r"\+[1-9]\d{1,14}")
_FIELDS = {"name", "host", "port", "transport", "username", "addresses", "limit", "register"}


class Trunk(NamedTuple):
    name: str  # [a-z][a-z0-9-]*: the SIP service's key for it
    host: str  # the provider's proxy, a host name or an address
    port: int
    transport: str  # udp, tcp or tls
    username: str  # digest user name ("": the provider asks for none)
    addresses: tuple[str, ...]  # networks the provider's calls come from
    limit: int  # calls at once through it, both ways
    register: bool = False  # the box registers with the provider as `username`

    @property
    def host_is_address(self) -> bool:
        return _address(self.host) is not None

    @property
    def uri(self) -> str:
        """Where its calls are sent."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sip:{host}:{self.port};transport={self.transport}"


class DidRange(NamedTuple):
    """Numbers first..last (E.164, the same length) ring `extension`."""

    first: str
    last: str
    extension: str

    def contains(self, e164: str) -> bool:
        return len(e164) == len(self.first) and self.first <= e164 <= self.last


def _fail(path: Path, key: str, message: str) -> PolicyError:
    return PolicyError(f"{path}: {key}: {message}")


def trunks(path: Path, key: str, value: list[Any]) -> tuple[Trunk, ...]:
    found: list[Trunk] = []
    for index, raw in enumerate(value):
        where = f"{key}[{index}]"
        item = mapping(path, where, raw, _FIELDS, {"name", "host"})
        found.append(_trunk(path, where, item))
        if [t.name for t in found].count(found[-1].name) > 1:
            raise _fail(path, f"{where}.name", f"{found[-1].name!r} names two trunks")
    return tuple(found)


def _trunk(path: Path, where: str, item: dict[str, Any]) -> Trunk:
    name = str(item["name"])
    if not _NAME.fullmatch(name):
        raise _fail(path, f"{where}.name", f"{name!r} is not a name like provider-1 (a-z, 0-9, -; up to 32)")
    host = str(item["host"]).lower()
    address = _address(host)
    if address is None and not _HOST.fullmatch(host):
        raise _fail(path, f"{where}.host", f"{host!r} is not a host name or an address")
    transport = choice(path, f"{where}.transport", item.get("transport", "udp"), TRANSPORTS)
    port = item.get("port", 5061 if transport == "tls" else 5060)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise _fail(path, f"{where}.port", f"{port!r} is not a port (1..65535)")
    username = str(item.get("username", ""))
    if username and not _USER.fullmatch(username):
        raise _fail(path, f"{where}.username", f"{username!r} is not a user name (letters, digits, . _ + -)")
    raw = item.get("addresses", [host] if address else [])
    if not isinstance(raw, list) or len(raw) > 64:
        raise _fail(path, f"{where}.addresses", "must be a list of at most 64 addresses or networks")
    addresses = tuple(network(path, f"{where}.addresses[{i}]", a) for i, a in enumerate(raw))
    limit = item.get("limit", 4)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise _fail(path, f"{where}.limit", f"{limit!r} is not a number of calls (1..1000)")
    register = item.get("register", False)
    if not isinstance(register, bool):
        raise _fail(path, f"{where}.register", f"{register!r} is not true or false")
    if register and not username:
        raise _fail(path, f"{where}.register", "a registration needs the trunk's username")
    return Trunk(name, host, port, transport, username, addresses, limit, register)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def dids(path: Path, key: str, value: dict[Any, Any]) -> tuple[DidRange, ...]:
    """{"+442079460000": "801", "+442079460100-+442079460199": "802"}: a number or a
    range of numbers of one length to an extension; no number may ring two."""
    found: list[tuple[str, DidRange]] = []
    for raw, extension in value.items():
        where = f"{key}.{raw}"
        first, _, last = str(raw).partition("-")
        last = last or first
        if not _E164.fullmatch(first) or not _E164.fullmatch(last) or len(first) != len(last) or last < first:
            raise _fail(path, where, "is not an E.164 number like +442079460000 or an ascending range of one "
                        "length like +442079460100-+442079460199")
        if not str(extension).isdigit():
            raise _fail(path, where, f"{extension!r} is not an extension number")
        did = DidRange(first, last, str(extension))
        for other_key, other in found:
            if len(other.first) == len(first) and first <= other.last and other.first <= last:
                raise _fail(path, where, f"overlaps {key}.{other_key}: a number may ring one extension only")
        found.append((str(raw), did))
    return tuple(did for _, did in found)
