"""The counterfactual check: does acting on an explanation fix the detection?

This is what VPS (CVPR 2025) calls a debug success. An explanation of a failure names the
superpixels to blame. Replace them with the fill image and ask the detector again:

* a false negative (``fn``): its explanation's most NEGATIVE superpixels are what suppressed the
  object. After replacing the top n of them, does a candidate at IoU >= ``min_iou`` with the GT
  box score at least the operating threshold for the GT class? Then the miss is fixed.
* a false positive (``fp``): its most POSITIVE superpixels are what caused the false alarm. After
  replacing the top n of them, does every candidate at IoU >= ``min_iou`` with the false box
  score below the threshold for its class? Then the false alarm is gone.

For n in ``ns`` (default 1, 2, 3, 5), with ``top_n = the n superpixels of largest sign * value``
(sign -1 for an FN, +1 for an FP) among those with sign * value > 0,

    x'_n = x * (1 - M_n) + fill * M_n,          M_n = the pixels of top_n,
    success_n = detected(x'_n)  (fn)   or   not detected(x'_n)  (fp),
    detected(x) = max_{a : IoU(b_a, b_t) >= min_iou} s_a[c_t](x) >= threshold.

``counterfactual_n`` is the smallest n with success (NaN when none), ``counterfactual_success``
whether there is one. A map without any superpixel of the failing sign (ODAM with its ReLU, for
an FN) names nothing to act on and fails the check. TPs are not checked (NaN).

The candidates a are the detector's whole dense view before NMS (:func:`matched_outputs`): the
best-scoring overlapping candidate is the one class-wise NMS keeps, so ``detected`` is what the
final detections would show, up to a higher-scoring detection of the same class that overlaps
it by more than the NMS IoU and the box by less than ``min_iou``.

The fill is the explain reference by default (what E2X's attributions are measured against);
``blur`` replaces the regions with a blurred copy. All methods of a run get the same fill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..detectors.base import Detector, Target, matched_outputs
from ..vocab import FAILURES, failing_sign


def top_failing(values: np.ndarray, sign: int, n: int) -> np.ndarray:
    """The (at most) n superpixels of largest ``sign * value``, among those with
    ``sign * value > 0``, strongest first (ties in label order)."""
    v = sign * np.asarray(values, dtype=np.float64)
    order = np.argsort(-v, kind="stable")[:n]
    return order[v[order] > 0]


def counterfactual_check(
    detector: Detector,
    image: Tensor,
    values: Sequence[np.ndarray | None],
    segments: Sequence[np.ndarray | None],
    targets: list[Target],
    outcomes: Sequence[str],
    fill: Tensor,
    *,
    threshold: float,
    ns: Sequence[int] = (1, 2, 3, 5),
    min_iou: float = 0.5,
    batch_size: int = 256,
) -> list[dict[str, Any]]:
    """``counterfactual_n`` / ``counterfactual_success`` of each target (module docstring).

    ``values[t]`` ``[M_t]`` are target t's superpixel values on ``segments[t]`` ``[H, W]``
    (None for an invalid explanation: NaN result); ``targets[t].box`` is its box on the clean
    image (the GT box for an FN); ``fill`` ``[3, H, W]`` replaces the blamed superpixels.
    """
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ValueError(f"counterfactual ns must be positive integers, got {list(ns)}")
    dev = detector.device
    image = image.to(dev, torch.float32)
    fill = fill.to(dev, torch.float32).expand_as(image)
    out: list[dict[str, Any]] = [
        {"counterfactual_n": np.nan, "counterfactual_success": np.nan} for _ in targets
    ]
    jobs: list[tuple[int, int, Tensor]] = []  # (target, n, mask [H, W])
    for t, (v, seg, outcome) in enumerate(zip(values, segments, outcomes, strict=True)):
        if outcome not in FAILURES or v is None or seg is None:
            continue
        if targets[t].box is None:
            raise ValueError("the counterfactual check needs each target's box (GT box for an FN)")
        sign = failing_sign(outcome)
        blamed = top_failing(v, sign, ns[-1])
        out[t]["counterfactual_success"] = False
        seg_t = torch.as_tensor(seg, dtype=torch.long, device=dev)
        for n in ns:
            if len(blamed) == 0:
                break  # nothing of the failing sign to act on
            ids = torch.as_tensor(blamed[:n], device=dev)
            jobs.append((t, n, torch.isin(seg_t, ids)))
    if not jobs:
        return out
    detected = _detected(detector, image, fill, jobs, targets, threshold, min_iou, batch_size)
    for (t, n, _), hit in zip(jobs, detected, strict=True):
        fixed = hit if outcomes[t] == "fn" else not hit
        if fixed and not out[t]["counterfactual_success"]:
            out[t]["counterfactual_success"] = True
            out[t]["counterfactual_n"] = float(n)
    return out


def _detected(
    detector: Detector,
    image: Tensor,
    fill: Tensor,
    jobs: list[tuple[int, int, Tensor]],
    targets: list[Target],
    threshold: float,
    min_iou: float,
    batch_size: int,
) -> list[bool]:
    """Per job, whether the target is detected on its perturbed image (batched dense passes)."""
    dev = image.device
    hits: list[bool] = []
    with torch.no_grad():
        for i0 in range(0, len(jobs), batch_size):
            chunk = jobs[i0 : i0 + batch_size]
            masks = torch.stack([m for _, _, m in chunk]).unsqueeze(1)  # [B, 1, H, W]
            batch = torch.where(masks, fill, image)
            tb = [targets[t] for t, _, _ in chunk]
            boxes = torch.as_tensor([t.box for t in tb], dtype=torch.float32, device=dev)
            labels = torch.as_tensor([t.label for t in tb], dtype=torch.long, device=dev)
            score, matched = matched_outputs(detector.dense(batch), boxes, labels, "score", min_iou)
            hits += (matched & (score >= threshold)).tolist()
    return hits


def counterfactual_rates(
    rows: Any, ns: Sequence[int] = (1, 2, 3, 5)
) -> dict[str, dict[str, Any]] | None:
    """Per failure outcome: the success rate, its count, and the cumulative rate at each n.

    ``rows`` is a DataFrame with ``outcome``, ``counterfactual_success`` and
    ``counterfactual_n`` (NaN success rows, TPs and invalid maps, are left out).
    """
    out: dict[str, dict[str, Any]] = {}
    for outcome in FAILURES:
        d = rows[(rows["outcome"] == outcome) & rows["counterfactual_success"].notna()]
        if not len(d):
            continue
        ok = d["counterfactual_success"].astype(bool)
        n = d["counterfactual_n"].astype(float)
        out[outcome] = {
            "rate": float(ok.mean()),
            "n": int(len(d)),
            "at": {str(k): float((n <= k).mean()) for k in sorted(ns)},
            "mean_smallest_n": float(n[ok].mean()) if ok.any() else None,
        }
    return out or None


__all__ = ["counterfactual_check", "counterfactual_rates", "top_failing"]
