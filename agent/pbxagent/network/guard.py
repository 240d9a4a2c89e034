"""The network guard (run by the agent's process, pbxagent.daemon): applies the
compiled firewall, restores saved bans, then follows interface address changes over
netlink (no polling) and keeps the trusted set, and fail2ban's list of what it must never
ban, in step; when the box's own addresses change it restarts the media relay, which
reads them only when it starts, and kamailio when its sockets must follow them. Bans are
saved to /data every minute and when the guard stops, and with them the firewall
nftables.service loads at the next boot (boot_firewall)."""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

from pbxagent import media, sip, system
from pbxagent.network import ban_exemptions, bans, boot_firewall, firewall, lan, nft
from pbxagent.policy import site
from pbxagent.policy.site import Policy

SAVE_EVERY_S = 60.0
# Address events come in bursts (DHCP sets address, route, lifetime): settle first.
SETTLE_S = 0.2
RELAY_UNIT = "rtpengine-daemon.service"
SIP_UNIT = "kamailio.service"


def own_addresses(addresses: list[lan.IfAddr]) -> list[str]:
    return [str(ipaddress.ip_interface(a.address).ip) for a in addresses]


def relay_addresses(addresses: list[lan.IfAddr]) -> list[str]:
    """The addresses the media relay serves: the box's IPv4 ones, as kamailio's (its
    calls are signalled over IPv4 only, pbxagent.sip). An IPv6 address coming or going
    (a router advertisement, often seconds after the DHCP lease) is no reason to restart
    the relay and cut the audio of the calls it carries."""
    return sip.listen_addresses(own_addresses(addresses))


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


def exempt_sync(trusted: list[str]) -> ban_exemptions.Told:
    """Give fail2ban the trusted LAN just applied and the allow-list the sets hold (one nft
    process per set: tenths of a second while a first boot's units start, so the trusted
    sets, which the caller has, are not read back)."""
    return ban_exemptions.sync(sorted(set(trusted + ban_exemptions.live_allow())))


def save_bans(always: bool = False) -> None:
    """The bans, and the boot firewall from the policy in force now (a `firewall apply`
    since the guard started included)."""
    boot_firewall.save(site.load().policy.firewall, bans.save(), always)


def _tell_fail2ban(log: Callable[[str], None], trusted: list[str]) -> str | None:
    told = exempt_sync(trusted)
    log(told.message)
    return told.pid


class Following(NamedTuple):
    trusted: list[str]  # the trusted LAN as applied
    told: str | None  # the pid of the fail2ban that was told about it
    relay: list[str]  # the media relay's addresses when last read
    public: str  # the site router's address (calls.public_address), the relay's internet face


def start(policy: Policy, log: Callable[[str], None]) -> Following:
    """The compiled firewall, the saved bans, fail2ban's thresholds and exemptions: what
    kamailio and fail2ban wait for."""
    addresses = apply(policy)
    trusted = segments(addresses)
    log(f"firewall applied; trusted LAN: {', '.join(trusted) or 'none'}")
    log(f"{bans.restore(exempt_networks(policy, addresses))} saved ban(s) restored")
    log(f"ban thresholds for fail2ban: {bans.write_jails(policy.jails)}")
    relay = relay_addresses(addresses)
    _follow_sip(log, relay)  # a lease taken before this start is no change to follow
    media.follow_addresses(policy.calls.public_address, relay)  # before the relay starts (after this unit)
    return Following(trusted, _tell_fail2ban(log, trusted), relay, policy.calls.public_address)


def _restart(log: Callable[[str], None], unit: str, what: str, addresses: list[str]) -> None:
    """A service that reads the box's addresses only when it starts, restarted on them."""
    on = ", ".join(addresses) or "no address"
    try:
        system.systemctl("try-restart", "--no-block", unit)
    except OSError as exc:
        log(f"{what} not restarted on {on}: {exc}")
        return
    log(f"{what} restarted on this box's addresses: {on}")


