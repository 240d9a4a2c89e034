"""The slot's root file system: a cached mmdebstrap bootstrap, then our own layers.

Bootstrapping runs package maintainer scripts under qemu-user and takes minutes, so
its tarball is cached under a key made of everything that feeds it (packages, suites,
mirrors, options). Everything after it — modules, overlay, agent, services, board
files, the removal of per-machine state — is cheap and runs on every build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

from pbxagent.board import BoardInfo

from pbxfw.config import BuildConfig
from pbxfw.errors import StageError
from pbxfw.image.release import Release
from pbxfw.packages.archive import sha256_file
from pbxfw.packages.lock import Lock
from pbxfw.stages import log, run

EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*",
            "/usr/share/lintian/*")

# Files packages ship that an appliance does not: removed after the bootstrap, because
# excluding them from dpkg breaks the packages' byte-compilation in postinst.
UNSHIPPED = (
    # fail2ban's own test suite: 1.5 MiB, and it carries a published private key.
    "usr/lib/python3/dist-packages/fail2ban/tests",
    # The sources of udev's hardware database (9 MiB): its compiled hwdb.bin ships, and
    # a read-only root never recompiles it (/etc/.updated keeps systemd-hwdb-update off).
    "usr/lib/udev/hwdb.d",
    # phonenumbers' place names, carriers and time zones (20 MiB): the call policy needs
    # only the numbering plans (data/) and short numbers (shortdata/).
    "usr/lib/python3/dist-packages/phonenumbers/geodata",
    "usr/lib/python3/dist-packages/phonenumbers/carrierdata",
    "usr/lib/python3/dist-packages/phonenumbers/tzdata",
)
# Keep what licences and locale lookups need even though their directories are excluded.
INCLUDES = ("/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias")

# Per-machine state that package scripts create and that must be made on the device.
MACHINE_STATE = (
    "etc/ssh/ssh_host_*",
    "var/lib/dbus/machine-id",
    "var/lib/systemd/random-seed",
    "var/cache/ldconfig/aux-cache",
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "var/log/*",
)


def local_source(repo: Path, suite: str) -> str:
    """The build's local repository (the locked .debs only) as an apt source line."""
    return f"deb [trusted=yes] copy://{repo} {suite} main"


def mmdebstrap_argv(config: BuildConfig, lock: Lock, sources: list[str], output: Path) -> list[str]:
    """Bootstrap exactly the lock's root packages from `sources` (the build's local
    repository; the archive itself for the benchmark's plain baseline)."""
    names = sorted(p.name for p in lock.role("root"))
    argv = [
        "mmdebstrap",
        "--mode=root",
        # The essential set, then every other locked package by name: the lock, not
        # a variant's priority rules, decides what is installed.
        "--variant=essential",
        f"--arch={config.board.arch}",
        f"--include={','.join(names)}",
        "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
        # Recommends would pull in far more than a sealed appliance uses.
        "--aptopt=APT::Install-Recommends \"false\"",
    ]
    argv += [f"--dpkgopt=path-exclude={p}" for p in EXCLUDES]
    argv += [f"--dpkgopt=path-include={p}" for p in INCLUDES]
    argv += ["--format=tar", lock.suite, str(output), *sources]
    return argv


def _tool_versions() -> str:
    return run(["dpkg-query", "-W", "-f=${Package} ${Version}\n", "mmdebstrap", "qemu-user-static", "apt", "dpkg"],
               capture=True)


def bootstrap_key(config: BuildConfig, lock: Lock) -> str:
    """Everything that feeds the bootstrap: the locked packages, options, hooks, tools."""
    material = json.dumps(
        {"argv": mmdebstrap_argv(config, lock, [local_source(Path("REPO"), lock.suite)], Path("OUT")),
         "debs": sorted(p.sha256 for p in lock.role("root", "bootstrap")),
         "epoch": config.source_date_epoch, "tools": _tool_versions()},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def bootstrap(config: BuildConfig, lock: Lock, repo: Path, cache: Path, fresh_into: Path | None = None) -> Path:
    """The bootstrapped base as a tarball, from the cache when its inputs are unchanged;
    with `fresh_into`, bootstrapped anew into that directory whatever the cache holds."""
    tarball = cache / "rootfs" / f"{config.board.arch}-{config.debian.suite}-{bootstrap_key(config, lock)}.tar"
    if fresh_into is not None:
        tarball = fresh_into / "base.tar"
    elif tarball.exists():
        log(f"    base root file system from cache: {tarball}")
        return tarball
    tarball.parent.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".tar.part")
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(config.source_date_epoch))
    run(mmdebstrap_argv(config, lock, [local_source(repo, lock.suite)], partial), env=env)
    partial.replace(tarball)
    return tarball


