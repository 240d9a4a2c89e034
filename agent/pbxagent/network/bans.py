"""One ban list for SIP, SSH and web logins: the `ban4`/`ban6` sets of the agent's
nftables table, with a timeout per element. Saved to /data so bans survive a reboot;
the trusted LAN and the allow-list are never banned."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import NamedTuple

from pbxagent import atomic, paths
from pbxagent.network import nft
from pbxagent.network.firewall import TABLE
from pbxagent.policy.network import Jail, render_jails

DEFAULT_SECONDS = 3600


class BanError(ValueError):
    pass


class Ban(NamedTuple):
    address: str
    expires_in: int  # seconds left


def jails_path() -> Path:
    # Read by fail2ban after the image's jail.d/pbx.local, so these settings win.
    return paths.root() / "etc" / "fail2ban" / "jail.d" / "zz-pbx-policy.local"


def write_jails(jails: dict[str, Jail]) -> Path:
    """The policy's thresholds where fail2ban reads them (/etc is volatile: written at
    every guard start, before fail2ban, which is ordered after the guard)."""
    dest = jails_path()
    atomic.write(dest, render_jails(jails), mode=0o644)
    return dest


def store_path() -> Path:
    return paths.data() / "state" / "bans.json"


def element_command(verb: str, address: str, seconds: int | None = None) -> str:
    """The nft command that adds (with a timeout) or deletes one ban; fail2ban's action
    (overlay/etc/fail2ban/action.d/pbx-nft.py) runs the same commands in-process."""
    ip = ipaddress.ip_address(address)
    timeout = f" timeout {seconds}s" if seconds is not None else ""
    return f"{verb} element {TABLE} ban{ip.version} {{ {ip}{timeout} }}"


def current() -> list[Ban]:
    found = []
    for name in ("ban4", "ban6"):
        for elem in nft.set_elements(TABLE, name):
            found.append(Ban(str(elem["val"]), int(elem.get("expires", elem.get("timeout", 0)))))
    return sorted(found)


def exempt(address: str, networks: list[str]) -> str | None:
    """The trusted or allow-listed network that covers `address`, if any."""
    ip = ipaddress.ip_address(address)
    return next((n for n in networks if ip.version == ipaddress.ip_network(n).version
                 and ip in ipaddress.ip_network(n)), None)


def add(address: str, seconds: int, exempt_networks: list[str]) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise BanError(f"{address!r} is not an IP address") from None
    if not 1 <= seconds <= 30 * 86400:
        raise BanError(f"--seconds {seconds}: must be 1..2592000")
    cover = exempt(str(ip), exempt_networks)
    if cover:
        raise BanError(f"{ip} is in {cover}, which is trusted or allow-listed and never banned")
    nft.command(element_command("add", str(ip), seconds))


def remove(address: str) -> None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise BanError(f"{address!r} is not an IP address") from None
    if str(ip) not in {b.address for b in current()}:
        raise BanError(f"{ip} is not banned")
    nft.command(element_command("delete", str(ip)))
    save()


def save() -> list[Ban]:
    """Keep the bans with their wall-clock expiry (kernel timeouts do not survive a
    reboot); returns them."""
    now = int(time.time())
    found = current()
    data = [{"address": b.address, "expires_at": now + b.expires_in} for b in found]
    atomic.write(store_path(), json.dumps(data, indent=1) + "\n", 0o600)
    return found


def restore(exempt_networks: list[str]) -> int:
    """Put saved bans back with the time they had left, in place of what the ban sets
    hold (the boot firewall's copy counts from the boot, and did not know what is
    trusted now), in one transaction; returns how many."""
    try:
        saved = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return 0
    now = int(time.time())
    commands = [f"flush set {TABLE} ban4", f"flush set {TABLE} ban6"]
    for item in saved:
        left = int(item.get("expires_at", 0)) - now
        address = str(item.get("address", ""))
        try:
            if left > 0 and not exempt(address, exempt_networks):
                commands.append(element_command("add", address, left))
        except ValueError:
            continue
    nft.execute("\n".join(commands) + "\n")
    return len(commands) - 2
