"""Drive a board's serial console: a QEMU twin over `socket://` or a real board on
/dev/ttyUSB0 — any pyserial URL, the same code.

Commands are framed by markers that the shell prints but the echo of the typed line
never contains (the marker is assembled by printf from two halves), so output is
never confused with echoed input, and every command's exit status is read back.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import IO

import pexpect
import pexpect.fdpexpect
import serial

LOGIN_PROMPT = re.compile(r"login: ?$", re.MULTILINE)
SHELL_PROMPT = "PBXFW# "
# login(1) prompts for the user name again by itself after a refusal; a wrong password
# is refused every time, so a retry only ever helps a login that lost its input.
LOGIN_ATTEMPTS = 3
# How long a typed byte may take to come back as echo from a guest under load. The kernel
# echoes in its receive path, not in the reading process, so this is short even when the
# program at the prompt is starved of CPU.
ECHO_WAIT_S = 1.0
# How long a prompt may keep echoing before the program turns echo off.
ECHO_OFF_WAIT_S = 30
# Power-on to login prompt is ~30 s on an idle host, but a shared host whose CPU is half
# stolen (seen: 50 % steal) stretches an emulated boot past 2 minutes. A bound, not a wait.
BOOT_TIMEOUT_S = 300


def timeout_scale() -> float:
    """One knob for every console timeout: PBXFW_TIMEOUT_SCALE (slower hosts, real boards)."""
    return float(os.environ.get("PBXFW_TIMEOUT_SCALE", "1"))


def scaled(seconds: float) -> float:
    return seconds * timeout_scale()


class ConsoleError(Exception):
    """The console did not show what was expected; the message says what and when."""


@dataclass(frozen=True)
class Result:
    command: str
    status: int
    output: str

    def check(self) -> str:
        if self.status != 0:
            raise ConsoleError(f"`{self.command}` exited {self.status}: {self.output.strip()}")
        return self.output


class SerialConsole:
    def __init__(self, url: str, log: IO[str] | None = None, connect_timeout: float = 10.0) -> None:
        deadline = time.monotonic() + scaled(connect_timeout)
        while True:
            try:
                self._port = serial.serial_for_url(url, baudrate=115200, timeout=0)
                break
            except serial.SerialException as exc:
                if time.monotonic() > deadline:
                    raise ConsoleError(f"cannot open console {url}: {exc}") from None
                time.sleep(0.2)
        self.url = url
        self._spawn = pexpect.fdpexpect.fdspawn(
            self._port.fileno(), encoding="utf-8", codec_errors="replace", timeout=scaled(30)
        )
        self._spawn.logfile_read = log

    def close(self) -> None:
        self._port.close()

    def expect(self, pattern: str | re.Pattern[str], timeout: float, what: str) -> re.Match[str]:
        """Wait for `pattern`; on timeout say what we were waiting for and what was seen last."""
        try:
            self._spawn.expect(pattern, timeout=scaled(timeout))
        except pexpect.TIMEOUT:
            tail = (self._spawn.before or "")[-300:]
            raise ConsoleError(f"timed out after {scaled(timeout):.0f} s waiting for {what}; last output: {tail!r}") \
                from None
        except pexpect.EOF:
            raise ConsoleError(f"console {self.url} closed while waiting for {what}") from None
        match = self._spawn.match
        assert isinstance(match, re.Match)
        return match

    def send(self, text: str) -> None:
        self._spawn.send(text)

    def login(self, user: str, password: str, timeout: float = BOOT_TIMEOUT_S, wake: bool = False,
              new_password: str | None = None) -> None:
        """Log in at the getty and set up a shell that is easy to drive (no echo, fixed prompt).

        `wake` sends a return first, for a board that already sits at its login prompt;
        never on a board that is booting, where any key stops U-Boot's autoboot.
        `new_password` answers the change a one-time password demands at first login;
        without it, that demand is an error.
        """
        if wake:
            self.send("\r")
        self.expect(LOGIN_PROMPT, timeout, "the login prompt")
        for attempt in range(1, LOGIN_ATTEMPTS + 1):
            self.send(f"{user}\r")
            self.expect("Password:", 30, "the password prompt")
            self.send_secret(password)
            match = self.expect(r"[#$] |(Current|current\)).*password: |(Login incorrect)", 60,
                                "a shell prompt after login")
            if not match.group(2):
                break
            if attempt == LOGIN_ATTEMPTS:
                raise ConsoleError(f"login as {user} refused {LOGIN_ATTEMPTS} times: wrong password")
            # login(1) prompts again by itself.
            self.expect(LOGIN_PROMPT, 30, "the login prompt after a refused login")
        if match.group(1):
            if new_password is None:
                raise ConsoleError(f"{user}'s password must be changed at login, and no new password was given")
            self.send_secret(password)
            for prompt in ("New password: ", "Retype new password: "):
                self.expect(prompt, 30, f"passwd's {prompt.strip()!r}")
                self.send_secret(new_password)
            self.expect(r"[#$] ", 60, "a shell prompt after the password change")
        self.setup_shell()

    def send_secret(self, secret: str) -> None:
        """Type a secret at a prompt that has just been printed. PAM's conversation
        (libpam_misc, used by login and passwd) prints the prompt first and then turns
        echo off with tcsetattr(TCSAFLUSH), which discards every byte that arrived in
        between: a password typed at once on a busy board loses its first characters
        and is refused. So a random probe is typed first; while it comes back as echo,
        the flush may still come, and the probe is erased (^U, the line-kill character)
        and typed again; once it is not echoed, echo is off and the flush is over. Then
        the probe is erased and the secret typed."""
        deadline = time.monotonic() + scaled(ECHO_OFF_WAIT_S)
        while time.monotonic() < deadline:
            probe = secrets.token_hex(4)
            self.send(probe)
            try:
                self._spawn.expect_exact(probe, timeout=scaled(ECHO_WAIT_S))
            except pexpect.TIMEOUT:
                self.send(f"\x15{secret}\r")
                return
            self.send("\x15")
            time.sleep(0.2)
        raise ConsoleError(f"the prompt on {self.url} still echoed input after {scaled(ECHO_OFF_WAIT_S):.0f} s: "
                           "not a password prompt")

    def setup_shell(self) -> None:
        """A shell that is easy to drive: no echo, a fixed prompt, no pager or colours."""
        self.send(f"stty -echo; export PS1='{SHELL_PROMPT}' TERM=dumb PAGER=cat SYSTEMD_COLORS=0\r")
        self.expect(re.escape(SHELL_PROMPT), 30, "the fixed shell prompt")

    def run(self, command: str, timeout: float = 60) -> Result:
        """Run one shell command; returns its exit status and output (stdout and stderr)."""
        tag = secrets.token_hex(4)
        start, end = f"<<S{tag}>>", f"<<E{tag}:"
        self.send(
            f"printf '%s%s\\n' '<<S' '{tag}>>'; {{ {command} ; }} 2>&1; "
            f"printf '%s%s:%d>>\\n' '<<E' '{tag}' $?\r"
        )
        match = self.expect(
            re.escape(start) + r"\r?\n(.*?)" + re.escape(end) + r"(\d+)>>", timeout, f"`{command}` to finish"
        )
        output = match.group(1).replace("\r\n", "\n")
        return Result(command, int(match.group(2)), output)

