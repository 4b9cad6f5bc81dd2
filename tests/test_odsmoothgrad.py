"""ODSmoothGrad (Gwon & Howell 2023) against known answers.

The tests cover the exact gradient x input of a linear model, a per-copy autograd reference with
the same seeded noise, and copies that lose the detection, which must be dropped, counted and
left out of the mean. A last test runs the method through the explain stage and the config.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from synthetic_detector import LinearSuperpixelDetector, SmoothConvDetector
from torch import Tensor, nn
from torchvision.ops import box_iou

from e2x_pipeline.config import ExplainConfig, load_config
from e2x_pipeline.detectors.base import DenseOutput, Detections, Detector, Target
from e2x_pipeline.explain import (
    EXPLAINERS,
    explain_candidates,
    get_explainer,
    slic_segments,
    superpixel_aggregate,
)
from e2x_pipeline.explain.odsmoothgrad import ODSmoothGradExplainer, noise_copies

SIZE = 48
BOXES = torch.tensor(
    [[4, 4, 20, 20], [10, 6, 34, 30], [24, 24, 44, 44], [2, 28, 18, 46], [8, 8, 40, 40]],
    dtype=torch.float32,
)
LABELS = [1, 2, 0, 1, 2]


def make_image(size: int = SIZE, seed: int = 0) -> Tensor:
    """Smooth random colour blobs in [0.2, 0.9] plus fine texture (SLIC has edges to follow)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0]
    img = 0.2 + 0.6 * img + 0.1 * torch.rand(3, size, size, generator=g)
    return img.clamp(0, 1)


def clean_targets(det: Detector, image: Tensor) -> list[Target]:
    """Targets as detections carry them: candidate, label and the box on the clean image."""
    with torch.no_grad():
        boxes = det.dense(image[None]).boxes[0]
    return [Target(a, LABELS[a], tuple(boxes[a].tolist())) for a in range(len(LABELS))]


@pytest.fixture(scope="module")
def image() -> Tensor:
    return make_image()


@pytest.fixture(scope="module")
def linear(image):
    segments = slic_segments(image, 40, 10.0)
    m = int(segments.max()) + 1
    g = torch.Generator().manual_seed(3)
    coef = torch.randn(len(LABELS), 3, m, generator=g)
    box_coef = torch.randn(len(LABELS), 4, m, generator=g) * 0.5
    det = LinearSuperpixelDetector(segments, coef, BOXES, box_coef)
    return det, segments, m, coef, box_coef


def test_registered_and_declared():
    assert EXPLAINERS.get("odsmoothgrad") is ODSmoothGradExplainer
    cls = ODSmoothGradExplainer
    assert cls.needs_gradients and cls.supports_box_maps and not cls.needs_candidate
    o = cls.Options()
    assert (o.n_samples, o.sigma, o.matching, o.match_iou, o.map) == (
        20,
        0.05,
        "iou",
        0.7,
        "gradient_x_input",
    )


# 1. Known answer: a linear model ------------------------------------------------------------


@pytest.mark.parametrize("matching", ["iou", "anchor"])
def test_linear_model_gradient_x_input_is_exact(image, linear, matching):
    """f = b + sum_i coef_i * mean_i(x), so sum over S_i of x * df/dx is coef_i * mean_i(x). That
    is the exact Shapley value against the black image. The box coordinates are the same with
    box_coef."""
    det, segments, m, coef, box_coef = linear
    seg_t = torch.as_tensor(segments, dtype=torch.long)
    means = superpixel_aggregate(image.mean(0, keepdim=True), seg_t, m, "mean")[0].numpy()
    cfg = ExplainConfig(n_segments=40, batch_size=32)
    ex = get_explainer("odsmoothgrad", det, cfg, seed=0, sigma=0.01, matching=matching)
    tg = clean_targets(det, image)
    for output, truth_of in (
        ("score", lambda t: coef[t.candidate, t.label].numpy() * means),
        ("x1", lambda t: box_coef[t.candidate, 0].numpy() * means),
        ("y2", lambda t: box_coef[t.candidate, 3].numpy() * means),
    ):
        for exp in ex.explain(image, tg, output, segments=segments):
            assert exp.valid, exp.reason
            np.testing.assert_allclose(exp.values, truth_of(exp.target), rtol=1e-4, atol=1e-6)
            assert exp.details["kept_copies"] == 20 and exp.details["dropped_copies"] == 0
            assert exp.passes == 20
            # the pixel map is kept: its superpixel sums are the values
            sums = np.bincount(segments.ravel(), exp.pixel_map.ravel().astype(np.float64), m)
            np.testing.assert_allclose(sums, exp.values, rtol=1e-4, atol=1e-6)


