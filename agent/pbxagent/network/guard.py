"""`pbxagent guard`: applies the compiled firewall at start, restores saved bans, then
follows interface address changes over netlink (no polling) and keeps the trusted set,
and fail2ban's list of what it must never ban, in step. Bans are saved to /data every
minute and when the guard stops, and with them the firewall nftables.service loads at
the next boot (boot_firewall)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pbxagent.network import ban_exemptions, bans, boot_firewall, firewall, lan, nft
from pbxagent.policy import site
from pbxagent.policy.site import Policy

SAVE_EVERY_S = 60.0
# Address events come in bursts (DHCP sets address, route, lifetime): settle first.
SETTLE_S = 0.2


def own_addresses(addresses: list[lan.IfAddr]) -> list[str]:
    return [str(ipaddress.ip_interface(a.address).ip) for a in addresses]


def segments(addresses: list[lan.IfAddr]) -> list[str]:
    """The trusted interface segments (the allow-list has sets of its own)."""
    return lan.trusted(addresses)


def ruleset(policy: Policy, addresses: list[lan.IfAddr]) -> str:
    return firewall.compile_ruleset(policy.firewall, segments(addresses), own_addresses(addresses))


def apply(policy: Policy) -> list[lan.IfAddr]:
    addresses = lan.read_addresses()
    nft.apply(ruleset(policy, addresses))
    return addresses


def exempt_networks(policy: Policy, addresses: list[lan.IfAddr]) -> list[str]:
    return segments(addresses) + list(policy.firewall.allow)


def exempt_sync() -> ban_exemptions.Told:
    """Give fail2ban the trusted LAN and allow-list as the applied sets hold them."""
    return ban_exemptions.sync(ban_exemptions.live_exempt())


def _notify(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(target)
        sock.send(message.encode())


class _Stop(Exception):
    """Raised by the signal handler: a blocking select() returns at once."""


def _stop(_signum: int, _frame: FrameType | None) -> None:
    raise _Stop


def serve(policy: Policy, log: Callable[[str], None]) -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with contextlib.suppress(_Stop):
        trusted, told = _start(policy, log)
        # pyroute2 costs seconds to import under emulation (4-5 s idle, more in a boot):
        # the firewall, the bans and READY (which kamailio and fail2ban wait for) do not
        # wait for it; only following address changes does.
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR

        _follow(log, IPRoute(), RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR, trusted, told)
    save_bans(always=True)
    log("bans and the boot firewall saved; guard stopped")


def save_bans(always: bool = False) -> None:
    """The bans, and the boot firewall from the policy in force now (a `firewall apply`
    since the guard started included)."""
    boot_firewall.save(site.load().policy.firewall, bans.save(), always)


def _tell_fail2ban(log: Callable[[str], None]) -> str | None:
    told = exempt_sync()
    log(told.message)
    return told.pid


def _start(policy: Policy, log: Callable[[str], None]) -> tuple[list[str], str | None]:
    """The compiled firewall, the saved bans, fail2ban's thresholds and exemptions, then
    READY: the trusted LAN and the pid of the fail2ban that was told."""
    addresses = apply(policy)
    trusted = segments(addresses)
    log(f"firewall applied; trusted LAN: {', '.join(trusted) or 'none'}")
    log(f"{bans.restore(exempt_networks(policy, addresses))} saved ban(s) restored")
    log(f"ban thresholds for fail2ban: {bans.write_jails(policy.jails)}")
    told = _tell_fail2ban(log)
    _notify("READY=1")
    # After READY: kamailio and fail2ban need not wait for a file the next boot reads.
    boot_firewall.save(policy.firewall, bans.current())
    return trusted, told


def _retrust(log: Callable[[str], None], trusted: list[str], told: str | None) -> tuple[list[str], str | None]:
    """The addresses read again; the trusted sets and fail2ban follow when they moved."""
    now_trusted = segments(lan.read_addresses())
    if now_trusted == trusted:
        return trusted, told
    nft.execute(firewall.trusted_update(now_trusted))
    log(f"trusted LAN now: {', '.join(now_trusted) or 'none'}")
    return now_trusted, _tell_fail2ban(log)


def _follow(log: Callable[[str], None], events: Any, groups: int, trusted: list[str], told: str | None) -> None:
    with events:
        events.bind(groups=groups)
        # A change between the first read (in _start) and the subscription is seen here.
        trusted, told = _retrust(log, trusted, told)
        last_save = time.monotonic()
        while True:
            ready, _, _ = select.select([events], [], [], SAVE_EVERY_S)
            if ready:
                time.sleep(SETTLE_S)
                while select.select([events], [], [], 0)[0]:
                    events.get()
                trusted, told = _retrust(log, trusted, told)
            if time.monotonic() - last_save >= SAVE_EVERY_S:
                save_bans()
                last_save = time.monotonic()
                # A fail2ban that (re)started after the last change may have read the jail
                # file just before that change was written: tell it again.
                if ban_exemptions.running_pid() not in (told, None):
                    told = _tell_fail2ban(log)
