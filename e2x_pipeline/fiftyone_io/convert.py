"""Pure conversions from E2X tables to FiftyOne label values: no fiftyone import, no database.

FiftyOne boxes are relative ``[x, y, w, h]``: the top-left corner and the size as fractions of
the image's width ``W`` and height ``H``. The E2X tables hold absolute pixel corners
``x1, y1, x2, y2``; COCO holds absolute ``[x, y, w, h]``. So

* corners -> FiftyOne: ``[x1 / W, y1 / H, (x2 - x1) / W, (y2 - y1) / H]`` (:func:`relative_box`),
  and back ``[x W, y H, (x + w) W, (y + h) H]`` (:func:`absolute_box`);
* COCO -> FiftyOne: ``[x / W, y / H, w / W, h / H]`` (:func:`coco_relative_box`).

Each ``*_detection`` function returns the keyword arguments of one ``fo.Detection`` (``label``,
``bounding_box``, then its custom attributes, in the order FiftyOne stores them); the database
modules build ``fo.Detection(**kwargs)``. The field, view and dataset names live here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ..config import E2XConfig

# fields and saved views
FAILURES_VIEW = "e2x-failures"
PRED_FIELD = "e2x_predictions"
GT_FIELD = "ground_truth"
HEATMAP_FIELD = "{method}_heatmap"
MODE_VIEW = "e2x-mode-{mode}"
MODE_VIEW_PREFIX = "e2x-mode-"
REPAIR_VIEW = "e2x-repair"
REPAIR_FIELD = "e2x_repair_region"
CANDIDATE_FIELD = "e2x_candidate"
FEATURES_FIELD = "e2x_features"
# the scalar fields of a failure's sample (:func:`failure_fields`), besides its image_id
FAILURE_FIELDS = ("e2x_failure_mode", "e2x_error_type", "e2x_outcome", "e2x_score")

# red for evidence FOR the candidate, blue for evidence AGAINST, white at zero (range [-a, a])
HEATMAP_COLORSCALE = [
    {"value": 0.0, "color": "rgb(40,80,255)"},
    {"value": 0.5, "color": "rgb(255,255,255)"},
    {"value": 1.0, "color": "rgb(255,40,40)"},
]

Box = Sequence[float]


def dataset_names(cfg: E2XConfig, split: str) -> dict[str, str]:
    """The FiftyOne datasets a run writes: the split, its explained failures, and the pool."""
    base = cfg.data.fiftyone_dataset or f"e2x-{split}"
    return {
        "split": base,
        "failures": f"{base}-failures",
        "pool": cfg.repair.fiftyone_dataset or f"e2x-{cfg.repair.pool_split}",
    }


def heatmap_field(method: str, output: str = "score") -> str:
    """``<method>_heatmap``: the ``fo.Heatmap`` field of one explanation method; a box-coordinate
    map gets ``<method>_<output>_heatmap`` (e.g. ``e2x_x1_heatmap``), so it never replaces the
    score map."""
    return HEATMAP_FIELD.format(method=method if output == "score" else f"{method}_{output}")


def heatmap_field_order(fields: Iterable[str]) -> list[str]:
    """The heatmap fields in the order they are written: ``e2x_heatmap`` first, then by name."""
    primary = heatmap_field("e2x")
    return sorted(fields, key=lambda f: (f != primary, f))


def mode_view(mode: int) -> str:
    """``e2x-mode-<k>``: the saved view of failure mode ``k``."""
    return MODE_VIEW.format(mode=int(mode))


def stable_mode_view(stable_id: str) -> str:
    """``e2x-mode-<stable id>``: the saved view of a failure mode that keeps its name from
    checkpoint to checkpoint (the run history's id, e.g. ``e2x-mode-fn-camouflage-like-1``)."""
    return MODE_VIEW_PREFIX + str(stable_id)


def mode_tag(mode: int) -> str:
    """``mode-<k>``: the label and tag of failure mode ``k``."""
    return f"mode-{int(mode)}"


def image_size(image: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(W, H)`` of a COCO image record; 1 for a missing side (the box then stays absolute)."""
    im = image or {}
    return float(im.get("width") or 1), float(im.get("height") or 1)


def relative_box(box: Box, w: float, h: float) -> list[float]:
    """Absolute corners ``[x1, y1, x2, y2]`` -> FiftyOne's
    ``[x1 / W, y1 / H, (x2 - x1) / W, (y2 - y1) / H]``."""
    x1, y1, x2, y2 = box
    return [x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]


def absolute_box(rel: Box, w: float, h: float) -> list[float]:
    """The inverse of :func:`relative_box`: ``[x W, y H, (x + w) W, (y + h) H]``."""
    x, y, bw, bh = rel
    return [x * w, y * h, (x + bw) * w, (y + bh) * h]


def coco_relative_box(bbox: Box, w: float, h: float) -> list[float]:
    """A COCO ``[x, y, w, h]`` in pixels -> ``[x / W, y / H, w / W, h / H]``."""
    x, y, bw, bh = (float(v) for v in bbox)
    return [x / w, y / h, bw / w, bh / h]


def coco_absolute_box(rel: Box, w: float, h: float) -> list[float]:
    """The inverse of :func:`coco_relative_box`: FiftyOne's ``[x, y, w, h]`` relative box ->
    COCO ``[x W, y H, w W, h H]`` in pixels."""
    x, y, bw, bh = (float(v) for v in rel)
    return [x * w, y * h, bw * w, bh * h]


def coco_detection(
    ann: Mapping[str, Any], categories: Mapping[int, str], w: float, h: float, **attrs: Any
) -> dict[str, Any]:
    """One COCO annotation as ``fo.Detection`` kwargs: its class name, relative box, ``attrs``."""
    return {
        "label": categories[ann["category_id"]],
        "bounding_box": coco_relative_box(ann["bbox"], w, h),
        **attrs,
    }


def ground_truth_detection(
    ann: Mapping[str, Any],
    categories: Mapping[int, str],
    w: float,
    h: float,
    cause: Mapping[str, Any] | None = None,
    outcome: tuple[str | None, str | None] = (None, None),
) -> dict[str, Any]:
    """A GT object of the split's dataset: ``coco_id``, ``iscrowd``, the planted ``cause`` (from
    the benchmark's causes, else the annotation's own) and the mining
    ``(outcome, candidate id)``."""
    c = cause or {}
    o, cid = outcome
    return coco_detection(
        ann,
        categories,
        w,
        h,
        coco_id=int(ann["id"]),
        iscrowd=int(ann.get("iscrowd", 0)),
        cause=c.get("cause", ann.get("cause")),
        cause_id=c.get("cause_id"),
        e2x_outcome=o,
        e2x_candidate_id=cid,
    )


def causes_by_annotation(causes: Iterable[Mapping[str, Any]] | None) -> dict[int, Mapping]:
    """The benchmark's cause records keyed by the GT annotation they were planted on."""
    return {int(c["annotation_id"]): c for c in causes or [] if c.get("annotation_id")}


def gt_outcomes(candidates: pd.DataFrame | None) -> dict[int, tuple[str, str]]:
    """``gt_id -> (outcome, candidate_id)`` for the GT objects mining found (tp) or missed (fn)."""
    if candidates is None:
        return {}
    g = candidates[candidates["outcome"].isin(["tp", "fn"]) & (candidates["gt_id"] >= 0)]
    return {
        int(gid): (o, cid)
        for gid, o, cid in zip(g["gt_id"], g["outcome"], g["candidate_id"], strict=True)
    }


def prediction_detection(row: Any, w: float, h: float) -> dict[str, Any] | None:
    """A predictions (or fn candidates) row, as from ``itertuples``, as ``fo.Detection`` kwargs;
    None when the row has no box. ``confidence`` and ``score`` are both the row's score."""
    if pd.isna(row.box_x1):
        return None
    return {
        "label": row.category,
        "bounding_box": relative_box([row.box_x1, row.box_y1, row.box_x2, row.box_y2], w, h),
        "confidence": float(row.score),
        "candidate_id": row.candidate_id,
        "outcome": row.outcome,
        "error_type": row.error_type,
        "anchor": int(row.anchor),
        "score": float(row.score),
        "fn_kind": getattr(row, "fn_kind", None),
    }


def candidate_score(cand: Mapping[str, Any]) -> float | None:
    """The candidate's score, None for a miss without a detection."""
    return None if pd.isna(cand["score"]) else float(cand["score"])


def candidate_box(cand: Mapping[str, Any]) -> list[float]:
    """The failing box: the detection's for an fp, the missed GT's for an fn."""
    prefix = "gt" if cand["outcome"] == "fn" else "box"
    return [float(cand[f"{prefix}_{s}"]) for s in ("x1", "y1", "x2", "y2")]


def candidate_detection(cand: Mapping[str, Any], w: float, h: float) -> dict[str, Any]:
    """A failing candidate (a candidates row) as ``fo.Detection`` kwargs."""
    return {
        "label": cand["category"],
        "bounding_box": relative_box(candidate_box(cand), w, h),
        "confidence": candidate_score(cand),
        "outcome": cand["outcome"],
        "error_type": cand["error_type"],
        "cause": cand["cause"] if isinstance(cand["cause"], str) else None,
    }


def failure_fields(cand: Mapping[str, Any], mode: int | None) -> dict[str, Any]:
    """The scalar fields and tags of one failure's sample: its image, mode, error type, outcome,
    score, and the tags outcome, error type and ``mode-<k>``."""
    return {
        "image_id": int(cand["image_id"]),
        "e2x_failure_mode": mode,
        "e2x_error_type": cand["error_type"],
        "e2x_outcome": cand["outcome"],
        "e2x_score": candidate_score(cand),
        "tags": [cand["outcome"], cand["error_type"]]
        + ([mode_tag(mode)] if mode is not None else []),
    }


def feature_detection(feature: Any, w: float, h: float) -> dict[str, Any]:
    """A failing superpixel (a features row, as from ``itertuples``) labelled with its mode."""
    return {
        "label": mode_tag(feature.mode_id) if feature.mode_id >= 0 else "unassigned",
        "bounding_box": relative_box([feature.x1, feature.y1, feature.x2, feature.y2], w, h),
        "attribution": float(feature.value),
        "segment": int(feature.segment),
    }


def repair_detection(row: Any, w: float, h: float) -> dict[str, Any]:
    """A repair-set row's matching region: ``mode-<k>``, confidence = the match score."""
    return {
        "label": mode_tag(row.mode_id),
        "bounding_box": relative_box([row.x1, row.y1, row.x2, row.y2], w, h),
        "confidence": float(row.score),
        "segment": int(row.segment),
    }


def dominant_modes(
    features: pd.DataFrame | None,
) -> tuple[dict[str, int], dict[str, pd.DataFrame]]:
    """Per candidate: the mode most of its assigned failing features fall in, and its features."""
    mode_of: dict[str, int] = {}
    by_cand: dict[str, pd.DataFrame] = {}
    if features is None or not len(features):
        return mode_of, by_cand
    for cid, g in features.groupby("candidate_id"):
        by_cand[cid] = g
        top = g[g["mode_id"] >= 0]["mode_id"]
        if len(top):
            mode_of[cid] = int(top.value_counts().index[0])
    return mode_of, by_cand


def heatmap_range(pixel_map: np.ndarray) -> list[float]:
    """``[-a, a]`` with ``a = max |value|`` (NaNs ignored; 1 for an all-zero map), so zero is the
    colorscale's white midpoint."""
    a = float(np.nanmax(np.abs(pixel_map))) or 1.0
    return [-a, a]