def test_linear_model_abs_map(image, linear):
    """|df/dx| summed over channels is |coef_i| / |S_i| per pixel: |coef_i| per superpixel."""
    det, segments, _, coef, _ = linear
    ex = get_explainer("odsmoothgrad", det, ExplainConfig(n_segments=40), map="abs")
    for exp in ex.explain(image, clean_targets(det, image), segments=segments):
        truth = np.abs(coef[exp.target.candidate, exp.target.label].numpy())
        np.testing.assert_allclose(exp.values, truth, rtol=1e-4, atol=1e-6)


# 2. Seeded noise, against a per-copy autograd reference -------------------------------------


def reference_map(det, image, target, n, sigma, seed, output="score"):
    """x * (1/n) sum_k d f(x + eps_k) / dx, one copy at a time, following the anchor."""
    eps = noise_copies(image, n, sigma, torch.Generator().manual_seed(seed))
    total = torch.zeros_like(image)
    for k in range(n):
        x = (image + eps[k]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(det.target_outputs(x[None], [target], output)[0, 0], x)
        total += g
    return (image * total / n).sum(0).numpy()


def test_seeded_noise_and_per_copy_reference(image):
    det = SmoothConvDetector(BOXES)
    seg = slic_segments(image, 30, 10.0)
    tg = clean_targets(det, image)[:2]
    cfg = ExplainConfig(n_segments=30, batch_size=7)  # chunks that cut across targets
    a = get_explainer("odsmoothgrad", det, cfg, seed=1).explain(image, tg, segments=seg)
    b = get_explainer("odsmoothgrad", det, cfg, seed=1).explain(image, tg, segments=seg)
    c = get_explainer("odsmoothgrad", det, cfg, seed=2).explain(image, tg, segments=seg)
    plain = get_explainer("odsmoothgrad", det, cfg, seed=1, sigma=0.0).explain(
        image, tg, segments=seg
    )
    for ea, eb, ec, ep in zip(a, b, c, plain, strict=True):
        assert ea.valid and ea.details["dropped_copies"] == 0
        np.testing.assert_array_equal(ea.values, eb.values)
        np.testing.assert_array_equal(ea.pixel_map, eb.pixel_map)
        assert not np.allclose(ea.values, ec.values, rtol=1e-3, atol=0)
        assert not np.allclose(ea.pixel_map, ep.pixel_map, rtol=1e-3, atol=0)  # noise is used
        # Here every copy keeps its anchor as the match, so the reference follows the anchor.
        for output in ("score", "x2"):
            (ours,) = get_explainer("odsmoothgrad", det, cfg, seed=1).explain(
                image, [ea.target], output, segments=seg
            )
            ref = reference_map(det, image, ea.target, 20, 0.05, 1, output)
            scale = np.abs(ref).max()
            np.testing.assert_allclose(ours.pixel_map, ref, rtol=1e-4, atol=1e-5 * scale)


# 3. Copies that lose the detection: dropped, counted, not averaged --------------------------


class ShiftingBoxDetector(Detector):
    """Three candidates on a 32 x 32 image, class 1 the target class:

    * 0: box [8 + d, 8, 24 + d, 24] with d = gain * (mean of patch P - its clean value), where P
      is the top-left 2 x 2 pixels. Noise on P shifts the box sideways, so some noisy copies
      fall below IoU 0.7 with the clean box. Its score is 0.5 * mean over R of x_0^2, with R the
      box's clean pixels, so its gradient x_0 / |R| differs from copy to copy.
    * 1: a fixed box far away, with a constant score.
    * 2: with ``twin``, a fixed box [8, 8, 24, 24] whose score is 1 + the mean of channel 1 over
      the bottom-right 8 x 8 corner. That is above candidate 0's score everywhere.
    """

    family = "synthetic_shifting"

    def __init__(self, clean: Tensor, gain: float, twin: bool = False) -> None:
        super().__init__(nn.Identity(), ["c0", "c1"], "cpu")
        self.p0 = float(self.patch(clean[None])[0])
        self.gain, self.twin = gain, twin

    @staticmethod
    def patch(x: Tensor) -> Tensor:
        return x[:, :, :2, :2].mean(dim=(1, 2, 3))

    def dense(self, images: Tensor) -> DenseOutput:
        x = self._batch(images)
        b = x.shape[0]
        d = self.gain * (self.patch(x) - self.p0)
        zero = torch.zeros_like(d)
        box0 = torch.stack([8 + d, 8 + zero, 24 + d, 24 + zero], dim=1)
        box1 = torch.tensor([0.0, 24.0, 8.0, 32.0]).expand(b, 4) + 0 * d[:, None]
        s0 = 0.5 * (x[:, 0, 8:24, 8:24] ** 2).mean(dim=(1, 2))
        s1 = 0.1 + 0 * s0
        boxes, scores = [box0, box1], [s0, s1]
        if self.twin:
            boxes.append(torch.tensor([8.0, 8.0, 24.0, 24.0]).expand(b, 4) + 0 * d[:, None])
            scores.append(1 + x[:, 1, 24:, 24:].mean(dim=(1, 2)))
        cls1 = torch.stack(scores, dim=1)  # [B, A]
        sc = torch.stack([torch.zeros_like(cls1), cls1], dim=-1)  # [B, A, 2]
        return DenseOutput(boxes=torch.stack(boxes, dim=1), scores=sc, probs=sc)

    @torch.no_grad()
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        raise NotImplementedError


def toy_image() -> Tensor:
    return 0.2 + 0.6 * torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(11))


