"""Mining (E2X stage 1): every false positive and false negative, with a candidate to explain.

The detector runs once over the dataset at a LOW score threshold (``cfg.low_threshold``, E2X used
0.01-0.02). Its detections are matched to the ground truth at the OPERATING threshold
(``cfg.operating_threshold``) and IoU ``cfg.iou``; the low-threshold detections left over supply
the near misses that explain the false negatives.

Matching (COCO style, the rule of pycocotools ``COCOeval.evaluateImg`` at one IoU threshold)
------------------------------------------------------------------------------------------
Per image and class, the detections with ``score > operating_threshold`` are visited by
decreasing score (stable for ties). Each takes the still-unmatched non-crowd ground truth (GT) of
its class with the largest IoU, provided ``IoU >= cfg.iou``; its outcome is ``tp`` and that GT's is
``tp``. A detection that finds no such GT but overlaps a *crowd* GT (``iscrowd=1``) by
``|d ∩ g| / |d| >= cfg.iou`` (COCO's crowd IoU) is ``ignored``: crowd regions are neither false
negatives nor make false positives, as in COCOeval. Every other detection is ``fp``, every unmatched
non-crowd GT is ``fn`` with error type ``missed``. Differences from the oracles: pycocotools keeps
only the top ``maxDets`` (100) detections per image and class and we keep all; FiftyOne's
``evaluate_detections(method="coco")`` marks a detection on a crowd ``tp`` and an unmatched crowd
``fn`` where we (and COCOeval) ignore both. On data without crowds and with < 100 detections per
image and class the three agree exactly (``tests/test_mining.py`` checks both).

Error types of false positives (TIDE, Bolya et al. 2020, Sec. 2.2; fg = ``cfg.iou``,
bg = ``cfg.background_iou``), tested in TIDE's order against the non-crowd GT of the image:

1. ``loc``  -- the best IoU with a GT of the detection's class is in ``[bg, fg)``;
2. ``cls``  -- IoU ``>= fg`` with a GT of another class;
3. ``dupe`` -- IoU ``>= fg`` with a GT of its class that a higher-scoring detection already took;
4. ``bkg``  -- IoU ``<= bg`` with every GT;
5. ``both`` -- otherwise: wrong class and IoU in ``(bg, fg)`` with a GT of another class.

The GT the type refers to is recorded in ``gt_id`` (``-1`` for ``bkg``).

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

Rejected table (``rejected.parquet``): ``record`` (``image`` | ``annotation``), ``image_id``,
``annotation_id`` (-1 for images), ``file_name``, ``path``, ``error``. An image whose annotation
is bad is left out whole: mining it with incomplete GT would invent false positives. It holds the
records ``load_coco(..., on_bad_record="skip")`` left out (``dataset.rejected``) and the images
that cannot be decoded or whose decoded size differs from their record's width/height. A dataset
without images is an error; one without annotations is mined (every detection is a ``bkg`` fp).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou

from .config import MiningConfig
from .data.coco import CocoDataset, DatasetError
from .detectors.base import DenseOutput, Detections, Detector
from .evaluation import average_precision, coco_eval
from .inference import iter_image_batches
from .io_utils import write_json, write_table

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "missed")
OUTCOMES = ("tp", "fp", "fn")
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
REJECTED_COLUMNS = ["record", "image_id", "annotation_id", "file_name", "path", "error"]
_INT_COLS = ("image_id", "anchor", "label", "category_id", "gt_id", "gt_category_id")


@dataclass
class MiningResult:
    """The mining stage's tables and metrics (see the module docstring for the columns)."""

    candidates: pd.DataFrame
    metrics: dict[str, Any]
    rejected: pd.DataFrame
    predictions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=PREDICTION_COLUMNS)
    )


@dataclass
class ImageMatch:
    """COCO-style matching of one image's detections (above threshold) to its GT.

    ``det_gt[i]``: index of the GT detection i matched (-1 none); ``det_ignored[i]``: it matched a
    crowd; ``det_iou[i]``: IoU with that GT; ``gt_det[j]``: index of the detection GT j matched.
    """

    det_gt: np.ndarray
    det_ignored: np.ndarray
    det_iou: np.ndarray
    gt_det: np.ndarray


