"""`make bench-fleet`: what a box downloads from the release repository per poll, on the
host with the real `pbxfw repo` and python-tuf's own client over loopback HTTP.

- a poll with nothing new: what a box fetches (timestamp.json; goal <= 2 KiB);
- a poll after a new release: every metadata file, and the rollout policy, the client
  fetched to find the release its board's rollout names;
- how those grow with 10 / 100 / 1,000 releases in the repository;
- one nginx (Debian's, one worker per core) answering boxes' polls — a GET of
  timestamp.json on a new connection each, as python-tuf makes it, and the conditional
  GET (304) a box could make instead — in requests/s and the fleet it serves at a 6 h
  interval, against nginx serving a 1-byte static file in the same run (ApacheBench,
  no keep-alive: every box is a new connection).
Baseline in the same run: the bundle itself (what the metadata rides on), and the
1-byte file for nginx."""

from __future__ import annotations

import argparse
import functools
import http.server
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pbxagent.update.rollout import Rollout
from pbxfw.fleet import repository
from pbxfw.signing import bundler, keys
from tuf.ngclient import Updater

BOARD = "qemu-u50"


FETCHED: list[tuple[str, int]] = []  # what the server sent: path, bytes


class Counting(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def copyfile(self, source: Any, outputfile: Any) -> None:
        data = source.read()
        FETCHED.append((self.path, len(data)))
        outputfile.write(data)


@contextmanager
def serving(root: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def poll(repo: repository.Repo, url: str, home: Path) -> int:
    """One refresh of a box that keeps its metadata in `home`: bytes fetched."""
    (home / "targets").mkdir(parents=True, exist_ok=True)
    anchor = (repo.metadata / "1.root.json").read_bytes()
    if not (home / "root.json").exists():
        (home / "root.json").write_bytes(anchor)
    FETCHED.clear()
    box = Updater(str(home), f"{url}/metadata/", str(home / "targets"), f"{url}/targets/", bootstrap=anchor)
    box.refresh()
    # What a box does next: its board's rollout policy, then the release it names.
    found = box.get_targetinfo(f"rollout/{BOARD}.json")
    if found is not None:
        cached = box.find_cached_target(found) or box.download_target(found)
        box.get_targetinfo(Rollout.from_json(Path(cached).read_bytes(), cached).target)
    return sum(size for _, size in FETCHED)


def bundle(work: Path, version: str) -> Path:
    payload = work / "payload"
    if not payload.exists():
        payload.write_bytes(random.Random(1).randbytes(64 << 10))
    if not (work / "sign" / "dev.key").exists():
        keys.generate(work / "sign", "dev")
    dest = work / f"{version}.bundle"
    manifest = bundler.manifest_for(payload, f"pbxfw,{BOARD}", version, 1, "bench")
    bundler.write(dest, payload, manifest, [keys.FileSigner(work / "sign" / "dev.key")])
    return dest


NGINX = """worker_processes 2; pid {work}/nginx.pid; error_log {work}/error.log; daemon on;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/body; proxy_temp_path {work}/proxy; fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
    server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
"""


def requests_per_second(url: str, header: str | None = None, requests: int = 20_000) -> tuple[float, str]:
    argv = ["ab", "-q", "-n", str(requests), "-c", "32", *(["-H", header] if header else []), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    return rate, f"{non_2xx.group(1)} non-2xx" if non_2xx else "all 2xx"


def nginx_load(repo: repository.Repo, work: Path) -> None:
    if shutil.which("nginx") is None or shutil.which("ab") is None:
        print("  nginx or ab missing (make setup installs nginx-light and apache2-utils): load not measured")
        return
    (repo.path / "one-byte").write_bytes(b"x")
    port = 20000 + random.randrange(20000)
    conf = work / "nginx.conf"
    conf.write_text(NGINX.format(work=work, port=port, root=repo.path))
    subprocess.run(["nginx", "-c", str(conf), "-p", str(work)], check=True)
    try:
        time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        stamp = repo.metadata / "timestamp.json"
        modified = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(stamp.stat().st_mtime))
        baseline, _ = requests_per_second(f"{base}/one-byte")
        plain, _ = requests_per_second(f"{base}/metadata/timestamp.json")
        conditional, codes = requests_per_second(f"{base}/metadata/timestamp.json", f"If-Modified-Since: {modified}")
        print("  nginx, 2 workers, ab -c 32 without keep-alive (requests/s; boxes served at one poll per 6 h):")
        print(f"    1-byte static file (baseline) {baseline:8.0f}/s")
        print(f"    timestamp.json, as boxes poll {plain:8.0f}/s  x{plain / baseline:.2f} of baseline  "
              f"{plain * 6 * 3600 / 1e6:.1f} M boxes")
        print(f"    timestamp.json, conditional   {conditional:8.0f}/s  x{conditional / baseline:.2f} of baseline  "
              f"{conditional * 6 * 3600 / 1e6:.1f} M boxes ({codes}: 304s)")
    finally:
        subprocess.run(["nginx", "-c", str(conf), "-p", str(work), "-s", "stop"], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(prog="tests.bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    print("bench-fleet: metadata a box downloads per poll (python-tuf client, loopback HTTP)")
    with tempfile.TemporaryDirectory(prefix="pbxfw-bench-fleet-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        repo = repository.init(work / "repo", work / "keys")
        made = 0
        with serving(repo.path) as url:
            for count in args.releases:
                while made < count:
                    made += 1
                    path = bundle(work, f"1.{made}.0")
                    repository.add(repo, path)
                    path.unlink()
                repository.rollout(repo, BOARD, f"1.{made}.0", 100)
                box = work / f"box-{count}"
                first = poll(repo, url, box)
                repository.add(repo, bundle(work, f"2.{count}.0"))
                repository.rollout(repo, BOARD, f"2.{count}.0", 100)
                made_new = poll(repo, url, box)
                quiet = poll(repo, url, box)
                releases = repo.load("releases").signed.version
                size = (work / f"2.{count}.0.bundle").stat().st_size
                print(f"  {count:>5} releases: first poll {first / 1024:7.1f} KiB, after a new release "
                      f"{made_new / 1024:6.1f} KiB, nothing new {quiet / 1024:4.1f} KiB "
                      f"(releases metadata v{releases}; a {size / 1024:.0f} KiB bundle beside it)", flush=True)
        nginx_load(repo, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