def test_copies_that_lose_the_box_are_dropped_and_counted():
    img = toy_image()
    det = ShiftingBoxDetector(img, gain=200.0)
    n, sigma, seed = 30, 0.05, 4
    target = Target(0, 1, (8.0, 8.0, 24.0, 24.0))  # candidate 0's clean box
    seg = np.arange(16).repeat(2)[None, :].repeat(32, 0).astype(np.int32)  # 16 column strips
    cfg = ExplainConfig(batch_size=8)  # chunks of 8 over 30 copies
    (exp,) = get_explainer("odsmoothgrad", det, cfg, seed=seed, n_samples=n, sigma=sigma).explain(
        img, [target], segments=seg
    )

    # Independent reference: each copy's box against the clean box (torchvision's IoU).
    eps = noise_copies(img, n, sigma, torch.Generator().manual_seed(seed))
    keep, grads = [], []
    for k in range(n):
        x = (img + eps[k]).detach().requires_grad_(True)
        d = det.dense(x[None])
        keep.append(bool(box_iou(d.boxes[0, :1], torch.tensor([target.box]))[0, 0] >= 0.7))
        (g,) = torch.autograd.grad(d.scores[0, 0, 1], x)
        grads.append(g)
    keep_t = torch.tensor(keep)
    n_kept = int(keep_t.sum())
    assert 0 < n_kept < n - 3, n_kept  # the case really drops copies
    assert exp.valid, exp.reason
    assert exp.details["dropped_copies"] == n - n_kept
    assert exp.details["kept_copies"] == n_kept
    g_all = torch.stack(grads)
    kept_map = (img * g_all[keep_t].mean(0)).sum(0).numpy()
    all_map = (img * g_all.mean(0)).sum(0).numpy()
    np.testing.assert_allclose(exp.pixel_map, kept_map, rtol=1e-5, atol=1e-7)
    assert not np.allclose(exp.pixel_map, all_map, rtol=1e-3, atol=0)  # dropped ones stay out

    # Anchor following keeps every copy: the mean over all of them.
    (anc,) = get_explainer(
        "odsmoothgrad", det, cfg, seed=seed, n_samples=n, sigma=sigma, matching="anchor"
    ).explain(img, [target], segments=seg)
    assert anc.details["kept_copies"] == n and anc.details["dropped_copies"] == 0
    np.testing.assert_allclose(anc.pixel_map, all_map, rtol=1e-5, atol=1e-7)


