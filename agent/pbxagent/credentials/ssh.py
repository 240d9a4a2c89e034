"""SSH: off and masked unless an administrator turns it on with a key. When on, key
login only, and everything it needs (state, keys, authorized key) lives on /data;
the sshd drop-in in volatile /etc is rendered from it at every boot."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import NamedTuple

from pbxagent import atomic, paths, system

UNITS = ("ssh.service", "ssh.socket")
MAX_AUTH_TRIES = 3
LOGIN_GRACE_TIME = 30


class SshError(ValueError):
    pass


class State(NamedTuple):
    enabled: bool = False
    port: int = 22


def home() -> Path:
    return paths.data() / "ssh"


def host_key() -> Path:
    return home() / "ssh_host_ed25519_key"


def authorized_keys() -> Path:
    return home() / "authorized_keys"


def dropin() -> Path:
    return paths.root() / "etc" / "ssh" / "sshd_config.d" / "pbx.conf"


def sshd_config(state: State) -> str:
    """The sshd drop-in. Debian's sshd_config includes drop-ins first, and sshd keeps the
    first value it reads, so these win over anything later in the file."""
    return (
        "# Written by pbxagent from /data/pbx/ssh at every boot; edits here are lost.\n"
        f"Port {state.port}\n"
        f"HostKey {host_key()}\n"
        f"AuthorizedKeysFile {authorized_keys()}\n"
        "AuthenticationMethods publickey\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitEmptyPasswords no\n"
        "PermitRootLogin prohibit-password\n"
        f"MaxAuthTries {MAX_AUTH_TRIES}\n"
        f"LoginGraceTime {LOGIN_GRACE_TIME}\n"
        "X11Forwarding no\n"
        "AllowAgentForwarding no\n"
    )


def load_state() -> State:
    path = home() / "state.json"
    try:
        data = json.loads(path.read_text())
        return State(bool(data["enabled"]), int(data["port"]))
    except FileNotFoundError:
        return State()
    except (ValueError, KeyError, TypeError):
        raise SshError(f"{path}: unreadable SSH state") from None


def _save_state(state: State) -> None:
    atomic.write(home() / "state.json", json.dumps({"enabled": state.enabled, "port": state.port}) + "\n", 0o600)


def _checked_key(key_file: Path) -> bytes:
    """An OpenSSH public key, checked by ssh-keygen itself."""
    try:
        content = key_file.read_bytes()
    except OSError as exc:
        raise SshError(f"--authorized-key {key_file}: {exc.strerror}") from None
    done = subprocess.run(["ssh-keygen", "-l", "-f", str(key_file)], capture_output=True, text=True)
    if done.returncode != 0 or b"PRIVATE KEY" in content:
        raise SshError(f"--authorized-key {key_file}: not an OpenSSH public key")
    return content if content.endswith(b"\n") else content + b"\n"


def _ensure_host_key() -> None:
    """Made on the device when SSH is first turned on, never in the image."""
    if host_key().exists():
        return
    home().mkdir(mode=0o700, parents=True, exist_ok=True)
    for leftover in (host_key(), host_key().with_suffix(".pub")):
        leftover.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pbx host key", "-f", str(host_key())],
                   check=True, capture_output=True)


def _write_dropin(state: State) -> None:
    atomic.write(dropin(), sshd_config(state), 0o644)


def enable(key_file: Path, port: int) -> State:
    if not 1 <= port <= 65535:
        raise SshError(f"--port {port}: must be 1..65535")
    key = _checked_key(key_file)
    _ensure_host_key()
    atomic.write(authorized_keys(), key, 0o600)
    state = State(True, port)
    _write_dropin(state)
    done = subprocess.run(["sshd", "-t"], capture_output=True, text=True)
    if done.returncode != 0:
        atomic.remove(dropin())
        raise SshError(f"sshd rejects the configuration: {done.stderr.strip()}")
    _save_state(state)
    system.systemctl("unmask", *UNITS)
    system.systemctl("enable", "ssh.service")
    system.systemctl("restart", "ssh.service")
    return state


def disable() -> State:
    state = State(False, load_state().port)
    _save_state(state)
    system.systemctl("disable", "--now", *UNITS)
    system.systemctl("mask", *UNITS)
    atomic.remove(dropin())
    return state


def repair() -> str:
    """At boot: an enabled SSH comes back as it was; a disabled one stays masked."""
    state = load_state()
    if state.enabled:
        _write_dropin(state)
        system.systemctl("unmask", *UNITS)
        system.systemctl("start", "--no-block", "ssh.service")
        return f"ssh enabled on port {state.port} (key login only)"
    if not all(system.is_masked(unit) for unit in UNITS):
        system.systemctl("mask", *UNITS)
    atomic.remove(dropin())
    return "ssh off (masked)"


def effective_config() -> dict[str, str]:
    """sshd's own view of its configuration (`sshd -T`), lower-case keys."""
    done = subprocess.run(["sshd", "-T"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SshError(f"sshd -T: {done.stderr.strip()}")
    pairs = (line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    return {key: value for key, value in pairs}


def status() -> dict[str, object]:
    state = load_state()
    return {
        "enabled": state.enabled,
        "port": state.port,
        "unit": system.unit_state("ssh.service"),
        "active": system.is_active("ssh.service"),
        "listening": state.port in system.listening_tcp_ports(),
    }
