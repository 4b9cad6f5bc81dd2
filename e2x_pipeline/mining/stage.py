"""The mining stage: check the split's records, mine every image, write the tables.

Rejected table (``rejected.parquet``): ``record`` (``image`` | ``annotation``), ``image_id``,
``annotation_id`` (-1 for images), ``file_name``, ``path``, ``error``. An image whose annotation
is bad is left out whole: mining it with incomplete GT would invent false positives. It holds the
records ``load_coco(..., on_bad_record="skip")`` left out (``dataset.rejected``) and the images
that cannot be decoded or whose decoded size differs from their record's width/height. A dataset
without images is an error; one without annotations is mined (every detection is a ``bkg`` fp).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import MiningConfig
from ..data.coco import CocoDataset, DatasetError
from ..detectors.base import Detections, Detector
from ..generation import generation
from ..inference import iter_image_batches
from ..io_utils import write_json, write_table
from ..layout import SplitLayout
from .candidates import (
    CANDIDATE_COLUMNS,
    GT_COLS,
    PREDICTION_COLUMNS,
    MiningContext,
    cause_index,
    fill_uncovered,
    frame,
    mine_image,
)
from .metrics import compute_metrics

REJECTED_COLUMNS = ["record", "image_id", "annotation_id", "file_name", "path", "error"]


@dataclass
class MiningResult:
    """The mining stage's tables and metrics (see :mod:`.candidates` for the columns)."""

    candidates: pd.DataFrame
    metrics: dict[str, Any]
    rejected: pd.DataFrame
    predictions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=PREDICTION_COLUMNS)
    )


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


class _Rejected:
    """The rows of the rejected table: those ``load_coco(on_bad_record="skip")`` already left
    out, then the mining stage's own."""

    def __init__(self, dataset: CocoDataset) -> None:
        self.dataset = dataset
        self.rows: list[dict[str, Any]] = [dict(r) for r in getattr(dataset, "rejected", [])]

    def add(self, record: str, image_id: int, ann_id: int, error: str) -> None:
        ds = self.dataset
        im = ds.images.get(image_id, {})
        path = str(ds.image_path(image_id)) if image_id in ds.images else ""
        self.rows.append(
            {
                "record": record,
                "image_id": int(image_id),
                "annotation_id": int(ann_id),
                "file_name": im.get("file_name", ""),
                "path": path,
                "error": error,
            }
        )


def _images_to_mine(
    dataset: CocoDataset, cat_map: dict[int, int], skip: bool, rejected: _Rejected
) -> list[int]:
    """The image ids whose annotations are all usable. A bad annotation raises
    :class:`DatasetError`, or with ``skip`` is rejected and its image left out."""
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
            rejected.add("annotation", image_id, int(a.get("id", -1)), msg)
            bad_images.add(image_id)
    return [i for i in dataset.image_ids if i not in bad_images]


# ---------------------------------------------------------------------------------------------
# the stage