def test_a_target_with_no_kept_copy_is_invalid():
    img = toy_image()
    det = ShiftingBoxDetector(img, gain=200.0)
    lost = Target(0, 1, (0.0, 0.0, 4.0, 4.0))  # overlaps no candidate
    found = Target(0, 1, (8.0, 8.0, 24.0, 24.0))
    exps = get_explainer("odsmoothgrad", det, ExplainConfig(n_segments=10), n_samples=6).explain(
        img, [lost, found]
    )
    assert not exps[0].valid and "lost" in exps[0].reason and np.isnan(exps[0].values).all()
    assert exps[0].details == {
        "matching": "iou",
        "kept_copies": 0,
        "dropped_copies": 6,
        "non_finite_copies": 0,
    }
    assert exps[1].valid and exps[1].details["kept_copies"] > 0


def test_iou_matching_takes_the_best_scoring_overlap_not_the_anchor():
    """Candidates 0 and 2 share the box; 2 scores higher. The paper's matching explains 2 (its
    gradient lies in the bottom-right corner, channel 1), and anchor following explains 0."""
    img = toy_image()
    det = ShiftingBoxDetector(img, gain=0.0, twin=True)
    target = Target(0, 1, (8.0, 8.0, 24.0, 24.0))
    cfg = ExplainConfig(n_segments=10)
    corner = np.zeros((32, 32), bool)
    corner[24:, 24:] = True
    inner = np.zeros((32, 32), bool)
    inner[8:24, 8:24] = True
    (iou,) = get_explainer("odsmoothgrad", det, cfg, n_samples=4).explain(img, [target])
    (anc,) = get_explainer("odsmoothgrad", det, cfg, n_samples=4, matching="anchor").explain(
        img, [target]
    )
    assert iou.valid and (iou.pixel_map[corner] > 0).all() and (iou.pixel_map[~corner] == 0).all()
    assert anc.valid and (anc.pixel_map[inner] > 0).all() and (anc.pixel_map[~inner] == 0).all()


class ClassBoxesDetector(ShiftingBoxDetector):
    """The same model with class-specific boxes ``[B, A, C, 4]`` (as Faster R-CNN has): class 1
    keeps the real boxes, class 0 gets boxes far away."""

    def dense(self, images: Tensor) -> DenseOutput:
        d = super().dense(images)
        far = torch.tensor([100.0, 100.0, 110.0, 110.0]).expand_as(d.boxes)
        return DenseOutput(torch.stack([far, d.boxes], dim=2), d.scores, d.probs)


def test_class_specific_boxes_and_a_missing_box():
    img = toy_image()
    seg = np.arange(16).repeat(2)[None, :].repeat(32, 0).astype(np.int32)
    target = Target(0, 1, (8.0, 8.0, 24.0, 24.0))
    opts = dict(seed=4, n_samples=12)
    (plain,) = get_explainer(
        "odsmoothgrad", ShiftingBoxDetector(img, gain=200.0), ExplainConfig(), **opts
    ).explain(img, [target], "x1", segments=seg)
    per_class = get_explainer(
        "odsmoothgrad", ClassBoxesDetector(img, gain=200.0), ExplainConfig(), **opts
    )
    (boxed,) = per_class.explain(img, [target], "x1", segments=seg)
    assert 0 < plain.details["dropped_copies"] < 12
    assert boxed.details == plain.details
    np.testing.assert_allclose(boxed.pixel_map, plain.pixel_map, rtol=1e-6, atol=1e-9)
    # No box: the candidate's box on the clean image (one more pass) is the same clean box.
    (nobox,) = per_class.explain(img, [Target(0, 1)], "x1", segments=seg)
    assert nobox.details == plain.details and nobox.passes == plain.passes + 1
    np.testing.assert_allclose(nobox.pixel_map, plain.pixel_map, rtol=1e-6, atol=1e-9)


