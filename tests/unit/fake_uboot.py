"""A scripted U-Boot on a loopback socket, for the flash dialogue's failure paths the
real twin cannot produce on demand (a bit flipped on the way to the eMMC, a board that
does not come up). It keeps a byte-accurate memory and disk, so the happy path runs
through it too; tests/device/test_flash.py flashes the real twin."""

from __future__ import annotations

import gzip
import re
import socket
import threading
import time
import zlib
from pathlib import Path

FRAMED = re.compile(r"echo '<<S'(\w+)'>>'; (.*); echo '<<E'\1':'\$\?'>>'")
SECTOR = 512


class FakeUBoot:
    def __init__(self, tftp_dir: Path, disk_bytes: int, version: str = "aarch64-linux-gnu-gcc (Debian) 12.2.0",
                 fault: str = "") -> None:
        self.tftp_dir = tftp_dir
        self.disk = bytearray(disk_bytes)
        self.memory: dict[int, bytes] = {}
        self.version = version
        self.fault = fault  # "", "silent", "corrupt_tftp", "flip_read", "no_boot"
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.close()

    def _serve(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        with conn:
            if self.fault == "silent":
                conn.recv(1)  # a console that shows nothing until the tool gives up
                return
            # Power on a moment after the tool attached: pyserial drops what arrived
            # while it opened the port, as a real board's output before attach is lost.
            time.sleep(0.3)
            conn.sendall(b"\r\nU-Boot 2023.01 (fake)\r\nHit any key to stop autoboot:  2 ")
            conn.recv(1)
            conn.sendall(b"\r\n=> ")
            buffer = b""
            while chunk := conn.recv(65536):
                buffer += chunk
                while b"\r" in buffer:
                    line, buffer = buffer.split(b"\r", 1)
                    conn.sendall(self._line(line.decode()).encode())

    def _line(self, line: str) -> str:
        if line == "reset":
            if self.fault == "no_boot":
                return "resetting ...\r\nSynchronous Abort handler, esr 0x96000010\r\n"
            return ("resetting ...\r\npbxagent: root credential: factory\r\n"
                    "pbxagent: first-boot provisioning complete\r\n\r\npbx login: ")
        framed = FRAMED.fullmatch(line)
        if not framed:
            return f"{line}\r\nUnknown command\r\n=> "
        status, output = 0, ""
        for command in framed.group(2).split("; "):
            status, output = self._command(command.split())
        return f"{line}\r\n<<S{framed.group(1)}>>\r\n{output}<<E{framed.group(1)}:{status}>>\r\n=> "

    def _command(self, argv: list[str]) -> tuple[int, str]:
        name, args = argv[0], argv[1:]
        if name in ("setenv", "dhcp"):
            return 0, ""
        if name == "version":
            return 0, f"U-Boot 2023.01 (fake)\r\n{self.version}\r\n"
        if name == "tftpboot":
            data = (self.tftp_dir / args[1]).read_bytes()
            if self.fault == "corrupt_tftp":
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            self.memory[int(args[0], 16)] = data
            return 0, f"Bytes transferred = {len(data)} ({len(data):x} hex)\r\n"
        if name == "crc32":
            address, length = int(args[0], 16), int(args[1], 16)
            return 0, f"crc32 for {address:08x} ... ==> {zlib.crc32(self.memory[address][:length]):08x}\r\n"
        if name == "gzwrite":
            image = gzip.decompress(self.memory[int(args[2], 16)][:int(args[3], 16)])
            if len(image) % (int(args[4], 16) if len(args) > 4 else 4 << 20) == 0:
                # U-Boot 2023.01 ends such an image with a zero-block write, which
                # QEMU's virtio-blk refuses; the real command then never returns.
                return 1, "qemu: virtio: zero sized buffers are not allowed\r\n"
            self.disk[:len(image)] = image
            return 0, f"\t{len(image)} bytes, crc 0x{zlib.crc32(image):08x}\r\n"
        if name == "mw.l":
            address, value, count = (int(a, 16) for a in args)
            self.memory[address] = value.to_bytes(4, "little") * count
            return 0, ""
        if name == "virtio":
            address, lba, count = (int(a, 16) for a in args[1:4])
            start, end = lba * SECTOR, (lba + count) * SECTOR
            if args[0] == "write":
                self.disk[start:end] = self.memory[address][:end - start]
            else:
                data = bytes(self.disk[start:end])
                if self.fault == "flip_read":
                    data = bytes([data[0] ^ 0x80]) + data[1:]
                self.memory[address] = data
            return 0, f"{count} blocks {args[0]}: OK\r\n"
        return 1, f"Unknown command '{name}'\r\n"
