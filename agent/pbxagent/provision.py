"""Provisioning: at every boot, before the SIP service and the network (pbxagent.daemon). The
first boot creates everything per-device; later boots only repair. Each step commits
its files atomically, so after a power cut the next boot finishes the job without
regenerating what was already committed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from pbxagent import atomic, paths, system
from pbxagent.credentials import extensions, root, ssh
from pbxagent.policy import site
from pbxagent.update import report

# Every directory on /data the agent writes, all root-only.
DATA_DIRS = ("credentials", "secrets", "state", "ssh", "tls", "update")


def ensure_data_layout() -> Path:
    base = paths.data()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    base.chmod(0o700)
    for name in DATA_DIRS:
        (base / name).mkdir(mode=0o700, exist_ok=True)
        (base / name).chmod(0o700)
        atomic.clean_leftovers(base / name)
    return base


def completed() -> bool:
    return paths.provisioned_marker().is_file()


def provision() -> Iterator[str]:
    """Run every step, yielding what each did (for the console and the journal)."""
    base = ensure_data_layout()
    yield f"data at {base}"
    loaded = site.load()
    if loaded.error:
        yield f"policy override not applied, {loaded.origin} policy stays in force: {loaded.error}"
    site.remember(loaded)
    pol = loaded.policy
    yield root.repair(pol.rules)
    created = extensions.ensure(pol.extensions, pol.rules, pol.secret_length)
    if created:
        yield f"secrets and PINs made for {len(created)} extension(s) {created[0]}-{created[-1]}"
    yield ssh.repair()
    yield f"device id {report.ensure_identity()} (rollouts, signed update reports)"
    if not completed():
        atomic.write(paths.provisioned_marker(), json.dumps({"complete": True}) + "\n", 0o600)
        yield "first-boot provisioning complete"
    yield system.usage()
