"""Mining: hand-made cases with known answers, and oracles (pycocotools, FiftyOne) on real output.

The hand-made image holds one false positive of each TIDE error type, a near miss and an
uncovered miss; a fake detector returns fixed detections and a fixed dense view per image. The
oracle tests compare our TP / FP / FN with pycocotools' COCOeval matching (random boxes, with
crowds) and with FiftyOne's ``evaluate_detections`` on a compact SSD trained for a few epochs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from e2x_pipeline.config import MiningConfig
from e2x_pipeline.data.benchmark import load_causes
from e2x_pipeline.data.coco import CocoDataset, DatasetError, load_coco, load_image
from e2x_pipeline.detectors.base import DenseOutput, Detections, Detector
from e2x_pipeline.mining import (
    CANDIDATE_COLUMNS,
    category_label_map,
    format_metrics,
    mine,
    pairwise_iou,
    run_mining_stage,
)

CLASSES = ["__background__", "disk", "square"]
SIZE = 128


class FakeDetector(Detector):
    """Fixed detections and dense outputs per image. Each image's id is its pixel value / 255."""

    family = "fake"

    def __init__(
        self,
        dets: dict[int, list[tuple[int, int, float, list[float]]]],
        dense: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
        classes: list[str] = CLASSES,
    ):
        super().__init__(nn.Identity(), classes)
        self.dets, self.dense_out = dets, dense
        self.dense_calls = 0

    @staticmethod
    def _ids(images: torch.Tensor) -> list[int]:
        return [int(round(float(v) * 255)) for v in images[:, 0, 0, 0]]

    def detect(self, images: torch.Tensor, score_threshold: float) -> list[Detections]:
        out = []
        for image_id in self._ids(self._batch(images)):
            rows = [r for r in self.dets.get(image_id, []) if r[2] > score_threshold]
            out.append(
                Detections(
                    torch.tensor([r[3] for r in rows], dtype=torch.float32).reshape(-1, 4),
                    torch.tensor([r[2] for r in rows], dtype=torch.float32),
                    torch.tensor([r[1] for r in rows], dtype=torch.int64),
                    torch.tensor([r[0] for r in rows], dtype=torch.int64),
                )
            )
        return out

    def dense(self, images: torch.Tensor) -> DenseOutput:
        if self.dense_out is None:
            raise NotImplementedError("fake detector without dense outputs")
        self.dense_calls += 1
        ids = self._ids(self._batch(images))
        boxes = torch.stack([torch.tensor(self.dense_out[i][0], dtype=torch.float32) for i in ids])
        scores = torch.stack([torch.tensor(self.dense_out[i][1], dtype=torch.float32) for i in ids])
        return DenseOutput(boxes=boxes, scores=scores, probs=scores)


