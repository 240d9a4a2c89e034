"""QEMU command lines for a board's emulated twin (U-Boot as its firmware)."""

from __future__ import annotations

from pathlib import Path

from pbxfw.config import Board

# QEMU's own locally administered prefix; tests pick their own to vary it.
DEFAULT_MAC = "52:54:00:12:34:56"


def command(
    board: Board,
    disk: Path,
    *,
    disk_format: str = "raw",
    serial: str = "mon:stdio",
    mac: str = DEFAULT_MAC,
    guestfwd: tuple[str, ...] = (),
    tftp: Path | None = None,
    netdev: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """The twin: U-Boot from the board's firmware file, the disk on virtio-mmio
    (what U-Boot and the initramfs both drive), and one NIC on a user-mode network
    that is isolated from the host's (restrict=on: nothing leaves it). `guestfwd` rules
    (`tcp:GUEST_ADDR:PORT-cmd:socat - TCP:127.0.0.1:PORT`) are the only way out: to a server the
    harness runs on loopback. `tftp` is a directory the user network's own TFTP server
    serves to U-Boot (the production line's transfer, tests/device/test_flash.py).
    `netdev` replaces the user network, e.g. with a tap device on a test network."""
    q = board.qemu
    return [
        q.binary,
        "-machine", q.machine,
        "-cpu", q.cpu,
        "-smp", "2",
        "-m", str(q.memory_mib),
        "-bios", str(board.uboot.binary),
        "-display", "none",
        "-serial", serial,
        "-drive", f"if=none,id=disk0,file={disk},format={disk_format},cache=unsafe",
        "-device", "virtio-blk-device,drive=disk0",
        "-device", "virtio-rng-device",
        "-netdev", netdev or ("user,id=net0,restrict=on" + "".join(f",guestfwd={rule}" for rule in guestfwd)
                              + (f",tftp={tftp}" if tftp else "")),
        "-device", f"virtio-net-device,netdev=net0,mac={mac}",
        *extra,
    ]
