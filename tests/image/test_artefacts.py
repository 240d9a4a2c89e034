"""Properties of the built image: layout, boot chain pieces, and what must not ship."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from pbxfw.config import BuildConfig
from pbxfw.image import layout
from pbxfw.image.build import REPO
from pbxfw.image.slot import fit_offset
from pbxfw.packages import lock

MIB = 1 << 20
SLOT_BUDGET_MIB = 160  # REQUIREMENTS/issue: rootfs slot <= 160 MiB
FDT_MAGIC = b"\xd0\x0d\xfe\xed"
# A PEM private key block with a body, as in a file or a string literal (not the
# bare marker text that ssh-keygen or a parser contains).
PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----(\\n'\s*'|\s)+[A-Za-z0-9+/=]{40,}")


def test_slot_fits_budget_and_partition(slot: Path, build_config: BuildConfig) -> None:
    size = slot.stat().st_size
    assert size <= SLOT_BUDGET_MIB * MIB, f"slot image is {size / MIB:.1f} MiB"
    assert size <= dict(build_config.board.partitions_mib)["rootfs_a"] * MIB


def test_fit_follows_the_squashfs_on_a_4k_boundary(slot: Path, tmp_path: Path) -> None:
    with slot.open("rb") as handle:
        handle.seek(fit_offset(handle.read(0x30)))
        fit = handle.read()
    assert fit[:4] == FDT_MAGIC
    (tmp_path / "slot.fit").write_bytes(fit)
    listing = subprocess.run(["dumpimage", "-l", str(tmp_path / "slot.fit")], capture_output=True, text=True,
                             check=True).stdout
    assert "Kernel Image" in listing and "RAMDisk Image" in listing
    assert listing.count("Hash algo:    sha256") == 2


def test_disk_partition_table_matches_layout(out_dir: Path, build_config: BuildConfig) -> None:
    board = build_config.board
    expected = layout.for_board(board)
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(out_dir / "disk.img")], capture_output=True, text=True,
                       check=True).stdout
    )["partitiontable"]
    assert [(p["start"], p["size"], p["name"]) for p in table["partitions"]] == [
        (p.start, p.size, p.name) for p in expected.partitions
    ]


def test_both_slots_hold_the_slot_image(out_dir: Path, slot: Path, build_config: BuildConfig) -> None:
    board = build_config.board
    lay = layout.for_board(board)
    data = slot.read_bytes()
    with (out_dir / "disk.img").open("rb") as disk:
        for name in ("rootfs_a", "rootfs_b"):
            disk.seek(lay.get(name).offset)
            assert disk.read(len(data)) == data, f"{name} differs from the slot image"


def test_boot_state_reads_with_libubootenv(out_dir: Path, build_config: BuildConfig, tmp_path: Path) -> None:
    board = build_config.board
    part = layout.for_board(board).get("bootstate")
    state = tmp_path / "bootstate.img"
    with (out_dir / "disk.img").open("rb") as disk:
        disk.seek(part.offset)
        state.write_bytes(disk.read(part.size_bytes))
    config = tmp_path / "fw_env.config"
    config.write_text("".join(f"{state} {off:#x} {layout.ENV_SIZE:#x}\n" for off in layout.ENV_COPIES))
    env = subprocess.run(["fw_printenv", "-c", str(config)], capture_output=True, text=True, check=True).stdout
    assert sorted(env.splitlines()) == sorted(
        ["BOOT_ORDER=A B", f"BOOT_A_LEFT={board.uboot.boot_attempts}", f"BOOT_B_LEFT={board.uboot.boot_attempts}"]
    )


def test_no_per_device_identity_or_secrets(rootfs: Path) -> None:
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert not list((rootfs / "etc/ssh").glob("ssh_host_*")), "SSH host keys must be made on the device"
    assert not (rootfs / "var/lib/dbus/machine-id").exists()
    assert not (rootfs / "var/lib/systemd/random-seed").exists()
    private = []
    for base, _, files in os.walk(rootfs):
        for name in files:
            path = Path(base) / name
            if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 * MIB:
                continue
            if PEM_PRIVATE_KEY.search(path.read_bytes()):
                private.append(str(path.relative_to(rootfs)))
    assert private == [], f"private keys in the image: {private}"


def test_shadow_has_no_usable_password(rootfs: Path) -> None:
    for line in (rootfs / "etc/shadow").read_text().splitlines():
        user, crypt_hash = line.split(":")[:2]
        assert crypt_hash in ("*", "!", "!*") or crypt_hash.startswith("!"), f"{user} has a password in the image"


def test_ssh_is_masked_in_the_image(rootfs: Path) -> None:
    for unit in ("ssh.service", "ssh.socket"):
        link = rootfs / "etc/systemd/system" / unit
        assert link.is_symlink() and os.readlink(link) == "/dev/null", f"{unit} is not masked"
    assert not list((rootfs / "etc/systemd/system").rglob("sshd.service"))


def test_docs_and_man_pages_are_excluded(rootfs: Path) -> None:
    assert not [p for p in (rootfs / "usr/share/man").rglob("*") if p.is_file()]
    docs = [p for p in (rootfs / "usr/share/doc").rglob("*") if p.is_file() and p.name != "copyright"]
    assert docs == []


def test_agent_and_board_info_installed(rootfs: Path, build_config: BuildConfig) -> None:
    assert (rootfs / "usr/lib/python3/dist-packages/pbxagent/cli/main.py").is_file()
    assert os.access(rootfs / "usr/sbin/pbxagent", os.X_OK)
    info = json.loads((rootfs / "etc/pbxfw/board.json").read_text())
    assert info["compatible"] == build_config.board.compatible


def test_agent_runs_from_bytecode_with_its_pinned_wheel(rootfs: Path) -> None:
    """A read-only root cannot cache bytecode: every module the agent imports is compiled
    at build time, the pinned zxcvbn wheel included; its default policy ships with it."""
    dist = rootfs / "usr/lib/python3/dist-packages"
    for package in ("pbxagent", "zxcvbn"):
        folders = {p.parent for p in (dist / package).rglob("*.py")}
        assert folders, package
        for folder in folders:
            sources = sorted(p.stem for p in folder.glob("*.py"))
            compiled = sorted(p.name.split(".")[0] for p in (folder / "__pycache__").glob("*.pyc"))
            assert sources == compiled, folder
    assert (dist / "pbxagent/policy/default-policy.yaml").is_file()
    assert (dist / "pbxagent/credentials/common-pins.txt").is_file()  # what a PIN is checked against
    [info] = dist.glob("zxcvbn-4.5.0.dist-info")
    # Its RECORD lists only files the image holds: the console script pip wrote (its #!
    # the build host's Python) is gone, and its hash with it.
    listed = [line.split(",")[0] for line in (info / "RECORD").read_text().splitlines()]
    assert listed and all((dist / name).exists() for name in listed), listed


def test_the_numbering_plans_ship_compiled_without_place_names(rootfs: Path) -> None:
    """The call policy reads numbers with phonenumbers' plans (data/) and short numbers;
    its 20 MiB of geocoding, carrier and time-zone data stay out of the slot."""
    package = rootfs / "usr/lib/python3/dist-packages/phonenumbers"
    for folder in ("data", "shortdata"):
        sources = sorted(p.stem for p in (package / folder).glob("*.py"))
        compiled = sorted(p.name.split(".")[0] for p in (package / folder / "__pycache__").glob("*.pyc"))
        assert len(sources) > 100 and sources == compiled, folder
    assert not [name for name in ("geodata", "carrierdata", "tzdata") if (package / name).exists()]


def test_root_password_sync_is_enabled(rootfs: Path) -> None:
    link = rootfs / "etc/systemd/system/multi-user.target.wants/pbx-root-sync.path"
    assert link.is_symlink()


def test_kernel_modules_for_runtime_are_present(rootfs: Path) -> None:
    modules = next((rootfs / "usr/lib/modules").iterdir())
    dep = (modules / "modules.dep").read_text()
    for needed in ("nf_tables", "ext4", "virtio_net"):
        assert f"/{needed}.ko" in dep, f"{needed} missing from the slot's modules"


def test_sbom_lists_every_installed_package_the_kernel_and_the_agent(rootfs: Path, out_dir: Path) -> None:
    shipped = json.loads((rootfs / "usr/share/pbxfw/sbom.cdx.json").read_text())
    assert shipped == json.loads((out_dir / "sbom.cdx.json").read_text())
    assert shipped["bomFormat"] == "CycloneDX"
    names = {c["name"]: c for c in shipped["components"]}
    status = (rootfs / "var/lib/dpkg/status").read_text()
    installed = {block.split("\n", 1)[0].removeprefix("Package: ") for block in status.split("\n\n")
                 if "Status: install ok installed" in block}
    assert installed and installed <= set(names)
    assert {"kamailio", "pbxagent", "zxcvbn"} <= set(names)
    assert any(n.startswith("linux-image-") for n in names)
    with_licence = [c for c in shipped["components"] if c.get("licenses")]
    assert len(with_licence) >= 0.8 * len(shipped["components"])


def test_sbom_and_image_hold_exactly_the_locked_packages(rootfs: Path, build_config: BuildConfig) -> None:
    lock_path = REPO / "board" / build_config.board.name / "pbx.lock"
    locked = lock.load(lock_path, build_config)
    bom = json.loads((rootfs / "usr/share/pbxfw/sbom.cdx.json").read_text())
    properties = {p["name"]: p["value"] for p in bom["metadata"]["properties"]}
    assert properties["pbxfw:lock-sha256"] == lock.digest(lock_path)
    debian = {(c["name"], c["version"]) for c in bom["components"] if c.get("purl", "").startswith("pkg:deb/")}
    kernel = locked.one("kernel")
    assert debian - {(kernel.name, kernel.version)} == {(p.name, p.version) for p in locked.role("root")}
    status = (rootfs / "var/lib/dpkg/status").read_text()
    assert not any(f"Package: {p.name}\n" in status for p in locked.role("bootstrap")), "bootstrap tools shipped"


def test_no_build_host_path_or_local_repository_in_the_image(rootfs: Path) -> None:
    leaks = subprocess.run(["grep", "-rIl", "-e", "/.cache/pbxfw", "-e", str(REPO), "-e", "copy://", str(rootfs)],
                           capture_output=True, text=True).stdout.split()
    assert leaks == []


def test_no_build_host_dns_and_the_own_name_resolves_without_dns(rootfs: Path, build_config: BuildConfig) -> None:
    # mmdebstrap copied the host's resolv.conf; the box's is resolved's stub, made at boot
    assert os.readlink(rootfs / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    assert f"127.0.1.1\t{build_config.hostname}\n" in (rootfs / "etc/hosts").read_text()


def test_no_apt_in_the_sealed_image_but_dpkg_status_kept(rootfs: Path) -> None:
    """The default recipe excludes apt: updates are signed A/B bundles only."""
    assert not (rootfs / "usr/bin/apt-get").exists()
    leftovers = [p for p in ("etc/apt", "var/lib/apt", "var/cache/apt") if (rootfs / p).exists()]
    assert leftovers == [], f"apt's directories shipped: {leftovers}"
    status = (rootfs / "var/lib/dpkg/status").read_text()
    assert "Package: dpkg\n" in status and "Package: apt\n" not in status


KAMAILIO_TLS_CFG = """#!KAMAILIO
log_stderror=yes
children=1
tcp_children=1
enable_tls=yes
listen=tls:127.0.0.1:5061
mpath="{mpath}"
loadmodule "tls.so"
loadmodule "sl.so"
modparam("tls", "config", "/run/pbxfw-test/tls.cfg")
request_route {{ sl_send_reply("404", "Not here"); }}
"""
# A server and a client profile: Debian's armhf kamailio faulted (SIGBUS) as its TLS module
# started with any client profile, and the box writes one for every TLS trunk.
TLS_PROFILES = """[server:default]
method = TLSv1.2+
certificate = /run/pbxfw-test/cert.pem
private_key = /run/pbxfw-test/key.pem

