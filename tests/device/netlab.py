"""A test network of network namespaces on the host around a twin on a tap device:

    home host 10.77.0.2 ── internet host 203.0.113.50 ── router ── bridge ── tap ── twin 192.168.50.10
             (NAT: 10.77.0.1 | 203.0.113.50)  (203.0.113.1 | 192.168.50.1)  ├──── LAN host 192.168.50.20
                                                                            └──── LAN host 192.168.50.21

The router forwards between a public-looking segment (TEST-NET-3) and the twin's private
LAN; the internet host is also a home router that masquerades its home host (a remote
phone behind NAT) as 203.0.113.50. Nothing is routed anywhere else, and every address
lives only inside these namespaces. QEMU creates the tap in the host's namespace when it starts (after the
console is attached); `attach_tap` then moves it into the router's, where it joins the
bridge. Built with iproute2, the tool an installer would use to reproduce it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import pytest
from pbxfw import devtwin
from pbxfw.config import Board, BuildConfig

from tests.infra import boards, sip
from tests.infra.power import QemuPower, Wiring
from tests.infra.twin import Device, Twin

ROUTER, LAN, LAN2, INTERNET, HOME = "pbx-rtr", "pbx-lan", "pbx-lan2", "pbx-inet", "pbx-home"
TAP = "pbxtap0"
TWIN, LAN_HOST, LAN2_HOST, ROUTER_LAN = "192.168.50.10", "192.168.50.20", "192.168.50.21", "192.168.50.1"
INTERNET_HOST, ROUTER_INTERNET = "203.0.113.50", "203.0.113.1"
HOME_HOST, HOME_ROUTER = "10.77.0.2", "10.77.0.1"
PREFIX = 24


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class NetLab:
    def __enter__(self) -> NetLab:
        self.close()  # what an interrupted run left behind
        for ns in (ROUTER, LAN, LAN2, INTERNET, HOME):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ROUTER, "link", "add", "br0", "type", "bridge")
        ip("-n", ROUTER, "addr", "add", f"{ROUTER_LAN}/{PREFIX}", "dev", "br0")
        ip("-n", ROUTER, "link", "set", "br0", "up")
        self._veth(LAN, "lan", LAN_HOST, ROUTER_LAN, bridge=True)
        self._veth(LAN2, "lan2", LAN2_HOST, ROUTER_LAN, bridge=True)
        self._veth(INTERNET, "inet", INTERNET_HOST, ROUTER_INTERNET, bridge=False)
        subprocess.run(["ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        self._home()
        return self

    def _home(self) -> None:
        """The home host behind the internet host, which masquerades it as its own address."""
        ip("-n", INTERNET, "link", "add", "home0", "type", "veth", "peer", "name", "eth0", "netns", HOME)
        ip("-n", INTERNET, "addr", "add", f"{HOME_ROUTER}/{PREFIX}", "dev", "home0")
        ip("-n", INTERNET, "link", "set", "home0", "up")
        ip("-n", HOME, "addr", "add", f"{HOME_HOST}/{PREFIX}", "dev", "eth0")
        ip("-n", HOME, "link", "set", "eth0", "up")
        ip("-n", HOME, "route", "add", "default", "via", HOME_ROUTER)
        subprocess.run(["ip", "netns", "exec", INTERNET, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        nat = (f"table ip home {{ chain out {{ type nat hook postrouting priority srcnat; "
               f"ip saddr {HOME_HOST}/{PREFIX} oif \"eth0\" masquerade; }}; }}")
        subprocess.run(["ip", "netns", "exec", INTERNET, "nft", "-f", "-"], input=nat, text=True, check=True)

    def _veth(self, ns: str, name: str, address: str, gateway: str, bridge: bool) -> None:
        """A host namespace's link to the router: on the bridge (LAN) or routed (internet)."""
        ip("-n", ROUTER, "link", "add", f"r-{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        if bridge:
            ip("-n", ROUTER, "link", "set", f"r-{name}", "master", "br0")
        else:
            ip("-n", ROUTER, "addr", "add", f"{gateway}/{PREFIX}", "dev", f"r-{name}")
        ip("-n", ROUTER, "link", "set", f"r-{name}", "up")
        ip("-n", ns, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "route", "add", "default", "via", gateway)

    def site_nat(self, relay_ports: str = "10000-10500") -> None:
        """The router as a site's router in front of a box (the policy's
        calls.public_address): SIP and the relay's ports forwarded from its internet
        address to the twin, the LAN masqueraded behind that address."""
        rules = (f"table ip site {{ chain in {{ type nat hook prerouting priority dstnat; "
                 f"ip daddr {ROUTER_INTERNET} meta l4proto {{ udp, tcp }} th dport {{ 5060, 5061, {relay_ports} }} "
                 f"dnat to {TWIN}; }}; chain out {{ type nat hook postrouting priority srcnat; "
                 f"ip saddr {ROUTER_LAN}/{PREFIX} oif \"r-inet\" masquerade; }}; }}")
        subprocess.run(["ip", "netns", "exec", ROUTER, "nft", "-f", "-"], input=rules, text=True, check=True)

    def attach_tap(self, timeout: float = 60) -> None:
        """Move QEMU's tap into the router's namespace, onto the bridge."""
        deadline = time.monotonic() + timeout
        while subprocess.run(["ip", "link", "show", TAP], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"QEMU did not create {TAP} within {timeout:.0f} s")
            time.sleep(0.1)
        ip("link", "set", TAP, "netns", ROUTER)
        ip("-n", ROUTER, "link", "set", TAP, "master", "br0")
        ip("-n", ROUTER, "link", "set", TAP, "up")

    def run(self, ns: str, argv: list[str], timeout: float = 120) -> str:
        done = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout,
                              check=True)
        return done.stdout

    def spawn(self, ns: str, argv: list[str]) -> subprocess.Popen[str]:
        """`run` without waiting: for hosts that must act at the same time."""
        return subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE, text=True)

    def add_address(self, ns: str, address: str) -> None:
        """Another address on a host's link: a fresh source nothing has seen yet."""
        ip("-n", ns, "addr", "add", f"{address}/{PREFIX}", "dev", "eth0")

    def close(self) -> None:
        for ns in (ROUTER, LAN, LAN2, INTERNET, HOME):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def banned(dev: Device, address: str) -> bool:
    """Whether the twin's ban set holds `address` right now."""
    return dev.run(f"nft get element inet pbx ban4 '{{ {address} }}'").status == 0


