"""Talking to nftables: check and apply scripts in one transaction, read sets as JSON.

Through libnftables in this process (Debian's python3-nftables, as fail2ban's ban action
does): the same commands and scripts as the nft command line, which is a front end to the
same library, without its exec. Under emulation an nft process costs ~0.1 s idle and
~0.3 s while a boot's units start, and the guard runs seven at its start and five when an
address arrives, the moment kamailio starts on it."""

from __future__ import annotations

import json
import os
from typing import Any


class NftError(OSError):
    pass


_contexts: dict[int, Any] = {}


def _context() -> Any:
    """This process's libnftables context (a forked child makes its own: the context
    holds the parent's netlink state)."""
    pid = os.getpid()
    if pid not in _contexts:
        import nftables

        _contexts.clear()
        _contexts[pid] = nftables.Nftables()
    return _contexts[pid]


def _run(text: str, json_output: bool = False, check_only: bool = False) -> str:
    nft = _context()
    nft.set_json_output(json_output)
    nft.set_dry_run(check_only)
    code, output, error = nft.cmd(text)
    if code != 0:
        raise NftError(error.strip() or f"exit code {code}")
    return str(output)


def execute(script: str, check_only: bool = False) -> None:
    """Run a script as one transaction. It goes in as a file (a memory file): libnftables'
    errors for a buffer quote the script's first line, not the one at fault (1.0.6, 1.1.3)."""
    nft = _context()
    nft.set_json_output(False)
    nft.set_dry_run(check_only)
    memory = os.memfd_create("ruleset")
    try:
        os.write(memory, script.encode())
        name = f"/proc/self/fd/{memory}"
        code, _output, error = nft.cmd_from_file(name)
    finally:
        os.close(memory)
    if code != 0:
        reason = str(error).replace(name, "ruleset").strip() or f"exit code {code}"
        raise NftError(f"nft {'rejects' if check_only else 'failed to apply'} the ruleset: {reason}")


def apply(script: str) -> None:
    """Check, then apply: both are whole transactions, so nothing is half-applied."""
    execute(script, check_only=True)
    execute(script)


def command(text: str) -> str:
    try:
        return _run(text)
    except NftError as err:
        raise NftError(f"nft {text}: {err}") from None


def set_elements(table: str, name: str) -> list[dict[str, Any]]:
    """Elements of a set as {"val": address, "timeout": s, "expires": s} (bare values too)."""
    text = f"list set {table} {name}"
    try:
        data = json.loads(_run(text, json_output=True))
    except NftError as err:
        raise NftError(f"nft {text}: {err}") from None
    for item in data.get("nftables", []):
        if "set" in item:
            found = []
            for elem in item["set"].get("elem", []):
                if isinstance(elem, dict) and "elem" in elem:
                    found.append(elem["elem"])
                else:
                    found.append({"val": elem})
            return found
    return []
