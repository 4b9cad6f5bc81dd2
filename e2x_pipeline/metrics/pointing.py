"""Pointing game and energy against a region: does the explanation point at the cause?

* **Pointing game** (Zhang et al. 2018, "Top-down neural attention by excitation backprop"): a hit
  when the map's maximum falls on the annotated region; the hit rate is hits / trials. Here the
  "point" is a SLIC superpixel, as E2X explains per superpixel: the most positive superpixel for
  a TP or FP (what made the detector fire) and the MOST NEGATIVE one for a FN (what suppressed
  the object). It is a hit when at least ``min_overlap`` of that superpixel's pixels lie inside
  the region, and (``require_sign``) its value has the expected sign: a FN map with no negative
  superpixel points at nothing.
* **Energy-based pointing game** (Wang et al. 2020, Score-CAM, Sec. 5.2): the share of the map's
  energy inside the region,

      E = sum_{p in region} L_p / sum_p L_p,   L = max(sign * map, 0),

  with sign = -1 for a FN, so that only evidence of the expected sign counts (0 when there is
  none).

The region (:func:`candidate_region`) is the planted cause's ``region_bbox`` when the candidate
has a cause (the benchmark's ground truth for *why* it failed); otherwise the matched GT box; and,
for a background FP with no GT, the candidate's own box. ``region_fraction`` (the region's share
of the image) is the hit rate a random superpixel would get, for reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..boxes import xywh_to_xyxy
from ..vocab import outcome_sign

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Region:
    """Where an explanation should point, in xyxy pixels, and where that box came from."""

    box: Box
    source: str  # "cause", "gt" or "candidate"


# -1 for a false negative (look for suppressing evidence), +1 otherwise: the outcome's sign
pointing_sign = outcome_sign


def _finite(row: Mapping[str, Any], keys: Iterable[str]) -> bool:
    try:
        return all(np.isfinite(float(row.get(k))) for k in keys)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # None, pd.NA
        return False


def candidate_region(
    row: Mapping[str, Any], causes: Mapping[str, Mapping[str, Any]] | None = None
) -> Region:
    """The region for one candidates-table row: cause region, else GT box, else candidate box.

    ``causes`` maps ``cause_id`` to the records of ``causes.json`` (``region_bbox`` in COCO xywh).
    """
    cause_id = row.get("cause_id")
    if causes and isinstance(cause_id, str) and cause_id in causes:
        x1, y1, x2, y2 = xywh_to_xyxy(causes[cause_id]["region_bbox"])
        return Region((float(x1), float(y1), float(x2), float(y2)), "cause")
    gt = ("gt_x1", "gt_y1", "gt_x2", "gt_y2")
    if _finite(row, gt):
        return Region(tuple(float(row[k]) for k in gt), "gt")  # type: ignore[arg-type]
    box = ("box_x1", "box_y1", "box_x2", "box_y2")
    if _finite(row, box):
        return Region(tuple(float(row[k]) for k in box), "candidate")  # type: ignore[arg-type]
    raise ValueError(f"candidate {row.get('candidate_id')} has no cause, GT or candidate box")


def box_mask(box: Box, hw: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool: pixels whose centre (x + 0.5, y + 0.5) lies inside the xyxy box."""
    h, w = hw
    ys = np.arange(h)[:, None] + 0.5
    xs = np.arange(w)[None, :] + 0.5
    x1, y1, x2, y2 = box
    return (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)


def pointing_hit(
    values: np.ndarray,
    segments: np.ndarray,
    region: np.ndarray,
    sign: int,
    *,
    min_overlap: float = 0.5,
    require_sign: bool = True,
) -> bool:
    """Is the most extreme superpixel (argmax of ``sign * values``) on the region?

    ``values`` ``[M]`` per superpixel, ``segments`` ``[H, W]`` labels 0..M-1, ``region``
    ``[H, W]`` bool. Ties go to the lowest label. See the module docstring for the rule.
    """
    if sign not in (-1, 1):
        raise ValueError(f"sign must be -1 or 1, got {sign}")
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("pointing_hit needs finite superpixel values")
    best = int(np.argmax(sign * v))
    if require_sign and sign * v[best] <= 0:
        return False
    inside = np.asarray(region, dtype=bool)[np.asarray(segments) == best]
    return bool(inside.size and inside.mean() >= min_overlap)


def energy_in_region(pixel_map: np.ndarray, region: np.ndarray, sign: int) -> float:
    """Score-CAM's energy share of the region for the evidence of sign ``sign``.

    A map with no evidence of that sign puts none of it in the region: 0. Non-finite maps: NaN.
    """
    energy = np.clip(sign * np.asarray(pixel_map, dtype=np.float64), 0.0, None)
    if not np.isfinite(energy).all():
        return float("nan")
    total = energy.sum()
    if total <= 0:
        return 0.0
    return float(energy[np.asarray(region, dtype=bool)].sum() / total)
