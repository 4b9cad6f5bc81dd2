"""ODAM (Zhao et al. 2023) against known answers.

* A linear model whose feature map is the channel mean: ODAM's superpixel sums are known in
  closed form (with and without the ReLU), for the score and for a box coordinate.
* Instance specificity: two candidates of the same class on one image get different maps, each
  zero outside its own receptive field.
* The oracle: Captum's ``LayerGradientXActivation`` on the compact SSD's backbone layer gives the
  same cell map, target by target, for targets batched in one call.
* The explain stage accepts ``odam`` from the config and writes its five maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import LayerGradientXActivation
from synthetic_detector import LinearSuperpixelDetector, SmoothConvDetector
from torch import Tensor

from e2x_pipeline.config import ExplainConfig
from e2x_pipeline.detectors import build_detector
from e2x_pipeline.detectors.base import Target
from e2x_pipeline.explain import EXPLAINERS, explain_image, get_explainer, slic_segments
from e2x_pipeline.explain.odam import ODAMExplainer, odam_cell_maps, upsample_cell_map

SIZE = 48
BOXES = torch.tensor(
    [[4, 4, 20, 20], [26, 24, 44, 44], [24, 2, 44, 18], [2, 28, 18, 46]], dtype=torch.float32
)


def make_image(size: int = SIZE, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0]
    return (0.2 + 0.6 * img + 0.1 * torch.rand(3, size, size, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def image() -> Tensor:
    return make_image()


@pytest.fixture(scope="module")
def segments(image) -> np.ndarray:
    return slic_segments(image, 30, 10.0)


def test_registered_with_capabilities():
    assert EXPLAINERS.get("odam") is ODAMExplainer
    assert ODAMExplainer.needs_gradients and ODAMExplainer.supports_box_maps
    assert not ODAMExplainer.uses_reference


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("output", ["score", "x2"])
def test_linear_model_closed_form(image, segments, relu, output):
    """Score (or box coordinate) = sum_i w_i * mean_i(A) with A the channel mean, so ODAM's
    per-pixel map before the ReLU is w_{seg(p)} / |seg(p)| * A_p, and its superpixel sums are
    w_i * mean_i(x). A >= 0 here, so the ReLU keeps exactly the superpixels with w_i > 0."""
    m = int(segments.max()) + 1
    g = torch.Generator().manual_seed(3)
    coef = torch.randn(len(BOXES), 3, m, generator=g)
    box_coef = torch.randn(len(BOXES), 4, m, generator=g)
    det = LinearSuperpixelDetector(segments, coef, BOXES, box_coef=box_coef)
    targets = [Target(a, 1 + a % 2) for a in range(len(BOXES))]
    ex = get_explainer("odam", det, ExplainConfig(n_segments=30), relu=relu)
    exps = ex.explain(image, targets, output, segments=segments)
    seg = torch.as_tensor(segments).long().flatten()
    means = (
        torch.zeros(m, dtype=torch.float64).index_add_(0, seg, image.mean(0).flatten().double())
        / torch.bincount(seg, minlength=m).double()
    )
    for t, exp in zip(targets, exps, strict=True):
        w = coef[t.candidate, t.label] if output == "score" else box_coef[t.candidate, 2]
        want = w.double() * means
        if relu:
            want = want.clamp(min=0)
        assert exp.valid, exp.reason
        np.testing.assert_allclose(exp.values, want.numpy(), rtol=1e-4, atol=1e-6)
        # the pixel map is the cell map itself here (one cell per pixel): sums agree
        assert abs(exp.pixel_map.sum() - exp.values.sum()) < 1e-4
        assert exp.details == {"level": 0, "cells": [SIZE, SIZE]}
        if relu:
            assert (exp.pixel_map >= 0).all() and (exp.values > 0).any()
        else:
            assert (exp.values < 0).any() and (exp.values > 0).any()


def test_instance_specific_maps(image, segments):
    """Two candidates of the SAME class: Grad-CAM's pooled weights would give one map for both;
    ODAM's per-location weights give each candidate its own, zero outside the candidate's region
    grown by the convolutions' receptive field (5x5 then 3x3: 3 px)."""
    det = SmoothConvDetector(BOXES)
    targets = [Target(0, 1), Target(1, 1)]
    exps = get_explainer("odam", det, ExplainConfig(n_segments=30), relu=False).explain(
        image, targets, segments=segments
    )
    maps = [e.pixel_map for e in exps]
    assert not np.allclose(maps[0], maps[1])
    for exp, box in zip(exps, BOXES[:2], strict=True):
        x1, y1, x2, y2 = (int(v) for v in box.tolist())
        inside = np.zeros((SIZE, SIZE), dtype=bool)
        inside[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3] = True
        assert np.abs(exp.pixel_map[~inside]).max() == 0
        assert np.abs(exp.pixel_map[inside]).max() > 0
    # explaining a target alone gives what explaining it with others gives
    (alone,) = get_explainer("odam", det, ExplainConfig(n_segments=30), relu=False).explain(
        image, targets[1:], segments=segments
    )
    np.testing.assert_allclose(alone.pixel_map, maps[1], rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def compact_ssd():
    torch.manual_seed(0)
    det = build_detector("compact_ssd", ["__background__", "a", "b"], 128)
    x = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(2))
    return det, x


