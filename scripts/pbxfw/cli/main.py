"""`pbxfw`: the host tool's command line (the Makefile's targets call it)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pbxfw import config, qemu
from pbxfw.errors import PbxfwError
from pbxfw.image import build


def _image(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    build.build(cfg, Path(args.out), args.lock, args.trusted_keys, fresh_bootstrap=args.fresh_bootstrap,
                tuf_root=args.tuf_root)
    return 0


def _lock(args: argparse.Namespace) -> int:
    from pbxfw.packages import lock, resolver
    from pbxfw.stages import stage

    cfg = config.load(args.config)
    dest = Path(args.lock)
    old = lock.parse(dest.read_text(), dest) if dest.is_file() else None
    if args.sources_only:
        if old is None:
            raise PbxfwError(f"{dest}: --sources-only adds to an existing lock, and there is none")
        with stage(f"lock: the source packages {cfg.board.name} rebuilds, at its locked versions"):
            new = resolver.with_sources(cfg, old, build.cache_dir())
    else:
        with stage(f"lock: resolve {cfg.board.name}'s package set ({cfg.board.arch}) to exact .debs"):
            new = resolver.resolve(cfg, build.cache_dir())
    recipes = " + ".join(str(s.relative_to(build.REPO)) if s.is_relative_to(build.REPO) else s.name
                         for s in cfg.sources[1:])
    dest.write_text(lock.to_text(new, f"board {cfg.board.name}, {recipes}"))
    changes = lock.changes(old, new)
    print(f"pbxfw: {dest}: {len(new.packages)} packages, {len(changes)} changed", *changes, sep="\n  ")
    return 0


def _keys_generate(args: argparse.Namespace) -> int:
    from pbxfw.signing import keys

    private, public = keys.generate(args.dir, args.name)
    print(f"pbxfw: signing key {private} (keep it off the repository), public key {public}")
    return 0


def _bundle_create(args: argparse.Namespace) -> int:
    from pbxfw.signing import bundler, keys

    dest, manifest = bundler.sign_build(Path(args.out), [keys.FileSigner(k) for k in args.key],
                                        compatible=args.compatible, version=args.version,
                                        security_version=args.security_version,
                                        dest=Path(args.output) if args.output else None)
    print(f"pbxfw: {dest}: {manifest.compatible} {manifest.version} (security version "
          f"{manifest.security_version}), {manifest.payload_size} bytes in {len(manifest.chunks)} chunks, "
          f"{dest.stat().st_size - manifest.payload_size} bytes of header")
    return 0


def _bundle_verify(args: argparse.Namespace) -> int:
    from pbxagent.update import bundle

    try:
        header, signer = bundle.verify_file(Path(args.file), bundle.load_trust([args.keys]))
    except bundle.Rejected as exc:
        print(f"pbxfw: {args.file}: refused ({exc.reason.name.lower().replace('_', ' ')}): {exc}", file=sys.stderr)
        return int(exc.reason)
    m = header.manifest
    print(f"pbxfw: {args.file}: good: {m.compatible} {m.version} (security version {m.security_version}), "
          f"signed by {signer.hex()[:16]}")
    return 0


def _qemu(args: argparse.Namespace) -> int:
    from pbxfw import devtwin

    cfg = config.load(args.config)
    disk = Path(args.disk)
    if not disk.is_file():
        raise PbxfwError(f"{disk}: no disk image (run `make image` first)")
    given = os.environ.get("ROOT_PASSWORD", "")
    twin = devtwin.session(cfg.board, disk, args.fresh, given)
    argv = qemu.command(cfg.board, twin.disk, disk_format="qcow2", extra=twin.extra)
    shown = "as given in ROOT_PASSWORD" if given else twin.password
    print(f"pbxfw qemu: {cfg.board.name} twin on {twin.disk} (writes stay there), {twin.how}.\n"
          f"  root password of this twin: {shown}\n"
          "  Leave QEMU with Ctrl-A X.", file=sys.stderr, flush=True)
    os.execvp(argv[0], argv)


def _sbom(args: argparse.Namespace) -> int:
    import json

    bom = json.loads(Path(args.file).read_text())
    if args.json:
        print(json.dumps(bom, indent=1, sort_keys=True))
        return 0
    meta = bom["metadata"]["component"]
    print(f"{meta['name']} {meta['version']}: {len(bom['components'])} components ({args.file})")
    for component in bom["components"]:
        licences = ", ".join(lic["license"]["name"] for lic in component.get("licenses", [])) or "-"
        print(f"  {component['name']:<40} {component['version']:<32} {licences}")
    return 0


def _flash(args: argparse.Namespace) -> int:
    from pbxfw.production import factory, flash, staging, station

    if args.batch:
        if args.port or args.mac or args.serial:
            raise PbxfwError("--batch takes the boards from its file; leave out --port, --mac and --serial")
        jobs = station.parse_batch(Path(args.batch))
    else:
        missing = [name for name in ("port", "mac", "serial") if not getattr(args, name)]
        if missing:
            raise PbxfwError(f"missing {', '.join('--' + m for m in missing)} (or give --batch FILE)")
        jobs = [flash.Job(args.port, factory.Identity(factory.parse_mac(args.mac), factory.parse_serial(args.serial)))]
    key = factory.load_key(Path(args.factory_key)) if args.factory_key else None
    image = staging.load_image(Path(args.image))
    tftp_dir = Path(args.tftp_dir) if args.tftp_dir else None
    label_out = Path(args.label_out) if args.label_out else None
    if args.dry_run:
        print(station.dry_run(image, jobs, key is not None, tftp_dir, label_out))
        return 0
    if tftp_dir is None or not tftp_dir.is_dir():
        raise PbxfwError(f"--tftp-dir {args.tftp_dir}: not a directory (the station's TFTP server serves it)")
    line = station.Station(tftp_dir, args.tftp_server, Path(args.station_log), label_out,
                           Path(args.console_log) if args.console_log else None)
    return int(station.run_jobs(image, jobs, key, line))


def _show(args: argparse.Namespace) -> int:
    if args.settings:
        print("\n".join(config.SETTINGS.help()))
        return 0
    if not args.config:
        raise PbxfwError("show: give board.yaml:recipe.yml, or --settings")
    cfg = config.load(args.config)
    print(f"board {cfg.board.name} ({cfg.board.arch}), Debian {cfg.debian.suite}")
    print(f"files: {', '.join(str(s) for s in cfg.sources)}")
    print(f"packages: {' '.join(cfg.packages)}")
    for unit, state in cfg.services:
        print(f"service {unit}: {state}")
    return 0


def _repo(args: argparse.Namespace) -> int:
    from pbxfw.fleet import repository

    path, key_dir = Path(args.dir), Path(args.keys)
    if args.repo_command == "init":
        repository.init(path, key_dir)
        print(f"pbxfw: {path}: a TUF repository; its keys are in {key_dir} (keep root and targets offline)")
        return 0
    repo = repository.Repo(path, key_dir)
    if args.repo_command == "add":
        print(f"pbxfw: {repository.add(repo, Path(args.bundle))}: added to releases")
    elif args.repo_command == "rollout":
        policy = repository.rollout(repo, args.board, args.version, args.percent, args.start, args.pause)
        print(f"pbxfw: {policy.target}: {policy.percent} % of {policy.board} boxes"
              f"{', paused' if policy.paused else ''}")
    elif args.repo_command == "timestamp":
        print(f"pbxfw: re-signed {', '.join(repository.timestamp(repo))}")
    elif args.repo_command == "rotate":
        version = repository.rotate(repo, args.role, Path(args.new_key), args.replaces)
        print(f"pbxfw: root version {version} names the new {args.role} key")
    else:
        roles, releases, rollouts = repository.status(repo)
        for r in roles:
            warn = "  WARNING: less than a quarter of its period left" if r.left < repository.WARN_LEFT else ""
            print(f"{r.role:10} v{r.version:<5} expires {r.expires:%Y-%m-%d %H:%M}Z ({r.left:.0%} left), "
                  f"{r.threshold} of {r.keys} key(s){warn}")
        for target, custom in releases.items():
            print(f"release {target}: {custom.get('version')} (security version {custom.get('security_version')}), "
                  f"{custom['length']} bytes")
        for rollout in rollouts:
            print(f"rollout {rollout.board}: {rollout.target} at {rollout.percent} %"
                  f"{' (paused)' if rollout.paused else ''}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pbxfw", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="build out/<board>/disk.img from board.yaml:recipe.yml")
    image.add_argument("config", help="kas-style file list, e.g. board/qemu-u50/board.yaml:recipes/pbx.yml")
    image.add_argument("--out", required=True, help="output directory, e.g. out/qemu-u50")
    image.add_argument("--lock", type=Path, required=True, help="package lock, e.g. board/qemu-u50/pbx.lock")
    image.add_argument("--fresh-bootstrap", action="store_true",
                       help="bootstrap the root file system anew instead of taking it from the cache")
    image.add_argument("--trusted-keys", type=Path, metavar="DIR",
                       help="directory whose *.pub (and revoked) the image trusts for updates")
    image.add_argument("--tuf-root", type=Path, metavar="FILE",
                       help="the release repository's root.json: the box's anchor for fleet updates")
    image.set_defaults(func=_image)
    locking = sub.add_parser("lock", help="resolve the package set to exact .debs and write the lock file")
    locking.add_argument("config", help="kas-style file list, as for `image`")
    locking.add_argument("--lock", required=True, help="lock file to write, e.g. board/qemu-u50/pbx.lock")
    locking.add_argument("--sources-only", action="store_true",
                         help="only (re)lock the source packages the board rebuilds, for the binaries already locked")
    locking.set_defaults(func=_lock)
    keys_gen = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    gen = keys_gen.add_parser("generate", help="make a development ed25519 key pair NAME.key, NAME.pub in DIR")
    gen.add_argument("dir", type=Path)
    gen.add_argument("--name", default="dev")
    gen.set_defaults(func=_keys_generate)
    bundles = sub.add_parser("bundle", help="update bundles").add_subparsers(dest="bundle_command", required=True)
    create = bundles.add_parser("create", help="sign out/<board>/rootfs.slot into a bundle")
    create.add_argument("--out", required=True, help="the build's output directory, e.g. out/qemu-u50")
    create.add_argument("--key", type=Path, action="append", required=True, help="signing key (repeat to co-sign)")
    create.add_argument("--output", help="bundle file (default: OUT/pbxfw-BOARD-VERSION.bundle)")
    create.add_argument("--version", help="display version (default: the build's)")
    create.add_argument("--security-version", type=int, help="security version (default: the build's)")
    create.add_argument("--compatible", help="board compatible string (default: the build's)")
    create.set_defaults(func=_bundle_create)
    check = bundles.add_parser("verify", help="check a bundle's signature and every chunk")
    check.add_argument("file")
    check.add_argument("--keys", type=Path, required=True, help="directory of trusted *.pub (and revoked)")
    check.set_defaults(func=_bundle_verify)
    run_qemu = sub.add_parser("qemu", help="boot a built disk image on the serial console")
    run_qemu.add_argument("config")
    run_qemu.add_argument("--disk", required=True)
    run_qemu.add_argument("--fresh", action="store_true",
                          help="boot for real even when a booted snapshot of this image exists")
    run_qemu.set_defaults(func=_qemu)
    bom = sub.add_parser("sbom", help="print an image's bill of materials")
    bom.add_argument("file", help="e.g. out/qemu-u50/sbom.cdx.json")
    bom.add_argument("--json", action="store_true", help="the CycloneDX document itself")
    bom.set_defaults(func=_sbom)
    fl = sub.add_parser("flash", help="flash and provision boards over their serial console (production line)")
    fl.add_argument("--image", required=True, help="e.g. out/qemu-u50/disk.img (its build.json names the board)")
    fl.add_argument("--port", help="pyserial URL of the board's console: /dev/ttyUSB0, socket://HOST:PORT")
    fl.add_argument("--mac", help="the board's MAC address")
    fl.add_argument("--serial", help="the board's serial number")
    fl.add_argument("--batch", help="file of boards, one `PORT MAC SERIAL` per line, flashed one after another")
    fl.add_argument("--factory-key", help="derive credentials as HMAC(key, MAC); default: random")
    fl.add_argument("--tftp-dir", help="directory the station's TFTP server serves")
    fl.add_argument("--tftp-server", help="the TFTP server's address (default: the DHCP server's)")
    fl.add_argument("--label-out", help="CSV of labels to append to; an SVG label per board goes beside it")
    fl.add_argument("--station-log", default="station.log", help="one line per board, no secrets")
    fl.add_argument("--console-log", help="append the console transcript here")
    fl.add_argument("--dry-run", action="store_true", help="print the plan, touch nothing")
    fl.set_defaults(func=_flash)
    rp = sub.add_parser("repo", help="the release repository boxes poll (TUF metadata and targets)")
    rsub = rp.add_subparsers(dest="repo_command", required=True)
    default_keys = str(Path.home() / ".config" / "pbxfw" / "repo-keys")
    for name, text in (("init", "a new repository, and the keys it lacks"), ("add", "a signed bundle as a release"),
                       ("rollout", "which release goes to what share of a board's boxes"),
                       ("timestamp", "re-sign timestamp (and the online roles when due): for a timer"),
                       ("rotate", "replace a role's key through a new root version"),
                       ("status", "roles, versions, expiries, releases, rollouts")):
        cmd = rsub.add_parser(name, help=text)
        cmd.add_argument("dir", help="the repository (what the web server serves)")
        cmd.add_argument("--keys", default=default_keys, help=f"the key directory, outside the repository "
                                                              f"(default {default_keys})")
    rsub.choices["add"].add_argument("bundle")
    ro = rsub.choices["rollout"]
    ro.add_argument("--board", required=True)
    ro.add_argument("--version", required=True)
    ro.add_argument("--percent", type=float, required=True, help="0..100 of the board's boxes; only grows")
    ro.add_argument("--start", type=int, help="seconds since the epoch before which no box starts")
    ro.add_argument("--pause", action="store_true", help="no further box starts this release")
    rot = rsub.choices["rotate"]
    rot.add_argument("--role", required=True, choices=["root", "targets", "snapshot", "timestamp"])
    rot.add_argument("--new-key", required=True, help="the new key file (pbxfw keys generate)")
    rot.add_argument("--replaces", help="the key it replaces, e.g. root-2 (default: the role's own)")
    rp.set_defaults(func=_repo)
    show = sub.add_parser("show", help="print the resolved configuration")
    show.add_argument("config", nargs="?")
    show.add_argument("--settings", action="store_true", help="every key a board or recipe file may set, with help")
    show.set_defaults(func=_show)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PbxfwError as exc:
        print(f"pbxfw: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
