"""`pbxagent`: the device agent's command line."""

from __future__ import annotations

import argparse
import sys

from . import bootstate, provision


def _provision(_: argparse.Namespace) -> int:
    for step in provision.provision():
        print(f"pbxagent: {step}")
    # A fixed marker the console tests and the production line wait for.
    print("pbxagent: provisioned", flush=True)
    return 0


def _mark_good(_: argparse.Namespace) -> int:
    print(f"pbxagent: slot {bootstate.mark_good()} marked good")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pbxagent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("provision", help="create per-device state on first boot, repair it later").set_defaults(
        func=_provision
    )
    boot = sub.add_parser("boot", help="A/B boot state")
    boot_sub = boot.add_subparsers(dest="boot_command", required=True)
    boot_sub.add_parser("mark-good", help="mark the running slot as good").set_defaults(func=_mark_good)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as exc:
        print(f"pbxagent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