def secret_of(dev: Device, number: str) -> str:
    """An extension's SIP secret, read as root over the console (test twins only)."""
    rows = json.loads(dev.check("pbxagent extensions list --json --show-secrets 2>/dev/null"))
    return str(next(r["secret"] for r in rows if r["extension"] == number))


LAB_SNAPSHOT = "lab"
# The twin moved to the lab, saved once per image for the session's other lab modules:
# the move (the guard's restarts of kamailio and the relay, fail2ban reading its new
# list) takes most of a minute under TCG, a restore seconds. Keyed by boards.image_key.
_moved: dict[tuple[Path, int, int], devtwin.Snapshot] = {}


@contextmanager
def lab_twin(board: Board, image: Path, work: Path) -> Iterator[tuple[NetLab, Device]]:
    """The lab with a logged-in twin on it, moved to the lab (`_move`) and restored from
    the lab snapshot: the first time from the image's booted snapshot, moved, then saved.
    Its NIC's backend is the lab's tap (a backend is not part of the saved machine)."""
    tap = Wiring(netdev=f"tap,id=net0,ifname={TAP},script=no,downscript=no")
    key = boards.image_key(image)
    with NetLab() as net:
        if key not in _moved:
            _moved[key] = _save_moved(net, boards.booted_twin(board, image, work / "first", tap), work / "saved")
        saved = _moved[key]
        disk = devtwin.copy_snapshot(saved, work / "disk.qcow2")
        shutil.copyfile(saved.console_log, work / "console.log")
        twin = Twin(QemuPower(board, disk, work, tap), saved.password, work / "console.log")
        twin.restore(LAB_SNAPSHOT)
        try:
            net.attach_tap()
            # This lab's hosts are new, and so are their MAC addresses.
            twin.dut.check("ip neigh flush all")
            yield net, twin.dut
        finally:
            twin.power_off()


def _save_moved(net: NetLab, twin: Twin, saved: Path) -> devtwin.Snapshot:
    """Move the twin to the lab, save it and power it off; its layer and console log kept."""
    power = twin.power
    assert isinstance(power, QemuPower)  # boards.booted_twin's twins are QEMU's
    try:
        net.attach_tap()
        _move(twin.dut)
        power.savevm(LAB_SNAPSHOT)
    finally:
        twin.power_off()  # QEMU writes its qcow2 caches out as it quits: the copy is whole
    saved.mkdir(parents=True, exist_ok=True)
    snapshot = devtwin.Snapshot(layer=saved / "layer.qcow2", password=twin.password, key=LAB_SNAPSHOT)
    shutil.copyfile(power.disk, snapshot.layer)
    shutil.copyfile(twin.log_path, snapshot.console_log)
    return snapshot


def _move(dev: Device) -> None:
    """A static LAN address (the lab has no DHCP server; an installer would set one the
    same way), which the guard follows into the trusted set, the media relay's addresses
    and kamailio's sockets; fail2ban ready."""
    dev.check("nic=$(basename $(ls -d /sys/class/net/e* | head -1)) && mkdir -p /run/systemd/network && "
              "printf '[Match]\\nName=%s\\n[Network]\\nAddress=%s\\nGateway=%s\\n' "
              f"$nic {TWIN}/{PREFIX} {ROUTER_LAN} > /run/systemd/network/10-lab.network && networkctl reload")
    dev.check(f"( for i in $(seq 300); do nft list set inet pbx trusted4 | grep -q '192.168.50.0/{PREFIX}' "
              "&& exit 0; sleep 0.2; done; exit 1 )", timeout=90)
    # The guard restarts the media relay on the new address (it reads them at start).
    dev.check("( for i in $(seq 300); do systemctl is-active -q rtpengine-daemon && "
              "[ -z \"$(systemctl list-jobs --no-legend rtpengine-daemon.service)\" ] && exit 0; "
              "sleep 0.2; done; exit 1 )", timeout=90)
    # kamailio's sockets follow the box's addresses too (pbxagent.sip): restarted on the new one.
    dev.check(sip.listening(TWIN), timeout=180)
    dev.check("( for i in $(seq 300); do fail2ban-client status pbx-sip >/dev/null 2>&1 && exit 0; "
              "sleep 0.5; done; exit 1 )", timeout=200)


@pytest.fixture(scope="module")
def lab(build_config: BuildConfig, out_dir: Path, tmp_path_factory: pytest.TempPathFactory) \
        -> Iterator[tuple[NetLab, Device]]:
    """The lab and its twin, shared by a module's tests (a restore and a network move)."""
    work = tmp_path_factory.mktemp("netlab")
    with lab_twin(build_config.board, out_dir / "disk.img", work) as (net, dev):
        yield net, dev