def write_coco(
    root: Path, anns: dict[int, list[tuple[int, int, list[float], int]]], n_images: int
) -> tuple[Path, Path]:
    """Images 1..n (uniform value = id) and a COCO JSON; anns: image -> (id, cat, xywh, crowd)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for i in range(1, n_images + 1):
        Image.fromarray(np.full((SIZE, SIZE, 3), i, np.uint8)).save(img_dir / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png", "width": SIZE, "height": SIZE})
    annotations = [
        {"id": aid, "image_id": i, "category_id": cat, "bbox": box, "area": box[2] * box[3],
         "iscrowd": crowd}
        for i, rows in anns.items() for aid, cat, box, crowd in rows
    ]  # fmt: skip
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "disk"}, {"id": 2, "name": "square"}],
    }
    path = root / "ann.json"
    path.write_text(json.dumps(coco))
    return path, img_dir


def xywh(b: list[float]) -> list[float]:
    return [b[0], b[1], b[2] - b[0], b[3] - b[1]]


FAR = [0.0, 0.0, 5.0, 5.0]


@pytest.fixture()
def hand_case(tmp_path: Path) -> tuple[CocoDataset, FakeDetector]:
    gt = {
        1: [
            (101, 1, xywh([10, 10, 40, 40]), 0),
            (102, 2, xywh([60, 10, 90, 40]), 0),
            (103, 1, xywh([10, 60, 40, 90]), 0),
            (104, 2, xywh([60, 60, 90, 90]), 0),
        ],
        2: [(201, 1, [0, 0, 64, 64], 1), (202, 2, xywh([70, 70, 100, 100]), 0)],
        3: [(301, 1, xywh([100, 100, 120, 120]), 0)],
    }
    dets = {
        1: [
            (0, 1, 0.95, [10, 10, 40, 40]),  # tp 101
            (1, 1, 0.85, [12, 12, 42, 42]),  # dupe of 101 (IoU 0.77)
            (2, 2, 0.80, [11, 11, 41, 41]),  # cls: a square on disk 101
            (3, 2, 0.90, [60, 10, 90, 40]),  # tp 102
            (4, 2, 0.70, [75, 10, 105, 40]),  # loc: IoU 1/3 with square 102
            (5, 1, 0.65, [70, 20, 100, 50]),  # both: disk, IoU 0.29 with square 102
            (6, 1, 0.60, [100, 100, 125, 125]),  # bkg
            (7, 1, 0.30, [11, 61, 41, 91]),  # near miss of 103 (IoU 0.877)
            (8, 1, 0.45, [14, 64, 44, 94]),  # higher score, lower IoU (0.60): not the near miss
            (9, 1, 0.20, [11, 61, 41, 91]),  # same IoU as 7, lower score: the tie goes to 7
            (10, 1, 0.25, [60, 60, 90, 90]),  # a disk on square 104: wrong class, no near miss
            (11, 2, 0.35, [80, 80, 110, 110]),  # a square with IoU 0.06 with 104: no near miss
        ],
        2: [
            (0, 1, 0.90, [10, 10, 30, 30]),  # inside the crowd disk: ignored
            (1, 2, 0.90, [70, 70, 100, 100]),  # tp 202
            (2, 1, 0.80, [40, 40, 80, 80]),  # crowd IoU 0.36 < 0.5: fp, bkg (crowds not typed)
        ],
    }
    a = 16
    dense = {}
    for i in (1, 2, 3):
        boxes = np.tile(np.array(FAR), (a, 1))
        scores = np.full((a, 3), 0.01)
        dense[i] = (boxes, scores)
    b1, s1 = dense[1]
    b1[12], s1[12, 2] = [61, 61, 91, 91], 0.05  # IoU 0.877 with 104
    b1[13], s1[13, 2] = [61, 61, 91, 91], 0.08  # same IoU, higher square score: chosen
    b1[15], s1[15, 2] = [58, 58, 92, 92], 0.40  # IoU 0.78: lower IoU, not chosen
    path, img_dir = write_coco(tmp_path, gt, 3)
    return load_coco(path, img_dir), FakeDetector(dets, dense)


def test_hand_made_outcomes_error_types_and_fn_candidates(hand_case) -> None:
    ds, det = hand_case
    res = mine(det, ds, MiningConfig(), split="s")
    c = res.candidates.set_index("candidate_id")
    assert list(res.candidates.columns) == CANDIDATE_COLUMNS
    expect = {
        "s/1/a0/c1": ("tp", None, 101),
        "s/1/a1/c1": ("fp", "dupe", 101),
        "s/1/a2/c2": ("fp", "cls", 101),
        "s/1/a3/c2": ("tp", None, 102),
        "s/1/a4/c2": ("fp", "loc", 102),
        "s/1/a5/c1": ("fp", "both", 102),
        "s/1/a6/c1": ("fp", "bkg", -1),
        "s/2/a1/c2": ("tp", None, 202),
        "s/2/a2/c1": ("fp", "bkg", -1),
        "s/1/fn103": ("fn", "missed", 103),
        "s/1/fn104": ("fn", "missed", 104),
        "s/3/fn301": ("fn", "missed", 301),
    }
    assert set(c.index) == set(expect)  # crowd 201 and the detection on it are not candidates
    for cid, (outcome, etype, gt_id) in expect.items():
        row = c.loc[cid]
        assert (row.outcome, row.error_type, row.gt_id) == (outcome, etype, gt_id), cid
    assert c.loc["s/1/a2/c2", "iou"] == pytest.approx(841 / 959)  # cls refers to disk 101
    # near miss: largest IoU (not the highest score), ties by score
    nm = c.loc["s/1/fn103"]
    assert (nm.fn_kind, nm.anchor, nm.label, nm.category_id) == ("near_miss", 7, 1, 1)
    assert nm.score == pytest.approx(0.30) and nm.iou == pytest.approx(841 / 959)
    assert [nm.box_x1, nm.box_y1, nm.box_x2, nm.box_y2] == [11, 61, 41, 91]
    # uncovered: the dense anchor with the largest IoU, ties by the GT class's score
    un = c.loc["s/1/fn104"]
    assert (un.fn_kind, un.anchor, un.label) == ("uncovered", 13, 2)
    assert un.score == pytest.approx(0.08) and un.iou == pytest.approx(841 / 959)
    # no anchor overlaps 301: no candidate, and a reason
    none = c.loc["s/3/fn301"]
    assert none.fn_kind is None and none.anchor == -1 and "overlaps" in none.reason
    assert math.isnan(none.score)
    # the dense view ran only for the images with an uncovered miss, once per batch
    assert det.dense_calls == 1
    m = res.metrics
    assert m["outcomes"] == {"tp": 3, "fp": 6, "fn": 3}
    assert m["error_types"] == {"cls": 1, "loc": 1, "both": 1, "dupe": 1, "bkg": 2, "missed": 3}
    assert m["fn_kinds"] == {"near_miss": 1, "uncovered": 1, "none": 1}
    p = res.predictions.set_index("candidate_id")
    assert p.loc["s/1/a7/c1", "near_miss_of"] == "s/1/fn103"
    assert p.loc["s/2/a0/c1", "outcome"] == "ignored"
    assert p.loc["s/1/a8/c1", "outcome"] == "below" and len(p) == 15
    assert "dupe" in format_metrics(m)


def test_no_dense_view_gives_a_reason(hand_case) -> None:
    ds, det = hand_case
    det.dense_out = None
    c = mine(det, ds, MiningConfig()).candidates.set_index("candidate_id")
    assert c.loc["1/fn104", "fn_kind"] is None and "no dense view" in c.loc["1/fn104", "reason"]
    assert c.loc["1/fn103", "fn_kind"] == "near_miss"  # near misses need no dense view


def test_ap50_matches_the_101_point_coco_value(tmp_path: Path) -> None:
    # one class, two GT; detections tp (0.9), fp (0.8), tp (0.7): precision 1 up to recall 0.5,
    # 2/3 up to recall 1 -> AP = (51 * 1 + 50 * 2/3) / 101
    gt = {1: [(1, 2, xywh([10, 10, 40, 40]), 0)], 2: [(2, 2, xywh([50, 50, 90, 90]), 0)]}
    dets = {
        1: [(0, 2, 0.9, [10, 10, 40, 40]), (1, 2, 0.8, [90, 90, 120, 120])],
        2: [(0, 2, 0.7, [50, 50, 90, 90])],
    }
    path, img_dir = write_coco(tmp_path, gt, 2)
    m = mine(FakeDetector(dets), load_coco(path, img_dir), MiningConfig()).metrics
    assert m["ap50"]["square"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert m["ap50"]["disk"] is None  # no disk GT


def _random_case(rng: np.random.Generator, n_images: int):
    gt, dets, aid = {}, {}, 1
    for i in range(1, n_images + 1):
        rows = []
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(10, 50, 2)
            x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            rows.append((aid, int(rng.integers(1, 3)), [x, y, w, h], int(rng.random() < 0.15)))
            aid += 1
        gt[i] = rows
        d = []
        for k in range(int(rng.integers(0, 12))):
            if rows and rng.random() < 0.7:  # jittered copies of GT boxes, often several
                x, y, w, h = rows[int(rng.integers(len(rows)))][2]
                j = rng.normal(0, 4, 4)
                box = [x + j[0], y + j[1], x + w + j[2], y + h + j[3]]
            else:
                x, y = rng.uniform(0, SIZE - 20, 2)
                box = [x, y, x + rng.uniform(8, 40), y + rng.uniform(8, 40)]
            label = int(rng.integers(1, 3))
            d.append((k, label, float(np.round(rng.uniform(0.02, 1), 3)), box))
        dets[i] = d
    return gt, dets


def _pycocotools_outcomes(ds: CocoDataset, preds: pd.DataFrame, thr: float):
    """TP / FP candidate ids and FN GT ids from COCOeval's matching at IoU 0.5, score > thr."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    p = preds[preds["score"] > thr].reset_index(drop=True)
    gt = {
        "images": [{"id": i, "width": SIZE, "height": SIZE} for i in ds.image_ids],
        "annotations": [a for i in ds.image_ids for a in ds.annotations[i]],
        "categories": [{"id": c, "name": n} for c, n in ds.categories.items()],
    }
    dts = [
        {"image_id": int(r.image_id), "category_id": int(r.category_id), "score": float(r.score),
         "bbox": [r.box_x1, r.box_y1, r.box_x2 - r.box_x1, r.box_y2 - r.box_y1]}
        for r in p.itertuples()
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        ev = COCOeval(cg, cg.loadRes(dts), "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.params.maxDets = [1000]
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
    tp, fp, fn = set(), set(), set()
    for e in ev.evalImgs:
        if e is None:
            continue
        for d_id, m, ign in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0], strict=True):
            cid = p.loc[d_id - 1, "candidate_id"]  # loadRes numbers detections from 1
            if not ign:
                (tp if m > 0 else fp).add(cid)
        for g_id, m, ign in zip(e["gtIds"], e["gtMatches"][0], e["gtIgnore"], strict=True):
            if not ign and m == 0:
                fn.add(int(g_id))
    return tp, fp, fn


