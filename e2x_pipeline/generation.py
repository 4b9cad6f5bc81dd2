"""Stage generations: a stage's output files and the manifest, written last, that lists them.

A stage writes several files (mining writes four tables). Each file is written atomically
(:func:`io_utils.atomic_write`), but a process killed between two of them would leave files of two
runs side by side. So every writing stage brackets its writes in :func:`generation`:

1. ``<folder>/<stage>.manifest.json`` is first replaced by ``{"status": "writing"}``;
2. the stage writes its files;
3. the manifest is replaced by ``{"status": "complete", "files": {name: {size, sha256}}}``.

A reader (:func:`problem`) then knows one of four things about a stage's folder:

* no manifest: the files were made by hand or by an e2x before manifests (trusted as they are);
* ``writing``: a run was interrupted between its writes, so the files may mix two generations;
* a listed file that is missing, or whose size or sha256 differs: truncated or changed since;
* complete and matching: one generation.

The flows recompute a stage whose generation is not complete (``flows.caching.refresh_needed``);
a stage reading another's table (``SplitLayout.require``) raises :class:`IncompleteGeneration`,
whose message names the file and the command to rerun.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .io_utils import file_hash, write_json

VERSION = 1


class IncompleteGeneration(OSError):
    """A stage's outputs are not one complete generation: the message says what to rerun."""

    def __init__(self, message: str, path: Path, command: str) -> None:
        super().__init__(message)
        self.path = path
        self.command = command


def manifest_path(folder: str | Path, stage: str) -> Path:
    return Path(folder) / f"{stage}.manifest.json"


_hash_memo: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path, st: os.stat_result) -> str:
    # memoised on (path, size, mtime): every reader of a run checks its inputs, and a file
    # rewritten in place gets a new mtime
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_memo:
        _hash_memo[key] = file_hash(path)
    return _hash_memo[key]


@dataclass
class Generation:
    """The files one stage writes into ``folder`` during one run (see the module doc)."""

    folder: Path
    stage: str
    files: list[Path] = field(default_factory=list)

    def add(self, *paths: str | Path) -> None:
        """Record files written in this generation (they must lie under ``folder``)."""
        for p in paths:
            p = Path(p)
            p.relative_to(self.folder)  # ValueError for a file outside the stage's folder
            self.files.append(p)

    def commit(self) -> None:
        entries = {}
        for p in self.files:
            st = p.stat()
            entries[p.relative_to(self.folder).as_posix()] = {
                "size": st.st_size,
                "sha256": _sha256(p, st),
            }
        write_json(
            manifest_path(self.folder, self.stage),
            {
                "version": VERSION,
                "stage": self.stage,
                "status": "complete",
                "written_at": time.time(),
                "files": entries,
            },
        )


@contextlib.contextmanager
def generation(folder: str | Path, stage: str) -> Iterator[Generation]:
    """Bracket one stage's writes: the manifest says ``writing`` until the block finishes, then
    lists the files added with :meth:`Generation.add` with their sizes and sha256."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(
        manifest_path(folder, stage),
        {"version": VERSION, "stage": stage, "status": "writing", "pid": os.getpid()},
    )
    gen = Generation(folder, stage)
    yield gen  # an exception leaves the manifest at "writing": the next reader recomputes
    gen.commit()


def read_manifest(folder: str | Path, stage: str) -> dict | None:
    """The stage's manifest, or None when there is none; an unreadable one counts as writing."""
    path = manifest_path(folder, stage)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "writing", "unreadable": True}
    return data if isinstance(data, dict) else {"status": "writing", "unreadable": True}


def problem(
    folder: str | Path,
    stage: str,
    names: Iterable[str] | None = None,
    *,
    require_manifest: bool = False,
) -> str | None:
    """Why ``stage``'s files in ``folder`` are not one complete generation, or None when they are.

    ``names`` limits the check to those files (relative to ``folder``); a name the manifest does
    not list is not checked. Without a manifest the files are trusted unless
    ``require_manifest`` (the flows ask for it: whatever they write has one).
    """
    folder = Path(folder)
    manifest = read_manifest(folder, stage)
    mpath = manifest_path(folder, stage)
    if manifest is None:
        return f"{mpath} is missing" if require_manifest else None
    if manifest.get("status") != "complete":
        return (
            f"{mpath} says a run was interrupted while writing the {stage} stage's files, so "
            "they may mix two runs"
        )
    listed: dict = manifest.get("files", {})
    for name in listed if names is None else [n for n in names if n in listed]:
        path = folder / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{path} is missing (listed in {mpath})"
        want = listed[name]
        if st.st_size != want.get("size") or _sha256(path, st) != want.get("sha256"):
            return f"{path} was truncated or changed after the {stage} stage wrote it"
    return None


def check(folder: str | Path, stage: str, path: str | Path, command: str) -> None:
    """Raise :class:`IncompleteGeneration` when ``path`` (in ``folder``) belongs to an
    incomplete or changed generation of ``stage``; the message says to rerun ``command``."""
    path = Path(path)
    why = problem(folder, stage, [path.relative_to(folder).as_posix()])
    if why is not None:
        raise IncompleteGeneration(
            f"cannot use {path}: {why}; rerun 'e2x {command}' with the same output_dir (it "
            "recomputes the stage)",
            path,
            command,
        )
