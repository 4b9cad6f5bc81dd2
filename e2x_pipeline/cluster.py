"""The cluster stage: failing features of explained failures, grouped into failure modes.

Reads ``candidates.parquet``, ``explanations.parquet`` and ``maps/*.npz`` of one split folder and
writes, atomically:

* ``features.parquet`` -- one row per failing feature (:data:`features.FEATURE_COLUMNS`, plus
  ``mode_id`` and ``embedding``). ``on_cause`` names the planted cause whose region covers at
  least half of the superpixel (benchmark only).
* ``failure_modes.parquet`` -- one row per failure mode (:data:`MODE_COLUMNS`).
* ``cluster.json`` -- counts and, on the benchmark, the adjusted Rand index (Hubert & Arabie
  1985) between failure modes and planted causes over features that lie on a cause region.
* ``modes/mode-<k>.png`` -- the mode's representative crops: the features nearest the mode's
  centroid, each outlined in its context.

Features of false negatives (what suppressed a detection) and of false positives (what caused a
false one) are clustered separately: they are different kinds of evidence and a failure mode is
one of them. Within each, scikit-learn clusters the embeddings; the number of modes is the one
that maximises the silhouette (Rousseeuw 1987) for k = 2..``max_modes``, or one mode when there
are fewer than ``2 * min_mode_size`` features. ``method: hdbscan`` lets HDBSCAN choose instead
(its noise points become mode -1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.cluster import HDBSCAN, AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from tqdm.auto import tqdm

from .config import ClusterConfig
from .data.coco import load_image
from .detectors.base import Detector
from .features import (
    FEATURE_COLUMNS,
    RegionEmbedder,
    failing_superpixels,
    region_cover,
    segment_boxes,
)
from .generation import generation
from .io_utils import atomic_write, safe_join, write_json, write_table
from .layout import SplitLayout
from .vocab import FAILURES, failing_sign

MODE_COLUMNS = [
    "mode_id",
    "kind",
    "size",
    "n_candidates",
    "n_images",
    "classes",
    "error_types",
    "cause",
    "cause_share",
    "mean_strength",
    "candidate_ids",
    "representatives",
    "crops",
]


@dataclass
class ClusterResult:
    features: pd.DataFrame
    modes: pd.DataFrame
    metrics: dict


def embedder_for(detector: Detector, cfg: ClusterConfig) -> RegionEmbedder:
    return RegionEmbedder(
        detector,
        levels=cfg.levels,
        appearance=cfg.appearance,
        appearance_weight=cfg.appearance_weight,
    )


def _failure_rows(
    candidates: pd.DataFrame, explanations: pd.DataFrame, split_dir: Path, method: str
) -> pd.DataFrame:
    """The valid score explanations by ``method`` of fp and fn candidates, by candidate id."""
    rows = explanations[
        (explanations["method"] == method)
        & (explanations["output"] == "score")
        & explanations["valid"].astype(bool)
    ].sort_values("candidate_id", kind="stable")
    missing = sorted(set(rows["candidate_id"]) - set(candidates["candidate_id"]))
    if missing:
        raise ValueError(
            f"explanations name candidates missing from {SplitLayout(split_dir).candidates}: "
            f"{missing[:5]}; rerun 'e2x explain' after 'e2x mine' with the same output_dir"
        )
    outcome = candidates.set_index("candidate_id").loc[rows["candidate_id"], "outcome"]
    return rows[outcome.isin(FAILURES).to_numpy()]


def _causes_on(seg: np.ndarray, chosen: np.ndarray, causes: list[dict], own: Any) -> list:
    """The planted cause under each chosen superpixel (>= half of it in the cause region), the
    candidate's own cause first, then any other cause on the same image; None elsewhere."""
    on_cause: list[str | None] = [None] * chosen.size
    for c in sorted(causes, key=lambda c: c["cause_id"] != own):
        cover = region_cover(seg, chosen, c["region_bbox"])
        for k in range(chosen.size):
            if on_cause[k] is None and cover[k] >= 0.5:
                on_cause[k] = c["cause"]
    return on_cause