def test_matching_equals_pycocotools_on_random_boxes_with_crowds(tmp_path: Path) -> None:
    gt, dets = _random_case(np.random.default_rng(3), 40)
    path, img_dir = write_coco(tmp_path, gt, 40)
    ds = load_coco(path, img_dir)
    for thr in (0.3, 0.6):
        res = mine(FakeDetector(dets), ds, MiningConfig(operating_threshold=thr))
        c = res.candidates
        tp, fp, fn = _pycocotools_outcomes(ds, res.predictions, thr)
        assert len(tp) > 10 and len(fp) > 20 and len(fn) > 5  # the case exercises all three
        assert set(c.loc[c.outcome == "tp", "candidate_id"]) == tp
        assert set(c.loc[c.outcome == "fp", "candidate_id"]) == fp
        assert set(c.loc[c.outcome == "fn", "gt_id"]) == fn
        crowd_ids = {a[0] for rows in gt.values() for a in rows if a[3]}
        assert not crowd_ids & set(c["gt_id"][c.outcome != "fp"])


def test_pairwise_iou_agrees_with_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (7, 2))
    a = np.hstack([a, a + rng.uniform(1, 40, (7, 2))])
    b = rng.uniform(0, 50, (5, 2))
    b = np.hstack([b, b + rng.uniform(1, 40, (5, 2))])
    crowd = np.array([0, 1, 0, 1, 0])
    to_xywh = lambda x: np.hstack([x[:, :2], x[:, 2:] - x[:, :2]])  # noqa: E731
    ref = mask_utils.iou(to_xywh(a).tolist(), to_xywh(b).tolist(), crowd.tolist())
    np.testing.assert_allclose(pairwise_iou(a, b, crowd), ref, atol=1e-9)


