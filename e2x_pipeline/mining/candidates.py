"""Candidates: one row per failure (and true positive) to explain, with the target to explain.

A detection above the operating threshold is its own candidate. A false negative has no
detection, so it gets one here.

FN candidates (what an explainer targets for a miss)
----------------------------------------------------
* ``near_miss`` (the E2X way): among the detections of the GT's class with
  ``score <= operating_threshold`` (they exist because the detector ran at the low threshold), the
  one with the largest IoU with the GT, ties broken by the higher score. Its IoU must be
  ``>= near_miss_iou`` (default ``cfg.iou``). We choose the foreground IoU, not the background IoU,
  on purpose: then a near miss is exactly a detection that *would have been the true positive* had
  its score crossed the threshold, which is E2X's definition (matched, score <= 0.5). A
  low-threshold detection that overlaps the GT only loosely is a poor localisation, not a near miss.
* ``uncovered``: otherwise, from ``detector.dense(image)``, the candidate (anchor) whose decoded box
  has the largest IoU with the GT (ties broken by its score for the GT's class); the target is that
  anchor's score for the GT's class. E2X only warned here; this way every miss can be explained.
* no candidate: ``fn_kind`` is None and ``reason`` says why (no dense view, or no anchor box
  overlaps the GT at all).

Mining costs one detection pass plus a little: when the family's ``detect`` goes through
``self.dense`` (the SSD adapter does), the batch's dense view it computed is kept
and reused for the uncovered misses; otherwise ``dense`` runs once more, only on the images of the
batch that have an uncovered miss, while the batch is still in memory.

Candidates table (``candidates.parquet``): one row per detection with ``score >
operating_threshold`` (outcome ``tp`` or ``fp``) and one row per missed GT (outcome ``fn``).

=================  =======  ===============================================================
column             type     meaning
=================  =======  ===============================================================
candidate_id       str      ``<split>/<image_id>/a<anchor>/c<label>`` (detection) or
                            ``<split>/<image_id>/fn<gt_id>`` (miss); no ``<split>/`` if split ""
image_id           int      COCO image id
file_name          str      COCO ``file_name``
image_path         str      path of the image file
anchor             int      candidate index in ``detector.dense`` (anchor); -1 if none
label              int      model label index (into ``detector.classes``); for a miss the GT's
category_id        int      COCO category id of ``label``
category           str      category name
score              float    target score on the clean image: the detection's score, or for a
                            miss the near miss's score / the uncovered anchor's class score;
                            NaN if no candidate
box_x1 .. box_y2   float    candidate box, xyxy in image pixels; NaN if no candidate
outcome            str      ``tp`` | ``fp`` | ``fn``
error_type         str      ``cls`` | ``loc`` | ``both`` | ``dupe`` | ``bkg`` (fp), ``missed``
                            (fn), None (tp)
fn_kind            str      ``near_miss`` | ``uncovered`` | None
gt_id              int      COCO annotation id: matched GT (tp), the GT the error type refers to
                            (fp), the missed GT (fn); -1 if none
gt_x1 .. gt_y2     float    that GT's box, xyxy pixels; NaN if none
gt_category_id     int      that GT's category id; -1 if none
iou                float    IoU of the candidate box with that GT; NaN if none
cause              str      planted cause of that GT (benchmark), or of the distractor region an
                            fp lies on (region IoU >= ``cfg.iou``); None elsewhere
cause_id           str      the cause record's id in ``causes.json``; None if none
reason             str      why a miss has no candidate; None otherwise
=================  =======  ===============================================================

Predictions table (``predictions.parquet``, every low-threshold detection, for FiftyOne):
``candidate_id, image_id, anchor, label, category_id, category, score, box_x1..box_y2, outcome``
(``tp`` / ``fp`` / ``ignored`` above the operating threshold, ``below`` under it),
``error_type``, ``near_miss_of`` (the FN candidate id it is the near miss of, else None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou

from ..boxes import pairwise_iou, xywh_to_xyxy
from ..config import MiningConfig
from ..data.coco import CocoDataset
from ..detectors.base import DenseOutput, Detections, Detector
from .matching import ImageMatch, match_image, tide_error_type

BOX_COLS = ["box_x1", "box_y1", "box_x2", "box_y2"]
GT_COLS = ["gt_x1", "gt_y1", "gt_x2", "gt_y2"]
CANDIDATE_COLUMNS = [
    "candidate_id",
    "image_id",
    "file_name",
    "image_path",
    "anchor",
    "label",
    "category_id",
    "category",
    "score",
    *BOX_COLS,
    "outcome",
    "error_type",
    "fn_kind",
    "gt_id",
    *GT_COLS,
    "gt_category_id",
    "iou",
    "cause",
    "cause_id",
    "reason",
]
PREDICTION_COLUMNS = [
    "candidate_id",
    "image_id",
    "anchor",
    "label",
    "category_id",
    "category",
    "score",
    *BOX_COLS,
    "outcome",
    "error_type",
    "near_miss_of",
]
_INT_COLS = ("image_id", "anchor", "label", "category_id", "gt_id", "gt_category_id")
_FLOAT_COLS = (*BOX_COLS, *GT_COLS, "score", "iou")

CauseByAnnotation = dict[int, tuple[str, str | None]]
"""annotation id -> (cause, cause_id)."""
CauseRegions = dict[int, list[tuple[str, str, list[float]]]]
"""image id -> [(cause, cause_id, region xyxy)] for the causes without an annotation."""


# ---------------------------------------------------------------------------------------------
# FN candidates (pure numpy / one dense pass, exercised directly by the tests)


def near_miss(
    gt_box: np.ndarray, boxes: np.ndarray, scores: np.ndarray, min_iou: float
) -> tuple[int, float]:
    """Index of the box with the largest IoU with ``gt_box`` (ties: higher score); -1 if none
    reaches ``min_iou``. Returns ``(index, iou)``."""
    if len(scores) == 0:
        return -1, float("nan")
    ious = pairwise_iou(boxes, gt_box[None])[:, 0]
    best = np.lexsort((-np.asarray(scores, dtype=np.float64), -ious))[0]
    if ious[best] < min_iou:
        return -1, float(ious[best])
    return int(best), float(ious[best])


@torch.no_grad()
def uncovered_candidates(
    detector: Detector,
    images: torch.Tensor,
    gts: list[tuple[int, np.ndarray, int]],
    dense: DenseOutput | None = None,
) -> list[tuple[int, float, float, list[float]]]:
    """For each ``(batch index, gt box xyxy, label)``: the dense candidate (anchor) whose decoded
    box has the largest IoU with the GT, ties broken by its score for ``label``.

    Returns ``(anchor, iou, score, box)`` per GT; anchor -1 when no anchor box overlaps the GT.
    ``dense`` is the whole batch's dense view when already computed; otherwise one batched
    ``dense`` pass over the images involved. IoUs are computed on the detector's device.
    """
    rows = sorted({b for b, _, _ in gts})
    if dense is not None:
        pos = {b: b for b in rows}
    else:
        pos = {b: k for k, b in enumerate(rows)}
        dense = detector.dense(images[rows].to(detector.device))
    out = []
    for b, box, label in gts:
        boxes = dense.boxes[pos[b]]
        if boxes.dim() == 3:  # class-specific boxes (Faster R-CNN): the GT class's box
            boxes = boxes[:, label]
        gt = torch.as_tensor(box, dtype=boxes.dtype, device=boxes.device)[None]
        ious = box_iou(boxes, gt)[:, 0]
        best_iou = ious.max()
        score = dense.scores[pos[b], :, label]
        # among anchors with the best IoU, the highest class score
        a = int(torch.where(ious == best_iou, score, torch.full_like(score, -1.0)).argmax())
        if float(best_iou) <= 0:
            out.append((-1, 0.0, float("nan"), [float("nan")] * 4))
        else:
            out.append((a, float(best_iou), float(score[a]), boxes[a].tolist()))
    return out


def fill_uncovered(
    detector: Detector,
    batch: torch.Tensor,
    pending: list[tuple[int, np.ndarray, int]],
    rows: list[dict[str, Any]],
    dense: DenseOutput | None = None,
) -> None:
    """Give each FN row without a near miss its uncovered anchor, or the ``reason`` it has none."""
    try:
        found = uncovered_candidates(detector, batch, pending, dense)
    except NotImplementedError as exc:
        for row in rows:
            row["reason"] = f"the detector has no dense view ({exc}); no anchor can be targeted"
        return
    for row, (anchor, iou, score, box) in zip(rows, found, strict=True):
        if anchor < 0:
            row["reason"] = "no candidate box of the detector overlaps the ground-truth box"
            continue
        row.update({"fn_kind": "uncovered", "anchor": anchor, "score": score, "iou": iou})
        row.update(dict(zip(BOX_COLS, box, strict=True)))


# ---------------------------------------------------------------------------------------------
# the per-split context and the per-image rows


def cause_index(
    dataset: CocoDataset, causes: list[dict] | None
) -> tuple[CauseByAnnotation, CauseRegions]:
    """annotation id -> (cause, cause_id); image id -> [(cause, cause_id, region xyxy)] for the
    causes without an annotation (distractors). Annotations' own ``"cause"`` keys count too."""
    by_ann: CauseByAnnotation = {}
    regions: CauseRegions = {}
    for anns in dataset.annotations.values():
        for a in anns:
            if a.get("cause"):
                by_ann[int(a["id"])] = (str(a["cause"]), None)
    for c in causes or []:
        if c.get("annotation_id") is not None:
            by_ann[int(c["annotation_id"])] = (c["cause"], c["cause_id"])
        elif int(c["image_id"]) in dataset.images:
            regions.setdefault(int(c["image_id"]), []).append(
                (c["cause"], c["cause_id"], xywh_to_xyxy(c["region_bbox"]))
            )
    return by_ann, regions


