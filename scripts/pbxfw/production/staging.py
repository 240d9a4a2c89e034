"""What the station sends a board, made from the image on the host: the gzipped image
(gzwrite) or its data extents (raw), the factory identity block, and the crc32 of every
region of the device as it must read back. Pure file work: no console, no board."""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from pbxfw import config
from pbxfw.errors import PbxfwError
from pbxfw.image import layout
from pbxfw.image.layout import FACTORY_OFFSET, SECTOR
from pbxfw.packages.archive import sha256_file

VERIFY_CHUNK = 64 << 20


# The raw write's unit of "is this all zeros": small enough to skip the gaps inside a
# file system, large enough to keep the number of TFTP transfers low.
EXTENT_GRANULE = 1 << 20


@dataclass(frozen=True)
class Image:
    disk: Path
    board: config.Board
    version: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Region:
    lba: int
    blocks: int
    crc32: int


@dataclass(frozen=True)
class Staged:
    """A file in the TFTP directory, as the board must receive it."""

    name: str
    size: int
    crc32: int


@dataclass(frozen=True)
class Extent:
    """A stretch of the image for the raw write: sent and written, or all zeros."""

    offset: int
    length: int
    zero: bool


def load_image(disk: Path) -> Image:
    """The image and its board, from the build's manifest next to it."""
    manifest = disk.parent / "build.json"
    if not disk.is_file():
        raise PbxfwError(f"--image {disk}: no such file (make image)")
    try:
        built = json.loads(manifest.read_text())
        sources = ":".join(built["sources"])
        version = built["version"]
    except (OSError, ValueError, KeyError) as exc:
        raise PbxfwError(f"{manifest}: not a pbxfw build manifest ({exc})") from None
    if disk.stat().st_size % SECTOR:
        raise PbxfwError(f"--image {disk}: {disk.stat().st_size} bytes is not a whole number of sectors")
    board = config.load(sources).board
    return Image(disk, board, version, sha256_file(disk), disk.stat().st_size)


def factory_offset(board: config.Board) -> int:
    return layout.for_board(board).get("bootstate").offset + FACTORY_OFFSET


def regions(disk: Path, overlay: dict[int, bytes], chunk: int = VERIFY_CHUNK) -> tuple[Region, ...]:
    """crc32 of every `chunk` of the device as it must read after flashing: the image
    with `overlay` ({offset: bytes}) laid over it."""
    found = []
    with disk.open("rb") as src:
        offset = 0
        while data := src.read(chunk):
            view = bytearray(data)
            for at, payload in overlay.items():
                start, end = max(at, offset), min(at + len(payload), offset + len(view))
                if start < end:
                    view[start - offset:end - offset] = payload[start - at:end - at]
            found.append(Region(offset // SECTOR, len(view) // SECTOR, zlib.crc32(view)))
            offset += len(view)
    return tuple(found)


def extents(disk: Path, granule: int = EXTENT_GRANULE, largest: int = VERIFY_CHUNK) -> tuple[Extent, ...]:
    """The image as alternating runs of data and zeros at `granule` resolution, each
    run cut to at most `largest` bytes (what one transfer or one zero write covers)."""
    runs: list[Extent] = []
    with disk.open("rb") as src:
        offset = 0
        while data := src.read(granule):
            zero = data.count(0) == len(data)
            last = runs[-1] if runs else None
            if last is not None and last.zero == zero and last.length + len(data) <= largest:
                runs[-1] = Extent(last.offset, last.length + len(data), zero)
            else:
                runs.append(Extent(offset, len(data), zero))
            offset += len(data)
    return tuple(runs)


def _crc32_file(path: Path) -> int:
    crc = 0
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def stage_image(image: Image, tftp_dir: Path) -> Staged:
    """The gzipped image in the TFTP directory, named by its sha256 (made once per image)."""
    name = f"pbxfw-{image.sha256[:16]}.img.gz"
    dest = tftp_dir / name
    if not dest.is_file():
        partial = dest.with_suffix(".part")
        with image.disk.open("rb") as src, gzip.GzipFile(partial, "wb", compresslevel=1, mtime=0) as out:
            while chunk := src.read(4 << 20):
                out.write(chunk)
        partial.replace(dest)
    return Staged(name, dest.stat().st_size, _crc32_file(dest))


@dataclass(frozen=True)
class Staging:
    """What the station sends of one image: the gzipped image (gzwrite), or the image
    as extents, the data ones staged and the zero ones (None) not sent (raw)."""

    gzip: Staged | None
    pieces: tuple[tuple[Extent, Staged | None], ...] = ()

    @property
    def files(self) -> list[Staged]:
        return [self.gzip] if self.gzip else [staged for _, staged in self.pieces if staged is not None]


def stage(image: Image, tftp_dir: Path) -> Staging:
    """The image in the TFTP directory as the board's write method needs it."""
    if image.board.uboot.flash_write == "raw":
        return Staging(None, stage_extents(image, tftp_dir))
    return Staging(stage_image(image, tftp_dir))


def stage_extents(image: Image, tftp_dir: Path) -> tuple[tuple[Extent, Staged | None], ...]:
    """The image's data extents as files in the TFTP directory (made once per image);
    zero extents are not sent (None)."""
    staged: list[tuple[Extent, Staged | None]] = []
    with image.disk.open("rb") as src:
        for extent in extents(image.disk):
            if extent.zero:
                staged.append((extent, None))
                continue
            src.seek(extent.offset)
            data = src.read(extent.length)
            dest = tftp_dir / f"pbxfw-{image.sha256[:16]}-{extent.offset:010x}.raw"
            if not dest.is_file() or dest.stat().st_size != len(data):
                partial = dest.with_suffix(".part")
                partial.write_bytes(data)
                partial.replace(dest)
            staged.append((extent, Staged(dest.name, len(data), zlib.crc32(data))))
    return tuple(staged)


def stage_block(block: bytes, serial: str, tftp_dir: Path) -> Staged:
    name = f"pbxfw-{serial}.factory"
    (tftp_dir / name).write_bytes(block)
    return Staged(name, len(block), zlib.crc32(block))
