"""A SIP provider over TLS for the device tests, taking one call from the box's trunk:
it challenges the INVITE (401), answers the one that carries the right digest for USER
and SECRET (200), and ends at the box's BYE. Debian 12's sipp is built without TLS, so
this plays the provider that sipp plays over UDP (sipp/provider.xml). Standard library
only; run in the lab's internet namespace.

Each thing it sees is a line of the file EVENTS as it happens: `handshake failed: ...`,
`invite`, `invite with credentials`, `digest good`/`digest bad`, `bye`. It ends after the
BYE or a bad digest, or after 60 s without a connection.

usage: python3 tlsprovider.py ADDRESS PORT CERT KEY USER SECRET EVENTS
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import ssl
import sys

REALM = "provider.test"
NONCE = "5f3a1e7c2e0b"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def messages(conn: ssl.SSLSocket) -> list[str]:
    """The SIP messages in what the stream brings next (each whole, by Content-Length)."""
    buffer = b""
    found: list[str] = []
    while not found:
        data = conn.recv(65535)
        if not data:
            raise EOFError
        buffer += data
        while b"\r\n\r\n" in buffer:
            head, rest = buffer.split(b"\r\n\r\n", 1)
            length = int(m.group(1)) if (m := re.search(rb"(?im)^content-length: *(\d+)", head)) else 0
            if len(rest) < length:
                break
            found.append((head + b"\r\n\r\n" + rest[:length]).decode(errors="replace"))
            buffer = rest[length:]
    return found


def header(message: str, name: str) -> list[str]:
    return re.findall(rf"(?im)^{name}: *(.*?)\r?$", message)


def reply(request: str, status: str, extra: list[str], body: str = "") -> bytes:
    to = header(request, "To")[0]
    lines = [f"SIP/2.0 {status}", *(f"Via: {v}" for v in header(request, "Via")),
             f"From: {header(request, 'From')[0]}", f"To: {to}" + ("" if ";tag=" in to else ";tag=p1"),
             f"Call-ID: {header(request, 'Call-ID')[0]}", f"CSeq: {header(request, 'CSeq')[0]}", *extra,
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def digest_good(request: str, user: str, secret: str) -> bool:
    fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header(request, "Authorization")[0]))
    method = request.split(" ", 1)[0]
    ha1, ha2 = md5(f"{user}:{REALM}:{secret}"), md5(f"{method}:{fields.get('uri')}")
    expected = md5(f"{ha1}:{fields.get('nonce')}:{ha2}")
    return fields.get("username") == user and fields.get("response") == expected


class Events(list[str]):
    """What it saw, each line written to the file at once (a test may stop it at any time)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - open for the whole run

    def append(self, line: str) -> None:
        super().append(line)
        self.file.write(line + "\n")


def serve(conn: ssl.SSLSocket, address: str, port: int, user: str, secret: str, log: Events) -> None:
    sdp = f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\nm=audio 6200 RTP/AVP 8\r\n"
    while True:
        for request in messages(conn):
            method = request.split(" ", 1)[0]
            if method == "INVITE" and not header(request, "Authorization"):
                log.append("invite")
                conn.sendall(reply(request, "401 Unauthorized",
                                   [f'WWW-Authenticate: Digest realm="{REALM}", nonce="{NONCE}"']))
            elif method == "INVITE":
                log.append("invite with credentials")
                good = digest_good(request, user, secret)
                log.append("digest good" if good else "digest bad")
                contact = f"Contact: <sip:provider@{address}:{port};transport=tls>"
                rr = [f"Record-Route: {r}" for r in header(request, "Record-Route")]
                conn.sendall(reply(request, "200 OK", [*rr, contact, "Content-Type: application/sdp"], sdp) if good
                             else reply(request, "403 Forbidden", []))
            elif method == "BYE":
                log.append("bye")
                conn.sendall(reply(request, "200 OK", []))
                return


def main() -> int:
    address, port, cert, key, user, secret, events = sys.argv[1:8]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    log = Events(events)
    with socket.create_server((address, int(port))) as server:
        server.settimeout(60)
        while "bye" not in log and "digest bad" not in log:
            try:
                raw, _ = server.accept()
            except TimeoutError:
                break
            try:
                conn = context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.append(f"handshake failed: {exc}")
                raw.close()
                continue
            with contextlib.suppress(EOFError, OSError):  # the box closed it: it opens another if it must
                serve(conn, address, int(port), user, secret, log)
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
