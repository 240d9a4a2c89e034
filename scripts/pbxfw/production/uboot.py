"""U-Boot's command line on a serial console: stop autoboot, run commands and read back
their exit status, parse what the block and checksum commands print.

Each command is framed like `pbxfw.console` frames shell commands: U-Boot's hush
joins '<<S' 'tag' '>>' when it runs the echo, so the markers appear only in output,
never in the echo of the typed line, and `$?` after the command is its status.
"""

from __future__ import annotations

import re
import secrets

from pbxfw.console import ConsoleError, Result, SerialConsole

PROMPT = "=> "
AUTOBOOT = re.compile(r"Hit any key to stop autoboot")
BANNER = re.compile(r"U-Boot 20\d\d\.\d\d\S*")
_CRC = re.compile(r"==> ([0-9a-f]{8})")
_BYTES = re.compile(r"Bytes transferred = (\d+)")


class UBoot:
    def __init__(self, console: SerialConsole) -> None:
        self.console = console

    def stop_autoboot(self, timeout: float) -> str:
        """Wait for the banner and the autoboot countdown, stop it; returns the banner."""
        banner = self.console.expect(BANNER, timeout, "the U-Boot banner (power the board on with the tool attached)")
        self.console.expect(AUTOBOOT, 30, "U-Boot's autoboot countdown")
        self.console.send(" ")
        self.console.expect(PROMPT, 10, "U-Boot's prompt")
        return banner.group(0)

    def run(self, command: str, timeout: float = 60) -> Result:
        tag = secrets.token_hex(4)
        self.console.send(f"echo '<<S'{tag}'>>'; {command}; echo '<<E'{tag}':'$?'>>'\r")
        match = self.console.expect(
            re.escape(f"<<S{tag}>>") + r"\r?\n(.*?)" + re.escape(f"<<E{tag}:") + r"(\d+)>>", timeout,
            f"U-Boot's `{command}` to finish",
        )
        self.console.expect(PROMPT, 10, "U-Boot's prompt")
        return Result(command, int(match.group(2)), match.group(1).replace("\r\n", "\n"))

    def check(self, command: str, timeout: float = 60) -> str:
        return self.run(command, timeout).check()

    def crc32(self, address: int, length: int) -> int:
        output = self.check(f"crc32 {address:#x} {length:#x}")
        return crc_of(output, f"crc32 {address:#x} {length:#x}")

    def tftp(self, address: int, name: str, timeout: float) -> int:
        """Load `name` from the TFTP server; returns the bytes transferred."""
        output = self.check(f"tftpboot {address:#x} {name}", timeout)
        found = _BYTES.search(output)
        if not found:
            raise ConsoleError(f"tftpboot {name}: no byte count in {output[-200:]!r}")
        return int(found.group(1))


def crc_of(output: str, what: str) -> int:
    found = _CRC.search(output)
    if not found:
        raise ConsoleError(f"`{what}` printed no checksum: {output[-200:]!r}")
    return int(found.group(1), 16)
