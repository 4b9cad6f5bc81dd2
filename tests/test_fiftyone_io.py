"""FiftyOne writes: idempotent reruns, the failures view, schema and connection errors, and the
known crowd difference between FiftyOne's COCO evaluation and ours (= pycocotools)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from test_mining import hand_case  # noqa: F401  (the fixture, shared with the mining tests)

from e2x_pipeline.config import MiningConfig
from e2x_pipeline.mining import mine


@pytest.fixture()
def fo_name(fo_db, request):
    from e2x_pipeline import fiftyone_io

    name = f"e2x-test-{request.node.name}"[:60]
    fiftyone_io.delete_dataset(name)
    yield name
    fiftyone_io.delete_dataset(name)


def _labels(ds, field: str) -> list:
    return [d for dets in ds.values(f"{field}.detections") for d in (dets or [])]


def test_publish_is_idempotent_and_updates_in_place(fo_name, hand_case) -> None:  # noqa: F811
    from e2x_pipeline import fiftyone_io

    coco, det = hand_case
    res = mine(det, coco, MiningConfig(), split="s")
    fiftyone_io.publish_mining(fo_name, coco, res.candidates, res.predictions)
    ds = fiftyone_io.publish_mining(fo_name, coco, res.candidates, res.predictions)
    schema = set(ds.get_field_schema())
    assert len(ds) == 3 and sorted(ds.values("image_id")) == [1, 2, 3]
    preds = _labels(ds, "e2x_predictions")
    assert sorted(p.candidate_id for p in preds) == sorted(res.predictions["candidate_id"])
    by_id = {p.candidate_id: p for p in preds}
    assert (by_id["s/1/a2/c2"].outcome, by_id["s/1/a2/c2"].error_type) == ("fp", "cls")
    assert by_id["s/1/a7/c1"].confidence == pytest.approx(0.30)
    # relative boxes: [11, 61, 41, 91] on a 128 px image
    assert by_id["s/1/a7/c1"].bounding_box == pytest.approx(
        [11 / 128, 61 / 128, 30 / 128, 30 / 128]
    )
    gts = _labels(ds, "ground_truth")
    assert len(gts) == sum(len(a) for a in coco.annotations.values())
    assert {g.coco_id: g.e2x_outcome for g in gts}[103] == "fn"
    fn_boxes = _labels(ds, "e2x_predictions_fn")
    assert sorted(f.candidate_id for f in fn_boxes) == ["s/1/fn103", "s/1/fn104"]
    # the failures view: images 1 (fp, fn), 2 (fp) and 3 (fn)
    view = ds.load_saved_view(fiftyone_io.FAILURES_VIEW)
    assert sorted(view.values("image_id")) == [1, 2, 3]
    assert ds.list_saved_views() == [fiftyone_io.FAILURES_VIEW]

    # a rerun with another operating threshold replaces the labels in place
    res2 = mine(det, coco, MiningConfig(operating_threshold=0.92), split="s")
    ds = fiftyone_io.publish_mining(fo_name, coco, res2.candidates, res2.predictions)
    assert len(ds) == 3 and set(ds.get_field_schema()) == schema
    preds = _labels(ds, "e2x_predictions")
    assert len(preds) == len(res2.predictions)
    outcomes = {p.candidate_id: p.outcome for p in preds}
    assert outcomes["s/1/a0/c1"] == "tp" and outcomes["s/1/a1/c1"] == "below"
    view = ds.load_saved_view(fiftyone_io.FAILURES_VIEW)
    expected = set(res2.candidates.loc[res2.candidates.outcome != "tp", "image_id"])
    assert set(view.values("image_id")) == expected
    assert ds.list_saved_views() == [fiftyone_io.FAILURES_VIEW]


def test_fiftyone_coco_eval_differs_only_on_crowds(fo_name, hand_case) -> None:  # noqa: F811
    from e2x_pipeline import fiftyone_io

    coco, det = hand_case
    res = mine(det, coco, MiningConfig())
    ds = fiftyone_io.publish_mining(fo_name, coco, res.candidates, res.predictions)
    counts = fiftyone_io.evaluate_with_fiftyone(
        ds, "e2x_predictions", "ground_truth", "ev", iou=0.5, min_score=0.5
    )
    # FiftyOne calls the detection inside crowd 201 a tp; COCOeval and we ignore it
    ours = res.metrics["outcomes"]
    assert counts == {"tp": ours["tp"] + 1, "fp": ours["fp"], "fn": ours["fn"]}
    coco.annotations[2] = [a for a in coco.annotations[2] if not a.get("iscrowd")]
    res = mine(det, coco, MiningConfig())
    ds = fiftyone_io.publish_mining(fo_name, coco, res.candidates, res.predictions)
    counts = fiftyone_io.evaluate_with_fiftyone(
        ds, "e2x_predictions", "ground_truth", "ev", iou=0.5, min_score=0.5
    )
    assert counts == res.metrics["outcomes"]


def test_each_checkpoint_gets_its_own_evaluation_run(fo_name, hand_case, tmp_path) -> None:  # noqa: F811
    """Two checkpoints on the same dataset: two FiftyOne evaluation runs side by side (what the
    App's Model Evaluation panel lists), each with its own predictions and mAP; rerunning one
    replaces only its own."""
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.fiftyone_io.db import (
        EVAL_MAX_PER_IMAGE,
        EVAL_MIN_SCORE,
        checkpoint_eval_key,
    )

    coco, det = hand_case
    res = mine(det, coco, MiningConfig())
    # the dataset also holds another folder's copy of image 1 (the benchmark generated
    # elsewhere, say): same COCO id, other file. It gets none of this run's labels and is not
    # evaluated.
    import fiftyone as fo

    ds = fiftyone_io.publish_mining(fo_name, coco, res.candidates, res.predictions)
    ds.add_sample(fo.Sample(filepath=str(tmp_path / "elsewhere" / "1.png"), image_id=1))
    fiftyone_io.publish_mining(fo_name, coco, res.candidates, res.predictions, checkpoint_key="a1")
    # "checkpoint b2" ranks its detections the other way round: a worse PR curve
    weak = res.predictions.assign(score=(1 - res.predictions["score"]).clip(lower=0.06))
    ds = fiftyone_io.publish_mining(fo_name, coco, res.candidates, weak, checkpoint_key="b2")
    ds = fiftyone_io.publish_mining(fo_name, coco, res.candidates, weak, checkpoint_key="b2")
    keys = [checkpoint_eval_key("a1"), checkpoint_eval_key("b2")]
    assert sorted(ds.list_evaluations()) == keys == ["e2x_a1", "e2x_b2"]
    a, b = (ds.load_evaluation_results(k) for k in keys)
    assert a.mAP() > b.mAP() >= 0  # stored with mAP (PR curves in the App)
    n_a = sum(len(x or []) for x in ds.values("e2x_a1_preds.detections"))
    above = res.predictions[res.predictions["score"] > EVAL_MIN_SCORE]
    want = above.groupby("image_id").size().clip(upper=EVAL_MAX_PER_IMAGE).sum()
    assert n_a == int(want) > 0
    # the outcome fields of the mining stage are untouched by the evaluation runs
    assert "e2x_predictions" in ds.get_field_schema()

    # a further checkpoint (the retrained one) adds its run from its own predictions table and
    # leaves the base run's predictions, outcomes and both runs as they are
    before = ds.values("e2x_predictions.detections.confidence")
    a_map = a.mAP()
    strong = res.predictions.assign(score=res.predictions["score"].clip(upper=0.99))
    for _ in range(2):  # a rerun replaces its own run only
        key = fiftyone_io.publish_checkpoint_evaluation(fo_name, coco, strong, "c3")
    ds.reload()
    assert key == "e2x_c3"
    assert sorted(ds.list_evaluations()) == ["e2x_a1", "e2x_b2", "e2x_c3"]
    assert ds.values("e2x_predictions.detections.confidence") == before
    assert ds.load_evaluation_results("e2x_a1").mAP() == a_map
    c = ds.load_evaluation_results("e2x_c3")
    assert abs(c.mAP() - a_map) < 1e-6  # same ranking as a1, so the same mAP
    n_c = sum(len(x or []) for x in ds.values("e2x_c3_preds.detections"))
    assert n_c == int(want)
    other = ds.match(fo.ViewField("filepath").starts_with(str(tmp_path / "elsewhere")))
    assert len(other) == 1
    assert other.first()["e2x_predictions"] is None and other.first()["e2x_c3_preds"] is None
    for k in ("e2x_a1", "e2x_c3"):
        assert other.first()[f"{k}_fp"] is None  # not part of either evaluation
    with pytest.raises(FileNotFoundError, match="publish the base run first"):
        fiftyone_io.publish_checkpoint_evaluation("e2x-no-such-dataset", coco, strong, "c3")


def test_existing_dataset_with_another_schema_is_refused(fo_name, hand_case) -> None:  # noqa: F811
    import fiftyone as fo

    from e2x_pipeline import fiftyone_io

    coco, _ = hand_case
    ds = fo.Dataset(fo_name)
    ds.persistent = True
    ds.add_sample(fo.Sample(filepath="/x.png", ground_truth=fo.Classification(label="disk")))
    with pytest.raises(fiftyone_io.FiftyOneSchemaError, match="'ground_truth' of type Classif"):
        fiftyone_io.open_coco_dataset(fo_name, coco)


def test_unreachable_database_says_how_to_start_mongod(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    env = {
        **os.environ,
        "FIFTYONE_DATABASE_URI": f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300",
        "FIFTYONE_DATABASE_DIR": str(tmp_path),
    }
    code = (
        "from e2x_pipeline import fiftyone_io\n"
        "try:\n    fiftyone_io.delete_dataset('x')\n"
        "except fiftyone_io.FiftyOneUnavailable as e:\n    print('UNAVAILABLE', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "UNAVAILABLE" in out.stdout, out.stderr[-2000:]
    assert f"127.0.0.1:{port}" in out.stdout and "mongod --dbpath" in out.stdout
