"""The explain stage split into chunks of images that run apart (on Dask workers), then merged.

:func:`plan_chunks` cuts the sorted image ids into contiguous chunks. :func:`explain_chunk`
explains one chunk with :func:`~e2x_pipeline.explain.stage.explain_candidates` into its own table
``<out_dir>/parts/explanations-<first id>-<last id>.parquet``; the maps go where a local run puts
them (``maps/<image_id>.npz``: one file per image, so chunks never write the same file).
:func:`merge_parts` folds the main table and every part into ``explanations.parquet``.

The result does not depend on how the images were chunked: every explainer draws its randomness
per call from the seed (``explain/base.py``), chunks hold whole images, and the merge keeps the
first row of each (candidate_id, method, output, params_hash) and sorts rows by image id (stable),
which for a fresh run gives the row order of a local run.

Locking: a chunk takes no lock (its writes are disjoint from other chunks'); whoever plans and
merges holds :func:`~e2x_pipeline.locking.run_lock` on the output folder for the whole stage.
Resume: a chunk's part starts as the main table's rows of its images and is flushed like the
main table, so a killed chunk redoes only its unfinished images; the next run merges left-over
parts first.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
from torch import Tensor

from ..config import ExplainConfig
from ..detectors.base import Detector
from ..generation import generation
from ..io_utils import write_table
from ..layout import SplitLayout
from .stage import TABLE_COLUMNS, _typed, add_explain_files, explain_candidates

KEYS = ["candidate_id", "method", "output", "params_hash"]


def plan_chunks(candidates: pd.DataFrame, chunks: int) -> list[list[int]]:
    """The sorted image ids of ``candidates`` in at most ``chunks`` contiguous, even chunks."""
    ids = sorted({int(i) for i in candidates["image_id"]})
    if not ids:
        return []
    n = max(1, min(int(chunks), len(ids)))
    size, extra = divmod(len(ids), n)
    out, start = [], 0
    for c in range(n):
        end = start + size + (c < extra)
        out.append(ids[start:end])
        start = end
    return out


def explain_chunk(
    detector: Detector,
    candidates: pd.DataFrame,
    cfg: ExplainConfig,
    out_dir: str | Path,
    image_ids: list[int],
    reference: Tensor | None = None,
    seed: int = 0,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """Explain the candidates of ``image_ids`` into their part table; return that table.

    ``candidates`` is the whole stage's candidates table (after ``explain.max_candidates``);
    rows already in the main table are seeded into a new part, so they are not explained again.
    """
    layout = SplitLayout(Path(out_dir))
    ids = [int(i) for i in image_ids]
    part, main = layout.part_file(min(ids), max(ids)), layout.explanations
    if not part.is_file() and main.is_file():
        done = pd.read_parquet(main)
        done = done[done["image_id"].isin(ids)]
        if len(done):
            write_table(part, done)
    rows = candidates[candidates["image_id"].astype(int).isin(ids)]
    # (explain.max_candidates was applied to the whole table: a chunk holds no more than that)
    return explain_candidates(
        detector, rows, cfg, out_dir, reference, seed, progress=progress, table_path=part
    )


def merge_parts(out_dir: str | Path) -> pd.DataFrame:
    """Fold every part into ``<out_dir>/explanations.parquet`` (atomically), remove the parts
    and return the table; the main table's rows win over a part's copy of the same key."""
    layout = SplitLayout(Path(out_dir))
    main, parts = layout.explanations, layout.part_files()
    frames = [pd.read_parquet(main)] if main.is_file() else []
    frames += [pd.read_parquet(p) for p in parts]
    frames = [f for f in frames if len(f)]
    if frames:
        table = pd.concat(frames, ignore_index=True)
        table = table.drop_duplicates(KEYS, keep="first")
        table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
        table = _typed(table[list(TABLE_COLUMNS)])
    else:
        table = _typed(pd.DataFrame(columns=list(TABLE_COLUMNS)))
    if parts or not main.is_file():
        with generation(layout.root, "explain") as gen:
            write_table(main, table)
            add_explain_files(gen, layout, table)
    for p in parts:
        p.unlink()
    with contextlib.suppress(OSError):
        layout.parts.rmdir()
    return table
