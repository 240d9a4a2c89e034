"""A TCP connect scan (standard library): prints the ports that accept a connection.

usage: python3 portscan.py HOST PORTS   (PORTS: 1-1024,5060,10000-10010)

A port the firewall drops times out, a closed one is refused, an open one connects.
At most 48 connects are in flight (about 50 SYNs/s): a faster scan is a flood, which
the guard's flood layer (over 500 packets/s) bans — correctly, but then the scan
measures the ban instead of the policy.
"""

from __future__ import annotations

import asyncio
import sys


def parse(spec: str) -> list[int]:
    ports: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        ports.extend(range(int(low), int(high or low) + 1))
    return ports


async def probe(host: str, port: int, gate: asyncio.Semaphore) -> int | None:
    async with gate:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=1.5)
        except (OSError, TimeoutError):
            return None
        writer.close()
        return port


async def scan(host: str, ports: list[int]) -> list[int]:
    gate = asyncio.Semaphore(48)
    found = await asyncio.gather(*(probe(host, port, gate) for port in ports))
    return sorted(port for port in found if port is not None)


if __name__ == "__main__":
    print(" ".join(map(str, asyncio.run(scan(sys.argv[1], parse(sys.argv[2]))))))
