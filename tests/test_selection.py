"""The repair benchmark's selection baselines and its labels-to-fix figures, on known answers.

Ground truth: hand-built points for k-center greedy and curves for labels-to-fix; for patch
similarity and the core-set, the benchmark's own images with the committed detector, where the
right answer is known by construction (the failure's own image; the one unlabelled image).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from e2x_bench.repair import first_crossing, labels_to_fix, labels_to_fix_targets
from e2x_bench.selection import (
    STRATEGIES,
    k_center_greedy,
    select_core_set,
    select_oracle,
    select_similar_patches,
)
from e2x_pipeline.data.coco import load_coco, load_image
from e2x_pipeline.features import RegionEmbedder
from e2x_pipeline.inference import detect_dataset
from e2x_pipeline.repair import SATURATION_IMAGES, allocate


def test_k_center_greedy_picks_the_farthest_point_each_time():
    pool = np.array([[0.0], [1.0], [10.0], [4.0], [9.0], [6.0]])
    # labelled at 0: farthest is 10 (row 2); then the point farthest from {0, 10} is 4 or 6
    # (both 4 away; the lower index wins, row 3), then 6 (2 from 4), ...
    assert k_center_greedy(pool, np.array([[0.0]]), 4) == [2, 3, 5, 1]
    assert k_center_greedy(pool, np.array([[0.0]]), 99) == [2, 3, 5, 1, 4, 0]
    # no labelled set: row 0 first, then the farthest from it
    assert k_center_greedy(pool, np.zeros((0, 1)), 2) == [0, 2]
    # duplicates are picked once each
    assert k_center_greedy(np.zeros((3, 2)), np.ones((1, 2)), 3) == [0, 1, 2]


def test_diminishing_allocation_equalises_marginal_gains():
    sizes = {0: 24, 1: 8, 2: 3}
    quota = allocate(sizes, 20, "diminishing")
    assert quota == {0: 10, 1: 6, 2: 4}
    assert quota[0] > quota[1] > quota[2] >= 1  # the small (FP-like) mode is not starved

    def gain(m: int, q: int) -> float:
        return sizes[m] * math.exp(-q / SATURATION_IMAGES)

    # greedy optimality: no image would be worth more moved to another mode
    for a in sizes:
        for b in sizes:
            if a != b and quota[a] > 0:
                assert gain(a, quota[a] - 1) >= gain(b, quota[b]) - 1e-12, (a, b, quota)
    # proportional gives the small mode 2 of 20
    assert allocate(sizes, 20, "proportional") == {0: 14, 1: 4, 2: 2}
    assert allocate({}, 5, "diminishing") == {}


def test_first_crossing_interpolates_and_says_when_never():
    xs = [0.0, 12.0, 30.0, 60.0]
    assert first_crossing(xs, [0.2, 0.5, 0.9, 1.0], 0.8, rising=True) == pytest.approx(
        12 + (0.8 - 0.5) / (0.9 - 0.5) * 18
    )
    assert first_crossing(xs, [0.9, 0.5, 0.9, 1.0], 0.8, rising=True) == 0.0
    assert first_crossing(xs, [0.2, 0.3, 0.4, 0.5], 0.8, rising=True) is None
    assert first_crossing(xs, [0.4, 0.3, 0.1, 0.1], 0.2, rising=False) == pytest.approx(
        12 + (0.2 - 0.3) / (0.1 - 0.3) * 18
    )


def _summary(rows: list[tuple]) -> pd.DataFrame:
    cols = ["strategy", "budget", "recall_occluder", "recall_camouflage", "distractor_fp_rate"]
    df = pd.DataFrame(rows, columns=cols)
    df["recall_clean"] = 1.0
    df["planted_recall"] = (df["recall_occluder"] + df["recall_camouflage"]) / 2
    df["map50"] = 0.9
    return df


def test_labels_to_fix_and_its_targets_on_known_curves():
    before = {
        "recall_by_cause": {"occluder": 0.2, "camouflage": 0.2},
        "recall_clean": 1.0,
        "distractor_fp_rate": 0.4,
        "planted_recall": 0.2,
    }
    summary = _summary(
        [
            ("e2x", 10, 0.8, 0.5, 0.1),  # occluder fixed at 10 exactly, camouflage later
            ("e2x", 20, 0.9, 0.8, 0.1),
            ("random", 10, 0.3, 0.3, 0.3),
            ("random", 20, 0.5, 0.8, 0.2),  # never fixes the occluder
            ("least_confidence", 10, 0.4, 0.8, 0.4),
            ("least_confidence", 20, 0.8, 0.9, 0.3),
        ]
    )
    ltf = labels_to_fix(summary, before)
    assert ltf["e2x"]["occluder"] == pytest.approx(10.0)
    assert ltf["e2x"]["camouflage"] == pytest.approx(20.0)
    assert ltf["random"]["occluder"] is None
    assert ltf["least_confidence"]["camouflage"] == pytest.approx(10.0)
    # the distractor's FP rate halves (0.4 -> 0.2): e2x between 0 and 10, random at 20
    assert ltf["e2x"]["distractor"] == pytest.approx(10 * (0.2 - 0.4) / (0.1 - 0.4))
    assert ltf["random"]["distractor"] == pytest.approx(20.0)
    # AUC = mean recall over budget 0..20 by trapezoids
    assert ltf["e2x"]["auc_planted_recall"] == pytest.approx(
        ((0.2 + 0.65) / 2 * 10 + (0.65 + 0.85) / 2 * 10) / 20
    )
    t = labels_to_fix_targets(ltf)
    occ = t["labels-to-fix occluder: random / e2x (>= 3)"]
    assert occ["ratio_at_least"] == pytest.approx(2.0) and not occ["met"]  # 20 / 10 only
    assert not t["labels-to-fix camouflage: random / e2x (>= 3)"]["met"]  # 20 vs 20
    lc = t["labels-to-fix occluder: least_confidence / e2x (>= 2)"]
    assert lc["ratio"] == pytest.approx(20 / 10) and lc["met"]
    assert t["labels-to-fix distractor: e2x <= every baseline"]["met"]


def test_oracle_takes_only_carriers_in_turn_and_is_never_a_baseline():
    pool_causes = {
        "a.png": {"occluder"},
        "b.png": {"occluder", "camouflage"},
        "c.png": {"camouflage"},
        "d.png": {"distractor"},
        "e.png": {"occluder"},
    }
    causes = ["occluder", "camouflage", "distractor"]
    picks = select_oracle(pool_causes, causes, 4, seed=0)
    assert len(picks) == len(set(picks)) == 4 and set(picks) <= set(pool_causes)
    # one carrier of each cause in the first round: all three causes are covered by 3 picks
    first = [pool_causes[f] for f in picks[:3]]
    assert all(any(c in ks for ks in first) for c in causes)
    assert set(select_oracle(pool_causes, causes, 99, seed=1)) == set(pool_causes)  # all, once
    assert select_oracle(pool_causes, causes, 4, 0) == select_oracle(pool_causes, causes, 4, 0)
    # the oracle reads the answer: a distractor target compares E2X only with real baselines
    ltf = {
        "e2x": {"occluder": None, "camouflage": None, "distractor": 30.0, "budget_max": 60},
        "random": {"occluder": None, "camouflage": None, "distractor": 50.0, "budget_max": 60},
        "oracle": {"occluder": 5.0, "camouflage": 5.0, "distractor": 5.0, "budget_max": 60},
    }
    t = labels_to_fix_targets(ltf)["labels-to-fix distractor: e2x <= every baseline"]
    assert t["met"] and t["best baseline"] == 50.0


def test_strategies_registered():
    assert {"e2x", "e2x_diminishing", "random", "least_confidence", "similarity"} <= set(STRATEGIES)
    assert {"patch_similarity", "core_set", "oracle"} <= set(STRATEGIES)


def test_box_embedding_is_the_region_embedding_of_the_box(benchmark_detector, benchmark_default):
    image = load_image(benchmark_default / "images/val" / "val_00001.png")
    seg = np.zeros((128, 128), np.int32)
    seg[20:60, 30:90] = 1
    embedder = RegionEmbedder(benchmark_detector)
    by_mask = embedder.embed([image], [seg], [[1]])[0]
    # pixel centres x + 0.5 in [30, 90], y + 0.5 in [20, 60]: columns 30..89, rows 20..59
    by_box = embedder.embed_boxes([image], [np.array([[30.0, 20.0, 90.0, 60.0]])])[0]
    np.testing.assert_allclose(by_box, by_mask, atol=1e-6)
    # overlapping boxes, and an image without boxes
    two = embedder.embed_boxes([image, image], [np.array([[0, 0, 64, 64], [32, 32, 96, 96]]), []])
    assert two[0].shape == (2, by_box.shape[1]) and two[1].shape == (0, by_box.shape[1])
    assert not np.allclose(two[0][0], two[0][1])


def test_patch_similarity_finds_the_failure_own_image_and_core_set_the_unlabelled_one(
    benchmark_detector, benchmark_default
):
    root = benchmark_default
    pool = load_coco(root / "annotations/val.json", root / "images/val")
    ids = pool.image_ids[:40]
    pool.images = {i: pool.images[i] for i in ids}
    # a "failure": one of the detector's own boxes on a pool image; its patch is in the pool
    dets = detect_dataset(benchmark_detector, pool, 0.05, progress=False)
    target = next(i for i in ids[5:] if len(dets[i]))
    path = str(pool.image_path(target))
    box = dets[target].boxes[0].tolist()
    ranked = select_similar_patches(benchmark_detector, pool, [(path, box)], len(ids))
    assert ranked[0] == pool.images[target]["file_name"]
    assert sorted(ranked) == sorted(pool.images[i]["file_name"] for i in ids)

    # every pool image but one is labelled already: k-center greedy picks that one first
    left_out = ids[7]
    labelled = [str(pool.image_path(i)) for i in ids if i != left_out]
    picks = select_core_set(benchmark_detector, pool, labelled, 3)
    assert picks[0] == pool.images[left_out]["file_name"]
    assert len(set(picks)) == 3
