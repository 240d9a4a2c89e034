"""The REGISTER flood of `make bench-guard`: from a fresh internet address, unanswerable
REGISTERs at a fixed rate for a while, and beside it a LAN phone that keeps registering
with its right secret. Both roles run on the host inside the lab's namespaces:

    python3 -m tests.bench.flood send HOST SOURCE RATE SECONDS
    python3 -m tests.bench.flood phone HOST USER SECRET SECONDS

`send` prints the packets it sent and the rate it held; `phone` prints one JSON line
with its attempts, successes and per-registration latencies (seconds).
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import sys
import time

from tests.device.sipclient import register, request

PHONE_EVERY_S = 0.5


def send(host: str, source: str, rate: int, seconds: float) -> str:
    """Paced in batches of 1 ms so the rate holds without a timer per packet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, 0))
    local = sock.getsockname()
    packets = [request("806", host, 5060, local, 1, f"{random.getrandbits(64):x}@flood", "pbxfw-flood")
               for _ in range(64)]
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            with contextlib.suppress(OSError):  # a full queue drops the packet, as the wire would
                sock.sendto(packets[sent % len(packets)], (host, 5060))
            sent += 1
        time.sleep(0.001)
    return f"{sent} {sent / (time.monotonic() - start):.0f}"


def phone(host: str, user: str, secret: str, seconds: float) -> str:
    latencies: list[float] = []
    attempts = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        attempts += 1
        began = time.monotonic()
        if register(user, secret, host=host, timeout=2) == "SIP/2.0 200 OK":
            latencies.append(time.monotonic() - began)
        time.sleep(max(0.0, PHONE_EVERY_S - (time.monotonic() - began)))
    return json.dumps({"attempts": attempts, "ok": len(latencies), "latencies": latencies})


def main() -> int:
    role, host, *rest = sys.argv[1:]
    if role == "send":
        print(send(host, rest[0], int(rest[1]), float(rest[2])))
    elif role == "phone":
        print(phone(host, rest[0], rest[1], float(rest[2])))
    else:
        raise SystemExit(f"flood: unknown role {role!r} (send or phone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
