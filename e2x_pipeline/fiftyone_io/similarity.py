"""The pool's regions as a FiftyOne Brain similarity index, and the failing features as queries.

The repair stage (:mod:`e2x_pipeline.repair`) retrieves, for each failing feature ``f`` of a
mode, its ``neighbours`` nearest pool superpixels by cosine distance (scikit-learn
``NearestNeighbors``, exact). :func:`publish_region_index` puts those pool regions on the pool's
dataset so a person can do the same search in the App:

* ``e2x_regions`` (:data:`REGIONS_FIELD`): per pool sample, ``fo.Detections`` of its indexed
  superpixels; each carries ``region_id`` (``<image_id>/s<segment>``, as in regions.parquet),
  ``segment``, and for a region some failing feature retrieved: label ``mode-<k>``, ``confidence``
  (its best cosine similarity to a failing feature) and ``feature_id`` (that feature). By default
  only the retrieved regions are indexed (the union over failing features of their ``neighbours``
  nearest regions, ~5.6k of the demo's 78k): a failure query's top k, for k <= neighbours, is
  then the same as over every pool region, and it adds 7.5 s to the demo's publish;
  ``index="all"`` indexes every superpixel (54 s more, most of it FiftyOne building 78k labels;
  ``e2x bench similarity``).
* the Brain run ``e2x_regions`` (:data:`REGIONS_BRAIN_KEY`):
  ``fiftyone.brain.compute_similarity(patches_field="e2x_regions", backend="sklearn")`` on the
  precomputed embeddings. In the App: patches of ``e2x_regions``, select one, "sort by
  similarity".
* the run ``e2x_failure_queries`` (:data:`FAILURE_QUERIES_RUN`, ``ds.load_run_results``): every
  failing feature of a mode (``feature_ids``, ``candidate_ids``, ``mode_ids``) with its query
  vector, so ``ds.sort_by_similarity(r.vectors[i], k=..., brain_key="e2x_regions")`` returns
  the regions the repair stage retrieved for feature ``i``, nearest first.

Why the vectors are not the raw embeddings: the Brain's sklearn backend centres the index
embeddings (subtracts their mean, in place) before it ranks, and ranks a query vector
against either the raw or the centred copy depending on what ran before (fiftyone-brain 0.25,
``brain/internal/core/sklearn.py``). Cosine similarity is not invariant to that shift, so its
ranking would differ from the repair stage's. Euclidean distance is shift-invariant, and on unit
vectors it orders like cosine distance: ``||a - b||^2 = 2 (1 - cos(a, b))``. So the index holds
``z = x / ||x|| - mu`` (``mu``: the mean unit vector of the indexed regions, which makes the
Brain's own centring a no-op) under ``metric="euclidean"``, and a query ``q`` is
``q / ||q|| - mu`` (:func:`region_query`). Distances the Brain reports are ``sqrt(2 (1 - cos))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from . import convert

if TYPE_CHECKING:
    from ..data.coco import CocoDataset

REGIONS_FIELD = "e2x_regions"
REGIONS_BRAIN_KEY = "e2x_regions"
FAILURE_QUERIES_RUN = "e2x_failure_queries"
INDEX_REGIONS = ("retrieved", "all")
IndexRegions = Literal["retrieved", "all"]
# label of an indexed region no failing feature retrieved (index="all")
UNMATCHED_LABEL = "region"


@dataclass(frozen=True)
class PoolRegions:
    """What the repair stage searched: every pool superpixel (regions.parquet, its
    ``region_embeddings.npy`` row for row), the split's failing features (features.parquet,
    with ``embedding``) and ``repair.neighbours``."""

    regions: pd.DataFrame
    embeddings: np.ndarray
    features: pd.DataFrame | None
    neighbours: int
    index: IndexRegions = "retrieved"


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row over its L2 norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def failing_features(features: pd.DataFrame | None) -> tuple[pd.DataFrame, np.ndarray]:
    """The features the repair stage queries with (``mode_id >= 0``) and their embeddings."""
    if features is None or not len(features):
        return pd.DataFrame(columns=["feature_id", "candidate_id", "mode_id"]), np.zeros((0, 0))
    f = features[features["mode_id"] >= 0].reset_index(drop=True)
    emb = np.stack(f["embedding"].to_numpy()).astype(np.float64) if len(f) else np.zeros((0, 0))
    return f, emb


def retrieved_regions(
    region_embeddings: np.ndarray, queries: np.ndarray, neighbours: int
) -> pd.DataFrame:
    """Per pool region some query retrieved: ``region`` (row), ``sim`` (best cosine similarity),
    ``query`` (the query row giving it); the repair stage's search (``match_modes``)."""
    from sklearn.neighbors import NearestNeighbors

    if not len(queries) or not len(region_embeddings):
        return pd.DataFrame({"region": [], "sim": [], "query": []})
    k = min(neighbours, len(region_embeddings))
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    dist, idx = index.fit(region_embeddings).kneighbors(queries)
    hits = pd.DataFrame(
        {
            "region": idx.ravel(),
            "sim": 1.0 - dist.ravel(),
            "query": np.repeat(np.arange(len(queries)), k),
        }
    )
    best = hits.sort_values(["region", "sim", "query"], ascending=[True, False, True])
    return best.drop_duplicates("region").reset_index(drop=True)


