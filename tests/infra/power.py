"""Power for a twin: the QEMU process is the board's power supply and its wiring.

Its serial console is on a local TCP port (QEMU waits for the console to be opened
before it runs, so no early output is lost) and its monitor on a QMP socket. A real
board on a power relay would have a driver with the same three operations.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

from pbxfw import qemu
from pbxfw.config import Board
from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from tests.infra import timing


class Power(Protocol):
    @property
    def console_url(self) -> str: ...

    def on(self) -> None: ...

    def cut(self) -> None:
        """Pull the plug: nothing in the guest runs after this, nothing is shut down."""

    def off(self) -> None:
        """Power off once the guest has halted or at the end of a test."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Wiring:
    """How the twin is connected: NIC address, user-network forwards or a tap, TFTP."""

    mac: str = qemu.DEFAULT_MAC
    guestfwd: tuple[str, ...] = ()
    tftp: Path | None = None
    netdev: str | None = None


class QemuPower:
    def __init__(self, board: Board, disk: Path, work: Path, wiring: Wiring | None = None, *,
                 disk_format: str = "qcow2", extra: tuple[str, ...] = ()) -> None:
        self.board, self.disk, self.wiring = board, disk, wiring or Wiring()
        self.disk_format, self.extra = disk_format, extra
        self.port = free_port()
        self.qmp_path = work / f"qmp-{self.port}.sock"
        self.log_path = work / "qemu.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def console_url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    @property
    def is_on(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def on(self, loadvm: str | None = None) -> None:
        """Start QEMU; with `loadvm`, the machine saved under that name in the disk's top layer."""
        w = self.wiring
        # Snapshots are saved on the user network, whose state (QEMU's `slirp` section) a
        # restore must find again even when the NIC is on another backend (a tap): a
        # user network with no NIC takes it.
        saved_net = ("-netdev", "user,id=saved,restrict=on") if loadvm and w.netdev else ()
        argv = qemu.command(
            self.board, self.disk, disk_format=self.disk_format,
            serial=f"tcp:127.0.0.1:{self.port},server=on,wait=on", mac=w.mac, guestfwd=w.guestfwd,
            tftp=w.tftp, netdev=w.netdev,
            extra=(*self.extra, *saved_net, "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                   *(("-loadvm", loadvm) if loadvm else ())),
        )
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if loadvm:
            timing.count_restore()
        else:
            timing.count_boot()

    def monitor(self, command: str, args: dict[str, object] | None = None, timeout: float = 600) -> object:
        """One QMP command (e.g. `stop`, `human-monitor-command`), its answer returned."""
        qmp = QEMUMonitorProtocol(str(self.qmp_path))
        try:
            qmp.connect()
            qmp.settimeout(timeout)
            return qmp.cmd(command, **(args or {}))
        finally:
            qmp.close()

    def savevm(self, name: str) -> None:
        """Save the running machine (RAM, devices, disk) as `name` inside the qcow2 layer."""
        answer = self.monitor("human-monitor-command", {"command-line": f"savevm {name}"})
        if answer:  # HMP answers only with an error message
            raise RuntimeError(f"savevm {name}: {answer}")

    def cut(self) -> None:
        """Freeze the CPUs at once, then end QEMU: the guest gets no shutdown and no flush,
        and every write it had issued reaches the disk file (qcow2 metadata included), as
        a killed QEMU on a raw disk always did."""
        if not self.is_on:
            self._process = None
            return
        try:
            self.monitor("stop", timeout=10)
            self.monitor("quit", timeout=10)
        except (QMPError, OSError, EOFError):
            pass  # QEMU closes the monitor as it quits
        self._reap()

    def off(self) -> None:
        if self._process is None:
            return
        if self.is_on:
            self._process.terminate()
        self._reap()

    def exit_reason(self) -> str:
        """The end of QEMU's own log: why it refused to start or stopped."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " ".join(text.strip().splitlines()[-3:]) or "no output"

    def _reap(self, timeout: float = 20) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while self._process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None
        self.qmp_path.unlink(missing_ok=True)

    def __enter__(self) -> QemuPower:
        self.on()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.off()
