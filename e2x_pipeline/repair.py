"""The repair stage: pool images that carry a failure mode's features, within a labelling budget.

1. **Pool regions.** Every pool image is cut into SLIC superpixels with the explain stage's
   settings and every superpixel is embedded exactly like a failing feature
   (:class:`features.RegionEmbedder`). Cached in ``<output_dir>/<pool_split>/regions.parquet`` and
   ``region_embeddings.npy``, keyed by the pool's content, the model's weights and the settings.
2. **Index.** scikit-learn's ``NearestNeighbors`` (cosine, exact) indexes the pool regions.
3. **Match.** Each failing feature ``f`` of mode ``m`` retrieves its ``neighbours`` nearest pool
   regions. A pool image ``I`` scores, for mode ``m``,

       score(I, m) = (1 / |m|) * sum_{f in m} max_{r in I, r in kNN(f)} (1 - cos_dist(f, r)),

   the mean over the mode's features of the best similarity of a retrieved region of ``I``
   (0 when ``I`` was not retrieved). An image many of the mode's features agree on ranks high.
   The matching region is the region of ``I`` retrieved most often (ties: higher similarity).
4. **Select.** The budget of ``budget`` images is split across modes (:func:`allocate`): in
   proportion to their size (largest remainder), evenly, or with diminishing returns; each mode
   takes its best-scoring images not yet taken. Unused quota goes to the modes with the best
   remaining scores.

Writes ``<split>/repair_set.parquet`` (:data:`REPAIR_COLUMNS`), every scored (mode, pool
image) pair in ``repair_scores.parquet`` (to select again at another budget) and ``repair.json``
(counts and, on the benchmark, precision per mode and per planted cause against the pool's base
rate).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors
from tqdm.auto import tqdm

from .config import ExplainConfig, RepairConfig
from .data.coco import CocoDataset, load_image
from .detectors.base import Detector, model_fingerprint
from .explain.superpixels import slic_segments
from .features import RegionEmbedder, all_segment_boxes
from .generation import generation, problem
from .io_utils import atomic_write, write_json, write_table
from .layout import SplitLayout

REGION_COLUMNS = ["region_id", "image_id", "file_name", "segment", "x1", "y1", "x2", "y2", "area"]
REPAIR_COLUMNS = [
    "image_id",
    "file_name",
    "image_path",
    "mode_id",
    "score",
    "rank",
    "support",
    "segment",
    "x1",
    "y1",
    "x2",
    "y2",
]


@dataclass
class RepairResult:
    repair_set: pd.DataFrame
    metrics: dict


def _pool_key(
    pool: CocoDataset, embedder: RegionEmbedder, explain: ExplainConfig, model_key: str
) -> tuple[str, dict]:
    """The cache key of the pool's regions: pool content, model weights, SLIC and embedding."""
    payload = {
        "pool": pool.content_hash(),  # labels and image bytes, not only file names
        "images": [pool.images[i]["file_name"] for i in pool.image_ids],
        "model": model_key,
        "slic": [explain.n_segments, explain.compactness],
        "levels": list(embedder.levels) if embedder.levels is not None else None,
        "appearance": [embedder.appearance, embedder.appearance_weight],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16], payload


def _image_regions(image_id: int, file_name: str, seg: np.ndarray) -> pd.DataFrame:
    """One :data:`REGION_COLUMNS` row per superpixel of one pool image."""
    boxes = all_segment_boxes(seg)
    segs_n = np.arange(len(boxes))
    return pd.DataFrame(
        {
            "region_id": [f"{image_id}/s{k}" for k in segs_n],
            "image_id": int(image_id),
            "file_name": file_name,
            "segment": segs_n,
            "x1": boxes[:, 0],
            "y1": boxes[:, 1],
            "x2": boxes[:, 2],
            "y2": boxes[:, 3],
            "area": boxes[:, 4].astype(np.int64),
        }
    )