def _follow_sip(log: Callable[[str], None], own: list[str]) -> None:
    """kamailio's sockets are the box's addresses, and its contact for a provider the one
    toward the internet (pbxagent.sip): restarted when they moved. Phones registered to
    an address the box no longer has register again anyway, and kamailio registers with
    its providers again as it starts. One waiting for the box's first address starts on
    it when told."""
    if not sip.follow_addresses(own, lan.source_toward):
        return
    listening = sip.listen_addresses(own)
    if sip.end_address_wait():
        log(f"SIP service starts on this box's addresses: {', '.join(listening)}")
    else:
        _restart(log, SIP_UNIT, "SIP service", listening)


def _follow_relay(log: Callable[[str], None], relay: list[str], changed_by: float) -> None:
    """rtpengine reads its interfaces as it starts: restarted when they moved (the calls
    it relays lose their media either way), unless it never started (on a first boot it
    starts once the network is online, after kamailio) or its start began after
    `changed_by`, a moment the new ones were already written: a restart would only start
    it a second time."""
    try:
        began = system.start_began(RELAY_UNIT)
        if not began or began > changed_by:
            return
    except OSError:
        pass  # no answer: restart, the safe side
    _restart(log, RELAY_UNIT, "media relay", relay)


def _retrust(log: Callable[[str], None], now: Following) -> Following:
    """The addresses read again; the trusted sets and fail2ban follow when they moved,
    the SIP service and the media relay when the box's own did. In the order phones
    need them: kamailio's restart is the longest wait (seconds under emulation, on a
    first boot the last before the box answers), so it is asked for first, and
    fail2ban, which only learns what not to ban, last."""
    addresses = lan.read_addresses()
    trusted, relay = segments(addresses), relay_addresses(addresses)
    moved, retrusted = relay != now.relay, trusted != now.trusted
    if moved:
        _follow_sip(log, relay)
    if retrusted:
        nft.execute(firewall.trusted_update(trusted))
        log(f"trusted LAN now: {', '.join(trusted) or 'none'}")
    if moved:
        media.follow_addresses(now.public, relay)
        _follow_relay(log, relay, time.monotonic())  # a relay started since has the new ones
    return Following(trusted, _tell_fail2ban(log, trusted) if retrusted else now.told, relay, now.public)


# linux/rtnetlink.h: the multicast groups of IPv4 and IPv6 address changes.
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100


def address_events() -> socket.socket:
    """A netlink socket that becomes readable when an interface address changes. The
    messages are only a wake-up (the addresses are then read whole, lan.read_addresses),
    so no netlink parser is needed: pyroute2's import alone cost 4-5 s at every boot."""
    events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    events.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    return events


def drain(events: socket.socket) -> None:
    """Read every queued event. A burst larger than the socket's buffer ends in ENOBUFS:
    events were lost, which changes nothing here, as the addresses are read whole next."""
    while select.select([events], [], [], 0)[0]:
        try:
            events.recv(65536)
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise


def follow(log: Callable[[str], None], now: Following) -> None:
    """Until stopped (an exception from a signal handler): the trusted sets after every
    burst of address changes, the bans and the boot firewall saved every minute."""
    with address_events() as events:
        # A change between the first read (in start) and the subscription is seen here.
        now = _retrust(log, now)
        last_save = time.monotonic()
        while True:
            if select.select([events], [], [], SAVE_EVERY_S)[0]:
                time.sleep(SETTLE_S)
                drain(events)
                now = _retrust(log, now)
            if time.monotonic() - last_save >= SAVE_EVERY_S:
                save_bans()
                last_save = time.monotonic()
                # A fail2ban that (re)started after the last change may have read the jail
                # file just before that change was written: tell it again.
                if ban_exemptions.running_pid() not in (now.told, None):
                    now = now._replace(told=_tell_fail2ban(log, now.trusted))
