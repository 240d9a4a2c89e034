"""An HTTP server on the host's loopback that serves bundles to a twin (through QEMU's
guestfwd) or to the host's own tests, with byte ranges for resumed downloads and a way
to drop a download after N bytes (an interrupted download)."""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GUEST_ADDRESS = "10.0.2.100"  # inside the twin's user-mode network


class _Handler(BaseHTTPRequestHandler):
    directory: Path
    # file name -> bytes after which the next ranged GET (a payload download: the
    # installer reads the header from byte 0 without a range) loses its connection
    cut_after: dict[str, int]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        name = self.path.lstrip("/")
        path = self.directory / name
        return path if "/" not in name and path.is_file() else None

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        budget = self.cut_after.pop(path.name, None) if match else None
        with path.open("rb") as src, contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # A client that read the header and hung up is normal (verify before download).
            src.seek(start)
            sent = 0
            while data := src.read(1 << 16):
                if budget is not None and sent + len(data) > budget:
                    self.wfile.write(data[:budget - sent])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data)
                sent += len(data)


class BundleServer:
    def __init__(self, directory: Path) -> None:
        handler = type("Handler", (_Handler,), {"directory": directory, "cut_after": {}})
        self.cut_after: dict[str, int] = handler.cut_after  # type: ignore[attr-defined]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def url(self, name: str) -> str:
        return f"http://{GUEST_ADDRESS}/{name}"

    def host_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    @property
    def guestfwd(self) -> str:
        # cmd: starts one socat per guest connection; a tcp: target would be one shared
        # stream for every connection the guest opens.
        return f"tcp:{GUEST_ADDRESS}:80-cmd:socat - TCP:127.0.0.1:{self.port}"


@contextmanager
def serving(directory: Path) -> Iterator[BundleServer]:
    server = BundleServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
