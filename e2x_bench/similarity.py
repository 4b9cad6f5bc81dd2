"""``e2x bench similarity``: the repair stage's NearestNeighbors against FiftyOne Brain's index.

Reads a finished run's pool regions and failing features (``e2x repair`` first), publishes the
repair set into two throw-away FiftyOne datasets (the pool's regions indexed as
``index="retrieved"`` and ``"all"``), and times the same queries, the failing features with
``k = repair.neighbours``, through:

* scikit-learn ``NearestNeighbors`` (cosine, brute), as :func:`e2x_pipeline.repair.match_modes`
  runs it: fit on every pool region, then one batched ``kneighbors`` (and one call per query);
* the Brain index: ``ds.to_patches("e2x_regions").sort_by_similarity(q, k, brain_key=
  "e2x_regions")`` and reading the ``k`` region ids back, one query at a time (what the App
  and a notebook do), on the cached index.

It also counts the queries whose top ``k`` agree (same region ids, same order).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from e2x_pipeline.config import E2XConfig

from .common import write_bench


def _nn(emb: np.ndarray, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    """(fit + batched kneighbors seconds, per-query kneighbors seconds, top-k rows)."""
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(emb)
    _, top = index.kneighbors(queries)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for q in queries:
        index.kneighbors(q[None])
    return batched, time.perf_counter() - t0, top


def bench_similarity(
    cfg: E2XConfig, out_dir: Path, progress: bool = True, repeats: int = 3
) -> dict:
    """Query time of NearestNeighbors vs the Brain index on the run's pool (module doc)."""
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.stages import open_split

    split, pool_split = cfg.data.eval_split, cfg.repair.pool_split
    layout, pool_layout = cfg.split_layout(split), cfg.split_layout(pool_split)
    regions = pd.read_parquet(pool_layout.require("regions"))
    emb = np.load(pool_layout.require("region_embeddings"), allow_pickle=False)
    features = pd.read_parquet(layout.require("features"))
    repair_set = pd.read_parquet(layout.require("repair_set"))
    pool = open_split(cfg, pool_split)
    k = min(cfg.repair.neighbours, len(regions))
    raw = fiftyone_io.similarity.failing_features(features)[1]
    ids = regions["region_id"].to_numpy()
    nn = [_nn(emb, raw, k) for _ in range(repeats)]
    top = nn[0][2]
    result: dict = {
        "split": split,
        "pool_images": len(pool.images),
        "pool_regions": len(regions),
        "queries": len(raw),
        "k": k,
        "nearest_neighbors": {
            "fit_and_batched_query_seconds": statistics.median(n[0] for n in nn),
            "per_query_ms": 1000 * statistics.median(n[1] for n in nn) / max(len(raw), 1),
        },
        "brain": {},
    }
    for index in fiftyone_io.similarity.INDEX_REGIONS:
        name = f"e2x-bench-similarity-{index}"
        fiftyone_io.delete_dataset(name)
        regs = fiftyone_io.PoolRegions(regions, emb, features, cfg.repair.neighbours, index)
        fiftyone_io.publish_repair(name, pool, repair_set)  # creates the pool's dataset
        t0 = time.perf_counter()
        fiftyone_io.publish_repair(name, pool, repair_set)
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = fiftyone_io.publish_repair(name, pool, repair_set, regions=regs)
        publish = time.perf_counter() - t0
        queries = fiftyone_io.failure_queries(ds)["query"].tolist()
        patches = ds.to_patches(fiftyone_io.REGIONS_FIELD)
        times, agree = [], 0
        for rep in range(repeats):
            t0 = time.perf_counter()
            for i, q in enumerate(queries):
                view = patches.sort_by_similarity(q, k=k, brain_key=fiftyone_io.REGIONS_BRAIN_KEY)
                got = view.values(f"{fiftyone_io.REGIONS_FIELD}.region_id")
                if rep == 0:
                    agree += got == ids[top[i]].tolist()
            times.append(time.perf_counter() - t0)
        result["brain"][index] = {
            "indexed_regions": int(ds.count(f"{fiftyone_io.REGIONS_FIELD}.detections")),
            "publish_repair_seconds": publish,
            "publish_repair_without_index_seconds": plain,
            "per_query_ms": 1000 * statistics.median(times) / max(len(queries), 1),
            "top_k_agree": f"{agree}/{len(queries)}",
        }
        fiftyone_io.delete_dataset(name)
    nn_r = result["nearest_neighbors"]
    rows = "\n".join(
        f"| Brain sort_by_similarity, index={i} ({b['indexed_regions']} regions) | "
        f"{b['per_query_ms']:.1f} | {b['top_k_agree']} | {b['publish_repair_seconds']:.1f} "
        f"({b['publish_repair_without_index_seconds']:.1f} without the index) |"
        for i, b in result["brain"].items()
    )
    md = (
        f"Pool `{pool_split}`: {len(pool.images)} images, {len(regions)} regions; "
        f"{len(raw)} failing features of `{split}` as queries, k = {k}; median of {repeats}.\n\n"
        "| search | ms per query | top-k = NearestNeighbors | publish_repair s |\n"
        "|---|---|---|---|\n"
        f"| NearestNeighbors (cosine, brute), one query at a time | {nn_r['per_query_ms']:.2f} "
        "| - | - |\n"
        f"| NearestNeighbors fit + all queries batched (the repair stage) | "
        f"{1000 * nn_r['fit_and_batched_query_seconds'] / max(len(raw), 1):.2f} | - | - |\n"
        f"{rows}\n"
    )
    write_bench(out_dir, "similarity", result, md)
    return result