def unpack(tarball: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    run(["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tarball, "-C", dest])


def apply_overlays(config: BuildConfig, root: Path) -> None:
    for overlay in config.overlays:
        run(["cp", "-a", "--no-preserve=ownership", f"{overlay}/.", str(root)])


def _wheel_hashes(requirements: Path) -> set[str]:
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", requirements.read_text()))


def cached_wheels(requirements: Path, cache: Path) -> Path:
    """The pinned wheels in the cache, downloaded (and checked by pip) only when one is missing."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    have = {sha256_file(w) for w in wheels.glob("*.whl")}
    if not _wheel_hashes(requirements) <= have:
        run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
             "--only-binary=:all:", "--dest", wheels, "-r", requirements],
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return wheels


def install_agent(agent_src: Path, root: Path, cache: Path) -> None:
    """Install the agent as Debian installs pure-Python packages: into dist-packages,
    with a launcher. Its imports come from the image's python3-* packages, plus the few
    pinned wheels Debian lacks (agent/requirements-device.txt, checked by hash)."""
    dist = root / "usr/lib/python3/dist-packages"
    target = dist / "pbxagent"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(agent_src / "pbxagent", target, ignore=shutil.ignore_patterns("__pycache__"))
    requirements = agent_src / "requirements-device.txt"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--only-binary=:all:",
         "--no-compile", "--upgrade", "--no-index", "--find-links", cached_wheels(requirements, cache),
         "--target", dist, "-r", requirements],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CONFIG_FILE": os.devnull})
    # pip --target also writes console scripts whose #! names the build host's Python: they
    # go, and so do their lines in RECORD, whose hashes would make the image depend on
    # where the build ran (a build in another checkout differed by them).
    shutil.rmtree(dist / "bin", ignore_errors=True)
    for record in sorted(dist.glob("*.dist-info/RECORD")):
        lines = record.read_text().splitlines(keepends=True)
        record.write_text("".join(line for line in lines if not line.startswith("../../bin/")))
    launcher = root / "usr/sbin/pbxagent"
    # -I: no environment or user site can change what runs as root at boot; -S: no
    # site.py, which costs a tenth of a second of a cold boot, so dist-packages is added here.
    launcher.write_text(
        "#!/usr/bin/python3 -IS\nimport sys\nsys.path.append('/usr/lib/python3/dist-packages')\n"
        "from pbxagent.cli.main import main\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    # The root is read-only, so Python cannot cache bytecode at run time: compile now,
    # with the target's python3 under qemu-user, hash-based so the bytes do not depend
    # on when the build ran.
    run(["chroot", root, "/usr/bin/python3", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
         *(f"/{path.relative_to(root)}" for path in sorted(dist.glob("pbxagent")) + sorted(dist.glob("zxcvbn")))])


def write_apt_sources(config: BuildConfig, root: Path) -> None:
    """The archive's suites instead of the build's local repository (a build-host path);
    in an image without apt, none of the directories mmdebstrap set up for it."""
    apt = root / "etc/apt"
    if not (root / "usr/bin/apt-get").exists():
        for tree in (apt, root / "var/lib/apt", root / "var/cache/apt"):
            shutil.rmtree(tree, ignore_errors=True)
        return
    (apt / "sources.list").unlink(missing_ok=True)
    for stale in (apt / "sources.list.d").glob("*"):
        stale.unlink()
    debian = config.debian
    (apt / "sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {debian.mirror}\nSuites: {debian.suite} {debian.suite}-updates\n"
        f"Components: {' '.join(debian.components)}\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {debian.security_mirror}\nSuites: {debian.suite}-security\n"
        f"Components: {' '.join(debian.components)}\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


def apply_services(config: BuildConfig, root: Path) -> None:
    for unit, state in config.services:
        verb = {"enabled": "enable", "disabled": "disable", "masked": "mask"}[state]
        run(["systemctl", f"--root={root}", verb, unit], capture=True)


# / and /data are mounted by the initramfs (pbxfw/data/init.sh): systemd takes them as
# they are instead of waiting for udev to announce their devices.
FSTAB = "# / (read-only slot), /data: mounted by the initramfs. /etc, /var: volatile layers.\n"
# The box's own name resolves without DNS: fail2ban (ignoreself) and others look it up,
# and on a network without a reachable DNS server each lookup waited ~20 s.
HOSTS = ("127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
         "::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n")
# mmdebstrap copies the build host's resolv.conf into the tree, which would carry the
# build farm's DNS server and differ between build hosts: the box's names go through
# systemd-resolved's stub, which uses the DNS servers DHCP gave networkd.
RESOLV_CONF = "../run/systemd/resolve/stub-resolv.conf"


def write_board_files(config: BuildConfig, root: Path, fw_env: dict[str, str], release: Release,
                      slots: dict[str, str]) -> None:
    board = config.board
    etc = root / "etc"
    (root / "data").mkdir(exist_ok=True)
    (etc / "hostname").write_text(f"{config.hostname}\n")
    (etc / "hosts").write_text(HOSTS.format(hostname=config.hostname))
    resolv = etc / "resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to(RESOLV_CONF)
    (etc / "fstab").write_text(FSTAB)
    for name, text in fw_env.items():
        (etc / name).write_text(text)
    info = BoardInfo(board=board.name, compatible=board.compatible, arch=board.arch, version=release.version,
                     security_version=release.security_version, boot_attempts=board.uboot.boot_attempts,
                     slots=slots, built=config.source_date_epoch)
    (etc / "pbxfw").mkdir(exist_ok=True)
    (etc / "pbxfw" / "board.json").write_text(info.to_json())


def install_trusted_keys(keys: Path | None, root: Path) -> int:
    """The update keys the device trusts (public halves only) and the revoked list."""
    dest = root / "usr" / "share" / "pbxfw" / "keys"
    dest.mkdir(parents=True, exist_ok=True)
    if keys is None:
        return 0
    publics = sorted(keys.glob("*.pub"))
    for path in publics + [p for p in [keys / "revoked"] if p.is_file()]:
        shutil.copyfile(path, dest / path.name)
        (dest / path.name).chmod(0o644)
    return len(publics)


def install_tuf_root(tuf_root: Path | None, root: Path) -> str:
    """The release repository's root metadata, the anchor of the box's fleet updates."""
    if tuf_root is None:
        return "none: this image does not poll for releases"
    try:
        signed = json.loads(tuf_root.read_bytes())["signed"]
        version, kind = int(signed["version"]), signed["_type"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StageError(f"{tuf_root}: not TUF root metadata ({type(exc).__name__}: {exc})") from None
    if kind != "root":
        raise StageError(f"{tuf_root}: TUF {kind} metadata, not root")
    dest = root / "usr" / "share" / "pbxfw" / "tuf" / "root.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tuf_root, dest)
    dest.chmod(0o644)
    return f"{tuf_root} (root version {version})"


def remove_unshipped(root: Path) -> None:
    for rel in UNSHIPPED:
        target = root / rel
        if target.is_dir():
            shutil.rmtree(target)


def remove_machine_state(root: Path) -> None:
    """No machine-id, host keys, seeds or logs: each device makes its own."""
    for pattern in MACHINE_STATE:
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # An empty machine-id tells systemd to make one at boot (the image has none).
    (root / "etc/machine-id").write_text("")
    # /etc and /var are fresh volatile layers at every boot; without these stamps
    # ConditionNeedsUpdate= would rerun hwdb, sysusers, ldconfig... on every boot.
    # All mtimes are clamped to SOURCE_DATE_EPOCH, so /usr is never newer than them.
    for stamp in ("etc/.updated", "var/.updated"):
        (root / stamp).write_text("")