[client:default]
method = TLSv1.2+
verify_certificate = yes
ca_list = /run/pbxfw-test/cert.pem
"""
TLS_PROBE = """ip link set lo up
chroot "$1" /usr/sbin/kamailio -DD -E -f /run/pbxfw-test/kamailio.cfg -m 32 -M 8 -x "$2" -X "$2" \\
    >"$3/kamailio.log" 2>&1 & pid=$!
for _ in $(seq 120); do
    if ! kill -0 $pid 2>/dev/null; then wait $pid; echo "kamailio exited with $?"; exit 1; fi
    echo Q | timeout 10 openssl s_client -connect 127.0.0.1:5061 -brief >"$3/client.log" 2>&1 && break
    sleep 1
done
kill $pid; wait $pid
grep -q "CONNECTION ESTABLISHED" "$3/client.log"
"""


def test_the_shipped_kamailio_serves_tls_with_a_client_profile(rootfs: Path, tmp_path: Path) -> None:
    """The image's own kamailio binary and modules, with the board's allocator
    (/etc/default/kamailio.d/pbxfw-board), under qemu-user in a network namespace of its
    own: it starts with a TLS client profile and completes a handshake."""
    settings = dict(line.split("=", 1) for line in
                    (rootfs / "etc/default/kamailio.d/pbxfw-board").read_text().splitlines() if "=" in line)
    (mpath,) = [p for p in (rootfs / "usr/lib").glob("*/kamailio/modules") if (p / "tls.so").is_file()]
    work = rootfs / "run/pbxfw-test"
    work.mkdir(parents=True)
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", work / "key.pem", "-out", work / "cert.pem", "-subj", "/CN=pbxfw-test",
                        "-days", "1"], check=True, capture_output=True)
        (work / "tls.cfg").write_text(TLS_PROFILES)
        (work / "kamailio.cfg").write_text(KAMAILIO_TLS_CFG.format(mpath=f"/{mpath.relative_to(rootfs)}/"))
        probe = subprocess.run(["unshare", "--net", "sh", "-c", TLS_PROBE, "probe", str(rootfs),
                                settings["MEMORY_MANAGER"], str(tmp_path)],
                               capture_output=True, text=True, timeout=300)
        log = (tmp_path / "kamailio.log").read_text(errors="replace")[-1500:]
        assert probe.returncode == 0, f"{probe.stdout}{probe.stderr}\nkamailio: {log}"
    finally:
        shutil.rmtree(work)
