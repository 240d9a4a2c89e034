"""A board under test as a state machine over two drivers, the way labgrid's U-Boot
strategy binds a power driver and a console:

    OFF ──power_on──▶ U-Boot ──boot──▶ SHELL ──reboot──▶ U-Boot ...
     ▲                                  │
     └──────────── power_cut / power_off┘
    OFF ──restore(snapshot)──▶ SHELL   (QEMU twins only: -loadvm, about a second)

`Device` is the SHELL state's driver: a logged-in serial console with run/check. The
power driver is a QEMU process here (tests/infra/power.py); a power relay with the same
three operations would run the power-cut tests on a real board.
"""

from __future__ import annotations

import base64
import enum
import re
import time
from pathlib import Path

import pytest
from pbxfw.console import BOOT_TIMEOUT_S, LOGIN_PROMPT, ConsoleError, Result, SerialConsole
from pbxfw.production.uboot import AUTOBOOT, PROMPT

from tests.infra import timing
from tests.infra.power import Power, QemuPower

# This boot's health verdict, there once the agent's check has run (pbxagent.paths).
BOOT_VERDICT = "/run/pbx/health.json"
# The console log of the board a test drives: attached to the test's report when it fails.
CONSOLE_LOG_KEY = pytest.StashKey[Path]()


class Device:
    """A board's serial console in its logged-in shell, plus what tests do there."""

    def __init__(self, url: str, password: str, log_path: Path) -> None:
        self.url = url
        self.password = password
        self.log_path = log_path
        self._log = log_path.open("a", encoding="utf-8")
        self.console = SerialConsole(url, log=self._log)

    def login(self, wake: bool = False) -> None:
        """Log in, then wait until boot has finished (units that start late would write
        to the console in the middle of a command's output) and the agent's health check,
        which starts then, has judged the slot (pbxagent.paths.boot_verdict)."""
        self.console.login("root", self.password, wake=wake)
        self.run("systemctl is-system-running --wait >/dev/null; "
                 f"for i in $(seq {BOOT_TIMEOUT_S * 2:.0f}); do [ -e {BOOT_VERDICT} ] && break; sleep 0.5; done",
                 BOOT_TIMEOUT_S * 2)

    def boot(self) -> None:
        """From power-on or a reset: skip U-Boot's autoboot countdown (2 s of nothing a
        test wants), boot, log in. A board whose U-Boot does not count down boots as is."""
        seen = self.console.expect(re.compile(f"{AUTOBOOT.pattern}|{LOGIN_PROMPT.pattern}", re.MULTILINE),
                                   BOOT_TIMEOUT_S, "U-Boot's autoboot countdown or the login prompt")
        if seen.group(0).startswith("Hit"):
            self.console.send(" ")
            self.console.expect(PROMPT, 10, "U-Boot's prompt")
            self.console.send("boot\r")
            self.login()
        else:
            self.login(wake=True)  # the prompt was read above: ask for it again

    def resume(self) -> None:
        """A console attached to a restored shell: set it up for the harness again (the
        snapshot keeps a shell a person can use, with echo), and set the clock. The
        restored machine's clock goes on from the moment it was saved, while its RTC
        gives the real time at the next boot: a ban saved now would lose that gap."""
        self.console.setup_shell()
        self.check(f"date -s @{time.time():.3f} >/dev/null")

    def run(self, command: str, timeout: float = 60) -> Result:
        return self.console.run(command, timeout)

    def check(self, command: str, timeout: float = 60) -> str:
        return self.run(command, timeout).check()

    def put(self, local: Path, remote: str) -> None:
        """Copy a small file over the console, base64 in chunks (a console line holds
        4096 bytes)."""
        encoded = base64.b64encode(local.read_bytes()).decode()
        self.check(f"rm -f {remote}.b64")
        for start in range(0, len(encoded), 1000):
            self.check(f"printf %s '{encoded[start:start + 1000]}' >> {remote}.b64")
        self.check(f"base64 -d {remote}.b64 > {remote} && rm {remote}.b64")

    def boot_log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def reboot(self) -> None:
        """Reboot through systemd and log in again once the new system is up."""
        self.console.send("systemctl reboot\r")
        timing.count_boot()
        self.console.expect("U-Boot 20", BOOT_TIMEOUT_S, "U-Boot after the reboot")
        self.boot()

    def close(self) -> None:
        self.console.close()
        self._log.close()


class State(enum.Enum):
    OFF = "off"
    SHELL = "shell"


class Twin:
    """A board: its power, its console log and its root password, in one of the states."""

    def __init__(self, power: Power, password: str, log_path: Path) -> None:
        self.power, self.password, self.log_path = power, password, log_path
        self.state = State.OFF
        self._dut: Device | None = None

    @property
    def dut(self) -> Device:
        if self.state is not State.SHELL or self._dut is None:
            raise ConsoleError(f"the twin is {self.state.value}, not at its shell")
        return self._dut

    def power_on(self) -> Device:
        """OFF → U-Boot → SHELL: a real boot."""
        self._expect(State.OFF, "power on")
        self.power.on()
        self._dut = Device(self.power.console_url, self.password, self.log_path)
        try:
            self._dut.boot()
        except ConsoleError:
            self._off(cut=True)
            raise
        self.state = State.SHELL
        return self._dut

    def restore(self, snapshot: str) -> Device:
        """OFF → SHELL from a saved machine (QEMU twins only)."""
        self._expect(State.OFF, "restore")
        if not isinstance(self.power, QemuPower):
            raise ConsoleError("only an emulated twin can be restored from a snapshot")
        self.power.on(loadvm=snapshot)
        try:
            self._dut = Device(self.power.console_url, self.password, self.log_path)
            self._dut.resume()
        except (ConsoleError, OSError) as exc:  # OSError: QEMU refused the state and closed the console
            self._off(cut=True)
            raise ConsoleError(f"restoring {snapshot!r} failed: {exc}; QEMU: {self.power.exit_reason()}") from None
        self.state = State.SHELL
        return self._dut

    def power_cut(self) -> None:
        self._off(cut=True)

    def power_off(self) -> None:
        self._off(cut=False)

    def _expect(self, state: State, action: str) -> None:
        if self.state is not state:
            raise ConsoleError(f"cannot {action}: the twin is {self.state.value}")

    def _off(self, cut: bool) -> None:
        if self._dut is not None:
            self._dut.close()
            self._dut = None
        if cut:
            self.power.cut()
        else:
            self.power.off()
        self.state = State.OFF