@dataclass(frozen=True)
class MiningContext:
    """What every image of a split is mined with: the settings, label maps and cause lookups."""

    dataset: CocoDataset
    cfg: MiningConfig
    classes: Sequence[str]
    """The detector's classes (``classes[label]`` is a label's category name)."""
    label_cat: dict[int, int]
    """Model label index -> COCO category id."""
    cat_map: dict[int, int]
    """COCO category id -> model label index."""
    near_miss_iou: float
    prefix: str = ""
    """``"<split>/"``, the candidate ids' prefix; empty without a split name."""
    by_ann: CauseByAnnotation = field(default_factory=dict)
    regions: CauseRegions = field(default_factory=dict)

    def category(self, label: int) -> str | None:
        return self.classes[label] if 0 <= label < len(self.classes) else None


@dataclass
class _Image:
    """One image while it is mined: its GT and detections as arrays, and the prediction-table
    fields of each detection (``outcome``, ``err``, ``near_of``) as matching decides them."""

    image_id: int
    file_name: str
    path: str
    anns: list[dict]
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_crowd: np.ndarray
    gt_ids: list[int]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    anchors: np.ndarray
    det_cid: list[str]
    outcome: np.ndarray
    err: list[str | None]
    near_of: list[str | None]


def _image(ctx: MiningContext, image_id: int, d: Detections) -> _Image:
    anns = ctx.dataset.annotations.get(image_id, [])
    anchors = d.candidates.numpy().astype(np.int64)
    labels = d.labels.numpy().astype(np.int64)
    n = len(labels)
    return _Image(
        image_id=image_id,
        file_name=ctx.dataset.images[image_id]["file_name"],
        path=str(ctx.dataset.image_path(image_id)),
        anns=anns,
        gt_boxes=np.array([xywh_to_xyxy(a["bbox"]) for a in anns], dtype=np.float64).reshape(-1, 4),
        gt_labels=np.array([ctx.cat_map[a["category_id"]] for a in anns], dtype=np.int64),
        gt_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        gt_ids=[int(a["id"]) for a in anns],
        boxes=d.boxes.numpy().astype(np.float64).reshape(-1, 4),
        scores=d.scores.numpy().astype(np.float64),
        labels=labels,
        anchors=anchors,
        det_cid=[
            f"{ctx.prefix}{image_id}/a{a}/c{lab}" for a, lab in zip(anchors, labels, strict=True)
        ],
        outcome=np.full(n, "below", dtype=object),
        err=[None] * n,
        near_of=[None] * n,
    )