def _embed_pool(
    pool: CocoDataset,
    embedder: RegionEmbedder,
    explain: ExplainConfig,
    progress: bool,
    batch_size: int,
) -> tuple[pd.DataFrame, np.ndarray]:
    rows: list[pd.DataFrame] = []
    chunks: list[np.ndarray] = []
    ids = pool.image_ids
    bar = tqdm(total=len(ids), desc="embed pool", unit="img", disable=not progress)
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        images = [load_image(pool.image_path(i)) for i in batch]
        segs = [slic_segments(im, explain.n_segments, explain.compactness) for im in images]
        wanted = [np.arange(int(s.max()) + 1) for s in segs]
        for image_id, seg, emb in zip(
            batch, segs, embedder.embed(images, segs, wanted), strict=True
        ):
            rows.append(_image_regions(image_id, pool.images[image_id]["file_name"], seg))
            chunks.append(emb)
        bar.update(len(batch))
    bar.close()
    if not rows:
        return pd.DataFrame(columns=REGION_COLUMNS), np.zeros((0, 0), np.float32)
    return pd.concat(rows, ignore_index=True)[REGION_COLUMNS], np.concatenate(chunks)


def pool_regions(
    pool: CocoDataset,
    embedder: RegionEmbedder,
    explain: ExplainConfig,
    cache_dir: Path,
    model_key: str,
    progress: bool = True,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Every superpixel of every pool image with its embedding (cached, see module doc)."""
    key, key_payload = _pool_key(pool, embedder, explain, model_key)
    layout = SplitLayout(Path(cache_dir))
    table_path, emb_path, stamp = layout.regions, layout.region_embeddings, layout.regions_stamp
    # the three files of one generation (a kill between them, or a truncated file, re-embeds)
    fresh = table_path.is_file() and emb_path.is_file() and stamp.is_file()
    fresh = fresh and problem(layout.root, "pool-regions", require_manifest=True) is None
    if fresh and json.loads(stamp.read_text()).get("key") == key:
        return pd.read_parquet(table_path), np.load(emb_path, allow_pickle=False)
    table, embeddings = _embed_pool(pool, embedder, explain, progress, batch_size)
    with generation(layout.root, "pool-regions") as gen:
        write_table(table_path, table)
        with atomic_write(emb_path, "wb") as fh:
            np.save(fh, embeddings)
        write_json(stamp, {"key": key, **key_payload, "regions": len(table)})
        gen.add(table_path, emb_path, stamp)
    return table, embeddings


def match_modes(
    features: pd.DataFrame,
    feature_embeddings: np.ndarray,
    regions: pd.DataFrame,
    region_embeddings: np.ndarray,
    neighbours: int,
) -> pd.DataFrame:
    """Score every retrieved (mode, pool image) pair (module formula, step 3).

    Returns columns mode_id, image_id, score, support (features that retrieved the image), and
    the matching region's segment and box.
    """
    cols = ["mode_id", "image_id", "score", "support", "segment", "x1", "y1", "x2", "y2"]
    if not len(features) or not len(regions):
        return pd.DataFrame(columns=cols)
    k = min(neighbours, len(regions))
    index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute")
    index.fit(region_embeddings)
    region_image = regions["image_id"].to_numpy()
    out = []
    for mode_id in sorted(m for m in features["mode_id"].unique() if m >= 0):
        member = np.flatnonzero(features["mode_id"].to_numpy() == mode_id)
        dist, idx = index.kneighbors(feature_embeddings[member])
        hits = pd.DataFrame(
            {
                "feature": np.repeat(np.arange(len(member)), k),
                "region": idx.ravel(),
                "image_id": region_image[idx.ravel()],
                "sim": 1.0 - dist.ravel(),
            }
        )
        best = hits.groupby(["feature", "image_id"])["sim"].max().reset_index()
        per_image = best.groupby("image_id").agg(total=("sim", "sum"), support=("sim", "size"))
        per_region = (
            hits.groupby(["image_id", "region"])["sim"]
            .agg(["size", "max"])
            .reset_index()
            .sort_values(["image_id", "size", "max"], ascending=[True, False, False])
            .drop_duplicates("image_id")
            .set_index("image_id")
        )
        for image_id, r in per_image.iterrows():
            reg = regions.iloc[int(per_region.loc[image_id, "region"])]
            out.append(
                {
                    "mode_id": int(mode_id),
                    "image_id": int(image_id),
                    "score": float(r["total"] / len(member)),
                    "support": int(r["support"]),
                    "segment": int(reg["segment"]),
                    "x1": float(reg["x1"]),
                    "y1": float(reg["y1"]),
                    "x2": float(reg["x2"]),
                    "y2": float(reg["y2"]),
                }
            )
    return pd.DataFrame(out, columns=cols)


SATURATION_IMAGES = 3.0
"""``tau`` of the diminishing allocation: on the benchmark, fine-tuning learns a cause from about
three images that carry it, so a mode's next image is worth ``1/e`` of its first after three."""


def allocate(sizes: dict[int, int], budget: int, allocation: str) -> dict[int, int]:
    """Quota per mode: proportional to size (largest remainder), even, or diminishing.

    ``diminishing`` models the value of ``q`` images for a mode of ``n_m`` failures as
    ``n_m (1 - exp(-q / tau))`` (a mode stops improving after a few images, ``tau`` =
    :data:`SATURATION_IMAGES`) and hands out the budget one image at a time to the mode of the
    largest marginal gain ``n_m exp(-q_m / tau)`` (ties: lower mode id). It is a round robin
    weighted by size: a mode twice as large gets ``tau ln 2`` (about 2) images more, not twice as
    many, so the small modes (often the FP ones) get their share.
    """
    if not sizes:
        return {}
    if allocation == "diminishing":
        quota = dict.fromkeys(sizes, 0)
        for _ in range(budget):
            m = min(sizes, key=lambda m: (-sizes[m] * np.exp(-quota[m] / SATURATION_IMAGES), m))
            quota[m] += 1
        return quota
    weights = {m: (s if allocation == "proportional" else 1) for m, s in sizes.items()}
    total = sum(weights.values())
    raw = {m: budget * w / total for m, w in weights.items()}
    quota = {m: int(np.floor(v)) for m, v in raw.items()}
    rest = budget - sum(quota.values())
    for m in sorted(raw, key=lambda m: (-(raw[m] - quota[m]), m))[:rest]:
        quota[m] += 1
    return quota


def select_repair_set(
    scores: pd.DataFrame, mode_sizes: dict[int, int], budget: int, allocation: str
) -> pd.DataFrame:
    """Pick at most ``budget`` distinct pool images (module doc, step 4)."""
    quota = allocate(mode_sizes, budget, allocation)
    ranked = scores.sort_values(["mode_id", "score", "image_id"], ascending=[True, False, True])
    taken: set[int] = set()
    chosen: list[dict] = []
    for mode_id in sorted(quota):
        rows = ranked[ranked["mode_id"] == mode_id]
        for r in rows.to_dict("records"):
            if sum(c["mode_id"] == mode_id for c in chosen) >= quota[mode_id]:
                break
            if r["image_id"] not in taken:
                taken.add(r["image_id"])
                chosen.append(r)
    leftover = budget - len(chosen)
    if leftover > 0:  # modes that ran out of matches pass their quota on
        for r in scores.sort_values(["score", "image_id"], ascending=[False, True]).to_dict(
            "records"
        ):
            if leftover == 0:
                break
            if r["image_id"] not in taken:
                taken.add(r["image_id"])
                chosen.append(r)
                leftover -= 1
    out = pd.DataFrame(chosen, columns=scores.columns)
    out = out.sort_values(["score", "image_id"], ascending=[False, True], kind="stable")
    out["rank"] = np.arange(1, len(out) + 1)
    return out.reset_index(drop=True)


def repair_precision(
    repair_set: pd.DataFrame, modes: pd.DataFrame, pool_causes: list[dict], n_pool: int
) -> dict:
    """Share of selected images carrying their mode's planted cause, vs the pool's base rate."""
    carriers: dict[str, set[int]] = {}
    for c in pool_causes:
        carriers.setdefault(c["cause"], set()).add(int(c["image_id"]))
    base = {c: len(ims) / n_pool for c, ims in carriers.items()} if n_pool else {}
    cause_of = {
        int(m.mode_id): (m.cause if isinstance(m.cause, str) else None) for m in modes.itertuples()
    }
    per_mode = {}
    per_cause: dict[str, list[int]] = {}
    for mode_id, g in repair_set.groupby("mode_id"):
        cause = cause_of.get(int(mode_id))
        if not cause:
            per_mode[int(mode_id)] = {"cause": None, "selected": len(g)}
            continue
        hit = [int(i in carriers.get(cause, set())) for i in g["image_id"]]
        per_cause.setdefault(cause, []).extend(hit)
        per_mode[int(mode_id)] = {
            "cause": cause,
            "selected": len(g),
            "precision": float(np.mean(hit)),
            "base_rate": base.get(cause, 0.0),
        }
    any_cause = set().union(*carriers.values()) if carriers else set()
    return {
        "per_mode": per_mode,
        "per_cause": {
            c: {
                "selected": len(h),
                "precision": float(np.mean(h)),
                "base_rate": base.get(c, 0.0),
                "lift": float(np.mean(h)) / base[c] if base.get(c) else None,
            }
            for c, h in sorted(per_cause.items())
        },
        "any_cause": {
            "precision": float(repair_set["image_id"].isin(any_cause).mean())
            if len(repair_set)
            else None,
            "base_rate": len(any_cause) / n_pool if n_pool else None,
        },
    }


def run_repair_stage(
    detector: Detector,
    split_dir: str | Path,
    pool: CocoDataset,
    pool_dir: str | Path,
    embedder: RegionEmbedder,
    explain: ExplainConfig,
    cfg: RepairConfig,
    pool_causes: list[dict] | None = None,
    progress: bool = True,
) -> RepairResult:
    """Match the split's failure modes to the pool and select the repair set (module doc)."""
    split_dir, pool_dir = Path(split_dir), Path(pool_dir)
    layout = SplitLayout(split_dir)
    features = pd.read_parquet(layout.require("features"))
    modes = pd.read_parquet(layout.require("failure_modes"))
    regions, region_emb = pool_regions(
        pool,
        embedder,
        explain,
        pool_dir,
        model_fingerprint(detector),  # a changed checkpoint re-embeds the pool
        progress,
        cfg.batch_size,
    )
    feat_emb = (
        np.stack(features["embedding"].to_numpy()).astype(np.float32)
        if len(features)
        else np.zeros((0, 0), np.float32)
    )
    if len(features) and len(regions) and feat_emb.shape[1] != region_emb.shape[1]:
        raise ValueError(
            f"failing features in {split_dir} were embedded with {feat_emb.shape[1]} dims but the "
            f"pool with {region_emb.shape[1]}; rerun 'e2x cluster' with the current config"
        )
    with torch.no_grad():
        scores = match_modes(features, feat_emb, regions, region_emb, cfg.neighbours)
    sizes = {int(m.mode_id): int(m.size) for m in modes.itertuples()}
    chosen = select_repair_set(scores, sizes, min(cfg.budget, len(pool.images)), cfg.allocation)
    chosen["file_name"] = [pool.images[int(i)]["file_name"] for i in chosen["image_id"]]
    chosen["image_path"] = [str(pool.image_path(int(i))) for i in chosen["image_id"]]
    chosen = chosen[REPAIR_COLUMNS]
    metrics = {
        "pool_images": len(pool.images),
        "pool_regions": len(regions),
        "budget": cfg.budget,
        "selected": len(chosen),
        "allocation": cfg.allocation,
        "per_mode_selected": {str(k): int(v) for k, v in chosen["mode_id"].value_counts().items()},
    }
    if pool_causes:
        metrics["precision"] = repair_precision(chosen, modes, pool_causes, len(pool.images))
    with generation(layout.root, "repair") as gen:
        write_table(layout.repair_scores, scores)
        write_table(layout.repair_set, chosen)
        write_json(layout.repair_summary, metrics)
        gen.add(layout.repair_scores, layout.repair_set, layout.repair_summary)
    return RepairResult(chosen, metrics)


def format_repair(metrics: dict) -> str:
    """Precision per planted cause against the pool's base rate, as plain text."""
    lines = [f"repair set: {metrics['selected']} of {metrics['pool_images']} pool images"]
    prec = metrics.get("precision")
    if prec:
        lines.append(f"{'planted cause':<14}{'selected':>9}{'precision':>11}{'base rate':>11}")
        for c, p in prec["per_cause"].items():
            lines.append(f"{c:<14}{p['selected']:>9}{p['precision']:>11.2f}{p['base_rate']:>11.2f}")
        a = prec["any_cause"]
        if a["precision"] is not None:
            lines.append(
                f"{'any cause':<14}{metrics['selected']:>9}{a['precision']:>11.2f}"
                f"{a['base_rate']:>11.2f}"
            )
    return "\n".join(lines)
