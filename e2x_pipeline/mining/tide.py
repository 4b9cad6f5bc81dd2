"""TIDE's dAP per error type: the AP@0.5 gained by fixing each error type with its oracle.

TIDE (Bolya et al., ECCV 2020, "TIDE: A General Toolbox for Identifying Object Detection
Errors", Sec. 2.3) measures an error type by ``dAP_t = AP(fixed_t) - AP``: apply the type's
oracle to the original detections, one type at a time (not progressively), and re-score. The
oracles here are those of ``tidecv`` 1.0.1 (``tidecv/errors/main_errors.py``,
``quantify.py::TIDERun.fix_errors``), on the same data points its AP is computed from:

* ``cls``  -- the false positive becomes a true positive of its GT's class, ``loc`` -- of its own
  class, *if* that GT is unmatched and this is the highest-scored ``cls``/``loc`` error on it
  (tidecv's ``BestGTMatch``, shared by both types); any other error of the type is removed;
* ``both``, ``dupe``, ``bkg`` -- the false positive is removed;
* ``missed`` -- the unmatched GT that no ``cls``/``loc`` error points at is removed from the
  positives (tidecv's ``MissedError``: a GT some error could fix is not counted missed);
* special ``fp`` -- every true positive is scored 1 and every false positive 0 (perfect
  precision, same recall); special ``fn`` -- every unmatched GT is removed (perfect recall).

A main dAP is clipped at 0 (tidecv: a negative one is binning noise); the special ones are not.
AP is COCO's 101-point interpolated AP, computed by pycocotools ``COCOeval.accumulate`` on the
fixed points (fed as per-category ``evalImgs``), the mean over categories follows tidecv: every
category with a GT or a detection counts, one without GT scores 0. On a split where every detected
category has GT the unfixed value equals ``metrics["map50"]`` (COCOeval).

Matching and error types are the mining stage's (:func:`.matching.match_image`, COCOeval's rule,
and :func:`.matching.tide_error_type`), applied to *every* low-threshold detection, since AP
ranks them all; the mining counts are at the operating threshold, so the two need not agree.
Differences from tidecv: we keep every detection (tidecv keeps the top 100 per image), a
detection on a crowd region is ignored as in COCOeval (tidecv also types it as an error, and its
``cls``/``loc`` oracle may turn it into a true positive), and an IoU of exactly ``cfg.iou`` with a
matched GT of its class is a ``dupe`` (tidecv: ``loc``). Values are AP fractions (0-1), like
``map50``; tidecv prints them times 100.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools.cocoeval import COCOeval

from ..boxes import pairwise_iou, xywh_to_xyxy
from ..config import MiningConfig
from ..data.coco import CocoDataset
from ..detectors.base import Detections
from ..evaluation import average_precision
from ..vocab import ERROR_TYPES
from .matching import match_image, tide_error_type

SPECIAL_ERRORS: tuple[str, ...] = ("fp", "fn")


@dataclass
class _Points:
    """TIDE's AP data points of a split: one per scored detection, in each image's score order
    (images in the order given), and the GT counts per category.

    ``kind`` is ``tp`` or the false positive's error type; ``fix_cat`` is the category a fixed
    ``cls``/``loc`` error becomes a true positive of; ``best`` marks the error its oracle fixes.
    """

    cat: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    fix_cat: list[int] = field(default_factory=list)
    best: list[bool] = field(default_factory=list)
    n_gt: dict[int, int] = field(default_factory=dict)
    n_fn: dict[int, int] = field(default_factory=dict)
    n_missed: dict[int, int] = field(default_factory=dict)

    def add(self, cat: int, score: float, kind: str, fix_cat: int = -1) -> int:
        self.cat.append(cat)
        self.score.append(score)
        self.kind.append(kind)
        self.fix_cat.append(fix_cat)
        self.best.append(False)
        return len(self.cat) - 1


def _collect_image(
    pts: _Points,
    anns: list[dict],
    d: Detections | None,
    label_cat: dict[int, int],
    cfg: MiningConfig,
) -> None:
    """Match one image's detections (all of them), type its false positives and add its points."""
    gt_boxes = np.array([xywh_to_xyxy(a["bbox"]) for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_cats = np.array([int(a["category_id"]) for a in anns], dtype=np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    if d is not None and len(d):
        labels = d.labels.cpu().numpy()
        keep = np.isin(labels, list(label_cat))  # detections outside the dataset's classes
        cats = np.array([label_cat[int(v)] for v in labels[keep]], dtype=np.int64)
        boxes = d.boxes.cpu().numpy().astype(np.float64)[keep]
        scores = d.scores.cpu().numpy().astype(np.float64)[keep]
    else:
        cats, boxes, scores = np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0)
    m = match_image(boxes, scores, cats, gt_boxes, gt_cats, crowd, cfg.iou)
    solid = np.where(~crowd)[0]
    ious = pairwise_iou(boxes, gt_boxes[solid])
    best_score = np.full(len(anns), -1.0)
    best_point = np.full(len(anns), -1, dtype=np.int64)
    usable = np.zeros(len(anns), dtype=bool)
    for k in np.argsort(-scores, kind="mergesort"):
        if m.det_gt[k] >= 0:
            pts.add(int(cats[k]), float(scores[k]), "tp")
            continue
        if m.det_ignored[k]:  # on a crowd region: neither a tp nor an fp (COCOeval)
            continue
        etype, j = tide_error_type(
            int(cats[k]), ious[k], gt_cats[solid], cfg.iou, cfg.background_iou
        )
        g = int(solid[j]) if j >= 0 else -1
        p = pts.add(int(cats[k]), float(scores[k]), etype, int(gt_cats[g]) if g >= 0 else -1)
        # tidecv's BestGTMatch: a cls/loc error on an unmatched GT makes it fixable, and the
        # first (highest-scored) such error is the one its oracle turns into a true positive
        if etype in ("cls", "loc") and m.gt_det[g] < 0:
            usable[g] = True
            if best_score[g] < scores[k]:
                best_score[g], best_point[g] = scores[k], p
    for p in best_point[best_point >= 0]:
        pts.best[p] = True
    for g in solid:
        c = int(gt_cats[g])
        pts.n_gt[c] = pts.n_gt.get(c, 0) + 1
        if m.gt_det[g] < 0:
            pts.n_fn[c] = pts.n_fn.get(c, 0) + 1
            if not usable[g]:
                pts.n_missed[c] = pts.n_missed.get(c, 0) + 1


def _fixed(
    pts: _Points, oracle: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """The data points (category, score, is_tp) and GT counts after one oracle (None: none)."""
    cat = np.array(pts.cat, dtype=np.int64)
    score = np.array(pts.score, dtype=np.float64)
    kind = np.array(pts.kind, dtype=object)
    tp = kind == "tp"
    keep = np.ones(len(cat), dtype=bool)
    n_gt = dict(pts.n_gt)
    if oracle in ("cls", "loc"):
        hit = kind == oracle
        best = hit & np.array(pts.best, dtype=bool)
        cat = np.where(best, np.array(pts.fix_cat, dtype=np.int64), cat)
        tp = tp | best
        keep &= ~(hit & ~best)
    elif oracle in ("both", "dupe", "bkg"):
        keep &= kind != oracle
    elif oracle == "missed":
        n_gt = {c: v - pts.n_missed.get(c, 0) for c, v in n_gt.items()}
    elif oracle == "fp":
        score = tp.astype(np.float64)
    elif oracle == "fn":
        n_gt = {c: v - pts.n_fn.get(c, 0) for c, v in n_gt.items()}
    elif oracle is not None:
        raise ValueError(
            f"unknown TIDE oracle {oracle!r}; use one of {ERROR_TYPES + SPECIAL_ERRORS}"
        )
    return cat[keep], score[keep], tp[keep], n_gt


def _map(cat: np.ndarray, score: np.ndarray, tp: np.ndarray, n_gt: dict[int, int]) -> float:
    """Mean AP over the categories with a GT or a point (tidecv's ``get_mAP``: AP 0 without GT,
    a category with neither is left out).

    AP per category is pycocotools ``COCOeval.accumulate`` on one pseudo-image per category whose
    ``dtMatches`` are the points' tp flags and whose ``gtIgnore`` holds one 0 per positive.
    """
    cats = sorted({c for c, v in n_gt.items() if v > 0} | set(cat.tolist()))
    if not cats:
        return 0.0
    ev = COCOeval(iouType="bbox")
    p = ev.params
    p.catIds, p.imgIds = cats, [0]
    p.iouThrs = np.array([0.5])  # matching is done; one threshold slot for the points
    p.areaRng, p.areaRngLbl = [[0.0, 1e10]], ["all"]
    p.maxDets = [max(1, len(cat))]
    ev._paramsEval = copy.deepcopy(p)
    ev.evalImgs = []
    for c in cats:
        sel = cat == c
        ev.evalImgs.append(
            {
                "dtScores": score[sel],
                "dtMatches": tp[sel][None].astype(np.float64),
                "dtIgnore": np.zeros((1, int(sel.sum())), dtype=bool),
                "gtIgnore": np.zeros(max(n_gt.get(c, 0), 0)),
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
    _, per_cat = average_precision(ev)
    # COCOeval leaves a category without positives out (NaN); tidecv scores it 0
    aps = [0.0 if np.isnan(per_cat[c]) else per_cat[c] for c in cats]
    return float(np.mean(aps))


def tide_dap(
    dataset: CocoDataset,
    image_ids: list[int],
    detections: dict[int, Detections],
    label_cat: dict[int, int],
    cfg: MiningConfig,
) -> dict[str, Any]:
    """TIDE's dAP@``cfg.iou`` per error type on the low-threshold detections (module docstring).

    Returns ``{"ap50": AP before any fix, "dap": {type: dAP for the six main types},
    "special": {"fp": dAP, "fn": dAP}}``; ``dAP_t = AP(oracle_t) - AP``, main ones clipped at 0.
    """
    pts = _Points()
    for i in image_ids:
        _collect_image(pts, dataset.annotations.get(i, []), detections.get(i), label_cat, cfg)
    base = _map(*_fixed(pts, None))
    dap = {e: max(_map(*_fixed(pts, e)) - base, 0.0) for e in ERROR_TYPES}
    special = {e: _map(*_fixed(pts, e)) - base for e in SPECIAL_ERRORS}
    return {"ap50": base, "dap": dap, "special": special}