def _feature_rows(
    r: Any, cand: pd.Series, seg: np.ndarray, chosen: np.ndarray, causes: list[dict]
) -> list[dict]:
    """One :data:`FEATURE_COLUMNS` row per failing superpixel of one explanation."""
    values = np.asarray(r.values, dtype=np.float64)
    boxes = segment_boxes(seg, chosen)
    on_cause = _causes_on(seg, chosen, causes, cand.get("cause_id"))
    sign = failing_sign(cand["outcome"])
    return [
        {
            "feature_id": f"{r.candidate_id}/s{int(s)}",
            "candidate_id": r.candidate_id,
            "image_id": int(r.image_id),
            "image_path": cand["image_path"],
            "outcome": cand["outcome"],
            "error_type": cand["error_type"],
            "label": int(cand["label"]),
            "category": cand["category"],
            "segment": int(s),
            "value": float(values[s]),
            "strength": float(sign * values[s]),
            "area": int(boxes[k, 4]),
            "x1": float(boxes[k, 0]),
            "y1": float(boxes[k, 1]),
            "x2": float(boxes[k, 2]),
            "y2": float(boxes[k, 3]),
            "cause": cand.get("cause"),
            "on_cause": on_cause[k],
        }
        for k, s in enumerate(chosen)
    ]


def extract_features(
    candidates: pd.DataFrame,
    explanations: pd.DataFrame,
    split_dir: Path,
    cfg: ClusterConfig,
    causes: list[dict] | None = None,
) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """The failing features of every valid explanation by ``cfg.explain_method``.

    Returns the features table (without embeddings) and each image's superpixels.
    """
    rows = _failure_rows(candidates, explanations, split_dir, cfg.explain_method)
    cands = candidates.set_index("candidate_id")
    by_image: dict[int, list[dict]] = {}
    for c in causes or []:
        by_image.setdefault(int(c["image_id"]), []).append(c)
    segments: dict[int, np.ndarray] = {}
    out: list[dict] = []
    for r in rows.itertuples():
        cand = cands.loc[r.candidate_id]
        image_id = int(r.image_id)
        if image_id not in segments:
            with np.load(safe_join(split_dir, r.map_file), allow_pickle=False) as maps:
                segments[image_id] = maps[r.segments_key].astype(np.int32)
        values = np.asarray(r.values, dtype=np.float64)
        chosen = failing_superpixels(values, cand["outcome"], cfg.fraction, cfg.max_per_candidate)
        if chosen.size:
            seg, image_causes = segments[image_id], by_image.get(image_id, [])
            out += _feature_rows(r, cand, seg, chosen, image_causes)
    return pd.DataFrame(out, columns=FEATURE_COLUMNS), segments


def embed_features(
    features: pd.DataFrame, segments: dict[int, np.ndarray], embedder: RegionEmbedder
) -> np.ndarray:
    """``[n_features, D]`` embeddings, in the table's row order (one backbone pass per image)."""
    if not len(features):
        return np.zeros((0, 0), dtype=np.float32)
    groups = list(features.groupby("image_id", sort=True))
    images = [load_image(g["image_path"].iloc[0]) for _, g in groups]
    segs = [segments[int(i)] for i, _ in groups]
    ids = [g["segment"].to_numpy() for _, g in groups]
    embs = embedder.embed(images, segs, ids)
    out = np.zeros((len(features), embs[0].shape[1]), dtype=np.float32)
    pos = {idx: k for k, idx in enumerate(features.index)}
    for (_, g), e in zip(groups, embs, strict=True):
        out[[pos[i] for i in g.index]] = e
    return out