# ---------------------------------------------------------------------------------------------
# geometry and matching (pure numpy, exercised directly by the tests)


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def pairwise_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of boxes ``a`` [N,4] and ``b`` [M,4] (xyxy): |a∩b| / |a∪b|.

    Where ``crowd[j]`` is set the denominator is |a| (COCO's crowd IoU, pycocotools
    ``maskUtils.iou`` with ``iscrowd``), so a detection inside a crowd region overlaps it fully.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    union = area_a + area_b - inter
    if crowd is not None and len(b):
        union = np.where(np.asarray(crowd, dtype=bool)[None, :], area_a, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def match_image(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_labels: np.ndarray,
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    gt_crowd: np.ndarray,
    iou_threshold: float,
) -> ImageMatch:
    """Greedy per-class matching by decreasing score, pycocotools ``evaluateImg`` at one IoU.

    A detection takes the unmatched non-crowd GT of its class with the largest IoU >= threshold;
    failing that, a crowd GT of its class (crowd IoU >= threshold, reusable) makes it ignored.
    """
    n, g = len(det_scores), len(gt_labels)
    det_gt = np.full(n, -1, dtype=np.int64)
    det_ignored = np.zeros(n, dtype=bool)
    det_iou = np.full(n, np.nan)
    gt_det = np.full(g, -1, dtype=np.int64)
    if n == 0:
        return ImageMatch(det_gt, det_ignored, det_iou, gt_det)
    crowd = np.asarray(gt_crowd, dtype=bool)
    ious = pairwise_iou(det_boxes, gt_boxes, crowd)
    # pycocotools caps the threshold just under 1 so that IoU == 1 still matches at t = 1
    thr = min(iou_threshold, 1 - 1e-10)
    order = np.argsort(-np.asarray(det_scores, dtype=np.float64), kind="mergesort")
    for i in order:
        same = gt_labels == det_labels[i]
        free = same & ~crowd & (gt_det < 0)
        cand = np.where(free & (ious[i] >= thr))[0]
        if len(cand):
            # the LAST of equal IoUs wins, as in COCOeval's and FiftyOne's '<' scan
            j = cand[len(cand) - 1 - np.argmax(ious[i, cand][::-1])]
            det_gt[i], gt_det[j], det_iou[i] = j, i, ious[i, j]
            continue
        crowd_hit = np.where(same & crowd & (ious[i] >= thr))[0]
        if len(crowd_hit):
            det_ignored[i] = True
            det_iou[i] = ious[i, crowd_hit].max()
    return ImageMatch(det_gt, det_ignored, det_iou, gt_det)


def tide_error_type(
    det_label: int,
    gt_ious: np.ndarray,
    gt_labels: np.ndarray,
    fg_iou: float,
    bg_iou: float,
) -> tuple[str, int]:
    """TIDE error type of one false positive and the index of the GT it refers to (-1 for bkg).

    ``gt_ious`` are the standard IoUs with the image's non-crowd GT. The tests follow TIDE's
    ``quantify.py`` order (Bolya et al. 2020, Sec. 2.2): Loc, Cls, Dupe, Bkg, then Both.
    """
    if len(gt_ious) == 0:
        return "bkg", -1
    same = gt_labels == det_label
    same_iou = np.where(same, gt_ious, -1.0)
    other_iou = np.where(~same, gt_ious, -1.0)
    j_same = int(np.argmax(same_iou))
    if bg_iou <= same_iou[j_same] < fg_iou:
        return "loc", j_same
    j_other = int(np.argmax(other_iou))
    if other_iou[j_other] >= fg_iou:
        return "cls", j_other
    if same_iou[j_same] >= fg_iou:
        return "dupe", j_same
    if gt_ious.max() <= bg_iou:
        return "bkg", -1
    return "both", j_other


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


@contextlib.contextmanager
def _keep_dense(detector: Detector) -> Iterator[dict[str, Any]]:
    """Remember the dense view that ``detector.detect`` computes for a batch (families whose
    detect goes through ``self.dense``), so uncovered misses need no second forward pass."""
    memo: dict[str, Any] = {}
    orig = detector.dense

    def dense(images: torch.Tensor) -> DenseOutput:
        out = orig(images)
        memo["shape"], memo["out"] = tuple(images.shape), out
        return out

    detector.dense = dense  # type: ignore[method-assign]
    try:
        yield memo
    finally:
        del detector.dense  # back to the class's method


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


# ---------------------------------------------------------------------------------------------
# label mapping, validation


def category_label_map(classes: Sequence[str], categories: dict[int, str]) -> dict[int, int]:
    """COCO category id -> model label index, by name (``classes[0]`` is the background).

    Raises ValueError naming the categories the model does not know.
    """
    index = {name: i for i, name in enumerate(classes) if i > 0 or name != "__background__"}
    missing = {cid: name for cid, name in categories.items() if name not in index}
    if missing:
        raise ValueError(
            f"dataset categories {missing} are not among the detector's classes {list(classes)}; "
            "use a model trained on this dataset's categories"
        )
    return {cid: index[name] for cid, name in categories.items()}


def _annotation_problem(ann: dict, dataset: CocoDataset, cat_map: dict[int, int]) -> str | None:
    if ann.get("image_id") not in dataset.images:
        return f"refers to unknown image id {ann.get('image_id')}"
    if ann.get("category_id") not in dataset.categories or ann.get("category_id") not in cat_map:
        return f"refers to unknown category id {ann.get('category_id')}"
    bbox = ann.get("bbox")
    if not (
        isinstance(bbox, (list, tuple))
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)
    ):
        return f"bbox must be [x, y, width, height] numbers, got {bbox!r}"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"bbox {list(bbox)} has zero or negative size"
    return None


