"""The counterfactual check against a model whose answer is known.

A linear detector scores each candidate from superpixel means. Replacing a superpixel with the
zero fill removes exactly its term ``coef_i * mean_i(x)``, so we know which explanations fix an
FN (name the suppressing superpixel) or an FP (name the supporting one), and at which n.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from synthetic_detector import LinearSuperpixelDetector

from e2x_pipeline.config import ExplainConfig, MetricsConfig
from e2x_pipeline.detectors.base import Target
from e2x_pipeline.explain import get_explainer, slic_segments
from e2x_pipeline.metrics.counterfactual import (
    counterfactual_check,
    counterfactual_rates,
    top_failing,
)

SIZE = 48
BOXES = torch.tensor([[4, 4, 30, 30], [16, 16, 44, 44]], dtype=torch.float32)
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    image = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear")[0]
    image = (0.2 + 0.6 * image + 0.1 * torch.rand(3, SIZE, SIZE, generator=g)).clamp(0, 1)
    seg = slic_segments(image, 25, 10.0)
    m = int(seg.max()) + 1
    assert m >= 12
    means = [float(image.mean(0).numpy()[seg == i].mean()) for i in range(m)]
    coef = torch.zeros(2, 2, m)
    # candidate 0, class 1 (an FN): base 0.2 + 0.6 from superpixel 3, minus 1.5 * mean from 7
    # and minus 0.1 * mean from 9 -> below threshold; removing 7 lifts it above.
    bias = 0.2
    coef[0, 1, 3] = 0.6 / means[3]
    coef[0, 1, 7] = -1.5
    coef[0, 1, 9] = -0.1
    # candidate 1, class 1 (an FP): two supporting superpixels, both needed to stay above.
    coef[1, 1, 5] = 0.35 / means[5]
    coef[1, 1, 11] = 0.35 / means[11]
    det = LinearSuperpixelDetector(seg, coef, BOXES, bias=bias)
    with torch.no_grad():
        s = det.dense(image[None]).scores[0, :, 1]
    assert s[0] < THRESHOLD and s[0] + 1.5 * means[7] >= THRESHOLD
    assert s[1] - 0.35 >= THRESHOLD and s[1] - 0.7 < THRESHOLD
    targets = [Target(0, 1, tuple(BOXES[0].tolist())), Target(1, 1, tuple(BOXES[1].tolist()))]
    return det, image, seg, m, targets


def values_with(m: int, entries: dict[int, float]) -> np.ndarray:
    v = np.zeros(m)
    for i, x in entries.items():
        v[i] = x
    return v


def check(det, image, seg, targets, values, outcomes, ns=(1, 2, 3, 5)):
    return counterfactual_check(
        det,
        image,
        values,
        [seg] * len(values),
        targets,
        outcomes,
        torch.zeros_like(image),
        threshold=THRESHOLD,
        ns=ns,
    )


def test_right_explanations_fix_and_wrong_ones_do_not(setup):
    det, image, seg, m, targets = setup
    right = [values_with(m, {7: -1.0, 9: -0.1}), values_with(m, {5: 1.0, 11: 0.9})]
    res = check(det, image, seg, targets, right, ["fn", "fp"])
    assert res[0] == {"counterfactual_n": 1.0, "counterfactual_success": True}
    # the FP needs both supporting superpixels gone: n = 2
    assert res[1] == {"counterfactual_n": 2.0, "counterfactual_success": True}
    # blaming the wrong superpixels: 9 is too weak a suppressor, 3 (supporting) is not negative
    wrong = [values_with(m, {9: -1.0, 3: 0.5}), values_with(m, {2: 1.0})]
    res = check(det, image, seg, targets, wrong, ["fn", "fp"])
    assert [r["counterfactual_success"] for r in res] == [False, False]
    assert all(np.isnan(r["counterfactual_n"]) for r in res)


def test_no_failing_sign_means_nothing_to_act_on(setup):
    """An FN map with no negative superpixel (ODAM with its ReLU) blames nothing: no success,
    and not even one perturbed pass; a TP and an invalid map are not checked."""
    det, image, seg, m, targets = setup
    positive_only = values_with(m, {3: 1.0, 7: 0.5})
    res = check(det, image, seg, targets, [positive_only, None], ["fn", "fp"])
    assert res[0]["counterfactual_success"] is False
    assert np.isnan(res[1]["counterfactual_success"])
    res = check(det, image, seg, targets[:1], [values_with(m, {7: -1})], ["tp"])
    assert np.isnan(res[0]["counterfactual_success"])


def test_top_failing_ranks_by_sign():
    v = np.array([0.5, -2.0, -0.1, 3.0, 0.0])
    assert top_failing(v, -1, 5).tolist() == [1, 2]
    assert top_failing(v, 1, 2).tolist() == [3, 0]


def test_explainer_maps_of_the_linear_model_fix_the_fn(setup):
    """E2X's exact attribution on the linear model names superpixel 7 first for the FN."""
    det, image, seg, m, targets = setup
    cfg = ExplainConfig(n_segments=25, k=4, reference="zeros")
    exps = get_explainer("e2x", det, cfg).explain(image, targets, segments=seg)
    assert top_failing(exps[0].values, -1, 1).tolist() == [7]
    res = check(det, image, seg, targets, [e.values for e in exps], ["fn", "fp"])
    assert res[0]["counterfactual_n"] == 1.0 and res[1]["counterfactual_n"] == 2.0


def test_rates_per_outcome():
    rows = pd.DataFrame(
        {
            "outcome": ["fn", "fn", "fn", "fp", "tp"],
            "counterfactual_success": pd.array([True, False, True, True, pd.NA], "boolean"),
            "counterfactual_n": [1.0, np.nan, 3.0, 2.0, np.nan],
        }
    )
    r = counterfactual_rates(rows)
    assert r["fn"]["rate"] == pytest.approx(2 / 3) and r["fn"]["n"] == 3
    assert r["fn"]["at"] == {
        "1": pytest.approx(1 / 3),
        "2": pytest.approx(1 / 3),
        "3": pytest.approx(2 / 3),
        "5": pytest.approx(2 / 3),
    }
    assert r["fp"]["rate"] == 1.0 and r["fp"]["mean_smallest_n"] == 2.0
    assert "tp" not in r


def test_config_validates_ns():
    assert MetricsConfig(counterfactual_ns=[3, 1, 3]).counterfactual_ns == [1, 3]
    with pytest.raises(ValueError, match="positive"):
        MetricsConfig(counterfactual_ns=[0, 2])