@pytest.mark.parametrize("output", ["score", "y1"])
def test_cell_maps_equal_captum_layer_gradient_x_activation(compact_ssd, output):
    """The oracle: Captum's LayerGradientXActivation of each target's output at the backbone
    layer of the target's level, summed over channels, is ODAM's map before the ReLU."""
    det, x = compact_ssd
    with torch.no_grad():
        d = det.dense(x[None])
    sizes = [16 * 16 * 4, 8 * 8 * 4, 4 * 4 * 4]  # 4 default boxes per location at 128 px
    assert d.scores.shape[1] == sum(sizes)
    # anchors in the middle of the image (a clipped box coordinate has zero gradient): levels 0, 1,
    # 2, 0; index = (row * cols + col) * 4 + shape
    cands = [544, sizes[0] + 144, sizes[0] + sizes[1] + 40, 661]
    targets = [Target(c, 1 + i % 2) for i, c in enumerate(cands)]
    cams, levels, bad = odam_cell_maps(det, x, targets, output, relu=False)
    assert levels == [0, 1, 2, 0] and not bad.any()
    layers = [det.model.backbone.stem, det.model.backbone.down1, det.model.backbone.down2]
    for t, cam, level in zip(targets, cams, levels, strict=True):

        def f(inp: Tensor, t: Target = t) -> Tensor:
            return det.target_outputs(inp, [t], output)[:, 0]

        want = LayerGradientXActivation(f, layers[level]).attribute(x[None])[0].sum(0)
        assert cam.shape == want.shape == (16 // 2**level, 16 // 2**level)
        torch.testing.assert_close(cam, want.detach(), rtol=1e-4, atol=1e-7)
        assert cam.abs().max() > 0


def test_upsampling_keeps_the_cell_sum():
    cam = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    up = upsample_cell_map(cam, (128, 96))
    assert up.shape == (128, 96)
    torch.testing.assert_close(up.sum(), cam.sum(), rtol=1e-5, atol=0)


def test_explain_image_gives_five_maps_and_needs_a_candidate(compact_ssd):
    det, x = compact_ssd
    seg = slic_segments(x, 20, 10.0)
    exps = explain_image(
        det, x, [Target(7, 1)], ["odam"], ExplainConfig(n_segments=20, box_maps=True)
    )
    assert sorted(e.output for e in exps) == ["score", "x1", "x2", "y1", "y2"]
    assert all(e.valid and e.values.shape == (int(seg.max()) + 1,) for e in exps)
    with pytest.raises(ValueError, match="candidate -1 has none"):
        get_explainer("odam", det, ExplainConfig()).explain(x, [Target(-1, 1)], segments=seg)
