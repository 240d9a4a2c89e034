"""HTTP for fleet updates, bounded in time and size: a mirror that stalls, trickles or
streams without end costs the box a bounded wait, never a hung update service or a
full disk.

Three limits: the socket timeout (no byte for that long), a floor on the average rate
once a grace period has passed (a trickle of one byte every few seconds passes any
socket timeout), and a length a download may not exceed. The TUF client gets
`Fetcher` (python-tuf 5.1 has no fetcher with timeouts to import; 6.0 moved them); a
bundle is streamed through `TargetSource`, the installer's `Source` for one TUF target.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, BinaryIO, NamedTuple

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from pbxagent.update.source import HttpSource

READ = 1 << 16


class Limits(NamedTuple):
    timeout: float = 20.0  # seconds without a byte (and to connect)
    min_rate: float = 4096.0  # bytes/s on average, checked after `grace` seconds
    grace: float = 30.0


DEFAULT = Limits()


class TooSlow(OSError):
    pass


class Bounded:
    """A response read within `Limits`, at most `length` bytes, hashed as it is read."""

    def __init__(self, response: Any, url: str, limits: Limits, length: int | None = None) -> None:
        self.response, self.url, self.limits, self.length = response, url, limits, length
        self.started, self.done = time.monotonic(), 0
        self.sha256 = hashlib.sha256()

    def read(self, size: int = READ) -> bytes:
        """Up to `size` bytes, fewer only at the end (a file's read, as the bundle parser
        expects), the rate checked after every piece that arrives."""
        if self.length is not None:
            size = min(size, self.length - self.done)
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            # read1: what has arrived (read() would wait for all of it, and a trickle
            # would never be measured)
            data: bytes = self.response.read1(wanted)
            if not data:
                break
            parts.append(data)
            wanted -= len(data)
            self.done += len(data)
            self.sha256.update(data)
            elapsed = time.monotonic() - self.started
            if elapsed > self.limits.grace and self.done / elapsed < self.limits.min_rate:
                raise TooSlow(f"{self.url}: {self.done} bytes in {elapsed:.0f} s, "
                              f"under {self.limits.min_rate:.0f} B/s")
        return b"".join(parts)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Bounded:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _open(url: str, limits: Limits) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "pbxagent"})
    return urllib.request.urlopen(request, timeout=limits.timeout)


class Fetcher(FetcherInterface):
    """The TUF client's HTTP: python-tuf checks each file's length against its cap."""

    def __init__(self, limits: Limits = DEFAULT) -> None:
        self.limits = limits

    def _fetch(self, url: str) -> Iterator[bytes]:
        try:
            response = _open(url, self.limits)
        except urllib.error.HTTPError as exc:
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {exc.code}", exc.code) from None
        return self._chunks(Bounded(response, url, self.limits))

    @staticmethod
    def _chunks(stream: Bounded) -> Iterator[bytes]:
        with stream:
            while data := stream.read(READ):
                yield data


class TargetSource(HttpSource):
    """One TUF target streamed into the installer: never more than the target's length,
    within the limits, and its sha256 taken over the whole file when the installer reads
    it front to back (a resumed install skips what it already wrote and cannot)."""

    def __init__(self, url: str, length: int, limits: Limits = DEFAULT) -> None:
        super().__init__(url, limits.timeout)
        self.length, self.limits = length, limits
        self._hashed_to, self._sha256 = 0, hashlib.sha256()
        self._open_stream: Bounded | None = None

    def size(self) -> int:
        return self.length

    def open_at(self, offset: int) -> BinaryIO:
        self._absorb()
        response = super().open_at(offset)
        stream = Bounded(response, self.name, self.limits, self.length - offset)
        if offset == self._hashed_to:
            stream.sha256 = self._sha256
            self._open_stream = stream
        return stream  # type: ignore[return-value]

    def _absorb(self) -> None:
        if self._open_stream is not None:
            self._hashed_to += self._open_stream.done
            self._open_stream = None

    def whole_sha256(self) -> str | None:
        """The file's sha256 if every byte of it went through in order, else None."""
        self._absorb()
        return self._sha256.hexdigest() if self._hashed_to == self.length else None
