"""The adapter to the media relay (rtpengine): before each start it gets its settings and
the nft script that opens its ports in /run/pbx/relay.

rtpengine relays the audio of calls with a phone behind NAT (kamailio asks it to, over
its control port on loopback); phones on the LAN send theirs to each other. It runs in
user space (`table = -1`): the kernel forwarding module is a DKMS build the image does
not carry. Its interfaces are the box's addresses, which the guard writes and follows
(`follow_addresses`): every address but loopback, or behind the site's router, each
address with a face for the LAN and one for the internet.
"""

from __future__ import annotations

from pathlib import Path

from pbxagent import atomic, paths
from pbxagent.network import firewall
from pbxagent.policy.calls import CallPolicy

CONTROL = "127.0.0.1:2223"  # kamailio's rtpengine_sock names the same


def run_dir() -> Path:
    return paths.runtime() / "relay"


def interfaces(public: str, addresses: list[str]) -> str:
    """rtpengine's interfaces on its command line: every address but loopback (`any`).
    Behind the site's router (calls.public_address) each of the box's addresses has two
    faces, named as kamailio's route[SIDES] names the sides: `lan` gives the address
    itself in SDP, `wan` the router's, which forwards the relay's ports to the box.
    rtpengine takes no name for `any`, so they name the addresses: the guard writes them
    (follow_addresses) and restarts the relay when they move; with none yet, `any`."""
    if not (public and addresses):
        return "--interface=any"
    return " ".join(f"--interface=lan/{a} --interface=wan/{a}!{public}" for a in addresses)


def follow_addresses(public: str, addresses: list[str]) -> bool:
    """The relay's interfaces for the box's addresses (its unit's environment file);
    whether they changed."""
    run_dir().mkdir(mode=0o755, parents=True, exist_ok=True)
    return atomic.update(run_dir() / "interfaces.env",
                         f"PBX_RELAY_INTERFACES={interfaces(public, addresses)}\n", 0o644)


def config(policy: CallPolicy) -> str:
    low, high = policy.relay_ports
    return "\n".join([
        "# Written by pbxagent from the policy (calls.relay_ports) at each start; the interfaces",
        "# are on the command line (interfaces.env).",
        "[rtpengine]",
        "table = -1",
        f"listen-ng = {CONTROL}",
        f"port-min = {low}",
        f"port-max = {high}",
        "timeout = 60",  # a call whose media stopped for a minute is ended
        "silent-timeout = 3600",
        "tos = 184",  # DSCP EF, as phones mark voice
        "log-level = 5",  # notices and worse: no line per call in the journal
        "",
    ])


def write_inputs(policy: CallPolicy) -> list[str]:
    """Write what the relay's unit reads from /run/pbx/relay; returns what was done."""
    base = run_dir()
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    atomic.write(base / "rtpengine.conf", config(policy), 0o644)
    atomic.write(base / "open.nft", firewall.relay_open(policy.relay_ports), 0o644)
    low, high = policy.relay_ports
    return [f"media relay on UDP {low}-{high}, opened while it runs"]
