"""Run inside the internet host's namespace by `make bench-guard`: from SOURCE, ten wrong
REGISTERs, then a SIP OPTIONS every 0.1 s until one goes unanswered. Prints the seconds
from the answer to the tenth failure to the first probe the ban dropped (resolution
0.1 s). OPTIONS is answered without authentication, so probing adds no failure; at 10
per second it stays under the guard's per-source rate limits for the first 8 s.

usage: python3 -m tests.bench.banprobe HOST SOURCE USER
"""

from __future__ import annotations

import random
import socket
import sys
import time

from tests.device.sipclient import register

PROBE_EVERY = 0.1
GIVE_UP_S = 30.0


def answered(host: str, source: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(PROBE_EVERY)
        port = sock.getsockname()[1]
        branch, tag = random.getrandbits(48), random.getrandbits(32)
        message = (f"OPTIONS sip:{host} SIP/2.0\r\nVia: SIP/2.0/UDP {source}:{port};branch=z9hG4bK{branch:x};rport\r\n"
                   f"Max-Forwards: 70\r\nFrom: <sip:probe@{source}>;tag={tag:x}\r\nTo: <sip:{host}>\r\n"
                   f"Call-ID: {branch:x}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(message.encode(), (host, 5060))
        try:
            sock.recv(65535)
        except TimeoutError:
            return False
        return True


def main() -> int:
    host, source, user = sys.argv[1:4]
    for attempt in range(10):
        reply = register(user, "Wrong-Secret-77xx", host=host, source=source)
        if not reply.startswith("SIP/2.0 401"):
            raise SystemExit(f"banprobe: wrong REGISTER {attempt + 1} got {reply!r}")
    tenth = time.monotonic()
    while time.monotonic() - tenth < GIVE_UP_S:
        sent = time.monotonic()
        if not answered(host, source):
            print(f"{sent - tenth:.2f}")
            return 0
        time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - sent)))
    print("never")
    return 1


if __name__ == "__main__":
    sys.exit(main())
