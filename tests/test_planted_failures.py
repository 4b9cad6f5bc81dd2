"""The trained detector on the default benchmark: the planted failures are real, mining finds
them, and E2X points at their cause. Ground truth: the benchmark's recorded cause regions."""

import numpy as np
import pytest

from e2x_pipeline.config import ExplainConfig, MiningConfig
from e2x_pipeline.data.benchmark import load_causes, make_benchmark
from e2x_pipeline.data.coco import load_coco, load_image
from e2x_pipeline.detectors import Target, load_checkpoint
from e2x_pipeline.evaluation import evaluate_detector_outputs
from e2x_pipeline.explain import explain_image
from e2x_pipeline.explain.superpixels import dataset_mean
from e2x_pipeline.inference import detect_dataset
from e2x_pipeline.mining import mine
from e2x_pipeline.training import dataset_hash

from .conftest import FIXTURE_CHECKPOINT


@pytest.fixture(scope="module")
def val(benchmark_default):
    root = benchmark_default
    return root, load_coco(root / "annotations/val.json", root / "images/val")


@pytest.fixture(scope="module")
def mined(benchmark_detector, val):
    root, ds = val
    return mine(benchmark_detector, ds, MiningConfig(), load_causes(root, "val"), "val")


def test_fixture_checkpoint_is_current(tmp_path):
    """The committed checkpoint was trained on exactly the train split the generator makes now.
    If this fails, the benchmark changed: run `e2x bench train` and copy the new checkpoint to
    tests/fixtures/compact_ssd_benchmark.pt."""
    make_benchmark(tmp_path, seed=0, sizes={"train": 900, "val": 0, "test": 0, "pool": 0})
    train = load_coco(tmp_path / "annotations/train.json", tmp_path / "images/train")
    _, meta = load_checkpoint(FIXTURE_CHECKPOINT)
    assert meta["data_hash"] == dataset_hash(train)


def test_planted_failures_are_real(benchmark_detector, val):
    root, ds = val
    dets = detect_dataset(benchmark_detector, ds, 0.01, progress=False)
    r = evaluate_detector_outputs(ds, dets, benchmark_detector.classes, load_causes(root, "val"))
    assert r["map50_clean"] >= 0.8
    assert r["recall_by_cause"]["occluder"] <= 0.5
    assert r["recall_by_cause"]["camouflage"] <= 0.5
    assert r["distractor_fp_rate"] >= 0.1


def test_mining_gives_every_planted_miss_a_candidate(mined):
    c = mined.candidates
    missed = c[(c["outcome"] == "fn") & c["cause"].isin(["occluder", "camouflage"])]
    assert len(missed) >= 20
    with_candidate = missed["fn_kind"].notna() & (missed["anchor"] >= 0)
    assert with_candidate.mean() >= 0.9
    fps = c[(c["outcome"] == "fp") & (c["cause"] == "distractor")]
    assert len(fps) >= 5 and set(fps["label"]) == {1}  # rings are taken for disks


def test_e2x_most_negative_superpixels_lie_on_the_occluder(benchmark_detector, val, mined):
    root, ds = val
    causes = {c["annotation_id"]: c for c in load_causes(root, "val") if c["annotation_id"]}
    c = mined.candidates
    fns = c[(c["outcome"] == "fn") & (c["cause"] == "occluder") & (c["anchor"] >= 0)]
    fns = fns.sort_values("candidate_id").head(8)
    assert len(fns) == 8
    mean = dataset_mean([ds.image_path(i) for i in ds.image_ids])
    cfg = ExplainConfig(k=32, n_segments=200)
    hits = []
    for _, row in fns.iterrows():
        image = load_image(row["image_path"])
        box = (row["box_x1"], row["box_y1"], row["box_x2"], row["box_y2"])
        exp = explain_image(
            benchmark_detector,
            image,
            [Target(int(row["anchor"]), int(row["label"]), box)],
            ["e2x"],
            cfg,
            seed=0,
            mean=mean,
        )[0]
        assert exp.valid and np.isfinite(exp.values).all()
        x, y, w, h = causes[int(row["gt_id"])]["region_bbox"]
        region = np.zeros(image.shape[1:], dtype=bool)
        region[int(y) : int(y + h), int(x) : int(x + w)] = True
        top = exp.top_mask(1, sign=-1)
        hits.append((top & region).sum() / top.sum() >= 0.5)
    assert np.mean(hits) >= 0.75, hits
