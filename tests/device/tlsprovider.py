"""A SIP provider over TLS for the device tests, taking one call from the box's trunk:
it challenges the INVITE (401), answers the one that carries the right digest for USER
and SECRET (200), and ends at the box's BYE. As a registrar it challenges a REGISTER
the same way and accepts it with the right digest; then, once the file EVENTS.call
names a DID, it calls that DID at the contact the box registered, over a TLS connection
of its own, and hangs up once answered. Debian 12's sipp is built without TLS, so this
plays the provider that sipp plays over UDP (sipp/provider.xml, registrar.xml, inbound.xml).
Standard library only; run in the lab's internet namespace.

Each thing it sees is a line of the file EVENTS as it happens: `handshake failed: ...`,
`invite`, `invite with credentials`, `register`, `register with credentials`,
`digest good`/`digest bad`, `contact <...>`, `bye`, `call <status>`, `hung up <status>`.
It ends after the BYE, a bad digest or its own call, or after 120 s without a connection.

usage: python3 tlsprovider.py ADDRESS PORT CERT KEY USER SECRET EVENTS
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import ssl
import sys
import time
from pathlib import Path

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


def sdp(address: str) -> str:
    return f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\nm=audio 6200 RTP/AVP 8\r\n"


CHALLENGE = f'WWW-Authenticate: Digest realm="{REALM}", nonce="{NONCE}"'


def serve(conn: ssl.SSLSocket, address: str, port: int, user: str, secret: str, log: Events) -> None:
    while True:
        for request in messages(conn):
            method = request.split(" ", 1)[0]
            if method in ("INVITE", "REGISTER") and not header(request, "Authorization"):
                log.append(method.lower())
                conn.sendall(reply(request, "401 Unauthorized", [CHALLENGE]))
            elif method == "REGISTER":
                log.append("register with credentials")
                good = digest_good(request, user, secret)
                log.append("digest good" if good else "digest bad")
                if not good:
                    conn.sendall(reply(request, "403 Forbidden", []))
                    return
                [contact] = header(request, "Contact")
                log.append(f"contact {contact}")
                conn.sendall(reply(request, "200 OK", [f"Contact: {contact};expires=300"]))
                if (did := wait_for_call(log)) is not None:
                    call_in(address, port, contact, did, log)
                    return
            elif method == "INVITE":
                log.append("invite with credentials")
                good = digest_good(request, user, secret)
                log.append("digest good" if good else "digest bad")
                contact = f"Contact: <sip:provider@{address}:{port};transport=tls>"
                rr = [f"Record-Route: {r}" for r in header(request, "Record-Route")]
                conn.sendall(reply(request, "200 OK", [*rr, contact, "Content-Type: application/sdp"], sdp(address))
                             if good
                             else reply(request, "403 Forbidden", []))
            elif method == "BYE":
                log.append("bye")
                conn.sendall(reply(request, "200 OK", []))
                return


def wait_for_call(log: Events) -> str | None:
    """The DID the test asks for in EVENTS.call, once it has a phone answering."""
    ask = Path(log.file.name + ".call")
    for _ in range(600):
        if ask.exists():
            return ask.read_text().strip()
        time.sleep(0.1)
    return None


def call_in(address: str, port: int, contact: str, did: str, log: Events) -> None:
    """An INVITE to `did` sent to `contact` (the box's registration: sip:name@ADDR:PORT;
    transport=tls), over a new TLS connection to ADDR:PORT, as a provider routes a call to
    a registered trunk; ACK and BYE follow the box's Record-Route. The box's certificate
    is its own, self-signed: not checked, as a provider would not for a customer's box."""
    uri = re.sub(r"^<|>.*$", "", contact)
    host, box_port = uri.split("@", 1)[1].split(";", 1)[0].rsplit(":", 1)
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with client.wrap_socket(socket.create_connection((host, int(box_port)), timeout=30)) as conn:
        def send(method: str, target: str, cseq: int, to: str, extra: list[str], body: str = "") -> None:
            via = f"Via: SIP/2.0/TLS {address}:{port};branch=z9hG4bK{method}{cseq};rport"
            lines = [f"{method} {target} SIP/2.0", via,
                     f"From: <sip:+33612345678@{address}>;tag=in1", f"To: {to}", f"Call-ID: tls-in-{did}@{address}",
                     f"CSeq: {cseq} {method}", f"Contact: <sip:provider@{address}:{port};transport=tls>",
                     "Max-Forwards: 70", *extra, f"Content-Length: {len(body)}"]
            conn.sendall(("\r\n".join(lines) + "\r\n\r\n" + body).encode())

        def final() -> str:
            while True:
                for message in messages(conn):
                    status = message.split(" ", 2)[1]
                    if message.startswith("SIP/2.0") and int(status) >= 200:
                        return message

        send("INVITE", uri, 1, f"<sip:{did}@{host}>", ["Content-Type: application/sdp"], sdp(address))
        answer = final()
        log.append(f"call {answer.split(' ', 2)[1]}")
        if not answer.startswith("SIP/2.0 200"):
            return
        to, target = header(answer, "To")[0], re.sub(r"^<|>.*$", "", header(answer, "Contact")[0])
        route = [f"Route: {r}" for rr in reversed(header(answer, "Record-Route")) for r in reversed(rr.split(","))]
        send("ACK", target, 1, to, route)
        time.sleep(1)
        send("BYE", target, 2, to, route)
        log.append(f"hung up {final().split(' ', 2)[1]}")


def main() -> int:
    address, port, cert, key, user, secret, events = sys.argv[1:8]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    log = Events(events)
    with socket.create_server((address, int(port))) as server:
        server.settimeout(120)
        while not {"bye", "digest bad"} & set(log) and not any(line.startswith("call ") for line in log):
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
