"""What fail2ban must never ban: the trusted LAN (as the agent just applied it) and the
allow-list (read from its nftables sets: a `firewall apply` on probation holds one no
file does), handed to fail2ban as its `ignoreip` list.

fail2ban checks `ignoreip` in its own process. The `ignorecommand` this replaces forked sh
and nft for each new source address, which under emulation cost ~1 s at the first failure
of every attack and so at every ban. The list goes to a jail file (read when fail2ban
starts) and, when fail2ban runs, over its control socket to every jail."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from typing import Any, NamedTuple

from pbxagent import atomic, paths
from pbxagent.network import nft
from pbxagent.network.firewall import TABLE

SOCKET = "/run/fail2ban/fail2ban.sock"
SOCKET_TIMEOUT_S = 30.0
ALLOW_SETS = ("allow4", "allow6")


def exempt_path() -> Path:
    return paths.root() / "etc" / "fail2ban" / "jail.d" / "zz-pbx-exempt.local"


def pid_path() -> Path:
    return paths.root() / "run" / "fail2ban" / "fail2ban.pid"


def networks_of(element: Any) -> list[str]:
    """The networks of one nft JSON set value: an address, a prefix or a range."""
    if isinstance(element, str):
        return [str(ipaddress.ip_network(element))]
    if isinstance(element, dict) and "prefix" in element:
        return [str(ipaddress.ip_network(f"{element['prefix']['addr']}/{element['prefix']['len']}"))]
    if isinstance(element, dict) and "range" in element:
        low, high = (ipaddress.ip_address(a) for a in element["range"])
        return [str(n) for n in ipaddress.summarize_address_range(low, high)]
    raise ValueError(f"unexpected nft set element {element!r}")


def live_allow() -> list[str]:
    found: list[str] = []
    for name in ALLOW_SETS:
        for element in nft.set_elements(TABLE, name):
            found += networks_of(element["val"])
    return sorted(set(found))


def jail_local(networks: list[str]) -> str:
    return ("# Written by pbxagent from its trusted and allow sets; do not edit.\n"
            f"[DEFAULT]\nignoreip = {' '.join(networks)}\n")


def changes(current: list[str], wanted: list[str]) -> tuple[list[str], list[str]]:
    """What to add to and remove from a jail's ignore list to make it `wanted`."""
    have = {str(ipaddress.ip_network(n, strict=False)) for n in current}
    return sorted(set(wanted) - have), sorted(have - set(wanted))


def running_pid() -> str | None:
    try:
        return pid_path().read_text().strip() or None
    except OSError:
        return None


class Told(NamedTuple):
    pid: str | None  # the fail2ban that took the list; None if none did
    message: str


def sync(networks: list[str]) -> Told:
    """Write the jail file, then update a running fail2ban."""
    atomic.write(exempt_path(), jail_local(networks), mode=0o644)
    pid = running_pid()
    if pid is None:
        return Told(None, "fail2ban not running: it reads the list when it starts")
    try:
        jails = _tell(networks)
    except (OSError, ImportError, ValueError) as err:
        return Told(None, f"fail2ban did not take the list ({err}); it reads the jail file when it starts")
    return Told(pid, f"fail2ban ignores {', '.join(networks) or 'nothing'} in {jails} jail(s)")


def _tell(networks: list[str]) -> int:
    from fail2ban.client.csocket import CSocket

    client = CSocket(SOCKET, timeout=SOCKET_TIMEOUT_S)
    with contextlib.closing(client):
        jails = [j.strip() for j in dict(_ok(client.send(["status"])))["Jail list"].split(",") if j.strip()]
        for jail in jails:
            add, remove = changes([str(a) for a in _ok(client.send(["get", jail, "ignoreip"]))], networks)
            for network in add:
                _ok(client.send(["set", jail, "addignoreip", network]))
            for network in remove:
                _ok(client.send(["set", jail, "delignoreip", network]))
    return len(jails)


def _ok(reply: Any) -> Any:
    code, result = reply
    if code != 0:
        raise ValueError(f"fail2ban refused: {result}")
    return result