def empty_row() -> dict[str, Any]:
    """A candidates row with every field missing: None, NaN, or -1 for the ids and the anchor."""
    row: dict[str, Any] = {c: None for c in CANDIDATE_COLUMNS}
    row.update({c: float("nan") for c in _FLOAT_COLS})
    row.update({"anchor": -1, "gt_id": -1, "gt_category_id": -1})
    return row


def _base_row(ctx: MiningContext, im: _Image, label: int) -> dict[str, Any]:
    row = empty_row()
    row.update(
        {
            "image_id": im.image_id,
            "file_name": im.file_name,
            "image_path": im.path,
            "label": label,
            "category_id": ctx.label_cat.get(label, -1),
            "category": ctx.category(label),
        }
    )
    return row


def _set_gt(ctx: MiningContext, im: _Image, row: dict[str, Any], j: int) -> None:
    """Fill the row's ``gt_*`` fields and planted cause from the image's GT ``j``."""
    row["gt_id"] = im.gt_ids[j]
    row.update(dict(zip(GT_COLS, im.gt_boxes[j].tolist(), strict=True)))
    row["gt_category_id"] = int(im.anns[j]["category_id"])
    row["cause"], row["cause_id"] = ctx.by_ann.get(im.gt_ids[j], (None, None))


def _set_box(row: dict[str, Any], im: _Image, i: int) -> None:
    row.update(dict(zip(BOX_COLS, im.boxes[i].tolist(), strict=True)))


