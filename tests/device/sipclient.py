"""A minimal SIP REGISTER client for the device tests (standard library only: it runs
on the twin, copied over the console). Prints the final status line, or "timeout".

usage: python3 sipclient.py USER SECRET [USER-AGENT] [HOST] [PORT] [SOURCE-ADDRESS]
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
import sys


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def request(user: str, host: str, port: int, local: tuple[str, int], cseq: int, call_id: str, agent: str,
            auth: str = "") -> bytes:
    lines = [
        f"REGISTER sip:{host} SIP/2.0",
        f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{random.getrandbits(48):x};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{host}>;tag={random.getrandbits(32):x}",
        f"To: <sip:{user}@{host}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: <sip:{user}@{local[0]}:{local[1]}>",
        f"User-Agent: {agent}",
        "Expires: 300",
        *([auth] if auth else []),
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def exchange(sock: socket.socket, data: bytes, target: tuple[str, int]) -> str | None:
    sock.sendto(data, target)
    try:
        return sock.recv(65535).decode(errors="replace")
    except TimeoutError:
        return None


def register(user: str, secret: str, agent: str = "pbxfw-test", host: str = "127.0.0.1", port: int = 5060,
             source: str = "", timeout: float = 3) -> str:
    """One REGISTER, answering a digest challenge: the final status line, or "timeout"."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if source:
        sock.bind((source, 0))
    sock.settimeout(timeout)
    sock.connect((host, port))
    local = sock.getsockname()
    call_id = f"{random.getrandbits(64):x}@pbxfw-test"
    reply = exchange(sock, request(user, host, port, local, 1, call_id, agent), (host, port))
    if reply is None:
        return "timeout"
    challenge = re.search(r"^WWW-Authenticate: Digest (.*)$", reply, re.MULTILINE | re.IGNORECASE)
    if reply.startswith("SIP/2.0 401") and challenge:
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.group(1)))
        uri = f"sip:{host}"
        ha1 = md5(f"{user}:{params['realm']}:{secret}")
        ha2 = md5(f"REGISTER:{uri}")
        cnonce, nc = f"{random.getrandbits(32):x}", "00000001"
        if "auth" in params.get("qop", ""):
            response = md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
            extra = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
        else:
            response = md5(f"{ha1}:{params['nonce']}:{ha2}")
            extra = ""
        auth = (f'Authorization: Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
                f'uri="{uri}", response="{response}", algorithm=MD5{extra}')
        reply = exchange(sock, request(user, host, port, local, 2, call_id, agent, auth), (host, port))
        if reply is None:
            return "timeout"
    return reply.splitlines()[0]


def main() -> int:
    args = sys.argv[1:] + [""] * (7 - len(sys.argv))
    user, secret, agent, host, port, source = args[:6]
    print(register(user, secret, agent or "pbxfw-test", host or "127.0.0.1", int(port or 5060), source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
