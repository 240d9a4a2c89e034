"""The firewall nftables.service loads before any interface is up: the last compiled
ruleset with the bans in force when it was saved (overlay's nftables.service.d), so a
box never has an address with only the safe base table in force, and a banned source
is not let in again by a reboot for the seconds until the guard starts.

The trusted sets are saved empty: the LAN the box had before the reboot is not trusted
until the guard sees it again (a box moved to another network must not trust the old
one's addresses); they fill in as addresses appear. Written by the guard at its start,
when the bans or the policy change (checked every minute) and when it stops.
"""

from __future__ import annotations

import re
from pathlib import Path

from pbxagent import atomic, paths
from pbxagent.network.bans import Ban, element_command
from pbxagent.network.firewall import compile_ruleset
from pbxagent.policy.network import Firewall

_TIMEOUT = re.compile(r" timeout \d+s")


def path() -> Path:
    return paths.data() / "state" / "firewall-boot.nft"


def script(fw: Firewall, bans: list[Ban]) -> str:
    """One nft transaction: everything flushed, the compiled table with no trusted
    networks, each ban with the seconds it had left."""
    lines = [element_command("add", ban.address, ban.expires_in) for ban in bans if ban.expires_in > 0]
    return "flush ruleset\n" + compile_ruleset(fw, ()) + "".join(f"{line}\n" for line in lines)


def save(fw: Firewall, bans: list[Ban], always: bool = False) -> bool:
    """Write the boot firewall when its rules or its banned addresses changed (a ban's
    shrinking timeout alone is no reason to write flash every minute), or `always`
    (the guard stopping: the timeouts as they are now). Returns whether it wrote."""
    text = script(fw, bans)
    try:
        unchanged = _TIMEOUT.sub("", path().read_text()) == _TIMEOUT.sub("", text)
    except OSError:
        unchanged = False
    if unchanged and not always:
        return False
    atomic.write(path(), text, 0o600)
    return True
