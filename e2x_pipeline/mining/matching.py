"""Matching one image's detections to its ground truth, and the TIDE type of each false positive.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..boxes import pairwise_iou


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