def test_category_label_map_by_name() -> None:
    assert category_label_map(["__background__", "b", "a"], {7: "a", 3: "b"}) == {7: 2, 3: 1}
    with pytest.raises(ValueError, match="not among the detector's classes"):
        category_label_map(CLASSES, {1: "disk", 5: "cat"})


# --- bad input -------------------------------------------------------------------------------


def test_missing_and_corrupt_images_name_the_record(hand_case, tmp_path: Path) -> None:
    ds, det = hand_case
    (ds.image_dir / "002.png").unlink()
    (ds.image_dir / "003.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="002.png"):
        mine(det, ds, MiningConfig())
    res = run_mining_stage(det, ds, MiningConfig(on_bad_record="skip"), tmp_path / "out")
    rej = pd.read_parquet(tmp_path / "out" / "rejected.parquet")
    assert sorted(rej["image_id"]) == [2, 3] and set(rej["record"]) == {"image"}
    assert rej.set_index("image_id").loc[3, "error"].count("cannot be decoded") == 1
    assert set(res.candidates["image_id"]) == {1} and res.metrics["rejected"] == 2
    saved = pd.read_parquet(tmp_path / "out" / "candidates.parquet")
    assert len(saved) == len(res.candidates) and list(saved.columns) == CANDIDATE_COLUMNS
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["images"] == 1


def test_bad_annotations_name_the_record(hand_case) -> None:
    ds, det = hand_case
    ds.annotations[2].append({"id": 999, "image_id": 2, "category_id": 42, "bbox": [1, 1, 5, 5]})
    ds.annotations[3][0]["bbox"] = [1, 1, 0, 5]
    with pytest.raises(DatasetError, match="annotation 999 refers to unknown category id 42"):
        mine(det, ds, MiningConfig())
    res = mine(det, ds, MiningConfig(on_bad_record="skip"))
    rej = res.rejected.set_index("annotation_id")
    assert sorted(rej.index) == [301, 999] and set(rej["record"]) == {"annotation"}
    assert "zero or negative size" in rej.loc[301, "error"]
    # the images whose ground truth is incomplete are left out whole
    assert set(res.candidates["image_id"]) == {1} and res.metrics["images"] == 1


# --- a real detector: the oracle on the benchmark ----------------------------------------------


@pytest.fixture(scope="session")
def trained_ssd(benchmark_detector):
    """The compact SSD trained on the default benchmark (tests/conftest.py)."""
    return benchmark_detector


@pytest.fixture(scope="session")
def mined_val(trained_ssd, benchmark_default: Path):
    ds = load_coco(benchmark_default / "annotations/val.json", benchmark_default / "images/val")
    cfg = MiningConfig()
    return ds, cfg, mine(trained_ssd, ds, cfg, load_causes(benchmark_default, "val"), "val")


@pytest.mark.slow
def test_trained_ssd_matches_pycocotools_and_candidates_follow_the_detector(
    mined_val, trained_ssd
) -> None:
    ds, cfg, res = mined_val
    c = res.candidates
    n = c["outcome"].value_counts()
    assert n.get("tp", 0) > 5 and n.get("fp", 0) > 5 and n.get("fn", 0) > 5, n
    tp, fp, fn = _pycocotools_outcomes(ds, res.predictions, cfg.operating_threshold)
    assert set(c.loc[c.outcome == "tp", "candidate_id"]) == tp
    assert set(c.loc[c.outcome == "fp", "candidate_id"]) == fp
    assert set(c.loc[c.outcome == "fn", "gt_id"]) == fn
    # each candidate's score is its anchor's class score in the detector's dense view
    rows = c[c["anchor"] >= 0]
    for image_id in rows["image_id"].unique()[:6]:
        g = rows[rows["image_id"] == image_id]
        d = trained_ssd.dense(load_image(ds.image_path(image_id)))
        got = d.scores[0, torch.tensor(g["anchor"].values), torch.tensor(g["label"].values)]
        np.testing.assert_allclose(got.detach().numpy(), g["score"].values, rtol=1e-4)
    # every missed object has a candidate or a reason; cause recall covers the planted causes
    fn_rows = c[c.outcome == "fn"]
    assert (fn_rows["fn_kind"].notna() | fn_rows["reason"].notna()).all()
    missed_causes = fn_rows[fn_rows["cause"].notna()]
    assert len(missed_causes) and missed_causes["fn_kind"].notna().mean() >= 0.9
    assert set(res.metrics["causes"]) >= {"occluder", "camouflage"}


@pytest.mark.slow
def test_trained_ssd_counts_equal_fiftyone_evaluate_detections(fo_db, mined_val) -> None:
    from e2x_pipeline import fiftyone_io

    ds, cfg, res = mined_val
    name = "e2x-test-mining-oracle"
    fiftyone_io.delete_dataset(name)
    try:
        fds = fiftyone_io.publish_mining(name, ds, res.candidates, res.predictions)
        counts = fiftyone_io.evaluate_with_fiftyone(
            fds, "e2x_predictions", "ground_truth", "ev_coco", iou=cfg.iou, method="coco",
            min_score=cfg.operating_threshold,
        )  # fmt: skip
        assert counts == res.metrics["outcomes"]
    finally:
        fiftyone_io.delete_dataset(name)
