"""A scratch device tree (PBXAGENT_ROOT) for the agent's host tests: what the agent
reads and writes on a real box, laid out as on the image."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pbxagent import board

MAC = "52:54:00:ab:cd:ef"


def make_tree(root: Path, mac: str = MAC, root_hash: str = "*") -> Path:
    etc = root / "etc"
    (etc / "systemd" / "system").mkdir(parents=True)
    (etc / "shadow").write_text(f"root:{root_hash}:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\n")
    (etc / "shadow").chmod(0o640)
    for unit in ("ssh.service", "ssh.socket"):
        (etc / "systemd" / "system" / unit).symlink_to("/dev/null")
    (etc / "ssh" / "sshd_config.d").mkdir(parents=True)
    for name, kind, address in (("lo", "772", "00:00:00:00:00:00"), ("eth0", "1", mac)):
        iface = root / "sys" / "class" / "net" / name
        iface.mkdir(parents=True)
        (iface / "type").write_text(kind + "\n")
        (iface / "address").write_text(address + "\n")
    (root / "dev").mkdir()
    (root / "dev" / "console").write_text("")
    return root


def shadow_root(root: Path) -> list[str]:
    for line in (root / "etc" / "shadow").read_text().splitlines():
        if line.startswith("root:"):
            return line.split(":")
    raise AssertionError("no root in shadow")


def make_update_tree(root: Path, work: Path, trusted_pub: Path, compatible: str, slot_size: int,
                     security_version: int = 2) -> dict[str, str]:
    """What the installer touches: file-backed slots (filled with 0xee), board.json, the
    U-Boot boot state written by the real mkenvimage (read by the real fw_printenv), and
    the trusted update key. Returns the slots' files."""
    (root / "run" / "pbx").mkdir(parents=True)
    (root / "run" / "pbx" / "slot").write_text("A\n")
    (root / "etc" / "pbxfw").mkdir(parents=True)
    (root / "data" / "pbx").mkdir(parents=True)
    slots = {s: str(work / f"slot{s}") for s in "AB"}
    for path in slots.values():
        Path(path).write_bytes(b"\xee" * slot_size)
    (root / "etc" / "pbxfw" / "board.json").write_text(board.BoardInfo(
        compatible.split(",")[-1], compatible, "arm64", "1.0.0", security_version=security_version, boot_attempts=3,
        slots=slots, built=1_700_000_000).to_json())
    env_text = work / "env.txt"
    env_text.write_text("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n")
    subprocess.run(["mkenvimage", "-r", "-s", "0x4000", "-o", work / "env.bin", env_text], check=True)
    state = work / "bootstate"
    state.write_bytes((work / "env.bin").read_bytes() * 2)
    (root / "etc" / "fw_env.config").write_text(f"{state} 0x0 0x4000\n{state} 0x4000 0x4000\n")
    keys_dir = root / "usr" / "share" / "pbxfw" / "keys"
    keys_dir.mkdir(parents=True)
    (keys_dir / trusted_pub.name).write_bytes(trusted_pub.read_bytes())
    return slots
