"""Where a bundle is read from: a file (or block device) or an HTTP(S) URL, with a way
to start again at a byte offset (resuming an interrupted download)."""

from __future__ import annotations

import http.client
import os
import urllib.request
from typing import Any, BinaryIO, Protocol


def byte_size(path: str) -> int:
    """The size of a file or a block device (whose st_size is 0: seek to its end)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


class Source(Protocol):
    name: str

    def size(self) -> int | None: ...

    def open_at(self, offset: int) -> BinaryIO: ...


class FileSource:
    def __init__(self, path: str) -> None:
        self.name = path

    def size(self) -> int:
        return byte_size(self.name)

    def open_at(self, offset: int) -> BinaryIO:
        handle = open(self.name, "rb")  # noqa: SIM115 - the caller closes it
        handle.seek(offset)
        return handle


class HttpSource:
    def __init__(self, url: str, timeout: float = 30) -> None:
        self.name = url
        self.timeout = timeout

    def _open(self, request: urllib.request.Request) -> Any:
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except http.client.HTTPException as exc:  # not an OSError; the CLI reports OSErrors
            raise OSError(f"{self.name}: bad HTTP answer: {exc!r}") from None

    def size(self) -> int | None:
        with self._open(urllib.request.Request(self.name, method="HEAD")) as response:
            length = response.headers.get("Content-Length")
        return int(length) if length is not None else None

    def open_at(self, offset: int) -> BinaryIO:
        request = urllib.request.Request(self.name, headers={"Range": f"bytes={offset}-"} if offset else {})
        response = self._open(request)
        if offset and response.status != 206:
            response.close()
            raise OSError(f"{self.name}: the server does not resume at byte {offset} (HTTP {response.status})")
        return response  # type: ignore[no-any-return]


def open_source(location: str) -> Source:
    if location.startswith(("http://", "https://")):
        return HttpSource(location)
    if "://" in location:
        raise ValueError(f"{location}: only files, http:// and https:// are supported")
    if not os.path.exists(location):
        raise FileNotFoundError(f"{location}: no such file")
    return FileSource(location)


def read_exactly(stream: BinaryIO, length: int) -> bytes:
    """`length` bytes, or fewer only at the end of the stream (HTTP reads may be short)."""
    parts: list[bytes] = []
    remaining = length
    while remaining:
        data = stream.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)

