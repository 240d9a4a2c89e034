"""Update reports: what became of an update, told to the vendor's collector only once
it is known — after the health-gated commit or after U-Boot fell back, never before
the reboot (the gap rauc-hawkbit-updater has: a box that later fell back counted as
updated).

The box's identity is made on the box at first boot: a random device id (its place in
every rollout) and an ed25519 key that signs its reports; the collector learns the
public key at the factory (`pbxagent update status` prints it). A report is kept on
/data until the collector answers 2xx, retried with exponential back-off and jitter.

On the wire, one POST of JSON:

    {"report": {"id", "device_id", "board", "from_version", "to_version",
                "result": "committed" | "fell_back", "time", "message"},
     "key": "<raw ed25519 public key, hex>",
     "signature": "<ed25519 over the report's canonical JSON, hex>"}

canonical JSON: sorted keys, no spaces (json.dumps(sort_keys=True, separators=(",", ":"))).
"""

from __future__ import annotations

import json
import os
import random
import secrets
from pathlib import Path
from typing import Any, NamedTuple

from pbxagent import atomic, board, paths

RESULTS = {"installed": "committed", "failed": "fell_back"}
BACKOFF = (60, 6 * 3600)  # first retry after about a minute, never waiting over 6 h
KEEP = 50  # reports kept while the collector is away; the oldest go first


def update_dir() -> Path:
    return paths.update_data()


def queue_dir() -> Path:
    return update_dir() / "reports"


def _queue_files() -> list[Path]:
    return sorted(queue_dir().glob("*.json")) if queue_dir().exists() else []


class Identity(NamedTuple):
    device_id: str
    public_key: str  # raw ed25519, hex


def _key_path() -> Path:
    return update_dir() / "device.key"


def ensure_identity() -> str:
    """The device id and report key, made once (first boot) and kept on /data; returns
    the id."""
    id_path = update_dir() / "device-id"
    if not _key_path().exists():
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        atomic.write(_key_path(), pem.decode(), mode=0o600)
    if not id_path.exists():
        atomic.write(id_path, secrets.token_hex(16) + "\n", mode=0o644)
    return id_path.read_text().strip()


def identity() -> Identity:
    return Identity((update_dir() / "device-id").read_text().strip(), _private_key().public_key().public_bytes_raw()
                    .hex())


def _private_key() -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(_key_path().read_bytes(), password=None)


def canonical(report: dict[str, Any]) -> bytes:
    return json.dumps(report, sort_keys=True, separators=(",", ":")).encode()


def envelope(report: dict[str, Any]) -> dict[str, Any]:
    key = _private_key()
    return {"report": report, "key": key.public_key().public_bytes_raw().hex(),
            "signature": key.sign(canonical(report)).hex()}


def enqueue(result: str, from_version: str, to_version: str, when: int, message: str) -> Path:
    """Keep a signed report of a settled update (`installed` or `failed`) for sending."""
    report = {"id": secrets.token_hex(8), "device_id": ensure_identity(), "board": board.load().board,
              "from_version": from_version, "to_version": to_version, "result": RESULTS[result],
              "time": when, "message": message}
    queued = _queue_files()
    for old in queued[:max(0, len(queued) - KEEP + 1)]:
        old.unlink()
    path = queue_dir() / f"{when:012d}-{report['id']}.json"
    atomic.write(path, json.dumps({"envelope": envelope(report), "attempts": 0, "next_try": 0}) + "\n")
    return path


def queued() -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in _queue_files()]


def _post(url: str, body: bytes, timeout: float) -> int:
    import urllib.request  # only when a report is due: the timer's idle wake-ups skip it

    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pbxagent"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(response.status)


def next_wait(attempts: int, rng: random.Random) -> int:
    """Exponential back-off with jitter: about 1, 2, 4 … minutes, at most 6 h."""
    low, high = BACKOFF
    return int(min(high, low * 2 ** attempts) * rng.uniform(0.5, 1.0))


def send_due(url: str, now: int, timeout: float = 10, rng: random.Random | None = None) -> list[str]:
    """POST every queued report whose time has come; what happened, one line each."""
    rng = rng or random.Random()
    lines = []
    for path in _queue_files():
        entry = json.loads(path.read_text())
        if entry["next_try"] > now:
            continue
        report = entry["envelope"]["report"]
        try:
            status = _post(url, json.dumps(entry["envelope"]).encode(), timeout)
        except OSError as exc:  # urllib's HTTPError (4xx/5xx) is one too
            entry["attempts"] += 1
            entry["next_try"] = now + next_wait(entry["attempts"], rng)
            atomic.write(path, json.dumps(entry) + "\n")
            lines.append(f"report {report['id']} ({report['result']}) not sent: {exc}; "
                         f"retry in {entry['next_try'] - now} s")
            continue
        os.unlink(path)
        lines.append(f"report {report['id']} ({report['result']} {report['to_version']}) sent: HTTP {status}")
    return lines
