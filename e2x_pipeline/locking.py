"""One run at a time per output folder: an exclusive ``flock`` on ``<output_dir>/.e2x.lock``.

The stages that write into the output folder (mine, publish, explain, overlays) and the ``e2x
mine`` / ``e2x explain`` commands hold :func:`run_lock` while they run. A second run against the
same folder fails at once with :class:`OutputLockedError`::

    output folder runs/x is locked by run 3f2a9c1e07b4 (pid 4242, started 2025-...); wait for it
    to finish or choose another --output-dir

Semantics (chosen on purpose):

* the lock is advisory and per folder; it is not a queue: the second run fails fast, it does not
  wait;
* the kernel drops a ``flock`` when its process dies, even by SIGKILL, so there are no stale locks
  to clean up; the lock file itself stays (deleting it would let two runs lock two different
  files) and holds the holder's run id and pid while it is held, nothing after;
* the lock is re-entrant within one process (a CLI command holding it can call stages that take
  it again), so it does not protect threads of one run from each other;
* ``flock`` works on local file systems; on NFS it may not exclude runs on other hosts;
* the run id is ``$E2X_RUN_ID`` when set, else a random id per process (:data:`RUN_ID`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".e2x.lock"
RUN_ID = os.environ.get("E2X_RUN_ID") or uuid.uuid4().hex[:12]

_held: dict[Path, tuple[int, int]] = {}  # resolved lock path -> (fd, depth)
_guard = threading.Lock()


class OutputLockedError(BlockingIOError):
    """Another run holds the output folder; the message names it and says what to do."""


def _holder(path: Path, wait: float = 1.0) -> dict:
    """The holder's record; it may be written a moment after the lock is taken."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict) or time.monotonic() >= deadline:
            return info if isinstance(info, dict) else {}
        time.sleep(0.05)


@contextlib.contextmanager
def run_lock(output_dir: str | Path, run_id: str | None = None) -> Iterator[Path]:
    """Hold the exclusive lock of ``output_dir`` (created if missing); yield the lock file path.

    Raises :class:`OutputLockedError` when another process holds it, and NotADirectoryError when
    ``output_dir`` exists but is not a folder.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"output_dir {out} exists and is not a folder; choose another --output-dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    path = (out / LOCK_NAME).resolve()
    with _guard:
        if path in _held:
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                info = _holder(path)
                started = f", started {info['started']}" if info.get("started") else ""
                raise OutputLockedError(
                    f"output folder {out} is locked by run {info.get('run_id', '<unknown>')} "
                    f"(pid {info.get('pid', '?')}{started}); wait for it to finish or choose "
                    "another --output-dir"
                ) from None
            record = {
                "run_id": run_id or RUN_ID,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "argv": sys.argv,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            os.fsync(fd)
            _held[path] = (fd, 1)
    try:
        yield path
    finally:
        with _guard:
            fd, depth = _held[path]
            if depth > 1:
                _held[path] = (fd, depth - 1)
            else:
                del _held[path]
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
