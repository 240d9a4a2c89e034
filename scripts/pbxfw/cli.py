"""`pbxfw`: the host tool's command line (the Makefile's targets call it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import build, config, qemu
from .errors import PbxfwError
from .stages import run


def _image(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    build.build(cfg, Path(args.out))
    return 0


def _qemu(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    disk = Path(args.disk)
    if not disk.is_file():
        raise PbxfwError(f"{disk}: no disk image (run `make image` first)")
    # A copy-on-write layer keeps the built image pristine (tests and flashing use it);
    # each `make qemu` starts from the image as built.
    session = disk.with_name("qemu-session.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", disk.resolve(), session])
    argv = qemu.command(cfg.board, session, disk_format="qcow2")
    print(f"Starting the twin on {session} (writes stay there); leave QEMU with Ctrl-A X.", file=sys.stderr)
    os.execvp(argv[0], argv)


def _show(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    print(f"board {cfg.board.name} ({cfg.board.arch}), Debian {cfg.debian.suite}")
    print(f"files: {', '.join(str(s) for s in cfg.sources)}")
    print(f"packages: {' '.join(cfg.packages)}")
    for unit, state in cfg.services:
        print(f"service {unit}: {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pbxfw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="build out/<board>/disk.img from board.yaml:recipe.yml")
    image.add_argument("config", help="kas-style file list, e.g. board/qemu-u50/board.yaml:recipes/pbx.yml")
    image.add_argument("--out", required=True, help="output directory, e.g. out/qemu-u50")
    image.set_defaults(func=_image)
    run_qemu = sub.add_parser("qemu", help="boot a built disk image on the serial console")
    run_qemu.add_argument("config")
    run_qemu.add_argument("--disk", required=True)
    run_qemu.set_defaults(func=_qemu)
    show = sub.add_parser("show", help="print the resolved configuration")
    show.add_argument("config")
    show.set_defaults(func=_show)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PbxfwError as exc:
        print(f"pbxfw: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
