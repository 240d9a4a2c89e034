"""A scratch device tree (PBXAGENT_ROOT) for the agent's host tests: what the agent
reads and writes on a real box, laid out as on the image."""

from __future__ import annotations

from pathlib import Path

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
