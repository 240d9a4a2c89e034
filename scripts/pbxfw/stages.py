"""Stage bookkeeping: every stage prints when it starts and how long it took. A failed
command raises with its command line and reason; the stage around it adds its name."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pbxfw.errors import PbxfwError, StageError


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Run a block as a named stage: progress and time on stderr, failures named."""
    log(f"==> {name}")
    started = time.monotonic()
    try:
        yield
    except PbxfwError as exc:
        raise StageError(f"stage '{name}' failed: {exc}") from None
    log(f"<== {name}: {time.monotonic() - started:.1f} s")


def run(
    argv: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
    stdin: str | None = None,
) -> str:
    """Run a command; on failure raise with the command and the tail of its output."""
    args = [str(a) for a in argv]
    try:
        result = subprocess.run(
            args,
            env=env,
            cwd=cwd,
            input=stdin,
            check=False,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            text=True,
        )
    except FileNotFoundError:
        raise StageError(f"`{args[0]}` is not installed (run `make setup`)") from None
    if result.returncode != 0:
        lines = (result.stderr or "").strip().splitlines() if capture else []
        # Tools put the cause first (mkimage, dtc) or last (most others): show both ends.
        detail = lines if len(lines) <= 6 else [*lines[:3], "...", *lines[-3:]]
        reason = "; ".join(detail) or f"exit status {result.returncode} (output above)"
        raise StageError(f"`{shlex.join(args)}` failed: {reason}")
    return result.stdout if capture else ""
