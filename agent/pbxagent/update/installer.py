"""Signed A/B updates on the device: verify before write, write the inactive slot chunk
by chunk, read it back, switch; after the reboot a health check commits the new slot or
lets U-Boot's attempt counter fall back to the old one.

State on /data/pbx/update (outside the slots, so it survives both):
- `state.json`: the security floor (only ever raised), what each slot holds, the
  update waiting for its health check, and the last result.
- `progress.json`: the bundle being written and the first chunk not yet durable, so an
  interrupted install resumes there.
- `revoked`: key ids this device refuses on top of the image's list.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from pbxagent import atomic, board, paths
from pbxagent.update import bootstate, bundle, state
from pbxagent.update.source import Source, byte_size, open_source, read_exactly

# Chunks are verified in batches of BATCH_BYTES and written with one call per batch;
# every SYNC_EVERY chunks (16 MiB at 64 KiB) the slot is synced and the progress
# committed, which is where an interrupted install resumes.
BATCH_BYTES = 1 << 20
SYNC_EVERY = 256


def update_dir() -> Path:
    return paths.update_data()


def trust() -> bundle.Trust:
    return bundle.load_trust([paths.root() / "usr" / "share" / "pbxfw" / "keys"], [update_dir() / "revoked"])


def _load(name: str) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((update_dir() / name).read_text())
        return data
    except FileNotFoundError:
        return {}


def _save(name: str, data: dict[str, Any]) -> None:
    atomic.write(update_dir() / name, json.dumps(data, indent=1, sort_keys=True) + "\n")


def save_state(current: state.UpdateState) -> None:
    state.save(update_dir() / "state.json", current)


def load_state() -> state.UpdateState:
    return state.load(update_dir() / "state.json")


def running_release() -> state.Release:
    """The release in the running image, as its board.json says."""
    info = board.load()
    return state.Release(info.version, info.security_version)


def running_slot_release(current: state.UpdateState, running: str) -> state.Release:
    """What the running slot runs: what an update wrote there, else the image's release
    (a test bundle may carry the same image under another version)."""
    return current.slots.get(running) or running_release()


@dataclass(frozen=True)
class Plan:
    header: bundle.Header
    key: bytes
    target: str
    device: str
    start_chunk: int


def prepare(source: Source) -> Plan:
    """Every check that needs no write: signature, board, floor, size, completeness."""
    with source.open_at(0) as stream:
        header = bundle.read_header(stream)
    key = bundle.check_signatures(header, trust())
    running = bootstate.booted_slot()
    target = bootstate.other(running)
    info = board.load()
    device = info.slots[target]
    bundle.check_target(header.manifest, info.compatible, load_state().floor, byte_size(device))
    size = source.size()
    if size is not None and size < header.total_size:
        raise bundle.Rejected(bundle.Reason.TRUNCATED,
                              f"{source.name}: {size} bytes, the signed manifest needs {header.total_size}")
    progress = _load("progress.json")
    resume = progress.get("manifest_sha256") == header.manifest_sha256 and progress.get("slot") == target
    return Plan(header, key, target, device, int(progress.get("next_chunk", 0)) if resume else 0)


def _verify_batch(manifest: bundle.Manifest, first: int, count: int, data: memoryview) \
        -> tuple[int, bundle.Rejected | None]:
    """How many leading bytes of `data` (chunks `first`..`first+count-1`) verify, and the
    refusal that stopped the check, if one did."""
    verified = 0
    for index in range(first, first + count):
        length = manifest.chunk_range(index)[1]
        try:
            bundle.verify_chunk(manifest, index, data[verified:verified + length])
        except bundle.Rejected as exc:
            return verified, exc
        verified += length
    return verified, None


def _write_chunks(plan: Plan, source: Source, report: Callable[[int], None]) -> None:
    """Verify batch k+1 while batch k is written (hashlib and pwrite both release the
    GIL); only verified bytes are ever handed to the writer, even in front of a bad chunk."""
    from concurrent.futures import Future, ThreadPoolExecutor

    manifest = plan.header.manifest
    total = len(manifest.chunks)
    per_batch = max(1, BATCH_BYTES // manifest.chunk_size)
    synced = plan.start_chunk
    fd = os.open(plan.device, os.O_WRONLY)
    try:
        with ThreadPoolExecutor(max_workers=1) as writer, \
                source.open_at(plan.header.payload_offset + plan.start_chunk * manifest.chunk_size) as stream:
            writing: Future[int] | None = None
            for first in range(plan.start_chunk, total, per_batch):
                count = min(per_batch, total - first)
                start, end = manifest.chunk_range(first)[0], sum(manifest.chunk_range(first + count - 1))
                data = memoryview(read_exactly(stream, end - start))
                verified, problem = _verify_batch(manifest, first, count, data)
                if writing is not None:
                    writing.result()
                writing = writer.submit(os.pwrite, fd, data[:verified], start)
                if problem is not None:
                    writing.result()
                    raise problem
                if first + count - synced >= SYNC_EVERY:
                    writing.result()
                    os.fsync(fd)
                    synced = first + count
                    _save("progress.json", {"manifest_sha256": plan.header.manifest_sha256,
                                            "slot": plan.target, "next_chunk": synced})
                report(end)
            if writing is not None:
                writing.result()
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_back(plan: Plan) -> None:
    """Read the written slot from the device (page cache dropped) and check every chunk."""
    fd = os.open(plan.device, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        bundle.verify_payload(plan.header.manifest, lambda offset, length: os.pread(fd, length, offset),
                              f"{plan.device} (read back)", bundle.Reason.READBACK_MISMATCH)
    finally:
        os.close(fd)


class Progress:
    """Byte-accurate progress on stderr, one line per 5 %, and the throughput at the end."""

    def __init__(self, total: int, start: int) -> None:
        self.total, self.start, self.started, self.shown = total, start, time.monotonic(), -1

    def __call__(self, done: int) -> None:
        step = done * 20 // self.total
        if step != self.shown:
            self.shown = step
            print(f"update: {done} / {self.total} bytes ({done * 100 // self.total} %)", file=sys.stderr, flush=True)

    def rate(self, done: int) -> str:
        seconds = max(time.monotonic() - self.started, 1e-6)
        return f"{(done - self.start) / seconds / 2**20:.1f} MiB/s"


class Vet(Protocol):
    """What a caller knows about the bundle beyond its signature (a fleet update: its TUF
    target), checked before the first write and after the last byte is read."""

    def before_write(self, header: bundle.Header) -> None: ...

    def after_payload(self) -> None: ...


def install(location: str | Source, vet: Vet | None = None) -> str:
    """Install a bundle into the inactive slot and make it the next boot's first try."""
    source = open_source(location) if isinstance(location, str) else location
    plan = prepare(source)
    if vet is not None:
        vet.before_write(plan.header)
    manifest = plan.header.manifest
    if plan.start_chunk:
        print(f"update: resuming at chunk {plan.start_chunk} of {len(manifest.chunks)}", file=sys.stderr)
    bootstate.write(bootstate.mark_bad(bootstate.read(), plan.target))
    progress = Progress(manifest.payload_size, manifest.chunk_range(plan.start_chunk)[0])
    started = time.monotonic()
    _write_chunks(plan, source, progress)
    if vet is not None:
        vet.after_payload()
    written, rate = time.monotonic() - started, progress.rate(manifest.payload_size)
    _read_back(plan)
    release = state.Release(manifest.version, manifest.security_version, manifest.build_id)
    saved = load_state()
    running = bootstate.other(plan.target)
    save_state(replace(saved, slots={**saved.slots, plan.target: release},
                       pending=state.Pending(plan.target, running, plan.header.manifest_sha256, release,
                                             running_slot_release(saved, running).version)))
    bootstate.write(bootstate.mark_active(bootstate.read(), plan.target, board.load().boot_attempts))
    atomic.remove(update_dir() / "progress.json")
    return (f"slot {plan.target} holds {manifest.version} (security version {manifest.security_version}), "
            f"written in {written:.1f} s ({rate}) and read back; "
            "it boots next, on probation")


def verify(location: str) -> bundle.Header:
    header, _ = bundle.verify_file(Path(location), trust())
    return header


def status() -> dict[str, Any]:
    """What `update status --json` prints: the update state as JSON, with the running
    slot's release (from the image when no update wrote that slot) and the boot state."""
    current = load_state().as_dict()
    running = bootstate.booted_slot()
    boot = bootstate.read()
    current["slots"].setdefault(running, asdict(running_release()))
    return {
        "running_slot": running,
        "other_slot": bootstate.other(running),
        "slots": current["slots"],
        "security_floor": current["floor"],
        "pending": current["pending"],
        "last_result": current["last_result"],
        "boot_order": list(boot.order),
        "attempts_left": dict(boot.left),
    }
