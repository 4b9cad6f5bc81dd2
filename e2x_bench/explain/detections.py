"""The fixed detection set of the explanation benchmark: TP, FP and FN, planted causes first."""

from __future__ import annotations

import math

import pandas as pd

GROUP_SHARE = {  # share of the set per group; failures with a planted cause first
    "fn:occluder": 1 / 6,
    "fn:camouflage": 1 / 6,
    "fp:distractor": 1 / 6,
    "fp:cause": 1 / 12,
    "fn:none": 1 / 12,
    "fp:none": 1 / 12,
    "tp": 1 / 4,
}


def detection_group(row: pd.Series) -> str:
    outcome = str(row["outcome"])
    if outcome == "tp":
        return "tp"
    cause = row.get("cause")
    if not isinstance(cause, str) or not cause:
        return f"{outcome}:none"
    key = f"{outcome}:{cause}"
    return key if key in GROUP_SHARE else f"{outcome}:cause"


def _quotas(n: int) -> dict[str, int]:
    """Largest-remainder integer quotas of ``GROUP_SHARE`` summing to n."""
    raw = {g: s * n for g, s in GROUP_SHARE.items()}
    q = {g: int(math.floor(v)) for g, v in raw.items()}
    for g in sorted(raw, key=lambda g: q[g] - raw[g])[: n - sum(q.values())]:
        q[g] += 1
    return q


def select_detections(candidates: pd.DataFrame, images: int, per_image: int = 2) -> pd.DataFrame:
    """A deterministic set of ``images * per_image`` explainable detections, ``per_image`` per
    image, filling the group quotas of :data:`GROUP_SHARE` (TP, FP and FN, planted causes).

    Images are visited in id order; an image is taken when ``per_image`` of its candidates fit
    groups with room left. A second pass fills any shortfall with whatever is left.
    """
    c = candidates[candidates["anchor"].astype(int) >= 0].copy()
    c["group"] = c.apply(detection_group, axis=1)
    order = {g: i for i, g in enumerate(GROUP_SHARE)}
    c["prio"] = c["group"].map(order).fillna(len(order))
    c = c.sort_values(["image_id", "prio", "candidate_id"], kind="stable")
    left = _quotas(images * per_image)
    chosen: list[pd.DataFrame] = []
    taken: set[int] = set()
    for strict in (True, False):
        for image_id, g in c.groupby("image_id", sort=True):
            if len(chosen) == images:
                break
            if int(image_id) in taken or len(g) < per_image:
                continue
            room = dict(left)
            picks = []
            for idx, r in g.iterrows():
                if not strict or room.get(r["group"], 0) > 0:
                    picks.append(idx)
                    room[r["group"]] = room.get(r["group"], 0) - 1
                if len(picks) == per_image:
                    break
            if len(picks) == per_image:
                chosen.append(g.loc[picks])
                taken.add(int(image_id))
                left = room
    if len(chosen) < images:
        raise ValueError(f"only {len(chosen)} images with {per_image} explainable detections")
    return pd.concat(chosen).drop(columns=["prio"]).reset_index(drop=True)