def test_non_finite_scores_mark_invalid(image, linear):
    _, segments, _, coef, _ = linear
    det = LinearSuperpixelDetector(segments, coef, BOXES, nan_labels=(2,))
    ex = get_explainer("odsmoothgrad", det, ExplainConfig(n_segments=40), n_samples=4)
    for exp in ex.explain(image, clean_targets(det, image), segments=segments):
        if exp.target.label == 2:
            assert not exp.valid and "non-finite" in exp.reason
            assert exp.details["non_finite_copies"] == 4
        else:
            assert exp.valid and np.isfinite(exp.values).all()


# 4. Through the config and the explain stage ------------------------------------------------


def test_config_accepts_the_method_and_its_options(linear):
    cfg = load_config(
        None, ["explain.methods=[odsmoothgrad]", "explain.options.odsmoothgrad.n_samples=5"]
    )
    assert cfg.explain.methods == ["odsmoothgrad"]
    ex = get_explainer("odsmoothgrad", linear[0], cfg.explain)
    assert ex.options.n_samples == 5 and ex.method_params()["n_samples"] == 5
    with pytest.raises(Exception, match="matching"):
        load_config(None, ["explain.options.odsmoothgrad.matching=nearest"])


@pytest.mark.parametrize("matching", ["iou", "anchor"])
def test_explain_stage_runs_odsmoothgrad(tmp_path, linear, matching):
    det, *_ = linear
    rows = []
    for image_id in (7, 8):
        path = tmp_path / f"{image_id}.png"
        arr = (make_image(seed=image_id).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(path)
        img = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
        with torch.no_grad():
            boxes = det.dense(img[None]).boxes[0]
        for a, anchor in enumerate((0, 2, -1)):
            b = boxes[max(anchor, 0)].tolist()  # the uncovered FN keeps candidate 0's box
            rows.append(
                dict(
                    candidate_id=f"{image_id}-{a}",
                    image_id=image_id,
                    image_path=str(path),
                    anchor=anchor,
                    label=1,
                    box_x1=b[0],
                    box_y1=b[1],
                    box_x2=b[2],
                    box_y2=b[3],
                    outcome=["tp", "fp", "fn"][a],
                )
            )
    cands = pd.DataFrame(rows)
    cfg = ExplainConfig(
        methods=["odsmoothgrad"],
        n_segments=40,
        box_maps=True,
        batch_size=16,
        options={"odsmoothgrad": {"n_samples": 4, "matching": matching}},
    )
    out = tmp_path / "run"
    table = explain_candidates(det, cands, cfg, out, progress=False)
    assert len(table) == 2 * 3 * 5  # 6 candidates x score, x1, y1, x2, y2
    assert set(table["output"]) == {"score", "x1", "y1", "x2", "y2"}
    assert set(table["method"]) == {"odsmoothgrad"}
    uncovered = table["candidate_id"].str.endswith("-2")
    if matching == "iou":  # it needs only the box, so the uncovered FN is explained too
        assert table["valid"].all(), table.loc[~table["valid"], "reason"].tolist()
    else:
        assert table.loc[~uncovered, "valid"].all() and not table.loc[uncovered, "valid"].any()
        assert table.loc[uncovered, "reason"].str.contains("no detector candidate").all()
    ok = table[table["valid"]]
    for r in ok.itertuples():
        details = json.loads(r.details)
        assert details["kept_copies"] == 4 and details["dropped_copies"] == 0
        assert json.loads(r.params)["matching"] == matching
        with np.load(out / r.map_file) as z:
            seg, pixel = z[r.segments_key], z[r.map_key].astype(np.float64)
        sums = np.bincount(seg.ravel(), pixel.ravel(), int(seg.max()) + 1)
        scale = np.abs(r.values).max()
        np.testing.assert_allclose(sums, r.values, rtol=1e-2, atol=1e-2 * scale)
    again = explain_candidates(det, cands, cfg, out, progress=False)
    pd.testing.assert_frame_equal(again, table)  # nothing recomputed
