"""The pure FiftyOne label conversions (``fiftyone_io.convert``): no fiftyone, no database."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from e2x_pipeline.fiftyone_io import convert


def test_relative_box_is_exact_both_ways() -> None:
    # corners [11, 61, 41, 91] on a 128 x 64 image (powers of two: every step is exact)
    rel = convert.relative_box([11.0, 61.0, 41.0, 91.0], 128.0, 64.0)
    assert rel == [11 / 128, 61 / 64, 30 / 128, 30 / 64]
    assert convert.absolute_box(rel, 128.0, 64.0) == [11.0, 61.0, 41.0, 91.0]
    # COCO [x, y, w, h] gives the same relative box as the corners it spans
    assert convert.coco_relative_box([11, 61, 30, 30], 128.0, 64.0) == rel
    # a missing image side counts as 1: the box stays in pixels
    assert convert.image_size({"width": 128}) == (128.0, 1.0)
    assert convert.image_size(None) == (1.0, 1.0)


def test_prediction_row_to_detection_attributes() -> None:
    rows = pd.DataFrame(
        {
            "category": ["disk", "square"],
            "box_x1": [11.0, np.nan],
            "box_y1": [61.0, np.nan],
            "box_x2": [41.0, np.nan],
            "box_y2": [91.0, np.nan],
            "score": [0.3, 0.2],
            "candidate_id": ["s/1/a7/c1", "s/1/fn103"],
            "outcome": ["fp", "fn"],
            "error_type": ["loc", "missed"],
            "anchor": [np.int64(7), np.int64(9)],
        }
    )
    first, second = rows.itertuples(index=False)
    kw = convert.prediction_detection(first, 128.0, 128.0)
    assert kw == {
        "label": "disk",
        "bounding_box": [11 / 128, 61 / 128, 30 / 128, 30 / 128],
        "confidence": 0.3,
        "candidate_id": "s/1/a7/c1",
        "outcome": "fp",
        "error_type": "loc",
        "anchor": 7,
        "score": 0.3,
        "fn_kind": None,  # the predictions table has no fn_kind column
    }
    assert type(kw["anchor"]) is int and type(kw["confidence"]) is float
    assert convert.prediction_detection(second, 128.0, 128.0) is None  # no box


def _candidate(**kw) -> pd.Series:
    row = {
        "image_id": np.int64(4),
        "category": "disk",
        "outcome": "fp",
        "error_type": "bkg",
        "score": 0.8,
        "cause": "distractor",
        "box_x1": 0.0,
        "box_y1": 0.0,
        "box_x2": 32.0,
        "box_y2": 16.0,
        "gt_x1": 64.0,
        "gt_y1": 32.0,
        "gt_x2": 128.0,
        "gt_y2": 64.0,
    }
    return pd.Series({**row, **kw})


def test_failing_candidate_to_detection_and_sample_fields() -> None:
    fp = convert.candidate_detection(_candidate(), 128.0, 64.0)
    assert fp == {
        "label": "disk",
        "bounding_box": [0.0, 0.0, 0.25, 0.25],
        "confidence": 0.8,
        "outcome": "fp",
        "error_type": "bkg",
        "cause": "distractor",
    }
    # an fn shows the missed GT box, has no score, and a cause that is not a string is None
    miss = _candidate(outcome="fn", error_type="missed", score=np.nan, cause=np.nan)
    fn = convert.candidate_detection(miss, 128.0, 64.0)
    assert fn["bounding_box"] == [0.5, 0.5, 0.5, 0.5]
    assert fn["confidence"] is None and fn["cause"] is None
    fields = convert.failure_fields(miss, 2)
    assert fields == {
        "image_id": 4,
        "e2x_failure_mode": 2,
        "e2x_error_type": "missed",
        "e2x_outcome": "fn",
        "e2x_score": None,
        "tags": ["fn", "missed", "mode-2"],
    }
    assert convert.failure_fields(_candidate(), None)["tags"] == ["fp", "bkg"]


def test_coco_annotation_to_ground_truth_detection() -> None:
    ann = {"id": 103, "category_id": 2, "bbox": [32, 16, 64, 32], "iscrowd": 1, "cause": "own"}
    cats = {1: "disk", 2: "square"}
    kw = convert.ground_truth_detection(
        ann, cats, 128.0, 64.0, {"cause": "camouflage", "cause_id": 5}, ("fn", "s/1/fn103")
    )
    assert kw == {
        "label": "square",
        "bounding_box": [0.25, 0.25, 0.5, 0.5],
        "coco_id": 103,
        "iscrowd": 1,
        "cause": "camouflage",
        "cause_id": 5,
        "e2x_outcome": "fn",
        "e2x_candidate_id": "s/1/fn103",
    }
    # without a benchmark cause the annotation's own is kept
    assert convert.ground_truth_detection(ann, cats, 128.0, 64.0)["cause"] == "own"
    # the other copies take only the attributes they ask for
    assert convert.coco_detection(ann, cats, 128.0, 64.0, iscrowd=1) == {
        "label": "square",
        "bounding_box": [0.25, 0.25, 0.5, 0.5],
        "iscrowd": 1,
    }


def test_gt_outcomes_and_causes_by_annotation() -> None:
    cands = pd.DataFrame(
        {
            "gt_id": [103, 104, -1, 105],
            "outcome": ["fn", "tp", "fp", "below"],
            "candidate_id": ["a", "b", "c", "d"],
        }
    )
    assert convert.gt_outcomes(cands) == {103: ("fn", "a"), 104: ("tp", "b")}
    assert convert.gt_outcomes(None) == {}
    causes = [{"annotation_id": 7, "cause": "blur"}, {"annotation_id": None, "cause": "x"}]
    assert convert.causes_by_annotation(causes) == {7: causes[0]}


def test_heatmap_range_is_symmetric_in_the_largest_magnitude() -> None:
    m = np.array([[-3.0, 0.5], [2.0, np.nan]], dtype=np.float32)
    assert convert.heatmap_range(m) == [-3.0, 3.0]
    assert convert.heatmap_range(np.array([[0.25, 0.0]])) == [-0.25, 0.25]
    assert convert.heatmap_range(np.zeros((2, 2))) == [-1.0, 1.0]  # all zero: a unit range


def test_features_modes_and_region_labels() -> None:
    feats = pd.DataFrame(
        {
            "candidate_id": ["a", "a", "a", "b"],
            "mode_id": [1, 1, 0, -1],
            "x1": [0.0] * 4,
            "y1": [0.0] * 4,
            "x2": [64.0] * 4,
            "y2": [32.0] * 4,
            "value": [0.5, 0.25, 0.125, -1.0],
            "segment": [3, 4, 5, 6],
        }
    )
    mode_of, by_cand = convert.dominant_modes(feats)
    assert mode_of == {"a": 1} and sorted(by_cand) == ["a", "b"]  # b has no assigned feature
    assert convert.dominant_modes(None) == ({}, {})
    rows = list(feats.itertuples())
    assert convert.feature_detection(rows[0], 128.0, 64.0) == {
        "label": "mode-1",
        "bounding_box": [0.0, 0.0, 0.5, 0.5],
        "attribution": 0.5,
        "segment": 3,
    }
    assert convert.feature_detection(rows[3], 128.0, 64.0)["label"] == "unassigned"
    repair = pd.DataFrame(
        {
            "mode_id": [2],
            "x1": [32.0],
            "y1": [16.0],
            "x2": [64.0],
            "y2": [32.0],
            "score": [0.9],
            "segment": [11],
        }
    )
    assert convert.repair_detection(next(repair.itertuples()), 128.0, 64.0) == {
        "label": "mode-2",
        "bounding_box": [0.25, 0.25, 0.25, 0.25],
        "confidence": 0.9,
        "segment": 11,
    }


def test_field_view_and_dataset_names() -> None:
    from e2x_pipeline.config import E2XConfig

    assert convert.heatmap_field("gradcam") == "gradcam_heatmap"
    assert convert.heatmap_field_order(["rise_heatmap", "e2x_heatmap", "drise_heatmap"]) == [
        "e2x_heatmap",
        "drise_heatmap",
        "rise_heatmap",
    ]
    assert convert.mode_view(np.int64(3)) == "e2x-mode-3"
    assert convert.mode_view(3).startswith(convert.MODE_VIEW_PREFIX)
    cfg = E2XConfig()
    names = convert.dataset_names(cfg, "val")
    base = cfg.data.fiftyone_dataset or "e2x-val"
    assert names == {
        "split": base,
        "failures": f"{base}-failures",
        "pool": cfg.repair.fiftyone_dataset or f"e2x-{cfg.repair.pool_split}",
    }


def test_importing_the_package_does_not_import_fiftyone() -> None:
    # fiftyone is imported (and its database reached) only by the functions that write
    code = "import sys, e2x_pipeline.fiftyone_io; print('fiftyone' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
