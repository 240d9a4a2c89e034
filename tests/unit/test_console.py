"""Typing a password at a serial prompt, against a real tty line discipline: a program on
a pseudo-terminal that prompts the way PAM's conversation does (prompt, then
tcsetattr(TCSAFLUSH) with echo off, then read), bridged to a TCP socket as QEMU bridges
a twin's UART."""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pbxfw import console
from pbxfw.console import ConsoleError, SerialConsole

SECRET = "g-NS4dG7msCg-xqT"

# Sleeps between printing the prompt and the flush, as login does when a busy board
# does not schedule it; `echo` keeps echo on, as a prompt for a name does.
PROMPT_PROGRAM = """
import sys, termios, time
delay, echo = float(sys.argv[1]), sys.argv[2] == "echo"
sys.stdout.write("Password: "); sys.stdout.flush()
time.sleep(delay)
attrs = termios.tcgetattr(0)
if not echo:
    attrs[3] &= ~termios.ECHO
termios.tcsetattr(0, termios.TCSAFLUSH, attrs)
line = sys.stdin.readline().rstrip("\\n")
sys.stdout.write(f"\\r\\nread:<{line}>\\r\\n"); sys.stdout.flush()
"""


def _pump(master: int, server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        while True:
            ready, _, _ = select.select([master, conn.fileno()], [], [], 10)
            if not ready:
                return
            try:
                if master in ready:
                    conn.sendall(os.read(master, 4096))
                if conn.fileno() in ready:
                    data = conn.recv(4096)
                    if not data:
                        return
                    os.write(master, data)
            except OSError:  # the program exited: its pty is gone
                return


@contextmanager
def prompting(delay: float, echo: bool, tmp_path: Path) -> Iterator[SerialConsole]:
    master, slave = pty.openpty()
    program = subprocess.Popen([sys.executable, "-c", PROMPT_PROGRAM, str(delay), "echo" if echo else "quiet"],
                               stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    server = socket.create_server(("127.0.0.1", 0))
    pump = threading.Thread(target=_pump, args=(master, server), daemon=True)
    pump.start()
    with (tmp_path / "console.log").open("w") as log:
        serial_console = SerialConsole(f"socket://127.0.0.1:{server.getsockname()[1]}", log=log)
        try:
            yield serial_console
        finally:
            serial_console.close()
            program.kill()
            program.wait()
            server.close()
            os.close(master)


def test_a_password_typed_right_after_the_prompt_is_flushed_by_the_prompt(tmp_path: Path) -> None:
    """Why the console does not simply type: this is how the old-box test lost logins."""
    with prompting(1.0, echo=False, tmp_path=tmp_path) as serial_console:
        serial_console.expect("Password: ", 10, "the prompt")
        serial_console.send(SECRET + "\r")
        time.sleep(1.5)
        serial_console.send("\r")  # whatever the flush left, ended as a line
        assert serial_console.expect(r"read:<(.*)>", 10, "the line read").group(1) != SECRET


@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_a_secret_reaches_a_prompt_that_turns_echo_off_late(tmp_path: Path, delay: float) -> None:
    with prompting(delay, echo=False, tmp_path=tmp_path) as serial_console:
        serial_console.expect("Password: ", 10, "the prompt")
        serial_console.send_secret(SECRET)
        assert serial_console.expect(r"read:<(.*)>", 10, "the line read").group(1) == SECRET


def test_a_secret_is_never_typed_at_a_prompt_that_echoes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console, "ECHO_OFF_WAIT_S", 3)
    with prompting(0.0, echo=True, tmp_path=tmp_path) as serial_console:
        serial_console.expect("Password: ", 10, "the prompt")
        with pytest.raises(ConsoleError, match="still echoed input"):
            serial_console.send_secret(SECRET)
    assert SECRET not in (tmp_path / "console.log").read_text()