def choose_modes(x: np.ndarray, cfg: ClusterConfig, seed: int = 0) -> np.ndarray:
    """Cluster labels ``0..k-1`` (or -1 for HDBSCAN noise) for one group of embeddings."""
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if cfg.method == "hdbscan":
        if n < cfg.min_mode_size:
            return np.zeros(n, dtype=np.int64)
        return HDBSCAN(min_cluster_size=cfg.min_mode_size, copy=True).fit_predict(x)
    if n < 2 * cfg.min_mode_size or cfg.max_modes < 2:
        return np.zeros(n, dtype=np.int64)
    best: tuple[float, np.ndarray] | None = None
    for k in range(2, min(cfg.max_modes, n // cfg.min_mode_size) + 1):
        if cfg.method == "kmeans":
            labels = KMeans(k, n_init=10, random_state=seed).fit_predict(x)
        else:
            labels = AgglomerativeClustering(k, linkage="ward").fit_predict(x)
        if len(np.unique(labels)) < 2:
            continue
        score = float(silhouette_score(x, labels))
        if best is None or score > best[0] + 1e-9:
            best = (score, labels)
    return best[1] if best is not None else np.zeros(n, dtype=np.int64)


def assign_modes(
    features: pd.DataFrame, embeddings: np.ndarray, cfg: ClusterConfig, seed: int = 0
) -> np.ndarray:
    """Global mode ids: fn modes first, then fp modes, each ordered by size (largest first)."""
    modes = np.full(len(features), -1, dtype=np.int64)
    next_id = 0
    for outcome in ("fn", "fp"):
        idx = np.flatnonzero(features["outcome"].to_numpy() == outcome)
        if not idx.size:
            continue
        labels = choose_modes(embeddings[idx], cfg, seed)
        kept = [lab for lab in np.unique(labels) if lab >= 0]
        kept.sort(key=lambda lab: (-(labels == lab).sum(), lab))
        for lab in kept:
            modes[idx[labels == lab]] = next_id
            next_id += 1
    return modes


def _counts(series: pd.Series) -> str:
    return json.dumps({str(k): int(v) for k, v in series.value_counts().sort_index().items()})


def summarise_modes(
    features: pd.DataFrame, embeddings: np.ndarray, n_representatives: int
) -> pd.DataFrame:
    """One row per failure mode: its size, classes, error types, cause and representatives."""
    rows = []
    for mode_id, g in features[features["mode_id"] >= 0].groupby("mode_id", sort=True):
        emb = embeddings[features.index.get_indexer(g.index)]
        centroid = emb.mean(0)
        order = np.argsort(((emb - centroid) ** 2).sum(1), kind="stable")
        on = g["on_cause"].dropna()
        cause, share = None, None
        if len(on):
            top = on.value_counts()
            cause, share = str(top.index[0]), float(top.iloc[0] / len(g))
        rows.append(
            {
                "mode_id": int(mode_id),
                "kind": str(g["outcome"].iloc[0]),
                "size": len(g),
                "n_candidates": int(g["candidate_id"].nunique()),
                "n_images": int(g["image_id"].nunique()),
                "classes": _counts(g["category"]),
                "error_types": _counts(g["error_type"]),
                "cause": cause,
                "cause_share": share,
                "mean_strength": float(g["strength"].mean()),
                "candidate_ids": sorted(set(g["candidate_id"])),
                "representatives": [
                    str(g["feature_id"].iloc[i]) for i in order[:n_representatives]
                ],
                "crops": None,
            }
        )
    return pd.DataFrame(rows, columns=MODE_COLUMNS)


def cause_agreement(features: pd.DataFrame) -> float | None:
    """Adjusted Rand index between modes and planted causes, over features on a cause region."""
    on = features[features["on_cause"].notna()]
    if len(on) < 2:
        return None
    return float(adjusted_rand_score(on["on_cause"].astype(str), on["mode_id"]))


def precision_at_k(features: pd.DataFrame, k: int = 10) -> dict[str, float]:
    """Per planted cause, precision@k of the best-matching mode (Domino, Eyuboglu et al. 2022).

    A mode's members are the failures (candidates) with a feature in it, ranked by their
    strongest feature there (``max strength``). For cause c and mode m,
    ``P@k(c, m) = |{top-k members of m whose planted cause is c}| / min(k, n_c)``, where
    ``n_c`` is the number of failures carrying c (so a perfect mode scores 1 even when a cause
    has fewer than k failures, while a tiny mode cannot). The score of c is ``max_m P@k(c, m)``.
    Benchmark only: it needs the planted ``cause`` of each failure.
    """
    out: dict[str, float] = {}
    if not len(features) or "cause" not in features:
        return out
    member = features[features["mode_id"] >= 0]
    per_failure = features.drop_duplicates("candidate_id")
    n_cause = per_failure["cause"].dropna().astype(str).value_counts()
    ranked = []
    for _, g in member.groupby("mode_id", sort=True):
        top = (
            g.groupby("candidate_id", sort=True)
            .agg(strength=("strength", "max"), cause=("cause", "first"))
            .sort_values("strength", ascending=False, kind="stable")
            .head(k)
        )
        ranked.append(top["cause"].astype(str).where(top["cause"].notna(), None).tolist())
    for cause, n in n_cause.sort_index().items():
        best = max((sum(c == cause for c in top) for top in ranked), default=0)
        out[str(cause)] = float(best / min(k, int(n)))
    return out


def render_crops(
    features: pd.DataFrame,
    modes: pd.DataFrame,
    segments: dict[int, np.ndarray],
    out_dir: Path,
    context: int = 12,
    size: int = 96,
) -> list[str | None]:
    """One PNG strip per mode: each representative's superpixel outlined (yellow) in context."""
    from PIL import Image
    from skimage.segmentation import find_boundaries

    by_id = features.set_index("feature_id")
    paths: list[str | None] = []
    for m in modes.itertuples():
        tiles = []
        for fid in m.representatives:
            f = by_id.loc[fid]
            image = load_image(f["image_path"]).permute(1, 2, 0).numpy()
            mask = segments[int(f["image_id"])] == int(f["segment"])
            rgb = (image * 255).round().astype(np.uint8)
            rgb[find_boundaries(mask, mode="inner")] = (255, 230, 0)
            h, w = mask.shape
            x1, y1 = max(0, int(f["x1"]) - context), max(0, int(f["y1"]) - context)
            x2, y2 = min(w, int(f["x2"]) + context), min(h, int(f["y2"]) + context)
            tile = Image.fromarray(rgb[y1:y2, x1:x2]).resize((size, size), Image.NEAREST)
            tiles.append(tile)
        strip = Image.new("RGB", (len(tiles) * (size + 4), size), "white")
        for k, tile in enumerate(tiles):
            strip.paste(tile, (k * (size + 4), 0))
        path = SplitLayout(Path(out_dir)).mode_crop(int(m.mode_id))
        rel = path.relative_to(out_dir).as_posix()
        with atomic_write(path) as fh:
            strip.save(fh, format="PNG")
        paths.append(rel)
    return paths


def run_cluster_stage(
    detector: Detector,
    split_dir: str | Path,
    cfg: ClusterConfig,
    causes: list[dict] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ClusterResult:
    """Failing features -> embeddings -> failure modes; writes the stage's tables (module doc)."""
    split_dir = Path(split_dir)
    layout = SplitLayout(split_dir)
    candidates = pd.read_parquet(layout.require("candidates"))
    explanations = pd.read_parquet(layout.require("explanations"))
    steps = tqdm(total=3, desc="cluster", disable=not progress)
    features, segments = extract_features(candidates, explanations, split_dir, cfg, causes)
    steps.update()
    embeddings = embed_features(features, segments, embedder_for(detector, cfg))
    steps.update()
    features["mode_id"] = assign_modes(features, embeddings, cfg, seed)
    modes = summarise_modes(features, embeddings, cfg.representatives)
    table = features.copy()
    table["embedding"] = [e.tolist() for e in embeddings] if len(features) else []
    explained = explanations[
        (explanations["method"] == cfg.explain_method) & (explanations["output"] == "score")
    ]
    metrics = {
        "explained_failures": int(explained["valid"].sum()),
        "invalid_explanations": int((~explained["valid"].astype(bool)).sum()),
        "failing_features": len(features),
        "failure_modes": len(modes),
        "features_on_a_cause": int(features["on_cause"].notna().sum()),
        "adjusted_rand_index": cause_agreement(features),
        "precision_at_10": precision_at_k(features, 10),
        "modes": [
            {k: m[k] for k in ("mode_id", "kind", "size", "n_candidates", "cause", "cause_share")}
            for m in modes.to_dict("records")
        ],
        "config": cfg.model_dump(mode="json"),
    }
    with generation(split_dir, "cluster") as gen:  # crops and tables of one run (module doc)
        modes["crops"] = render_crops(features, modes, segments, split_dir)
        steps.update()
        steps.close()
        write_table(layout.features, table)
        write_table(layout.failure_modes, modes)
        write_json(layout.cluster_summary, metrics)
        gen.add(layout.features, layout.failure_modes, layout.cluster_summary)
        gen.add(*(split_dir / c for c in modes["crops"] if c))
    return ClusterResult(table, modes, metrics)


def format_modes(modes: pd.DataFrame, metrics: dict) -> str:
    """A plain-text table of the failure modes."""
    lines = [f"{'mode':>4} {'kind':<4} {'features':>8} {'failures':>8}  {'classes':<34} cause"]
    for m in modes.itertuples():
        classes = ", ".join(f"{k} {v}" for k, v in json.loads(m.classes).items())
        cause = f"{m.cause} ({m.cause_share:.0%})" if isinstance(m.cause, str) else "-"
        lines.append(
            f"{m.mode_id:>4} {m.kind:<4} {m.size:>8} {m.n_candidates:>8}  {classes:<34} {cause}"
        )
    ari = metrics.get("adjusted_rand_index")
    if ari is not None:
        lines.append(
            f"adjusted Rand index, modes vs planted causes ({metrics['features_on_a_cause']} "
            f"features on a cause region): {ari:.3f} (target >= 0.8)"
        )
    for cause, p in (metrics.get("precision_at_10") or {}).items():
        lines.append(f"precision@10 of the best mode for {cause}: {p:.2f} (target >= 0.75)")
    return "\n".join(lines)
