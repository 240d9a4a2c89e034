"""Phones on the test network (tests/device/netlab.py): sipp, Debian's sip-tester, run in
the lab's host namespaces with the scenarios in tests/device/sipp/ — registering, calling
with G.711 audio from sip-tester's own recording, answering with the audio echoed back,
a guest call without credentials, and a SIP provider on a trunk: taking calls after its
digest challenge, and bringing calls in.

Each run gets a Call-ID tag of its own (`tag`), so a test finds its own call records in
the box's journal whatever ran before it on the same twin.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.device.netlab import TWIN
from tests.infra.twin import Device

SCENARIOS = Path(__file__).parent / "sipp"
AUDIO_PACKETS = 102  # RTP packets in /usr/share/sip-tester/g711a.pcap (20 ms each)


def records_of(dev: Device, tag: str) -> list[dict[str, Any]]:
    """The call records of a test's calls (tagged `tag`), as `pbxagent calls list` shows them."""
    rows = json.loads(dev.check("pbxagent calls list --json --since today 2>/dev/null"))
    return sorted((r for r in rows if r["call"].endswith(f"-{tag}")), key=lambda r: r["call"])


def sipp(ns: str, address: str, port: int, scenario: str, *args: str, target: str | None = TWIN,
         timeout_s: int | None = 60) -> list[str]:
    """sipp's command line in a host namespace, sending to `target` (None: a phone that
    waits for calls); `timeout_s` ends the whole run as an error."""
    limit = ["-timeout", str(timeout_s), "-timeout_error"] if timeout_s else []
    return ["ip", "netns", "exec", ns, "sipp", *([target] if target else []), "-sf", str(SCENARIOS / scenario),
            "-i", address, "-p", str(port), "-nostdin", *limit, *args]