def _region_labels(
    fo: Any,
    pool: CocoDataset,
    regions: pd.DataFrame,
    hits: pd.DataFrame,
    feats: pd.DataFrame,
    keep: np.ndarray,
    paths: dict[int, str],
) -> dict[str, Any]:
    """``filepath -> fo.Detections`` of the kept regions (None for images with none)."""
    sim = dict(zip(hits["region"], hits["sim"], strict=True))
    query = dict(zip(hits["region"], hits["query"], strict=True))
    kept = regions.iloc[keep]
    boxes = kept[["x1", "y1", "x2", "y2"]].to_numpy(dtype=np.float64).tolist()
    by_image: dict[int, list[Any]] = {}
    sizes: dict[int, tuple[float, float]] = {}
    for row, image_id, region_id, segment, box in zip(
        keep.tolist(),
        kept["image_id"].astype(int).tolist(),
        kept["region_id"].astype(str).tolist(),
        kept["segment"].astype(int).tolist(),
        boxes,
        strict=True,
    ):
        if image_id not in sizes:
            sizes[image_id] = convert.image_size(pool.images.get(image_id, {}))
        attrs: dict[str, Any] = {"label": UNMATCHED_LABEL}
        if row in sim:
            f = feats.iloc[int(query[row])]
            attrs = {
                "label": convert.mode_tag(int(f["mode_id"])),
                "confidence": float(sim[row]),
                "feature_id": str(f["feature_id"]),
            }
        by_image.setdefault(image_id, []).append(
            fo.Detection(
                bounding_box=convert.relative_box(box, *sizes[image_id]),
                region_id=region_id,
                segment=segment,
                **attrs,
            )
        )
    return {
        path: fo.Detections(detections=by_image[i]) if i in by_image else None
        for i, path in paths.items()
    }


