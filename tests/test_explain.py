"""Explainers against known answers: a linear superpixel model, IG completeness, batching
invariance, Captum's IntegratedGradients as an oracle, SLIC labels and NaN handling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from skimage.segmentation import slic
from synthetic_detector import (
    BOXES,
    LABELS,
    LinearSuperpixelDetector,
    SmoothConvDetector,
    make_image,
)

from e2x_pipeline.config import ExplainConfig
from e2x_pipeline.detectors.base import Target
from e2x_pipeline.explain import (
    EXPLAINERS,
    explain_candidates,
    explain_image,
    get_explainer,
    render_overlay,
    slic_segments,
    superpixel_aggregate,
)
from e2x_pipeline.explain.ig import quadrature


def targets() -> list[Target]:
    return [Target(a, LABELS[a], tuple(BOXES[a].tolist())) for a in range(len(LABELS))]


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return make_image()


@pytest.fixture(scope="module")
def linear_setup(image):
    segments = slic_segments(image, 40, 10.0)
    m = int(segments.max()) + 1
    g = torch.Generator().manual_seed(3)
    coef = torch.randn(len(LABELS), 3, m, generator=g)
    box_coef = torch.randn(len(LABELS), 4, m, generator=g) * 5
    det = LinearSuperpixelDetector(segments, coef, BOXES, box_coef)
    seg_t = torch.as_tensor(segments, dtype=torch.long)
    return det, segments, seg_t, m, coef, box_coef


def superpixel_means(img: torch.Tensor, seg_t: torch.Tensor, m: int) -> torch.Tensor:
    return superpixel_aggregate(img.mean(0, keepdim=True), seg_t, m, "mean")[0]


# 1. Known answer: a linear function of superpixel means ------------------------------------


@pytest.mark.parametrize("method", ["e2x", "lime"])
def test_linear_model_coefficients_recovered(image, linear_setup, method):
    det, segments, seg_t, m, coef, box_coef = linear_setup
    mean = torch.full((3,), 0.1)
    cfg = ExplainConfig(n_segments=40, k=32, reference="mean", lime_samples=1000)
    exps = get_explainer(method, det, cfg, seed=0, mean=mean).explain(image, targets())
    delta = (superpixel_means(image, seg_t, m) - 0.1).numpy()
    assert (delta > 0).all()
    for exp in exps:
        assert np.array_equal(exp.segments, segments)  # the explainer's own SLIC is the same
        truth = coef[exp.target.candidate, exp.target.label].numpy() * delta  # exact Shapley
        rho = spearmanr(exp.values, truth).statistic
        assert rho >= 0.9, (method, rho)
        big = np.abs(truth) > 0.1 * np.abs(truth).max()
        assert (np.sign(exp.values[big]) == np.sign(truth[big])).all()
        if method == "e2x":  # E2X is exact on a linear model (every level used once)
            np.testing.assert_allclose(exp.values, truth, rtol=1e-3, atol=1e-5)
        assert exp.passes == (32 if method == "e2x" else 1000 / 5)


def test_e2x_box_coordinate_map(image, linear_setup):
    det, _, seg_t, m, _, box_coef = linear_setup
    cfg = ExplainConfig(n_segments=40, k=16, reference="zeros")
    delta = superpixel_means(image, seg_t, m).numpy()
    for output, j in (("x1", 0), ("y2", 3)):
        exps = get_explainer("e2x", det, cfg).explain(image, targets(), output)
        for exp in exps:
            truth = box_coef[exp.target.candidate, j].numpy() * delta
            np.testing.assert_allclose(exp.values, truth, rtol=1e-3, atol=1e-4)


def test_mean_aggregation_is_paper_s_x(image, linear_setup):
    det, _, seg_t, m, coef, _ = linear_setup
    area = torch.bincount(seg_t.flatten(), minlength=m).numpy()
    base = dict(n_segments=40, k=8, reference="zeros")
    s = get_explainer("e2x", det, ExplainConfig(**base, aggregate="sum")).explain(image, targets())
    a = get_explainer("e2x", det, ExplainConfig(**base, aggregate="mean")).explain(image, targets())
    for es, ea in zip(s, a, strict=True):
        np.testing.assert_allclose(ea.values, es.values / area, rtol=1e-5, atol=1e-8)


# 2. IG completeness ---------------------------------------------------------------------------


def test_ig_completeness(image):
    det = SmoothConvDetector(BOXES)
    cfg = ExplainConfig(n_segments=40, k=64, reference="zeros")
    exps = get_explainer("ig", det, cfg).explain(image, targets())
    with torch.no_grad():
        f_x = det.target_outputs(image[None], targets())[0]
        f_ref = det.target_outputs(torch.zeros_like(image)[None], targets())[0]
    diff = (f_x - f_ref).numpy()
    checked = 0
    for exp, d in zip(exps, diff, strict=True):
        assert abs(exp.values.sum() - exp.pixel_map.sum()) < 1e-4 * max(1.0, abs(d))
        if abs(d) > 0.02:
            assert abs(exp.pixel_map.sum() - d) <= 0.05 * abs(d), (exp.pixel_map.sum(), d)
            checked += 1
    assert checked >= 3


# 3. Batching over targets changes nothing -----------------------------------------------------


@pytest.mark.parametrize("method", sorted(EXPLAINERS))
def test_targets_together_equal_alone(image, method):
    det = SmoothConvDetector(BOXES)
    # chunks that cut across targets and samples (PDA has many more images: larger chunks)
    cfg = ExplainConfig(
        n_segments=30,
        k=8,
        reference="blur",
        lime_samples=64,
        drise_masks=48,
        batch_size=97 if method == "pda" else 20,
    )
    opts = {"pda": {"n_samples": 3}}.get(method, {})
    seg = slic_segments(image, 30, 10.0)
    ex = get_explainer(method, det, cfg, seed=5, **opts)
    together = ex.explain(image, targets(), segments=seg)
    for t, joint in zip(targets(), together, strict=True):
        (alone,) = ex.explain(image, [t], segments=seg)
        scale = max(np.abs(alone.values).max(), 1e-12)
        np.testing.assert_allclose(joint.values, alone.values, rtol=1e-5, atol=1e-5 * scale)
        mscale = max(np.abs(alone.pixel_map).max(), 1e-12)
        np.testing.assert_allclose(joint.pixel_map, alone.pixel_map, rtol=1e-5, atol=1e-5 * mscale)
        assert joint.valid and alone.valid and np.abs(alone.values).max() > 0


def test_seed_determinism(image):
    det = SmoothConvDetector(BOXES)
    cfg = ExplainConfig(n_segments=30, k=8, reference="zeros")
    seg = slic_segments(image, 30, 10.0)
    a = get_explainer("e2x", det, cfg, seed=1).explain(image, targets()[:2], segments=seg)
    b = get_explainer("e2x", det, cfg, seed=1).explain(image, targets()[:2], segments=seg)
    c = get_explainer("e2x", det, cfg, seed=2).explain(image, targets()[:2], segments=seg)
    np.testing.assert_array_equal(a[0].values, b[0].values)
    assert not np.allclose(a[0].values, c[0].values)


@pytest.mark.parametrize("levels", ["permuted_linspace", "permuted_midpoint", "sobol"])
def test_e2x_levels_stratified_and_seeded(levels):
    from e2x_pipeline.explain.e2x import LEVELS

    k, m = 16, 50
    w = LEVELS[levels](m, k, torch.Generator().manual_seed(4), torch.device("cpu"))
    assert w.shape == (k, m) and float(w.min()) >= 0.0 and float(w.max()) <= 1.0
    if levels == "permuted_linspace":  # each level of linspace(0, 1, K) once per superpixel
        expect = torch.linspace(0, 1, k).unsqueeze(1).expand(k, m)
        torch.testing.assert_close(w.sort(dim=0).values, expect)
    else:  # one level in each of the K strata [j/K, (j+1)/K) per superpixel
        strata = (w * k).floor().long().sort(dim=0).values
        assert (strata == torch.arange(k).unsqueeze(1)).all()
    np.testing.assert_allclose(w.mean(0).numpy(), 0.5, atol=0.5 / k + 1e-6)
    again = LEVELS[levels](m, k, torch.Generator().manual_seed(4), torch.device("cpu"))
    other = LEVELS[levels](m, k, torch.Generator().manual_seed(5), torch.device("cpu"))
    assert torch.equal(w, again) and not torch.equal(w, other)
    assert not torch.equal(w[:, 0], w[:, 1])  # superpixels do not share one order


def test_e2x_shared_forward_same_values(image):
    det = SmoothConvDetector(BOXES)
    seg = slic_segments(image, 30, 10.0)
    for levels in ("permuted_linspace", "sobol"):
        cfg = ExplainConfig(n_segments=30, k=8, reference="blur", batch_size=5)
        runs = [
            get_explainer("e2x", det, cfg, seed=3, levels=levels, share_forward=share).explain(
                image, targets(), segments=seg
            )
            for share in (True, False)
        ]
        for a, b in zip(*runs, strict=True):
            scale = np.abs(b.values).max()
            assert scale > 0 and a.passes == b.passes == 8
            np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-5 * scale)


# 4. Oracle: Captum's IntegratedGradients ------------------------------------------------------


@pytest.mark.parametrize(
    "scheme,captum_method",
    [
        ("middle", "riemann_middle"),
        ("trapezoid", "riemann_trapezoid"),
        ("gausslegendre", "gausslegendre"),
    ],
)
def test_ig_matches_captum(image, scheme, captum_method):
    from captum.attr import IntegratedGradients

    det = SmoothConvDetector(BOXES)
    k = 16
    cfg = ExplainConfig(n_segments=30, k=k, reference="blur")
    ours = get_explainer("ig", det, cfg, scheme=scheme).explain(image, targets())
    from e2x_pipeline.explain.superpixels import blur_reference

    ref = blur_reference(image)
    # Captum's trapezoid weights sum to (K-1)/K (step 1/K, ends halved); ours sum to 1.
    factor = (k - 1) / k if scheme == "trapezoid" else 1.0
    for exp in ours:
        ig = IntegratedGradients(lambda x, t=exp.target: det.target_outputs(x, [t])[:, 0])
        attr = ig.attribute(image[None], baselines=ref[None], n_steps=k, method=captum_method)
        expected = attr[0].sum(0).detach().numpy() / factor
        scale = np.abs(expected).max()
        np.testing.assert_allclose(exp.pixel_map, expected, rtol=1e-4, atol=1e-4 * scale)


def test_ig_matches_captum_on_compact_ssd():
    from captum.attr import IntegratedGradients

    from e2x_pipeline.detectors import build_detector

    torch.manual_seed(0)
    det = build_detector("compact_ssd", ["__background__", "disk", "square", "triangle"], 128)
    img = make_image(128, seed=4)
    tgt = [Target(100, 1), Target(900, 2)]
    cfg = ExplainConfig(n_segments=50, k=8, reference="zeros")
    ours = get_explainer("ig", det, cfg, scheme="middle").explain(img, tgt)
    for exp in ours:
        ig = IntegratedGradients(lambda x, t=exp.target: det.target_outputs(x, [t])[:, 0])
        attr = ig.attribute(
            img[None], baselines=torch.zeros_like(img)[None], n_steps=8, method="riemann_middle"
        )
        expected = attr[0].sum(0).detach().numpy()
        np.testing.assert_allclose(
            exp.pixel_map, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
        )


def test_quadrature_weights():
    for scheme in ("trapezoid", "paper", "left", "right", "middle", "gausslegendre"):
        nodes, w = quadrature(9, scheme)
        assert abs(w.sum() - 1) < 1e-12 and nodes.min() >= 0 and nodes.max() <= 1
    # trapezoid integrates a linear integrand exactly: int_0^1 a da = 1/2
    nodes, w = quadrature(5, "trapezoid")
    assert abs((nodes * w).sum() - 0.5) < 1e-12


# 5. SLIC labels and NaN handling --------------------------------------------------------------


def test_slic_keeps_every_segment(image):
    for n in (20, 60, 200):
        seg = slic_segments(image, n, 10.0)
        ref = slic(
            image.permute(1, 2, 0).double().numpy(),
            n_segments=n,
            compactness=10.0,
            sigma=0,
            channel_axis=-1,
        )  # current scikit-image default: labels from 1
        assert ref.min() == 1
        m = int(seg.max()) + 1
        assert np.array_equal(np.unique(seg), np.arange(m))  # contiguous 0..M-1
        assert m == len(np.unique(ref))  # no segment lost
        # same partition as scikit-image's
        pairs = np.unique(np.stack([seg.ravel(), ref.ravel()]), axis=1)
        assert pairs.shape[1] == m
        tot = superpixel_aggregate(torch.ones(1, *seg.shape), torch.as_tensor(seg).long(), m)
        assert tot.sum().item() == seg.size and (tot > 0).all()


def test_nan_outputs_mark_invalid(image, linear_setup):
    _, segments, _, m, coef, _ = linear_setup
    det = LinearSuperpixelDetector(segments, coef, BOXES, nan_labels=(2,))
    cfg = ExplainConfig(n_segments=40, k=8, reference="zeros", lime_samples=60, drise_masks=16)
    for method in sorted(EXPLAINERS):
        opts = {"pda": {"n_samples": 2}}.get(method, {})
        exps = get_explainer(method, det, cfg, **opts).explain(image, targets(), segments=segments)
        for exp in exps:
            if exp.target.label == 2 and method != "drise":  # D-RISE uses probs, not scores
                assert not exp.valid and "non-finite" in exp.reason, method
                assert np.isnan(exp.values).all()
            else:
                assert exp.valid, (method, exp.reason)
                assert np.isfinite(exp.values).all() and np.isfinite(exp.pixel_map).all()
                assert exp.values.shape == (m,)


def test_bad_segments_rejected(image, linear_setup):
    det, segments, *_ = linear_setup
    with pytest.raises(ValueError, match="contiguous"):
        get_explainer("e2x", det, ExplainConfig(k=4)).explain(
            image, targets()[:1], segments=segments + 1
        )


# Stage: table, maps, rerun skip; overlay -----------------------------------------------------


def test_explain_candidates_table_and_rerun(tmp_path, linear_setup, monkeypatch):
    det, segments, *_ = linear_setup
    rows = []
    for image_id in (7, 8):
        path = tmp_path / f"{image_id}.png"
        arr = (make_image(seed=image_id).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(path)
        for a, anchor in enumerate((0, 2, -1)):
            b = BOXES[max(anchor, 0)].tolist()
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
        methods=["e2x", "drise"],
        n_segments=40,
        k=8,
        drise_masks=16,
        reference="zeros",
        box_maps=True,
    )
    out = tmp_path / "run"
    table = explain_candidates(det, cands, cfg, out, progress=False)
    # e2x: 6 candidates x 5 outputs (2 of them invalid: anchor -1); drise: 6 x score
    assert len(table) == 6 * 5 + 6
    bad = table[~table["valid"]]
    assert set(bad["candidate_id"]) == {"7-2", "8-2"} and set(bad["method"]) == {"e2x"}
    ok = table[table["valid"]]
    with np.load(out / "maps" / "7.npz") as z:
        seg = z[ok["segments_key"].iloc[0]]
        r = ok[(ok["image_id"] == 7) & (ok["method"] == "e2x")].iloc[0]
        values = np.asarray(r["values"])
        assert len(values) == r["n_segments"] == int(seg.max()) + 1
        np.testing.assert_allclose(
            z[r["map_key"]].astype(np.float32),
            values[seg],
            rtol=2e-3,
            atol=1e-3 * np.abs(values).max(),
        )
    assert (out / "explanations.parquet").is_file()
    again = explain_candidates(det, cands, cfg, out, progress=False)
    pd.testing.assert_frame_equal(again, table)  # nothing recomputed
    cfg2 = cfg.model_copy(update={"k": 4})
    more = explain_candidates(det, cands, cfg2, out, progress=False)
    # a changed e2x setting explains e2x again and replaces its rows; drise's rows stay
    assert len(more) == len(table)
    e2x_old = table[table["method"] == "e2x"]["params_hash"].unique()
    e2x_new = more[more["method"] == "e2x"]["params_hash"].unique()
    assert len(e2x_new) == 1 and e2x_new[0] not in set(e2x_old)
    keep = ["candidate_id", "method", "output", "params_hash"]
    drise = (more["method"] == "drise", table["method"] == "drise")
    pd.testing.assert_frame_equal(
        more[drise[0]][keep].reset_index(drop=True), table[drise[1]][keep].reset_index(drop=True)
    )
    # another checkpoint (other weights) explains everything again, replacing its rows
    # (the linear detector keeps its weights outside a module: stand in for their fingerprint)
    import e2x_pipeline.explain.stage as stage_module

    monkeypatch.setattr(stage_module, "model_fingerprint", lambda d: "other-weights")
    moved = explain_candidates(det, cands, cfg2, out, progress=False)
    assert len(moved) == len(table)
    assert not set(moved["params_hash"]) & set(more["params_hash"])


def test_explain_image_shares_segments(image, linear_setup):
    det, segments, *_ = linear_setup
    cfg = ExplainConfig(n_segments=40, k=4, lime_samples=20, reference="zeros")
    exps = explain_image(det, image, targets()[:2], ["e2x", "lime"], cfg, seed=0)
    assert len(exps) == 4
    assert all(e.segments is exps[0].segments for e in exps)


def test_overlay_colours():
    img = torch.full((3, 8, 8), 0.5)
    m = np.zeros((8, 8), dtype=np.float32)
    m[:4] = 2.0
    m[4:, :4] = -1.0
    rgb = render_overlay(img, m).astype(int)
    assert rgb[0, 0, 0] > 200 and rgb[0, 0, 2] < 60  # strongest positive: red
    assert rgb[7, 0, 2] > rgb[7, 0, 0] + 50  # negative: blue (half strength)
    assert (rgb[7, 7] == 128).all()  # zero: transparent


# Localisation with known answers: PDA, D-RISE, and the top-superpixel helpers ----------------


def _one_superpixel_detector(segments: np.ndarray, target_sp: int, weight: float):
    m = int(segments.max()) + 1
    coef = torch.zeros(1, 3, m)
    coef[0, 1, target_sp] = weight
    return LinearSuperpixelDetector(segments, coef, BOXES[:1], bias=0.0)


def test_pda_relevance_only_near_the_relevant_superpixel(image, linear_setup):
    _, segments, seg_t, *_ = linear_setup
    sp = int(np.bincount(segments.ravel()).argmax())
    det = _one_superpixel_detector(segments, sp, 5.0)
    cfg = ExplainConfig(n_segments=40, batch_size=512)
    tgt = [Target(0, 1, (0.0, 0.0, 16.0, 16.0))]  # window 3 on 48 px
    (exp,) = get_explainer("pda", det, cfg, n_samples=4).explain(image, tgt, segments=segments)
    assert exp.details["window"] == 3 and exp.details["sampler"] == "conditional"
    from scipy.ndimage import binary_dilation

    near = binary_dilation(segments == sp, iterations=6)  # window + interpolation reach
    inside = np.abs(exp.pixel_map[segments == sp]).max()
    assert inside > 1e-3
    # elsewhere only float32 rounding of the model (batch of 1 vs batch of many)
    assert np.abs(exp.pixel_map[~near]).max() < min(1e-5, 0.01 * inside)


def test_drise_saliency_peaks_on_the_relevant_superpixel(image, linear_setup):
    _, segments, *_ = linear_setup
    sp = int(np.bincount(segments.ravel()).argmax())
    det = _one_superpixel_detector(segments, sp, 8.0)
    cfg = ExplainConfig(n_segments=40, drise_masks=400, aggregate="mean")
    ex = get_explainer("drise", det, cfg, center=True)
    (exp,) = ex.explain(image, [Target(0, 1, tuple(BOXES[0].tolist()))], segments=segments)
    assert exp.top_superpixels(1, sign=1)[0] == sp
    assert exp.top_mask(1, sign=1).sum() == (segments == sp).sum()
