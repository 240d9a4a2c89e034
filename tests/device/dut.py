"""The device under test as the tests see it: a logged-in serial console."""

from __future__ import annotations

from pathlib import Path

from pbxfw.console import BOOT_TIMEOUT_S, Result, SerialConsole


class Device:
    """A logged-in console plus the operations tests need (run, reboot)."""

    def __init__(self, url: str, password: str, log_path: Path) -> None:
        self.url = url
        self.password = password
        self.log_path = log_path
        self._log = log_path.open("a", encoding="utf-8")
        self.console = SerialConsole(url, log=self._log)

    def login(self, wake: bool = False) -> None:
        """Log in, then wait until boot has finished: units that start late (boot-ok, the
        guard) would otherwise write to the console in the middle of a command's output."""
        self.console.login("root", self.password, wake=wake)
        self.run("systemctl is-system-running --wait >/dev/null", BOOT_TIMEOUT_S)

    def run(self, command: str, timeout: float = 60) -> Result:
        return self.console.run(command, timeout)

    def check(self, command: str, timeout: float = 60) -> str:
        return self.run(command, timeout).check()

    def boot_log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def reboot(self) -> None:
        """Reboot through systemd and log in again once the new system is up."""
        self.console.send("systemctl reboot\r")
        self.console.expect("U-Boot 20", BOOT_TIMEOUT_S, "U-Boot after the reboot")
        self.login()

    def close(self) -> None:
        self.console.close()
        self._log.close()
