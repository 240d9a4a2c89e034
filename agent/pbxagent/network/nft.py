"""Talking to nftables: check and apply scripts in one transaction, read sets as JSON.
The nft command line is the interface nftables documents and keeps stable."""

from __future__ import annotations

import json
import subprocess
from typing import Any


class NftError(OSError):
    pass


def execute(script: str, check_only: bool = False) -> None:
    argv = ["nft", *(["-c"] if check_only else []), "-f", "-"]
    done = subprocess.run(argv, input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise NftError(f"nft {'rejects' if check_only else 'failed to apply'} the ruleset: {done.stderr.strip()}")


def apply(script: str) -> None:
    """Check, then apply: both are whole transactions, so nothing is half-applied."""
    execute(script, check_only=True)
    execute(script)


def command(*args: str) -> str:
    done = subprocess.run(["nft", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NftError(f"nft {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def set_elements(table: str, name: str) -> list[dict[str, Any]]:
    """Elements of a set as {"val": address, "timeout": s, "expires": s} (bare values too)."""
    data = json.loads(command("-j", "list", "set", *table.split(), name))
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
