"""Run inside the internet host's namespace by `make bench-guard`: from SOURCE, ten wrong
REGISTERs, then a TCP connect to the SIP TLS port every 0.1 s until two in a row go
unanswered for a second each. Prints the seconds from the answer to the tenth failure to
the first probe the ban dropped (resolution 0.1 s). A probe counts as dropped only after
a second without an answer: a guest on a busy host can take longer than the probe
interval to answer a SYN, which is slowness, not a ban. The probe is not SIP (adds no
failure) and stays far under the guard's per-source limit on that port (80 per 2 s); a
ban drops every packet of the source, whatever the port.

usage: python3 -m tests.bench.banprobe HOST SOURCE USER
"""

from __future__ import annotations

import socket
import sys
import time

from tests.device.sipclient import register

PROBE_EVERY = 0.1
GIVE_UP_S = 60.0
PROBE_PORT = 5061
ANSWER_WAIT_S = 1.0


def answered(host: str, source: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(ANSWER_WAIT_S)
        try:
            sock.connect((host, PROBE_PORT))
        except OSError:
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
        if not answered(host, source) and not answered(host, source):
            print(f"{sent - tenth:.2f}")
            return 0
        time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - sent)))
    print("never")
    return 1


if __name__ == "__main__":
    sys.exit(main())
