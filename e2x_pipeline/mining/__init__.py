"""Mining (E2X stage 1): every false positive and false negative, with a candidate to explain.

The detector runs once over the dataset at a LOW score threshold (``cfg.low_threshold``, E2X used
0.01-0.02). Its detections are matched to the ground truth at the OPERATING threshold
(``cfg.operating_threshold``) and IoU ``cfg.iou``; the low-threshold detections left over supply
the near misses that explain the false negatives.

The package, by concept:

* :mod:`.matching` -- detection-to-GT matching (COCO's rule) and the TIDE error type of an fp;
* :mod:`.candidates` -- the FN candidates (near miss, uncovered anchor) and the rows of the
  candidates and predictions tables; **their columns are documented there**;
* :mod:`.metrics` -- AP@0.5, counts, TIDE shares and dAP, recall per planted cause
  (``metrics.json``);
* :mod:`.tide` -- TIDE's dAP per error type (the AP gained by each type's oracle);
* :mod:`.stage` -- :func:`mine` (record checks, the batched detection pass) and
  :func:`run_mining_stage`, which writes the tables where :class:`~e2x_pipeline.layout.SplitLayout`
  says; the rejected table is documented there.
"""

from __future__ import annotations

from ..boxes import pairwise_iou, xywh_to_xyxy
from ..vocab import ERROR_TYPES, FN_KINDS, FP_ERROR_TYPES, OUTCOMES
from .candidates import (
    BOX_COLS,
    CANDIDATE_COLUMNS,
    GT_COLS,
    PREDICTION_COLUMNS,
    MiningContext,
    cause_index,
    mine_image,
    near_miss,
    uncovered_candidates,
)
from .matching import ImageMatch, match_image, tide_error_type
from .metrics import coco_ap50, compute_metrics, format_metrics
from .stage import (
    REJECTED_COLUMNS,
    MiningResult,
    category_label_map,
    mine,
    run_mining_stage,
)
from .tide import SPECIAL_ERRORS, tide_dap

__all__ = [
    "BOX_COLS",
    "CANDIDATE_COLUMNS",
    "ERROR_TYPES",
    "FN_KINDS",
    "FP_ERROR_TYPES",
    "GT_COLS",
    "OUTCOMES",
    "PREDICTION_COLUMNS",
    "REJECTED_COLUMNS",
    "SPECIAL_ERRORS",
    "ImageMatch",
    "MiningContext",
    "MiningResult",
    "category_label_map",
    "cause_index",
    "coco_ap50",
    "compute_metrics",
    "format_metrics",
    "match_image",
    "mine",
    "mine_image",
    "near_miss",
    "pairwise_iou",
    "run_mining_stage",
    "tide_dap",
    "tide_error_type",
    "uncovered_candidates",
    "xywh_to_xyxy",
]