# ---------------------------------------------------------------------------------------------
# the stage


def _cause_index(
    dataset: CocoDataset, causes: list[dict] | None
) -> tuple[dict[int, tuple[str, str | None]], dict[int, list[tuple[str, str, list[float]]]]]:
    """annotation id -> (cause, cause_id); image id -> [(cause, cause_id, region xyxy)] for the
    causes without an annotation (distractors)."""
    by_ann: dict[int, tuple[str, str | None]] = {}
    regions: dict[int, list[tuple[str, str, list[float]]]] = {}
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


def _empty_row() -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in CANDIDATE_COLUMNS}
    row.update({c: float("nan") for c in (*BOX_COLS, *GT_COLS, "score", "iou")})
    row.update({"anchor": -1, "gt_id": -1, "gt_category_id": -1})
    return row


def mine(
    detector: Detector,
    dataset: CocoDataset,
    cfg: MiningConfig,
    causes: list[dict] | None = None,
    split: str = "",
    near_miss_iou: float | None = None,
) -> MiningResult:
    """Detect at ``cfg.low_threshold``, match at ``cfg.operating_threshold`` / ``cfg.iou``, type
    every FP (TIDE) and give every FN a candidate (near miss or uncovered anchor).

    ``causes``: the benchmark's cause records of this split (``load_causes(root, split)``), to
    attach cause ids and distractor regions; annotations' own ``"cause"`` keys are used as well.
    Bad images / annotations raise :class:`DatasetError` naming the record, or with
    ``cfg.on_bad_record == "skip"`` land in ``rejected``. See the module docstring for the tables.
    """
    t0 = time.perf_counter()
    cat_map = category_label_map(detector.classes, dataset.categories)
    label_cat = {lab: cid for cid, lab in cat_map.items()}
    nm_iou = cfg.iou if near_miss_iou is None else near_miss_iou
    prefix = f"{split}/" if split else ""
    # records load_coco(on_bad_record="skip") already left out, then ours
    rejected: list[dict[str, Any]] = [dict(r) for r in getattr(dataset, "rejected", [])]
    if not dataset.images and not rejected:
        raise DatasetError(
            f"{dataset.path} lists no images, so there is nothing to mine; check that the "
            "split's annotation file (data.root or data.splits) is the right export"
        )
    skip = cfg.on_bad_record == "skip"

    def reject(record: str, image_id: int, ann_id: int, error: str) -> None:
        im = dataset.images.get(image_id, {})
        path = str(dataset.image_path(image_id)) if image_id in dataset.images else ""
        rejected.append(
            {
                "record": record,
                "image_id": int(image_id),
                "annotation_id": int(ann_id),
                "file_name": im.get("file_name", ""),
                "path": path,
                "error": error,
            }
        )

    bad_images: set[int] = set()
    for image_id, anns in dataset.annotations.items():
        for a in anns:
            problem = _annotation_problem(a, dataset, cat_map)
            if problem is None and a.get("image_id") != image_id:
                problem = f"is filed under image {image_id} but names image {a.get('image_id')}"
            if problem is None:
                continue
            msg = f"{dataset.path}: annotation {a.get('id')} {problem}"
            if not skip:
                raise DatasetError(f"{msg}; fix it, or set mining.on_bad_record=skip")
            reject("annotation", image_id, int(a.get("id", -1)), msg)
            bad_images.add(image_id)
    image_ids = [i for i in dataset.image_ids if i not in bad_images]

    on_error: Callable[[int, DatasetError], None] | None = None
    if skip:
        on_error = lambda image_id, err: reject("image", image_id, -1, str(err))  # noqa: E731

    by_ann, regions = _cause_index(dataset, causes)
    rows: list[dict[str, Any]] = []
    preds: list[dict[str, Any]] = []
    all_dets: dict[int, Detections] = {}
    t_detect = 0.0
    batches = iter_image_batches(dataset, cfg.batch_size, image_ids, on_error)
    for ids, images in batches:
        batch = torch.stack(images)
        t1 = time.perf_counter()
        with _keep_dense(detector) as memo:
            dets = [d.to("cpu") for d in detector.detect(batch, cfg.low_threshold)]
        t_detect += time.perf_counter() - t1
        kept_dense = memo.get("out") if memo.get("shape") == tuple(batch.shape) else None
        pending: list[tuple[int, np.ndarray, int]] = []
        pending_rows: list[dict[str, Any]] = []
        for b, (image_id, d) in enumerate(zip(ids, dets, strict=True)):
            all_dets[image_id] = d
            rows_b, preds_b, unc = _mine_image(
                image_id,
                d,
                dataset,
                cat_map,
                label_cat,
                cfg,
                nm_iou,
                prefix,
                by_ann,
                regions,
                detector.classes,
            )
            rows.extend(rows_b)
            preds.extend(preds_b)
            for row in unc:
                gt_box = np.array([row[c] for c in GT_COLS])
                pending.append((b, gt_box, int(row["label"])))
                pending_rows.append(row)
        if pending:
            _fill_uncovered(detector, batch, pending, pending_rows, kept_dense)

    candidates = _frame(rows, CANDIDATE_COLUMNS)
    predictions = _frame(preds, PREDICTION_COLUMNS)
    rejected_df = _frame(rejected, REJECTED_COLUMNS)
    kept = [i for i in image_ids if i in all_dets]
    metrics = compute_metrics(candidates, dataset, kept, all_dets, label_cat, cfg, causes)
    metrics["images"] = len(kept)
    metrics["rejected"] = len(rejected_df)
    metrics["seconds"] = {"total": time.perf_counter() - t0, "detect": t_detect}
    return MiningResult(candidates, metrics, rejected_df, predictions)


