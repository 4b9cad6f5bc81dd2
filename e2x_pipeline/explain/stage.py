"""The explain stage: every mined candidate, every configured method, one table.

:func:`explain_image` explains the targets of one image with several methods and ONE SLIC
segmentation. :func:`explain_candidates` groups a candidates table by image, explains the pending
(candidate, method, output) triples, stores the pixel maps per image in
``<out_dir>/maps/<image_id>.npz`` (the segmentation once, under ``segments|<slic key>``, plus a
float16 map per ``candidate_id|method|output``) and writes ``<out_dir>/explanations.parquet``.

A rerun skips every (candidate_id, method, output, params_hash) already in the table; the params
hash covers the method's settings, the seed and the detector's weights, so a changed setting or
another checkpoint explains again (and that method's rows under the old hash are dropped).
Box-coordinate maps (``cfg.box_maps``) are made by the gradient methods (E2X, IG), as ODAM /
ODSmoothGrad do.
Candidates without a detector candidate (``anchor == -1``, uncovered FNs) have no output to
follow: gradient and perturbation methods record them as invalid rows with that reason; D-RISE,
which only needs the box and class, explains them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..config import ExplainConfig
from ..data.coco import load_image
from ..detectors.base import BOX_COORDS, Detector, Target, TargetOutput, model_fingerprint
from ..generation import Generation, generation
from ..io_utils import atomic_write, write_table
from ..layout import SplitLayout
from .base import Explainer, Explanation, params_hash
from .registry import explainer_class, get_explainer
from .superpixels import slic_segments

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = (
    "candidate_id",
    "image_id",
    "image_path",
    "anchor",
    "label",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
)
TABLE_COLUMNS = (
    "candidate_id",
    "image_id",
    "method",
    "output",
    "params_hash",
    "params",
    "details",
    "seed",
    "values",
    "n_segments",
    "seconds",
    "passes",
    "shared_by",
    "valid",
    "reason",
    "map_file",
    "map_key",
    "segments_key",
)
FLUSH_SECONDS = 60.0
"""How often finished rows are written out; ``$E2X_EXPLAIN_FLUSH_SECONDS`` overrides it (0: after
every image, as the SIGKILL resume test does)."""


def method_outputs(method: str, cfg: ExplainConfig) -> list[TargetOutput]:
    """``score``, plus x1, y1, x2, y2 for gradient methods when ``cfg.box_maps``."""
    if cfg.box_maps and explainer_class(method).supports_box_maps:
        return ["score", *BOX_COORDS]  # type: ignore[list-item]
    return ["score"]


def segments_key(cfg: ExplainConfig) -> str:
    return f"segments|n{cfg.n_segments}_c{cfg.compactness:g}"


def explain_image(
    detector: Detector,
    image: Tensor,
    targets: list[Target],
    methods: list[str],
    cfg: ExplainConfig,
    seed: int = 0,
    *,
    segments: np.ndarray | None = None,
    mean: Tensor | None = None,
    candidate_ids: list[str] | None = None,
    outputs: list[TargetOutput] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> list[Explanation]:
    """Explanations of ``targets`` on ``image`` by every method in ``methods``.

    One SLIC segmentation serves all methods and targets (``segments`` or computed once here).
    ``outputs`` defaults to :func:`method_outputs`; ``options`` gives per-method keyword settings.
    """
    if segments is None:
        segments = slic_segments(image, cfg.n_segments, cfg.compactness)
    options = options or {}
    out: list[Explanation] = []
    for method in methods:
        explainer = get_explainer(method, detector, cfg, seed, mean=mean, **options.get(method, {}))
        for output in outputs or method_outputs(method, cfg):
            out += explainer.explain(
                image, targets, output, segments=segments, candidate_ids=candidate_ids
            )
    return out


def _check_candidates(candidates: pd.DataFrame) -> None:
    missing = [c for c in CANDIDATE_COLUMNS if c not in candidates.columns]
    if missing:
        raise ValueError(
            f"the candidates table lacks columns {missing}; it must come from the mining stage"
        )
    dup = candidates["candidate_id"][candidates["candidate_id"].duplicated()]
    if len(dup):
        raise ValueError(f"candidate ids repeat in the candidates table: {sorted(set(dup))[:5]}")
    for image_id, paths in candidates.groupby("image_id")["image_path"]:
        if paths.nunique() != 1:
            raise ValueError(f"image {image_id} has several image paths: {sorted(set(paths))}")


def _row(exp: Explanation, image_id: int, map_file: str | None, seg_key: str) -> dict[str, Any]:
    return {
        "candidate_id": exp.candidate_id,
        "image_id": int(image_id),
        "method": exp.method,
        "output": exp.output,
        "params_hash": exp.params_hash,
        "params": json.dumps(exp.params, sort_keys=True),
        "details": json.dumps(exp.details, sort_keys=True),
        "seed": exp.seed,
        "values": [float(v) for v in exp.values],
        "n_segments": exp.n_segments,
        "seconds": float(exp.seconds),
        "passes": float(exp.passes),
        "shared_by": exp.shared_by,
        "valid": bool(exp.valid),
        "reason": exp.reason,
        "map_file": map_file,
        "map_key": f"{exp.candidate_id}|{exp.method}|{exp.output}" if map_file else None,
        "segments_key": seg_key if map_file else None,
    }


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    """Fixed column types, so that an empty first run and later runs concatenate cleanly."""
    types = {
        "image_id": "int64",
        "seed": "int64",
        "n_segments": "int64",
        "seconds": "float64",
        "passes": "float64",
        "shared_by": "int64",
        "valid": "bool",
    }
    return table.astype(types)


def _map_keys(path: Path) -> set[str] | None:
    """The array names in an image's maps file; None when it is missing or does not load."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return set(z.files)
    except FileNotFoundError:
        return None
    except Exception as err:  # a truncated or foreign file: zipfile, ValueError, OSError, ...
        log.warning("%s does not load (%s); its explanations are computed again", path, err)
        return None


