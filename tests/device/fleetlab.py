"""What the fleet tests share: a copy of the release repository the image trusts
(`--releases`, signed with `--repo-keys`), served by a real nginx on the host's
loopback, a collector that records the boxes' update reports, and a booted twin that
reaches both through QEMU's guestfwd (the repository at 10.0.2.100, the collector at
10.0.2.101)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pbxfw.config import BuildConfig
from pbxfw.fleet import repository

from tests.infra import boards
from tests.infra.power import Wiring, free_port
from tests.infra.twin import CONSOLE_LOG_KEY, Device, Twin

REPOSITORY = "10.0.2.100"
COLLECTOR = "10.0.2.101"
NGINX = """daemon off; master_process off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;
events {{ worker_connections 64; }}
http {{
    types {{ application/json json; }}
    default_type application/octet-stream;
    access_log {work}/access.log;
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # only timestamp.json changes in place; every other file is named by version or hash
        location = /metadata/timestamp.json {{ add_header Cache-Control "max-age=60"; }}
    }}
}}
"""


def forward(address: str, port: int) -> str:
    # cmd: one socat per guest connection (a tcp: target is one stream for all of them)
    return f"tcp:{address}:80-cmd:socat - TCP:127.0.0.1:{port}"


@pytest.fixture
def releases(request: pytest.FixtureRequest, tmp_path: Path) -> repository.Repo:
    """A copy of the repository whose root the image ships, to publish into."""
    source = Path(request.config.getoption("--releases"))
    key_dir = Path(request.config.getoption("--repo-keys"))
    if not (source / "metadata" / "root.json").is_file():
        pytest.fail(f"{source}: no release repository; `make image` makes it and the image trusts its root")
    shutil.copytree(source, tmp_path / "releases")
    return repository.Repo(tmp_path / "releases", key_dir)


@contextmanager
def nginx(root: Path, work: Path) -> Iterator[int]:
    """nginx serving `root` on a free loopback port; yields the port."""
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (make setup installs nginx-light)")
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX.format(work=work, port=port, root=root))
    server = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(work)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not (work / "nginx.pid").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def mirror(releases: repository.Repo, tmp_path: Path) -> Iterator[int]:
    """nginx serving the repository copy; yields its port."""
    with nginx(releases.path, tmp_path / "nginx") as port:
        yield port


class _Collector(BaseHTTPRequestHandler):
    reports: list[dict[str, Any]]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.reports.append(json.loads(body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def collecting() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """The vendor's report collector: its port and the reports it received."""
    received: list[dict[str, Any]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Collector,), {"reports": received}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


@pytest.fixture
def collector() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    with collecting() as running:
        yield running


def wiring(mirror_port: int, collector_port: int) -> Wiring:
    return Wiring(guestfwd=(forward(REPOSITORY, mirror_port), forward(COLLECTOR, collector_port)))


def poll_here(dut: Device, interval: int = 3600) -> None:
    """The box's policy: poll the mirror, report to the collector, no maintenance window
    and no after-boot delay."""
    lines = ["update:", f"  repository: http://{REPOSITORY}", f"  report_url: http://{COLLECTOR}/v1/report",
             '  window: ""', "  boot_delay: 0", f"  interval: {interval}"]
    text = "\\n".join(lines)  # one console line: printf makes the newlines
    dut.check(f"printf '{text}\\n' > /data/pbx/policy.yaml && pbxagent policy check")
    # The tests start the service themselves; the timer's own wake-up (90 s after boot,
    # which a restored snapshot may reach at any moment) must not poll in between.
    dut.check("systemctl stop pbx-update.timer")


@pytest.fixture
def fleet_twin(build_config: BuildConfig, out_dir: Path, mirror: int, collector: tuple[int, list[dict[str, Any]]],
               tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Twin]:
    """A booted twin whose policy polls the mirror and reports to the collector."""
    twin = boards.booted_twin(build_config.board, out_dir / "disk.img", tmp_path / "twin",
                              wiring(mirror, collector[0]))
    request.config.stash[CONSOLE_LOG_KEY] = twin.log_path
    poll_here(twin.dut)
    yield twin
    twin.power_off()


def fleet_status(dut: Device) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(dut.check("pbxagent update status --json 2>/dev/null"))
    return result


def run_update_service(dut: Device, timeout: float = 900) -> str:
    """What pbx-update.timer starts, started now; returns its journal lines of this run."""
    cursor = dut.check("journalctl -n 0 --show-cursor -o cat | tail -1").strip().removeprefix("-- cursor: ")
    dut.run("systemctl start pbx-update.service", timeout=timeout)
    return dut.check(f"journalctl -o cat -u pbx-update.service --after-cursor='{cursor}'")
