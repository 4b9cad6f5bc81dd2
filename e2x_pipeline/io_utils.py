"""Atomic file writes and content hashes shared by every stage.

Every table and report file goes through :func:`atomic_write`: the content is written to a
temporary file in the same folder and renamed over the target, so a crash mid-write leaves the
old file intact and a reader never sees half a file. The temp file's name carries the writer's pid
(``.<name>.<pid>.<random>.tmp``); a process killed mid-write (SIGKILL) cannot remove its temp file,
so the next write of the same target removes temp files whose writer is no longer alive. A write
that runs out of space (ENOSPC) removes its temp file and raises :class:`DiskFullError`, one line
naming the file.

:func:`safe_join` joins names that come from data or config (split names, candidate ids, image
ids) under the output folder and refuses any that would lead out of it.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pandas as pd


def safe_join(base: str | Path, *parts: str | Path) -> Path:
    """``base / parts``, refusing a result that leaves ``base`` once resolved.

    ``..`` components, absolute parts and symlinks that lead out of ``base`` raise ValueError
    naming the path. Returns the joined (unresolved) path.
    """
    base = Path(base)
    target = base.joinpath(*parts)
    root, resolved = base.resolve(), target.resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise ValueError(
            f"path {target} leaves the output folder {base} (it resolves to {resolved}); names "
            "taken from the data or config must stay inside it: no '..', absolute paths or "
            "symlinks leading out"
        )
    return target


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Remove ``.<name>.<pid>.*.tmp`` beside ``path`` left by writers that were killed."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    # mkstemp makes the file private (0600); outputs get the usual umask-based mode instead
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(path) from err
        raise


class DiskFullError(OSError):
    """A write ran out of space (ENOSPC, or the quota: EDQUOT); the old file is untouched."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            errno.ENOSPC,
            f"no space left on device while writing {path}; the previous file is kept. Free "
            f"space on the disk of {path.parent} and rerun the command",
        )
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)


def write_table(path: str | Path, df: pd.DataFrame) -> None:
    """Write a parquet table atomically."""
    with atomic_write(path, "wb") as fh:
        df.to_parquet(fh, index=False)


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