def _write_maps(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Merge ``arrays`` into the image's npz (keeping maps from earlier runs), atomically."""
    merged: dict[str, np.ndarray] = {}
    if _map_keys(path) is not None:  # an unreadable earlier file is replaced, not merged
        with np.load(path, allow_pickle=False) as old:
            merged = {k: old[k] for k in old.files}
    merged.update(arrays)
    with atomic_write(path, "wb") as fh:
        np.savez_compressed(fh, **merged)


def _compact(pixel_map: np.ndarray) -> np.ndarray:
    # float16 halves the storage; maps beyond its range (box-coordinate sums) stay float32.
    finite = pixel_map[np.isfinite(pixel_map)]
    if finite.size and np.abs(finite).max() > 6e4:
        return pixel_map.astype(np.float32)
    return pixel_map.astype(np.float16)


def _limit(candidates: pd.DataFrame, cfg: ExplainConfig) -> pd.DataFrame:
    if cfg.max_candidates is not None and len(candidates) > cfg.max_candidates:
        log.info(
            "explaining the first %d of %d candidates (explain.max_candidates)",
            cfg.max_candidates,
            len(candidates),
        )
        return candidates.head(cfg.max_candidates)
    return candidates


def _flush_seconds() -> float:
    return float(os.environ.get("E2X_EXPLAIN_FLUSH_SECONDS", FLUSH_SECONDS))


class _ExplainRun:
    """One pass of the explain stage over a table: what is done, what is new, and the writes."""

    def __init__(
        self,
        explainers: dict[str, Explainer],
        cfg: ExplainConfig,
        layout: SplitLayout,
        table_path: Path,
        seed: int,
    ) -> None:
        self.explainers, self.cfg, self.layout, self.seed = explainers, cfg, layout, seed
        self.table_path = table_path
        self.existing = self._readable_rows(table_path, layout)
        # the detector's weights enter the hash: another checkpoint's explanations of the same
        # candidate id (same anchor and label) are not this one's, so they are explained again
        weights = model_fingerprint(next(iter(explainers.values())).detector) if explainers else ""
        self.hashes = {
            m: params_hash(m, {**e.params(), "detector": weights}, seed)
            for m, e in explainers.items()
        }
        if len(self.existing):  # rows of these methods under other settings or weights go
            current = self.existing["method"].map(self.hashes)
            stale = current.notna() & (current != self.existing["params_hash"])
            self.existing = self.existing[~stale].reset_index(drop=True)
        cols = ("candidate_id", "method", "output", "params_hash")
        self.done = set(zip(*(self.existing[c] for c in cols), strict=True))
        self.seg_key = segments_key(cfg)
        self.new_rows: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()

    @staticmethod
    def _readable_rows(table_path: Path, layout: SplitLayout) -> pd.DataFrame:
        """The earlier run's rows whose maps can be read: an unreadable table, or a row whose
        ``maps/*.npz`` is missing, does not load or lacks its array, is explained again (the
        file is named in a warning)."""
        empty = pd.DataFrame(columns=list(TABLE_COLUMNS))
        if not table_path.is_file():
            return empty
        try:
            table = pd.read_parquet(table_path)
        except Exception as err:  # truncated: pyarrow raises ArrowInvalid / OSError
            log.warning("%s does not load (%s); explaining every candidate again", table_path, err)
            return empty
        if not len(table):
            return table
        keys = {f: _map_keys(layout.root / f) for f in table["map_file"].dropna().unique().tolist()}
        ok = [
            not valid  # invalid rows have no map
            or (keys.get(mf) is not None and f"{cid}|{m}|{o}" in keys[mf])
            for valid, mf, cid, m, o in zip(
                table["valid"].astype(bool),
                table["map_file"],
                table["candidate_id"],
                table["method"],
                table["output"],
                strict=True,
            )
        ]
        bad = int(len(ok) - sum(ok))
        if bad:
            log.warning(
                "%d rows of %s point at maps that are missing or unreadable; explaining them again",
                bad,
                table_path,
            )
        return table[ok].reset_index(drop=True)

    def pending(self, group: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
        """(method, output) -> the image's candidate rows not yet explained with these params."""
        out: dict[tuple[str, str], pd.DataFrame] = {}
        for method in self.cfg.methods:
            for output in method_outputs(method, self.cfg):
                h = self.hashes[method]
                todo = group[
                    [(str(c), method, output, h) not in self.done for c in group.candidate_id]
                ]
                if len(todo):
                    out[(method, output)] = todo
        return out

    def no_candidate_row(self, r: pd.Series, image_id: int, method: str, output: str) -> dict:
        """An invalid row: an uncovered FN (anchor -1) gives a candidate-following method nothing
        to follow."""
        return {
            **{c: None for c in TABLE_COLUMNS},
            "candidate_id": str(r["candidate_id"]),
            "image_id": image_id,
            "method": method,
            "output": output,
            "params_hash": self.hashes[method],
            "params": json.dumps(self.explainers[method].params(), sort_keys=True),
            "details": "{}",
            "seed": self.seed,
            "values": [],
            "n_segments": 0,
            "seconds": 0.0,
            "passes": 0.0,
            "shared_by": 0,
            "valid": False,
            "reason": "no detector candidate (anchor -1) to follow; only D-RISE "
            "explains uncovered ground truth",
        }

    def explain_group(self, image_id: int, group: pd.DataFrame) -> None:
        """Explain one image's pending rows with ONE SLIC segmentation; write its maps file."""
        pending = self.pending(group)
        if not pending:
            return
        image = load_image(group["image_path"].iloc[0])
        segments = slic_segments(image, self.cfg.n_segments, self.cfg.compactness)
        map_rel = SplitLayout.map_name(image_id)
        arrays: dict[str, np.ndarray] = {self.seg_key: segments.astype(np.int32)}
        for (method, output), rows in pending.items():
            explainer = self.explainers[method]
            followable = (rows["anchor"].astype(int) >= 0).to_numpy() | (
                not explainer.needs_candidate
            )
            for _, r in rows[~followable].iterrows():
                self.new_rows.append(self.no_candidate_row(r, image_id, method, output))
            rows = rows[followable]
            if not len(rows):
                continue
            targets = [Target.from_row(r) for r in rows.itertuples()]
            cids = [str(c) for c in rows["candidate_id"]]
            for exp in explainer.explain(
                image, targets, output, segments=segments, candidate_ids=cids
            ):
                arrays[f"{exp.candidate_id}|{method}|{output}"] = _compact(exp.pixel_map)
                row = _row(exp, image_id, map_rel, self.seg_key)
                row["params_hash"] = self.hashes[method]  # with the weights' fingerprint
                self.new_rows.append(row)
        _write_maps(self.layout.map_file(image_id), arrays)

    def flush(self) -> pd.DataFrame:
        """Write the table so far (existing rows + new ones), atomically."""
        if not self.new_rows and len(self.existing):
            table = self.existing
        else:
            new = _typed(pd.DataFrame(self.new_rows, columns=list(TABLE_COLUMNS)))
            table = (
                pd.concat([self.existing, new], ignore_index=True) if len(self.existing) else new
            )
        write_table(self.table_path, table)
        self.last_flush = time.monotonic()
        return table

    def maybe_flush(self) -> None:
        # A killed run keeps what was flushed; the rerun explains only the rest.
        if time.monotonic() - self.last_flush >= _flush_seconds():
            self.flush()


def explain_candidates(
    detector: Detector,
    candidates: pd.DataFrame,
    cfg: ExplainConfig,
    out_dir: str | Path,
    reference: Tensor | None = None,
    seed: int = 0,
    *,
    progress: bool = True,
    options: dict[str, dict[str, Any]] | None = None,
    table_path: Path | None = None,
) -> pd.DataFrame:
    """Explain every candidate row with every ``cfg.methods`` method; return the full table.

    ``reference`` is the dataset mean (``[3, H, W]`` or ``[3]``) used when
    ``cfg.reference == "mean"``; ``zeros`` and ``blur`` references are made per image.
    ``table_path`` is the table read and written (default ``<out_dir>/explanations.parquet``; a
    scale-out chunk writes its part, see :mod:`e2x_pipeline.explain.parts`).
    """
    _check_candidates(candidates)
    candidates = _limit(candidates, cfg)
    layout = SplitLayout(Path(out_dir))
    options = options or {}
    explainers = {
        m: get_explainer(m, detector, cfg, seed, mean=reference, **options.get(m, {}))
        for m in cfg.methods
    }
    main = table_path is None or table_path == layout.explanations
    # a Dask part is not a generation: merge_parts commits the merged table's
    gen_cm = generation(layout.root, "explain") if main else contextlib.nullcontext()
    with gen_cm as gen:
        run = _ExplainRun(explainers, cfg, layout, table_path or layout.explanations, seed)
        groups = list(candidates.groupby("image_id", sort=True))
        for image_id, group in tqdm(groups, desc="explain", unit="img", disable=not progress):
            run.explain_group(int(image_id), group)
            run.maybe_flush()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        table = run.flush()
        if gen is not None:
            add_explain_files(gen, layout, table)
    return table


def add_explain_files(gen: Generation, layout: SplitLayout, table: pd.DataFrame) -> None:
    """The explain generation: the table and every maps file its rows point at."""
    gen.add(layout.explanations)
    gen.add(*(layout.root / f for f in sorted(table["map_file"].dropna().unique().tolist())))