def mine_image(
    ctx: MiningContext, image_id: int, d: Detections
) -> tuple[list[dict], list[dict], list[dict]]:
    """Candidate rows, prediction rows and the FN rows still needing an uncovered anchor.

    ``d`` holds the image's detections at the low threshold; those above the operating threshold
    are matched (:func:`match_image`), the rest supply the near misses.
    """
    im = _image(ctx, image_id, d)
    above = im.scores > ctx.cfg.operating_threshold
    ia = np.where(above)[0]
    m = match_image(
        im.boxes[ia],
        im.scores[ia],
        im.labels[ia],
        im.gt_boxes,
        im.gt_labels,
        im.gt_crowd,
        ctx.cfg.iou,
    )
    rows = _detection_rows(ctx, im, ia, m)
    miss_rows, uncovered = _miss_rows(ctx, im, np.where(~above)[0], m.gt_det)
    return rows + miss_rows, _prediction_rows(ctx, im), uncovered


def _detection_rows(
    ctx: MiningContext, im: _Image, ia: np.ndarray, m: ImageMatch
) -> list[dict[str, Any]]:
    """Rows of the detections above the operating threshold (``ia``, in that order): ``tp`` or
    ``fp``; a detection on a crowd is ``ignored`` and has no row."""
    plain_idx = np.where(~im.gt_crowd)[0]
    std_iou = pairwise_iou(im.boxes, im.gt_boxes[plain_idx])
    rows: list[dict[str, Any]] = []
    for k, i in enumerate(ia):
        row = _base_row(ctx, im, int(im.labels[i]))
        row.update(
            {"candidate_id": im.det_cid[i], "anchor": int(im.anchors[i]), "score": im.scores[i]}
        )
        _set_box(row, im, i)
        if m.det_gt[k] >= 0:
            row.update({"outcome": "tp", "iou": float(m.det_iou[k])})
            _set_gt(ctx, im, row, int(m.det_gt[k]))
        elif m.det_ignored[k]:
            im.outcome[i] = "ignored"
            continue
        else:
            _set_fp(ctx, im, row, i, std_iou[i], plain_idx)
        im.outcome[i] = row["outcome"]
        rows.append(row)
    return rows


