"""The call part of the policy (toll-fraud controls): who may call what, when, how much.
Parsers for what a type cannot say; the decision itself is pbxagent.calls.dialplan.

Numbers are E.164 ("+4420..."): prefixes in `blocked`/`allowed`, calling codes in
`allowed_countries`. Time windows are the box's local time.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, NamedTuple

from pbxagent.errors import PolicyError
from pbxagent.network import lan
from pbxagent.policy import network
from pbxagent.policy import trunks as trunk_policy
from pbxagent.policy.trunks import DidRange, Trunk
from pbxagent.policy.updates import Window, window

CLASSES = ("internal", "national", "international")  # what an extension may call, widening
KINDS = ("national", "international")  # external calls, each with a window of its own
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PREFIX = re.compile(r"\+[1-9]\d{0,14}")
RELAY_PORTS_PER_CALL = 4  # rtpengine takes an RTP and an RTCP port on each side of a call
SIP_PORTS = (5060, 5061)


class Hours(NamedTuple):
    """Days of the week (0 = Monday) and a local time window on each."""

    days: frozenset[int]
    window: Window

    def contains(self, weekday: int, minute: int) -> bool:
        return weekday in self.days and self.window.contains(minute)


ANY_TIME = Hours(frozenset(range(7)), Window(0, 0))


class CallPolicy(NamedTuple):
    country: str  # ISO 3166 region of the site ("GB"); "" = not set: no external calls
    default_class: str
    classes: dict[str, str]  # extension -> class, where it is not the default
    windows: dict[str, Hours]  # call kind -> when such calls may be made
    allowed_countries: tuple[int, ...]  # calling codes besides the site's own
    blocked: tuple[str, ...]  # E.164 prefixes refused unless `allowed`
    allowed: tuple[str, ...]  # E.164 prefixes let through every block
    concurrent: int  # calls at once per extension
    max_duration: int  # seconds an external call may last
    daily_external: int  # external calls per extension per day
    daily_international: int  # of which international
    rate_lock: int  # more external calls than this in a minute locks the extension
    trunks: tuple[Trunk, ...] = ()  # external calls leave through the first
    dids: tuple[DidRange, ...] = ()  # numbers the trunks bring in -> extensions
    relay_ports: tuple[int, int] = (10000, 10500)  # the media relay's UDP ports
    public_address: str = ""  # the site router's, when the box is behind it; "" = none

    def class_of(self, extension: str) -> str:
        return self.classes.get(extension, self.default_class)


def country(path: Path, key: str, value: Any) -> str:
    if value == "":
        return ""
    import phonenumbers

    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise PolicyError(f"{path}: {key}: {value!r} is not a region code like GB, DE or US")
    return str(value)


def classes(path: Path, key: str, value: dict[Any, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for extension, cls in value.items():
        if not str(extension).isdigit():
            raise PolicyError(f"{path}: {key}: {extension!r} is not an extension number")
        if cls not in CLASSES:
            raise PolicyError(f"{path}: {key}.{extension}: {cls!r} is not one of {', '.join(CLASSES)}")
        found[str(extension)] = cls
    return found


def hours(path: Path, key: str, value: Any) -> Hours:
    """"mon-fri 08:00-18:00", "sat,sun 10:00-14:00", or "" for any time."""
    if value == "":
        return ANY_TIME
    if not isinstance(value, str) or len(value.split()) != 2:
        raise PolicyError(f"{path}: {key}: {value!r} is not like \"mon-fri 08:00-18:00\" (or \"\" for any time)")
    days, times = value.split()
    return Hours(_days(path, key, days), window(path, key, times))


def _days(path: Path, key: str, text: str) -> frozenset[int]:
    found: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise PolicyError(f"{path}: {key}: {part!r} is not a day (mon..sun) or a range of days like mon-fri")
        low, high = DAYS.index(first), DAYS.index(last or first)
        found.update(range(low, high + 1) if low <= high else [*range(low, 7), *range(0, high + 1)])
    return frozenset(found)


def prefixes(path: Path, key: str, value: list[Any]) -> tuple[str, ...]:
    for index, item in enumerate(value):
        if not isinstance(item, str) or not _PREFIX.fullmatch(item):
            raise PolicyError(f"{path}: {key}[{index}]: {item!r} is not an E.164 prefix like +881")
    return tuple(value)


def calling_codes(path: Path, key: str, value: list[Any]) -> tuple[int, ...]:
    import phonenumbers

    codes = []
    for index, item in enumerate(value):
        text = str(item)
        code = int(text[1:]) if re.fullmatch(r"\+[1-9]\d{0,2}", text) else 0
        if not code or phonenumbers.region_code_for_country_code(code) == "ZZ":
            raise PolicyError(f"{path}: {key}[{index}]: {item!r} is not a country calling code like +33")
        codes.append(code)
    return tuple(codes)


def relay_ports(path: Path, key: str, value: Any) -> tuple[int, int]:
    low, high = network.ports(path, key, value)
    if low < 1024:
        raise PolicyError(f"{path}: {key}: {value!r} reaches below 1024, the ports only root may bind")
    if high - low + 1 < RELAY_PORTS_PER_CALL:
        raise PolicyError(f"{path}: {key}: {value!r} is too small for one relayed call "
                          f"({RELAY_PORTS_PER_CALL} ports)")
    if any(low <= port <= high for port in SIP_PORTS):
        raise PolicyError(f"{path}: {key}: {value!r} covers SIP's ports {SIP_PORTS[0]}-{SIP_PORTS[1]}")
    return low, high


def public_address(path: Path, key: str, value: Any) -> str:
    """The site router's public IPv4 address, forwarding SIP and the relay's ports to
    the box. One the box would take for the site's own side is refused: with it, phones
    on the LAN would be given an address they cannot reach."""
    if value == "":
        return ""
    try:
        address = ipaddress.IPv4Address(str(value))
    except ValueError:
        raise PolicyError(f"{path}: {key}: {value!r} is not an IPv4 address like 198.51.100.7") from None
    # RFC 1918, as the trusted LAN's classification and kamailio's is_ip_rfc1918 take the site's side.
    if any(address in net for net in lan.PRIVATE) or address.is_loopback or address.is_link_local \
            or address.is_multicast or address.is_unspecified:
        raise PolicyError(f"{path}: {key}: {value} is no public address (private, loopback, link-local or "
                          "multicast): leave it \"\" when the box is not behind the site's router")
    return str(address)


def build(source: Path, flat: dict[str, Any]) -> CallPolicy:
    return CallPolicy(
        country=country(source, "calls.country", flat["calls.country"]),
        default_class=flat["calls.default_class"],
        classes=classes(source, "calls.classes", flat["calls.classes"]),
        windows={kind: hours(source, f"calls.window_{kind}", flat[f"calls.window_{kind}"]) for kind in KINDS},
        allowed_countries=calling_codes(source, "calls.allowed_countries", flat["calls.allowed_countries"]),
        blocked=prefixes(source, "calls.blocked", flat["calls.blocked"]),
        allowed=prefixes(source, "calls.allowed", flat["calls.allowed"]),
        concurrent=flat["calls.concurrent"],
        max_duration=flat["calls.max_duration"],
        daily_external=flat["calls.daily_external"],
        daily_international=flat["calls.daily_international"],
        rate_lock=flat["calls.rate_lock"],
        trunks=trunk_policy.trunks(source, "calls.trunks", flat["calls.trunks"]),
        dids=trunk_policy.dids(source, "calls.dids", flat["calls.dids"]),
        relay_ports=relay_ports(source, "calls.relay_ports", flat["calls.relay_ports"]),
        public_address=public_address(source, "calls.public_address", flat["calls.public_address"]),
    )
