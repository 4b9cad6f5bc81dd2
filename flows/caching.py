"""Task cache keys on content hashes: the dataset, the checkpoint and the config sections a stage
uses (``E2XConfig.section_hash``), plus the output folder, so that two runs never share results.

A stage's key covers everything that changes its tables:

* the split's data: the sha256 of its annotation file and of every image file (memoised per
  process on the files' sizes and modification times, so a rerun does not re-read them);
* the checkpoint file's sha256 (a retrained or replaced checkpoint changes every later key);
* the config sections of this stage and of every stage before it (``mining`` for mining;
  ``mining`` + ``explain`` for explain; ... ), the model section and the seed.

When a stage's output tables are missing (deleted, or a fresh output folder), or are not one
complete generation (:mod:`e2x_pipeline.generation`: a run killed between two writes, a truncated
or edited file), the flow runs the task with ``refresh_cache=True`` (:func:`refresh_needed`):
the work is done again and the cache entry rewritten, rather than trusting a cached result whose
files are gone or mixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from e2x_pipeline import generation
from e2x_pipeline.config import E2XConfig
from e2x_pipeline.io_utils import file_hash

# The config sections each stage's result depends on (its own and its inputs').
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("model", "train"),
    "evaluate": ("model", "mining"),
    "mine": ("model", "mining"),
    "explain": ("model", "mining", "explain"),
    "cluster": ("model", "mining", "explain", "cluster"),
    "repair": ("model", "mining", "explain", "cluster", "repair"),
    "retrain": ("model", "train", "mining", "explain", "cluster", "repair", "retrain"),
}
# The tables a stage leaves in its split's layout (evaluate and retrain: in the run's layout).
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "mine": ("candidates", "predictions", "rejected", "mining_metrics"),
    "explain": ("explanations",),
    "cluster": ("features", "failure_modes", "cluster_summary"),
    "repair": ("repair_set", "repair_summary"),
}

log = logging.getLogger(__name__)
_memo: dict[tuple, str] = {}


def _stat_fingerprint(paths: list[Path]) -> tuple:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1))
    return tuple(out)


def data_hash(cfg: E2XConfig, split: str) -> str:
    """Content hash of a split's annotation file and image files (memoised on their stats)."""
    if cfg.data.fiftyone is not None:  # the split's records (and images) as e2x reads them
        from e2x_pipeline.stages import open_split

        ds = open_split(cfg, split)
        # memoised like the files below: every stage key of a run asks, and hashing every
        # image's bytes each time would read the split again and again
        fo_key = (ds.records_hash, _stat_fingerprint([ds.image_path(i) for i in ds.image_ids]))
        if fo_key not in _memo:
            _memo[fo_key] = ds.content_hash()
        return _memo[fo_key]
    spec = cfg.data.split(split)
    ann = Path(spec.annotations)
    # every file under the image folder, subfolders too (file_names may name them)
    images = sorted(p for p in Path(spec.images).rglob("*") if p.is_file())
    key = _stat_fingerprint([ann, *images])
    if key not in _memo:
        h = hashlib.sha256()
        for p in (ann, *images):
            h.update(p.name.encode())
            h.update(file_hash(p).encode() if p.is_file() else b"missing")
        _memo[key] = h.hexdigest()[:16]
    return _memo[key]


def checkpoint_hash(path: str | Path | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    key = _stat_fingerprint([p])
    if key not in _memo:
        _memo[key] = file_hash(p)[:16] if p.is_file() else "missing"
    return _memo[key]


def stage_key(stage: str, cfg: E2XConfig, split: str | None, checkpoint: Any = None) -> str:
    """The cache key of ``stage`` on ``split`` with ``checkpoint`` under ``cfg``."""
    payload = {
        "stage": stage,
        "output_dir": str(Path(cfg.output_dir).resolve()),
        "split": split,
        "seed": cfg.seed,
        "config": cfg.section_hash(*STAGE_SECTIONS.get(stage, ())),
        "data": data_hash(cfg, split) if split else None,
        "checkpoint": checkpoint_hash(checkpoint),
    }
    if stage in ("repair", "retrain"):  # they also read the pool
        payload["pool"] = data_hash(cfg, cfg.repair.pool_split)
    if stage in ("train", "retrain"):
        payload["train_data"] = data_hash(cfg, "train")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def cache_key_for(stage: str):
    """A Prefect ``cache_key_fn`` for a task taking ``cfg``, optional ``split``, ``checkpoint``."""

    def key_fn(_context, parameters: dict[str, Any]) -> str:
        return stage_key(
            stage, parameters["cfg"], parameters.get("split"), parameters.get("checkpoint")
        )

    key_fn.__name__ = f"{stage}_cache_key"
    return key_fn


def refresh_needed(stage: str, cfg: E2XConfig, split: str) -> bool:
    """True when a stage's output files are missing or are not one complete generation (a run
    killed between its writes, a truncated or changed file: :func:`generation.problem`), so a
    cached result must not be trusted. The reason is logged."""
    if stage == "evaluate":
        return not cfg.layout.evaluation(split).is_file()
    if stage == "train":
        return False  # train_stage keeps its own checkpoint cache and checks the file
    if stage == "retrain":
        if not cfg.layout.retrain_summary.is_file():
            return True
        why = generation.problem(cfg.layout.root, "retrain", require_manifest=True)
    else:
        layout = cfg.split_layout(split)
        if not all(getattr(layout, name).exists() for name in STAGE_OUTPUTS.get(stage, ())):
            return True
        why = generation.problem(layout.root, stage, require_manifest=True)
    if why is not None:
        log.warning("recomputing the %s stage: %s", stage, why)
    return why is not None