def _set_fp(
    ctx: MiningContext,
    im: _Image,
    row: dict[str, Any],
    i: int,
    gt_ious: np.ndarray,
    plain_idx: np.ndarray,
) -> None:
    """Make ``row`` detection ``i``'s fp row: its TIDE type, the GT that type refers to, and the
    planted cause (that GT's, else that of a distractor region it lies on, IoU >= ``cfg.iou``).
    ``gt_ious``: its IoUs with the non-crowd GT, whose indices are ``plain_idx``."""
    cfg = ctx.cfg
    etype, jp = tide_error_type(
        int(im.labels[i]), gt_ious, im.gt_labels[plain_idx], cfg.iou, cfg.background_iou
    )
    row.update({"outcome": "fp", "error_type": etype})
    im.err[i] = etype
    if jp >= 0:
        _set_gt(ctx, im, row, int(plain_idx[jp]))
        row["iou"] = float(gt_ious[jp])
    if row["cause"] is None:
        for cause, cause_id, region in ctx.regions.get(im.image_id, []):
            if pairwise_iou(im.boxes[i][None], np.array([region]))[0, 0] >= cfg.iou:
                row["cause"], row["cause_id"] = cause, cause_id
                break


def _miss_rows(
    ctx: MiningContext, im: _Image, below: np.ndarray, gt_det: np.ndarray
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One ``fn`` row per unmatched non-crowd GT, with its near miss among the detections
    ``below`` the operating threshold; also returned apart: the rows that have none."""
    rows: list[dict[str, Any]] = []
    uncovered: list[dict[str, Any]] = []
    for j in np.where(~im.gt_crowd & (gt_det < 0))[0]:
        row = _base_row(ctx, im, int(im.gt_labels[j]))
        _set_gt(ctx, im, row, int(j))
        fn_id = f"{ctx.prefix}{im.image_id}/fn{im.gt_ids[j]}"
        row.update({"candidate_id": fn_id, "outcome": "fn", "error_type": "missed"})
        same = below[im.labels[below] == im.gt_labels[j]]
        k, iou = near_miss(im.gt_boxes[j], im.boxes[same], im.scores[same], ctx.near_miss_iou)
        if k >= 0:
            i = int(same[k])
            row.update(
                {"fn_kind": "near_miss", "anchor": int(im.anchors[i]), "score": im.scores[i]}
            )
            row["iou"] = iou
            _set_box(row, im, i)
            im.near_of[i] = fn_id
        else:
            uncovered.append(row)
        rows.append(row)
    return rows, uncovered


def _prediction_rows(ctx: MiningContext, im: _Image) -> list[dict[str, Any]]:
    """One predictions row per low-threshold detection, once matching has set its fields."""
    preds = []
    for i in range(len(im.scores)):
        lab = int(im.labels[i])
        preds.append(
            {
                "candidate_id": im.det_cid[i],
                "image_id": im.image_id,
                "anchor": int(im.anchors[i]),
                "label": lab,
                "category_id": ctx.label_cat.get(lab, -1),
                "category": ctx.category(lab),
                "score": im.scores[i],
                **dict(zip(BOX_COLS, im.boxes[i].tolist(), strict=True)),
                "outcome": im.outcome[i],
                "error_type": im.err[i],
                "near_miss_of": im.near_of[i],
            }
        )
    return preds


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """The table of ``rows`` with fixed dtypes: int64 ids, float64 boxes/scores, object strings."""
    df = pd.DataFrame(rows, columns=columns)
    for c in columns:
        if c in _INT_COLS:
            df[c] = df[c].astype("int64")
        elif c in _FLOAT_COLS:
            df[c] = df[c].astype("float64")
        else:
            # missing strings are None (not NaN), in memory as after a parquet round trip
            df[c] = df[c].astype("object").where(df[c].notna(), None)
    return df