def run(argv: list[str], timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _registering(ns: str, address: str, port: int, extension: str, secret: str, *args: str) -> list[str]:
    return sipp(ns, address, port, "register.xml", "-s", extension, "-au", extension, "-ap", secret, "-m", "1", *args)


def register(ns: str, address: str, port: int, extension: str, secret: str) -> None:
    done = run(_registering(ns, address, port, extension, secret))
    assert done.returncode == 0, f"{extension} did not register from {address}:{port}: {done.stdout[-2000:]}"


@contextmanager
def registered(ns: str, address: str, port: int, extension: str, secret: str, transport: str = "u1",
               hold_ms: int = 60000, messages: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A phone that registers over `transport` (sipp's u1 or t1) and stays until the block
    ends (at most `hold_ms`), answering the box's OPTIONS as a phone does (sipp's -aa);
    with `messages`, as `answering`."""
    with running(_registering(ns, address, port, extension, secret, "-t", transport, "-d", str(hold_ms), "-aa",
                              *_trace(messages)), stop=True) as phone:
        yield phone


@contextmanager
def running(argv: list[str], stop: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """A program in the background for a block (sipp, a test peer), waited for at its
    end (or stopped first)."""
    # Its screen is not read: a pipe nobody reads would stop it once full.
    phone = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield phone
    finally:
        if stop:
            phone.terminate()
        try:
            phone.wait(timeout=30)
        except subprocess.TimeoutExpired:
            phone.kill()
            phone.wait()


def _trace(messages: Path | None) -> list[str]:
    """sipp's options to write every SIP message it sends and gets to `messages`."""
    return ["-trace_msg", "-message_file", str(messages)] if messages else []


def _credentials(work: Path, user: str, secret: str) -> Path:
    """A provider's -inf file: the test's own secret, in its temporary directory."""
    path = work / f"{user}.csv"
    path.write_text(f"SEQUENTIAL\n{user};{secret};\n")
    return path


@contextmanager
def answering(ns: str, address: str, port: int, extension: str, calls: int | None = 1, media_port: int = 6000,
              messages: Path | None = None, talking: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """A phone at address:port that answers `calls` calls (None: every call until the
    block ends, with no time limit) and echoes their audio (`talking`: and plays its
    own); with `messages`, every SIP message it sends and gets is written there."""
    count = ["-m", str(calls)] if calls else []
    scenario = "answer-talking.xml" if talking else "answer.xml"
    with running(sipp(ns, address, port, scenario, "-s", extension, "-mi", address, "-mp", str(media_port),
                       "-rtp_echo", *count, *_trace(messages), target=None, timeout_s=60 if calls else None),
                  stop=calls is None) as phone:
        yield phone


def call(ns: str, address: str, port: int, caller: str, secret: str, callee: str, tag: str, calls: int = 1,
         hold_ms: int = 3000, media_port: int = 6100, at_once: int | None = None,
         messages: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`calls` calls from `caller` to `callee`, all at once (or at most `at_once` at a
    time), each held `hold_ms` with audio; sipp exits 0 only if every one was answered
    and hung up cleanly. With `messages`, as `answering`."""
    return run(sipp(ns, address, port, "call.xml", "-s", callee, "-key", "from", caller, "-au", caller,
                    "-ap", secret, "-mi", address, "-mp", str(media_port), "-d", str(hold_ms), "-m", str(calls),
                    "-l", str(at_once or calls), "-r", str(calls), "-cid_str", f"%u-%p-{tag}", *_trace(messages)))


def call_until_hung_up(ns: str, address: str, port: int, caller: str, secret: str, callee: str, tag: str,
                       within_s: int) -> subprocess.CompletedProcess[str]:
    """A call from `caller` to `callee` that stays on the line until the other end (or the
    box) hangs up; sipp exits 0 only if answered and then hung up within `within_s`."""
    return run(sipp(ns, address, port, "call-until-bye.xml", "-s", callee, "-key", "from", caller, "-au", caller,
                    "-ap", secret, "-mi", address, "-mp", "6100", "-m", "1", "-cid_str", f"%u-%p-{tag}",
                    timeout_s=within_s), timeout=within_s + 60)


def guest_call(ns: str, address: str, port: int, claimed: str, callee: str,
               tag: str) -> subprocess.CompletedProcess[str]:
    """An INVITE without credentials whose From claims `claimed`: exits 0 only if challenged."""
    return run(sipp(ns, address, port, "guest.xml", "-s", callee, "-key", "from", claimed, "-m", "1",
                    "-cid_str", f"%u-%p-{tag}"))


@contextmanager
def provider(ns: str, address: str, port: int, user: str, secret: str, work: Path, calls: int = 1,
             within_s: int = 60, messages: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A SIP provider at address:port that challenges each call from a trunk and answers
    it only if the digest matches user and secret; exits 0 only if every call passed
    (each ended by a BYE) within `within_s`. With `messages`, as `answering`."""
    with running(sipp(ns, address, port, "provider.xml", "-inf", str(_credentials(work, user, secret)),
                       "-mi", address, "-mp", "6200", "-m", str(calls), *_trace(messages), target=None,
                       timeout_s=within_s)) as provider:
        yield provider


def inbound_call(ns: str, address: str, port: int, caller: str, did: str, tag: str, hold_ms: int = 2000,
                 contact: str | None = None, target: str = TWIN) -> subprocess.CompletedProcess[str]:
    """A call a provider brings in from `caller` to `did`, no credentials, sent to
    `target` (the box, or the router in front of it) for the DID or for the user
    `contact` the box registered: exits 0 only if answered."""
    return run(sipp(ns, address, port, "inbound.xml", "-s", did, "-key", "from", caller, "-key", "contact",
                    contact or did, "-mi", address, "-mp", "6300", "-d", str(hold_ms), "-m", "1",
                    "-cid_str", f"%u-%p-{tag}", target=target))


@contextmanager
def registrar(ns: str, address: str, port: int, user: str, secret: str, work: Path,
              messages: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A provider's registrar at address:port that challenges one registration and
    accepts it only if the digest matches user and secret (exit 0); every SIP message
    it sends and gets is written to `messages`."""
    with running(sipp(ns, address, port, "registrar.xml", "-inf", str(_credentials(work, user, secret)),
                       "-m", "1", *_trace(messages), target=None)) as registrar:
        yield registrar


class UdpCounter:
    """An nftables counter of the UDP packets arriving at a port in a host namespace, from
    anywhere or only from `source`'s `sports` (a port or a range like 10000-10500)."""

    def __init__(self, ns: str, port: int, source: str = "", sports: str = "") -> None:
        self.ns, self.table = ns, f"pbxtest_{port}"
        match = " ".join([f"ip saddr {source}" if source else "", f"udp sport {sports}" if sports else ""])
        rule = (f"table ip {self.table} {{ chain in {{ type filter hook input priority 0; "
                f"{match} udp dport {port} counter; }}; }}")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rule, text=True, check=True)

    def packets(self) -> int:
        listing = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "list", "table", "ip", self.table],
                                 capture_output=True, text=True, check=True).stdout
        return int(listing.split("packets ")[1].split()[0])

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "delete", "table", "ip", self.table], check=True)


@contextmanager
def udp_arrivals(ns: str, port: int, source: str = "", sports: str = "") -> Iterator[UdpCounter]:
    counter = UdpCounter(ns, port, source, sports)
    try:
        yield counter
    finally:
        counter.remove()