def publish_region_index(
    ds: Any, pool: CocoDataset, pool_regions: PoolRegions, paths: dict[int, str]
) -> int:
    """Write ``e2x_regions``, the Brain run and the failure queries (module doc); returns the
    number of indexed regions. A rerun replaces all three (new label ids, so the Brain run is
    deleted and computed again, never duplicated)."""
    import fiftyone.brain as fob

    from .db import _check_field, _fo

    regions, region_embeddings = pool_regions.regions, pool_regions.embeddings
    neighbours, index = pool_regions.neighbours, pool_regions.index
    if index not in INDEX_REGIONS:
        raise ValueError(f"unknown region index {index!r}; choose one of {INDEX_REGIONS}")
    if len(regions) != len(region_embeddings):
        raise ValueError(
            f"the pool's regions table has {len(regions)} rows but its embeddings "
            f"{len(region_embeddings)}; rerun 'e2x repair' to embed the pool again"
        )
    fo = _fo()
    _check_field(ds, REGIONS_FIELD, fo.Detections)
    feats, queries = failing_features(pool_regions.features)
    hits = retrieved_regions(region_embeddings, queries, neighbours)
    keep = np.arange(len(regions)) if index == "all" else np.sort(hits["region"].to_numpy())
    keep = keep[regions["image_id"].iloc[keep].astype(int).isin(list(paths)).to_numpy()]
    ds.set_values(
        REGIONS_FIELD,
        _region_labels(fo, pool, regions, hits, feats, keep, paths),
        key_field="filepath",
    )
    # compute_similarity refuses an existing key, and the old run indexes the old label ids
    if REGIONS_BRAIN_KEY in ds.list_brain_runs():
        ds.delete_brain_run(REGIONS_BRAIN_KEY)
    if FAILURE_QUERIES_RUN in ds.list_runs():
        ds.delete_run(FAILURE_QUERIES_RUN)
    if not len(keep):
        return 0
    unit = unit_rows(region_embeddings[keep])
    mu = unit.mean(axis=0)
    row_of = {rid: i for i, rid in enumerate(regions["region_id"].iloc[keep])}
    sample_ids, region_ids = ds.values(["id", f"{REGIONS_FIELD}.detections.region_id"])
    z = unit - mu
    # per sample, one row per patch in the field's order (fiftyone-brain's patch embeddings)
    embeddings = {
        sid: z[[row_of[r] for r in rids]]
        for sid, rids in zip(sample_ids, region_ids, strict=True)
        if rids
    }
    fob.compute_similarity(
        ds,
        patches_field=REGIONS_FIELD,
        embeddings=embeddings,
        backend="sklearn",
        metric="euclidean",
        brain_key=REGIONS_BRAIN_KEY,
        progress=False,
    )
    config = ds.init_run(brain_key=REGIONS_BRAIN_KEY, neighbours=int(neighbours), index=index)
    ds.register_run(FAILURE_QUERIES_RUN, config, overwrite=True)
    results = ds.init_run_results(
        FAILURE_QUERIES_RUN,
        feature_ids=[str(v) for v in feats["feature_id"]],
        candidate_ids=[str(v) for v in feats["candidate_id"]],
        mode_ids=[int(v) for v in feats["mode_id"]],
        vectors=(unit_rows(queries) - mu).tolist() if len(queries) else [],
        mean=mu.tolist(),
    )
    ds.save_run_results(FAILURE_QUERIES_RUN, results)
    return len(keep)


def region_query(ds: Any, vectors: np.ndarray) -> np.ndarray:
    """Raw region embedding(s) (as regions.parquet / features.parquet hold them) as query
    vectors of the ``e2x_regions`` index: ``q / ||q|| - mu`` (module doc)."""
    if FAILURE_QUERIES_RUN not in ds.list_runs():
        raise ValueError(
            f"FiftyOne dataset {ds.name!r} has no region index; run 'e2x repair' to publish one"
        )
    mu = np.asarray(ds.load_run_results(FAILURE_QUERIES_RUN).mean, dtype=np.float64)
    return unit_rows(vectors) - mu


def failure_queries(ds: Any) -> pd.DataFrame:
    """The failing features of the published index: ``feature_id``, ``candidate_id``,
    ``mode_id`` and ``query`` (the vector for ``ds.sort_by_similarity(..., brain_key=
    "e2x_regions")``)."""
    if FAILURE_QUERIES_RUN not in ds.list_runs():
        raise ValueError(
            f"FiftyOne dataset {ds.name!r} has no failure queries; run 'e2x repair' first"
        )
    r = ds.load_run_results(FAILURE_QUERIES_RUN)
    return pd.DataFrame(
        {
            "feature_id": r.feature_ids,
            "candidate_id": r.candidate_ids,
            "mode_id": r.mode_ids,
            "query": [np.asarray(v, dtype=np.float64) for v in r.vectors],
        }
    )