def _frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns)
    for c in columns:
        if c in _INT_COLS:
            df[c] = df[c].astype("int64")
        elif c in (*BOX_COLS, *GT_COLS, "score", "iou"):
            df[c] = df[c].astype("float64")
        else:
            # missing strings are None (not NaN), in memory as after a parquet round trip
            df[c] = df[c].astype("object").where(df[c].notna(), None)
    return df


def _mine_image(
    image_id: int,
    d: Detections,
    dataset: CocoDataset,
    cat_map: dict[int, int],
    label_cat: dict[int, int],
    cfg: MiningConfig,
    nm_iou: float,
    prefix: str,
    by_ann: dict[int, tuple[str, str | None]],
    regions: dict[int, list[tuple[str, str, list[float]]]],
    classes: Sequence[str],
) -> tuple[list[dict], list[dict], list[dict]]:
    """Candidate rows, prediction rows and the FN rows still needing an uncovered anchor."""
    im = dataset.images[image_id]
    path = str(dataset.image_path(image_id))
    anns = dataset.annotations.get(image_id, [])
    gt_boxes = np.array([xywh_to_xyxy(a["bbox"]) for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_labels = np.array([cat_map[a["category_id"]] for a in anns], dtype=np.int64)
    gt_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    gt_ids = [int(a["id"]) for a in anns]

    boxes = d.boxes.numpy().astype(np.float64).reshape(-1, 4)
    scores = d.scores.numpy().astype(np.float64)
    labels = d.labels.numpy().astype(np.int64)
    anchors = d.candidates.numpy().astype(np.int64)
    above = scores > cfg.operating_threshold
    ia = np.where(above)[0]
    m = match_image(boxes[ia], scores[ia], labels[ia], gt_boxes, gt_labels, gt_crowd, cfg.iou)
    plain = ~gt_crowd
    std_iou = pairwise_iou(boxes, gt_boxes[plain])
    plain_idx = np.where(plain)[0]

    def base(label: int) -> dict[str, Any]:
        row = _empty_row()
        cid = label_cat.get(label, -1)
        row.update(
            {
                "image_id": image_id,
                "file_name": im["file_name"],
                "image_path": path,
                "label": label,
                "category_id": cid,
                "category": classes[label] if 0 <= label < len(classes) else None,
            }
        )
        return row

    def set_gt(row: dict[str, Any], j: int) -> None:
        row["gt_id"] = gt_ids[j]
        row.update(dict(zip(GT_COLS, gt_boxes[j].tolist(), strict=True)))
        row["gt_category_id"] = int(anns[j]["category_id"])
        row["cause"], row["cause_id"] = by_ann.get(gt_ids[j], (None, None))

    det_cid = [f"{prefix}{image_id}/a{a}/c{lab}" for a, lab in zip(anchors, labels, strict=True)]
    outcome = np.full(len(scores), "below", dtype=object)
    err: list[str | None] = [None] * len(scores)
    rows: list[dict[str, Any]] = []
    for k, i in enumerate(ia):
        row = base(int(labels[i]))
        row.update({"candidate_id": det_cid[i], "anchor": int(anchors[i]), "score": scores[i]})
        row.update(dict(zip(BOX_COLS, boxes[i].tolist(), strict=True)))
        if m.det_gt[k] >= 0:
            j = int(m.det_gt[k])
            row.update({"outcome": "tp", "iou": float(m.det_iou[k])})
            set_gt(row, j)
        elif m.det_ignored[k]:
            outcome[i] = "ignored"
            continue
        else:
            etype, jp = tide_error_type(
                int(labels[i]), std_iou[i], gt_labels[plain], cfg.iou, cfg.background_iou
            )
            row.update({"outcome": "fp", "error_type": etype})
            err[i] = etype
            if jp >= 0:
                set_gt(row, int(plain_idx[jp]))
                row["iou"] = float(std_iou[i, jp])
            if row["cause"] is None:
                for cause, cause_id, region in regions.get(image_id, []):
                    if pairwise_iou(boxes[i][None], np.array([region]))[0, 0] >= cfg.iou:
                        row["cause"], row["cause_id"] = cause, cause_id
                        break
        outcome[i] = row["outcome"]
        rows.append(row)

    below = np.where(~above)[0]
    near_of: list[str | None] = [None] * len(scores)
    uncovered: list[dict[str, Any]] = []
    for j in np.where(plain & (m.gt_det < 0))[0]:
        row = base(int(gt_labels[j]))
        set_gt(row, int(j))
        fn_id = f"{prefix}{image_id}/fn{gt_ids[j]}"
        row.update({"candidate_id": fn_id, "outcome": "fn", "error_type": "missed"})
        same = below[labels[below] == gt_labels[j]]
        k, iou = near_miss(gt_boxes[j], boxes[same], scores[same], nm_iou)
        if k >= 0:
            i = int(same[k])
            row.update(
                {"fn_kind": "near_miss", "anchor": int(anchors[i]), "score": scores[i], "iou": iou}
            )
            row.update(dict(zip(BOX_COLS, boxes[i].tolist(), strict=True)))
            near_of[i] = fn_id
        else:
            uncovered.append(row)
        rows.append(row)

    preds = []
    for i in range(len(scores)):
        lab = int(labels[i])
        preds.append(
            {
                "candidate_id": det_cid[i],
                "image_id": image_id,
                "anchor": int(anchors[i]),
                "label": lab,
                "category_id": label_cat.get(lab, -1),
                "category": classes[lab] if 0 <= lab < len(classes) else None,
                "score": scores[i],
                **dict(zip(BOX_COLS, boxes[i].tolist(), strict=True)),
                "outcome": outcome[i],
                "error_type": err[i],
                "near_miss_of": near_of[i],
            }
        )
    return rows, preds, uncovered


def _fill_uncovered(
    detector: Detector,
    batch: torch.Tensor,
    pending: list[tuple[int, np.ndarray, int]],
    rows: list[dict[str, Any]],
    dense: DenseOutput | None = None,
) -> None:
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
# metrics


def coco_ap50(
    dataset: CocoDataset,
    image_ids: list[int],
    detections: dict[int, Detections],
    label_cat: dict[int, int],
) -> dict[int, float | None]:
    """AP at IoU 0.5 per category id from pycocotools ``COCOeval`` (101-point interpolated
    precision, COCO's definition) on the same low-threshold detections. None: no GT of it."""
    _, per_cat = average_precision(coco_eval(dataset, detections, label_cat, list(image_ids)))
    return {c: (None if np.isnan(v) else v) for c, v in per_cat.items()}


def compute_metrics(
    candidates: pd.DataFrame,
    dataset: CocoDataset,
    image_ids: list[int],
    detections: dict[int, Detections],
    label_cat: dict[int, int],
    cfg: MiningConfig,
    causes: list[dict] | None = None,
) -> dict[str, Any]:
    """AP@0.5 per class, counts per outcome / error type / FN kind, TIDE-style shares of the
    errors, and recall per planted cause."""
    c = candidates
    ap = coco_ap50(dataset, image_ids, detections, label_cat)
    ap_named = {dataset.categories[k]: v for k, v in ap.items()}
    valid = [v for v in ap.values() if v is not None]
    outcome = {o: int((c["outcome"] == o).sum()) for o in OUTCOMES}
    errors = {e: int((c["error_type"] == e).sum()) for e in ERROR_TYPES}
    fn = c[c["outcome"] == "fn"]
    fn_kind = {
        "near_miss": int((fn["fn_kind"] == "near_miss").sum()),
        "uncovered": int((fn["fn_kind"] == "uncovered").sum()),
        "none": int(fn["fn_kind"].isna().sum()),
    }
    n_err = outcome["fp"] + outcome["fn"]
    tp, fp, nfn = outcome["tp"], outcome["fp"], outcome["fn"]
    metrics: dict[str, Any] = {
        "thresholds": cfg.model_dump(),
        "ap50": ap_named,
        "map50": float(np.mean(valid)) if valid else None,
        "outcomes": outcome,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + nfn) if tp + nfn else None,
        "error_types": errors,
        "fn_kinds": fn_kind,
        # TIDE reports dAP per type; at one operating point we report each type's share of errors
        "tide_share": {e: (errors[e] / n_err if n_err else 0.0) for e in ERROR_TYPES},
        "per_class": {},
        "causes": {},
    }
    for lab, cid in sorted(label_cat.items(), key=lambda kv: kv[1]):
        name = dataset.categories[cid]
        gt_rows = c[(c["gt_category_id"] == cid) & c["outcome"].isin(["tp", "fn"])]
        ctp = int((gt_rows["outcome"] == "tp").sum())
        cfn = int((gt_rows["outcome"] == "fn").sum())
        metrics["per_class"][name] = {
            "ap50": ap_named[name],
            "tp": ctp,
            "fn": cfn,
            "fp": int(((c["outcome"] == "fp") & (c["label"] == lab)).sum()),
            "recall": ctp / (ctp + cfn) if ctp + cfn else None,
        }
    gt_rows = c[c["outcome"].isin(["tp", "fn"])]
    for cause in sorted(set(gt_rows["cause"].dropna())):
        r = gt_rows[gt_rows["cause"] == cause]
        ctp, cfn = int((r["outcome"] == "tp").sum()), int((r["outcome"] == "fn").sum())
        with_cand = int(((r["outcome"] == "fn") & r["fn_kind"].notna()).sum())
        metrics["causes"][cause] = {
            "objects": ctp + cfn,
            "tp": ctp,
            "fn": cfn,
            "recall": ctp / (ctp + cfn),
            "fn_with_candidate": with_cand,
            "fn_candidate_rate": with_cand / cfn if cfn else None,
        }
    clean = gt_rows[gt_rows["cause"].isna()]
    if len(clean):
        ctp = int((clean["outcome"] == "tp").sum())
        metrics["causes"]["(none)"] = {
            "objects": len(clean),
            "tp": ctp,
            "fn": len(clean) - ctp,
            "recall": ctp / len(clean),
        }
    kept = set(image_ids)
    region_causes = [
        r for r in causes or [] if r.get("annotation_id") is None and int(r["image_id"]) in kept
    ]
    for cause in sorted({r["cause"] for r in region_causes}):
        ids = {r["cause_id"] for r in region_causes if r["cause"] == cause}
        fps = c[(c["outcome"] == "fp") & (c["cause"] == cause)]
        hit = set(fps["cause_id"]) & ids
        metrics["causes"][cause] = {
            "regions": len(ids),
            "fp": len(fps),
            "regions_with_fp": len(hit),
            "fp_rate": len(hit) / len(ids) if ids else None,
            "fp_error_types": {e: int((fps["error_type"] == e).sum()) for e in ERROR_TYPES[:5]},
        }
    return metrics


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table of the mining metrics for the terminal and logs."""

    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = [
        f"images {metrics.get('images', '-')}  rejected {metrics.get('rejected', 0)}  "
        f"mAP@0.5 {f(metrics['map50'])}  precision {f(metrics['precision'])}  "
        f"recall {f(metrics['recall'])}",
        "",
        f"{'class':<16}{'AP@0.5':>8}{'tp':>6}{'fp':>6}{'fn':>6}{'recall':>8}",
    ]
    for name, r in metrics["per_class"].items():
        lines.append(
            f"{name:<16}{f(r['ap50']):>8}{r['tp']:>6}{r['fp']:>6}{r['fn']:>6}{f(r['recall']):>8}"
        )
    lines += ["", f"{'error type':<16}{'count':>8}{'share':>8}"]
    for e in ERROR_TYPES:
        lines.append(f"{e:<16}{metrics['error_types'][e]:>8}{metrics['tide_share'][e]:>8.3f}")
    k = metrics["fn_kinds"]
    lines.append(
        f"FN candidates: near_miss {k['near_miss']}, uncovered {k['uncovered']}, none {k['none']}"
    )
    if metrics["causes"]:
        lines += [
            "",
            f"{'planted cause':<16}{'objects':>8}{'tp':>6}{'fn':>6}{'recall':>8}"
            f"{'fn+cand':>9}{'regions':>9}{'fp':>6}",
        ]
        for cause, r in metrics["causes"].items():
            lines.append(
                f"{cause:<16}{r.get('objects', '-'):>8}{r.get('tp', '-'):>6}{r.get('fn', '-'):>6}"
                f"{f(r.get('recall')):>8}{r.get('fn_with_candidate', '-'):>9}"
                f"{r.get('regions', '-'):>9}{r.get('fp', '-'):>6}"
            )
    return "\n".join(lines)


def run_mining_stage(
    detector: Detector,
    dataset: CocoDataset,
    cfg: MiningConfig,
    out_dir: str | Path,
    causes: list[dict] | None = None,
    split: str = "",
) -> MiningResult:
    """:func:`mine`, then write ``candidates.parquet``, ``predictions.parquet``,
    ``rejected.parquet`` and ``metrics.json`` under ``out_dir``, each atomically."""
    result = mine(detector, dataset, cfg, causes, split)
    out = Path(out_dir)
    write_table(out / "candidates.parquet", result.candidates)
    write_table(out / "predictions.parquet", result.predictions)
    write_table(out / "rejected.parquet", result.rejected)
    write_json(out / "metrics.json", result.metrics)
    return result
