"""Label output for flashed boards: one CSV record per board and a printable SVG label
(62 x 29 mm, the common thermal label) with MAC, serial, firmware version and the
factory credential as text and as a QR code. The credential appears here and nowhere
else on the factory machine; a board that failed is never labelled."""

from __future__ import annotations

import csv
import html
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import segno

FIELDS = ("serial", "mac", "board", "firmware", "credential", "flashed_at")


@dataclass(frozen=True)
class Label:
    serial: str
    mac: str
    board: str
    firmware: str
    credential: str
    flashed_at: str  # ISO 8601, UTC


def qr_payload(label: Label) -> str:
    return f"PBX;S:{label.serial};M:{label.mac};V:{label.firmware};P:{label.credential}"


def csv_record(label: Label) -> str:
    out = io.StringIO()
    csv.DictWriter(out, FIELDS, lineterminator="\n").writerow(asdict(label))
    return out.getvalue()


def append_csv(path: Path, label: Label) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", encoding="utf-8") as out:
        if new:
            out.write(",".join(FIELDS) + "\n")
        out.write(csv_record(label))


def svg(label: Label) -> str:
    """The label: text on the left, the QR code (error correction M) on the right."""
    qr = segno.make(qr_payload(label), error="m")
    modules = qr.symbol_size(border=1)[0]
    cell = 27.0 / modules  # the code fills 27 mm of the 29 mm height
    squares = "".join(
        f'<rect x="{34 + x * cell:.3f}" y="{1 + y * cell:.3f}" width="{cell:.3f}" height="{cell:.3f}"/>'
        for y, row in enumerate(qr.matrix_iter(border=1)) for x, dark in enumerate(row) if dark
    )
    lines = [("Serial", label.serial), ("MAC", label.mac), ("Firmware", label.firmware),
             ("root", label.credential)]
    text = "".join(
        f'<text x="2" y="{6 + 6 * i}" font-size="3.2">{name}: '
        f'<tspan font-family="monospace" font-weight="bold">{html.escape(value)}</tspan></text>'
        for i, (name, value) in enumerate(lines)
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="62mm" height="29mm" viewBox="0 0 62 29" '
        'font-family="sans-serif">'
        f'<rect width="62" height="29" fill="white"/>{text}<g fill="black">{squares}</g></svg>\n'
    )


def write(csv_path: Path, label: Label) -> Path:
    """Append the record and write the SVG beside it; returns the SVG's path."""
    append_csv(csv_path, label)
    dest = csv_path.with_name(f"{csv_path.stem}-{label.serial}.svg")
    dest.write_text(svg(label))
    return dest