def mine_batch(
    detector: Detector, ctx: MiningContext, ids: list[int], images: list[torch.Tensor]
) -> tuple[list[dict], list[dict], list[Detections], float]:
    """Detect one batch at ``cfg.low_threshold`` and mine its images; the uncovered misses get
    their anchors while the batch is in memory. Returns the candidate rows, the prediction rows,
    each image's detections (on the CPU) and the seconds spent in ``detect``."""
    batch = torch.stack(images)
    t1 = time.perf_counter()
    dets, kept_dense = detector.detect_with_dense(batch, ctx.cfg.low_threshold)
    dets = [d.to("cpu") for d in dets]
    # a model with more classes than the dataset (COCO-pretrained weights on a person/car
    # dataset): detections of the other classes are outside the label space, not false positives
    labels = torch.as_tensor(sorted(ctx.label_cat), dtype=torch.long)
    dets = [d.subset(torch.isin(d.labels, labels)) for d in dets]
    seconds = time.perf_counter() - t1
    rows: list[dict[str, Any]] = []
    preds: list[dict[str, Any]] = []
    pending: list[tuple[int, np.ndarray, int]] = []
    pending_rows: list[dict[str, Any]] = []
    for b, (image_id, d) in enumerate(zip(ids, dets, strict=True)):
        rows_b, preds_b, unc = mine_image(ctx, image_id, d)
        rows.extend(rows_b)
        preds.extend(preds_b)
        for row in unc:
            pending.append((b, np.array([row[c] for c in GT_COLS]), int(row["label"])))
            pending_rows.append(row)
    if pending:
        fill_uncovered(detector, batch, pending, pending_rows, kept_dense)
    return rows, preds, dets, seconds


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
    ``cfg.on_bad_record == "skip"`` land in ``rejected``. See :mod:`.candidates` for the tables.
    """
    t0 = time.perf_counter()
    cat_map = category_label_map(detector.classes, dataset.categories)
    rejected = _Rejected(dataset)
    if not dataset.images and not rejected.rows:
        raise DatasetError(
            f"{dataset.path} lists no images, so there is nothing to mine; check that the "
            "split's annotation file (data.root or data.splits) is the right export"
        )
    skip = cfg.on_bad_record == "skip"
    image_ids = _images_to_mine(dataset, cat_map, skip, rejected)
    on_error: Callable[[int, DatasetError], None] | None = None
    if skip:
        on_error = lambda image_id, err: rejected.add("image", image_id, -1, str(err))  # noqa: E731

    by_ann, regions = cause_index(dataset, causes)
    ctx = MiningContext(
        dataset=dataset,
        cfg=cfg,
        classes=detector.classes,
        label_cat={lab: cid for cid, lab in cat_map.items()},
        cat_map=cat_map,
        near_miss_iou=cfg.iou if near_miss_iou is None else near_miss_iou,
        prefix=f"{split}/" if split else "",
        by_ann=by_ann,
        regions=regions,
    )
    rows, preds, all_dets, t_detect = _mine_images(detector, ctx, image_ids, on_error)
    candidates = frame(rows, CANDIDATE_COLUMNS)
    predictions = frame(preds, PREDICTION_COLUMNS)
    rejected_df = frame(rejected.rows, REJECTED_COLUMNS)
    # the metrics are on the images that were mined, not those rejected on decoding
    kept = [i for i in image_ids if i in all_dets]
    metrics = compute_metrics(candidates, dataset, kept, all_dets, ctx.label_cat, cfg, causes)
    metrics["images"] = len(kept)
    metrics["rejected"] = len(rejected_df)
    metrics["seconds"] = {"total": time.perf_counter() - t0, "detect": t_detect}
    return MiningResult(candidates, metrics, rejected_df, predictions)


def _mine_images(
    detector: Detector,
    ctx: MiningContext,
    image_ids: list[int],
    on_error: Callable[[int, DatasetError], None] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, Detections], float]:
    """Mine the images batch by batch. Returns the candidate rows, the prediction rows, each
    mined image's detections and the seconds spent in ``detect``."""
    rows: list[dict[str, Any]] = []
    preds: list[dict[str, Any]] = []
    all_dets: dict[int, Detections] = {}
    t_detect = 0.0
    batches = iter_image_batches(ctx.dataset, ctx.cfg.batch_size, image_ids, on_error)
    for ids, images in batches:
        rows_b, preds_b, dets, seconds = mine_batch(detector, ctx, ids, images)
        rows.extend(rows_b)
        preds.extend(preds_b)
        all_dets.update(zip(ids, dets, strict=True))
        t_detect += seconds
    return rows, preds, all_dets, t_detect


def run_mining_stage(
    detector: Detector,
    dataset: CocoDataset,
    cfg: MiningConfig,
    out_dir: str | Path,
    causes: list[dict] | None = None,
    split: str = "",
) -> MiningResult:
    """:func:`mine`, then write the split's candidates, predictions, rejected and mining-metrics
    tables (:class:`SplitLayout`) under ``out_dir``, each atomically, as one generation
    (:func:`e2x_pipeline.generation.generation`)."""
    result = mine(detector, dataset, cfg, causes, split)
    layout = SplitLayout(Path(out_dir), split or None)
    with generation(layout.root, "mine") as gen:  # one generation: a kill between writes shows
        write_table(layout.candidates, result.candidates)
        write_table(layout.predictions, result.predictions)
        write_table(layout.rejected, result.rejected)
        write_json(layout.mining_metrics, result.metrics)
        gen.add(layout.candidates, layout.predictions, layout.rejected, layout.mining_metrics)
    return result
