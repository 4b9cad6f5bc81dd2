"""Explanation metrics against known answers: rho, deletion/insertion on a linear model whose
exact attribution is known, pointing game and energy on constructed maps, the sanity check on the
trained compact SSD (with a model-independent edge map as negative control), the bench's
detection set and model clock, and ``e2x evaluate-explanations`` on a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from synthetic_detector import LinearSuperpixelDetector, SmoothConvDetector

from e2x_bench.explain import TimedDetector, _quotas, select_detections
from e2x_pipeline.config import ExplainConfig
from e2x_pipeline.detectors.base import DenseOutput, Target
from e2x_pipeline.explain import get_explainer, slic_segments, superpixel_aggregate
from e2x_pipeline.metrics import (
    box_mask,
    candidate_region,
    cascading_randomization,
    deletion_insertion,
    energy_in_region,
    fully_randomized,
    layer_groups,
    max_similarity,
    mean_rho,
    pearson_rho,
    pointing_hit,
    pointing_sign,
)

SIZE = 48


def make_image(size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0]
    return (0.2 + 0.6 * img + 0.1 * torch.rand(3, size, size, generator=g)).clamp(0, 1)


# correlation ------------------------------------------------------------------------------------


def test_pearson_rho_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(16, 16))
    b = rng.normal(size=(16, 16))
    assert pearson_rho(a, a) == pytest.approx(1.0)
    assert pearson_rho(a, -a) == pytest.approx(-1.0)
    assert pearson_rho(a, 2 * a + 3) == pytest.approx(1.0)  # invariant to positive affine maps
    assert pearson_rho(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    assert np.isnan(pearson_rho(a, np.zeros_like(a)))  # constant map: undefined, not 0
    assert np.isnan(pearson_rho(a, np.where(a > 0, np.nan, a)))
    with pytest.raises(ValueError, match="shapes"):
        pearson_rho(a, a[:8])
    assert mean_rho([(a, a), (a, -a), (a, np.zeros_like(a))]) == pytest.approx(0.0)


# deletion / insertion ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_case():
    """One candidate whose class-1 score is linear in superpixel means: the exact contribution of
    superpixel i (removed to black) is coef_i * mean_i(x)."""
    image = make_image()
    seg = slic_segments(image, 30, 10.0)
    m = int(seg.max()) + 1
    g = torch.Generator().manual_seed(1)
    coef = torch.zeros(1, 3, m)
    coef[0, 1] = torch.randn(m, generator=g) * 3
    box = torch.tensor([[4.0, 4.0, 40.0, 40.0]])
    det = LinearSuperpixelDetector(seg, coef, box, bias=0.0)
    means = superpixel_aggregate(
        image.mean(0, keepdim=True), torch.as_tensor(seg).long(), m, "mean"
    )
    truth = (coef[0, 1] * means[0]).numpy()[seg]  # exact attribution, painted
    target = Target(0, 1, tuple(box[0].tolist()))
    return det, image, seg, truth, target


def test_deletion_orders_perfect_random_reversed(linear_case):
    det, image, seg, truth, target = linear_case
    rng = np.random.default_rng(0)
    random_map = rng.permutation(truth.ravel()).reshape(truth.shape)
    maps = np.stack([truth, random_map, -truth])
    kw = dict(steps=16, deletion_baseline="zeros", insertion_baseline="zeros")
    c = deletion_insertion(det, image, maps, [target] * 3, **kw)
    d, i = c.deletion_auc, c.insertion_auc
    assert d[0] < d[1] < d[2], d  # perfect < random < reversed (lower is better)
    assert i[0] > i[1] > i[2], i  # and the opposite for insertion
    # known endpoints: the clean image's score is p_1/|p| (IoU 1 with its own fixed box), and
    # with zero baselines deletion ends where insertion starts (the black image)
    with torch.no_grad():
        p = torch.softmax(det.dense(image[None]).scores[0, 0], -1)
    assert c.deletion[0, 0] == pytest.approx(float(p[1] / p.norm()), rel=1e-5)
    np.testing.assert_allclose(c.deletion[:, -1], c.insertion[:, 0], rtol=1e-6)
    np.testing.assert_allclose(c.insertion[:, -1], c.deletion[:, 0], rtol=1e-6)
    # batching changes nothing; a NaN map gets NaN curves and leaves the others alone
    small = deletion_insertion(det, image, maps, [target] * 3, batch_size=7, **kw)
    np.testing.assert_allclose(small.deletion, c.deletion, rtol=1e-5)
    nan_maps = maps.copy()
    nan_maps[1, 0, 0] = np.nan
    part = deletion_insertion(det, image, nan_maps, [target] * 3, **kw)
    assert np.isnan(part.deletion[1]).all()
    np.testing.assert_allclose(part.deletion[[0, 2]], c.deletion[[0, 2]], rtol=1e-5)


def test_max_similarity_by_hand():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]]])  # [1, 2, 4]
    probs = torch.tensor([[[0.1, 0.9, 0.0], [0.5, 0.5, 0.0]]])
    dense = DenseOutput(boxes=boxes, scores=probs, probs=probs, objectness=torch.tensor([[1, 1.0]]))
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    onehot = torch.tensor([[0.0, 1.0, 0.0]])
    sim = max_similarity(dense, target, torch.tensor([1]), onehot, objectness=False)
    expected = max(0.9 / np.hypot(0.1, 0.9), 0.5 * 0.5 / np.hypot(0.5, 0.5))  # IoU 1 and 0.5
    assert float(sim[0]) == pytest.approx(expected, rel=1e-6)
    dense.objectness = torch.tensor([[0.1, 1.0]])
    sim = max_similarity(dense, target, torch.tensor([1]), onehot, objectness=True)
    assert float(sim[0]) < expected  # the first candidate's low objectness now costs it
    assert float(sim[0]) == pytest.approx(
        max(0.1 * 0.9 / np.hypot(0.1, 0.9), 0.5 * 0.5 / np.hypot(0.5, 0.5))
    )
    # class-specific boxes [B, A, C, 4]: the target class's box is used
    per_class = torch.zeros(1, 2, 3, 4)
    per_class[0, :, 1] = boxes[0]
    dense = DenseOutput(boxes=per_class, scores=probs, probs=probs)
    sim2 = max_similarity(dense, target, torch.tensor([1]), onehot, objectness=False)
    assert float(sim2[0]) == pytest.approx(expected, rel=1e-6)


# pointing game and energy -----------------------------------------------------------------------


def quadrants() -> np.ndarray:
    seg = np.zeros((8, 8), dtype=np.int32)
    seg[:4, 4:], seg[4:, :4], seg[4:, 4:] = 1, 2, 3
    return seg


def test_pointing_game_on_constructed_maps():
    seg = quadrants()
    values = np.array([1.0, -3.0, 2.0, 0.5])
    region = box_mask((4.0, 0.0, 8.0, 4.0), (8, 8))  # exactly superpixel 1
    assert region.sum() == 16 and region[seg == 1].all()
    assert pointing_sign("fn") == -1 and pointing_sign("fp") == 1 and pointing_sign("tp") == 1
    assert pointing_hit(values, seg, region, -1)  # FN: most negative (1) is on the region
    assert not pointing_hit(values, seg, region, 1)  # FP: most positive (2) is not
    assert pointing_hit(values, seg, box_mask((0, 4, 4, 8), (8, 8)), 1)
    # a FN map without any negative evidence points at nothing
    assert not pointing_hit(np.abs(values), seg, region, -1)
    assert pointing_hit(np.array([0, 0, 0, 0.1]), seg, box_mask((4, 4, 8, 8), (8, 8)), 1)
    # overlap rule: a region covering half of superpixel 1
    half = box_mask((4.0, 0.0, 8.0, 2.0), (8, 8))
    assert pointing_hit(values, seg, half, -1, min_overlap=0.5)
    assert not pointing_hit(values, seg, half, -1, min_overlap=0.6)


def test_energy_in_region():
    seg = quadrants()
    pixel = np.array([1.0, -3.0, 2.0, -1.0])[seg]
    region = box_mask((4.0, 0.0, 8.0, 4.0), (8, 8))  # superpixel 1
    assert energy_in_region(pixel, region, -1) == pytest.approx(3 / 4)  # negative energy 3 + 1
    assert energy_in_region(pixel, region, 1) == pytest.approx(0.0)
    assert energy_in_region(np.abs(pixel), region, -1) == 0.0  # no negative evidence at all
    assert np.isnan(energy_in_region(pixel * np.nan, region, 1))


def test_candidate_region_cause_then_gt_then_candidate():
    causes = {"val/1/0": {"cause_id": "val/1/0", "region_bbox": [10, 20, 30, 5]}}
    row = {
        "cause_id": "val/1/0",
        "gt_x1": 0,
        "gt_y1": 0,
        "gt_x2": 5,
        "gt_y2": 5,
        "box_x1": 1,
        "box_y1": 1,
        "box_x2": 2,
        "box_y2": 2,
    }
    r = candidate_region(row, causes)
    assert r.source == "cause" and r.box == (10.0, 20.0, 40.0, 25.0)  # COCO xywh -> xyxy
    assert candidate_region(row, None).source == "gt"  # no planted causes: the GT box
    assert candidate_region(row, None).box == (0.0, 0.0, 5.0, 5.0)
    bkg = {**row, "cause_id": None, "gt_x1": np.nan, "gt_y1": None, "gt_x2": pd.NA, "gt_y2": 1}
    assert candidate_region(bkg, causes) == candidate_region(bkg, None)
    assert candidate_region(bkg, causes).source == "candidate"


# sanity check on the trained compact SSD --------------------------------------------------------


def _confident_targets(det, root: Path, n: int = 2) -> tuple[torch.Tensor, list[Target]]:
    from e2x_pipeline.data.coco import load_image

    for path in sorted((root / "images" / "val").glob("*.png")):
        image = load_image(path)
        d = det.detect(image, 0.5)[0]
        if len(d) >= n:
            return image, [
                Target(int(d.candidates[i]), int(d.labels[i]), tuple(d.boxes[i].tolist()))
                for i in range(n)
            ]
    raise AssertionError("no image with confident detections")


def edge_map(detector, image: torch.Tensor) -> np.ndarray:
    """A map that ignores the model (Sobel edges): what the sanity check must expose."""
    gray = image.mean(0).numpy()
    return np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))


def test_sanity_cascade_gradient_map_drops_edge_map_does_not(benchmark_detector, tiny_benchmark):
    det = benchmark_detector
    names = [n for n, _ in layer_groups(det.model)]
    assert names[-2:] == [
        "head.classification_head.module_list",
        "head.regression_head.module_list",
    ]
    assert names[0] == "backbone.stem.0"
    image, targets = _confident_targets(det, tiny_benchmark)
    seg = slic_segments(image, 200, 10.0)
    cfg = ExplainConfig(k=8, reference="mean")
    mean = torch.full((3,), 0.5)
    ig = get_explainer("ig", det, cfg, mean=mean).explain(image, targets, segments=seg)
    edge = edge_map(det, image)
    before = [p.detach().clone() for p in det.model.parameters()]
    rhos, edge_rhos = [], []
    for step, (layer, rdet) in enumerate(cascading_randomization(det, seed=0)):
        exps = get_explainer("ig", rdet, cfg, mean=mean).explain(image, targets, segments=seg)
        rhos.append([pearson_rho(a.pixel_map, b.pixel_map) for a, b in zip(ig, exps)])
        edge_rhos.append(pearson_rho(edge, edge_map(rdet, image)))
        if step == 0:  # top layer first: the box-regression head cannot change a class-score map
            assert layer == "head.regression_head.module_list"
            assert min(rhos[0]) > 0.9999
    assert len(rhos) == len(names)
    # after full randomisation the gradient map no longer looks like the trained model's ...
    assert np.mean(np.abs(rhos[-1])) < 0.2, rhos[-1]
    # ... while the edge detector's map, which ignores the model, does not drop at all
    assert min(edge_rhos) == pytest.approx(1.0)
    # the trained detector itself was not touched; a fully randomised copy differs everywhere
    assert all(torch.equal(a, b) for a, b in zip(before, det.model.parameters()))
    rand = fully_randomized(det, seed=0)
    assert all(not torch.equal(a, b) for a, b in zip(before, rand.model.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(det.model.buffers(), rand.model.buffers()))


# bench helpers --------------------------------------------------------------------------------


def test_select_detections_is_deterministic_and_fills_quotas():
    rows = []
    kinds = [
        ("fn", "occluder"),
        ("fn", "camouflage"),
        ("fp", "distractor"),
        ("fp", "occluder"),
        ("fn", None),
        ("fp", None),
        ("tp", None),
        ("tp", None),
    ]
    for image_id in range(1, 41):
        for j, (outcome, cause) in enumerate(kinds[(image_id % 4) * 2 :][:3] + [kinds[6]]):
            rows.append(
                {
                    "candidate_id": f"val/{image_id}/{j}",
                    "image_id": image_id,
                    "anchor": j,
                    "outcome": outcome,
                    "cause": cause,
                }
            )
    c = pd.DataFrame(rows)
    a = select_detections(c, 6, 2)
    assert a.equals(select_detections(c.sample(frac=1, random_state=0), 6, 2))
    assert len(a) == 12 and (a.groupby("image_id").size() == 2).all()
    assert a["group"].value_counts().to_dict() == _quotas(12)  # every group's share filled
    assert _quotas(12) == {
        "fn:occluder": 2,
        "fn:camouflage": 2,
        "fp:distractor": 2,
        "fp:cause": 1,
        "fn:none": 1,
        "fp:none": 1,
        "tp": 3,
    }
    assert sum(_quotas(36).values()) == 36 and _quotas(36)["tp"] == 9


def test_timed_detector_changes_nothing_and_counts_model_time():
    boxes = torch.tensor([[4.0, 4.0, 28.0, 28.0]])
    det = SmoothConvDetector(boxes)
    timed = TimedDetector(det)
    image = make_image()
    cfg = ExplainConfig(n_segments=30, k=8, reference="zeros", batch_size=4)
    t = [Target(0, 1, tuple(boxes[0].tolist()))]
    a = get_explainer("e2x", det, cfg).explain(image, t)[0]
    b = get_explainer("e2x", timed, cfg).explain(image, t)[0]
    np.testing.assert_array_equal(a.values, b.values)
    assert timed.clock.forward_s > 0 and timed.clock.backward_s > 0
    assert timed.clock.forward_s + timed.clock.backward_s < b.seconds * len(t) + 1e-3


# e2x evaluate-explanations on a tiny run ---------------------------------------------------------


def _check_counterfactual_against_detect(
    table: pd.DataFrame, cands: pd.DataFrame, split_dir: Path, det
) -> None:
    """The oracle of the counterfactual columns: the detector's own post-processing
    (``detect``, with NMS) on the image with the top-n blamed superpixels replaced by the
    reference. At the reported smallest n the FN is detected (FP gone); with no success it is
    still missed (still there) at the largest n."""
    from torchvision.ops import box_iou

    from e2x_pipeline.config import load_config
    from e2x_pipeline.data.coco import load_image
    from e2x_pipeline.explain.superpixels import make_reference
    from e2x_pipeline.metrics.counterfactual import top_failing
    from e2x_pipeline.stages import reference_image

    cfg = load_config(split_dir.parent.parent / "run.yaml")
    expl = pd.read_parquet(split_dir / "explanations.parquet")
    expl = expl[expl["output"] == "score"].set_index(["candidate_id", "method"])
    cands = cands.set_index("candidate_id")
    threshold = cfg.mining.operating_threshold
    failures = table[table["valid"] & table["outcome"].isin(["fn", "fp"])]
    assert failures["counterfactual_success"].notna().all()
    assert table.loc[table["outcome"] == "tp", "counterfactual_success"].isna().all()
    checked = 0
    for r in failures[failures["method"] == "e2x"].itertuples():
        e, c = expl.loc[(r.candidate_id, r.method)], cands.loc[r.candidate_id]
        with np.load(split_dir / e["map_file"]) as z:
            seg = z[e["segments_key"]]
        image = load_image(c["image_path"])
        fill = make_reference(image, cfg.explain.reference, reference_image(cfg))[0]
        sign = -1 if r.outcome == "fn" else 1
        n = int(r.counterfactual_n) if r.counterfactual_success else 5
        blamed = top_failing(np.asarray(e["values"]), sign, n)
        if not len(blamed):
            continue
        mask = torch.as_tensor(np.isin(seg, blamed))
        x = torch.where(mask, fill, image)
        d = det.detect(x, threshold)[0]
        box = torch.tensor([[c["box_x1"], c["box_y1"], c["box_x2"], c["box_y2"]]])
        same = d.labels == int(c["label"])
        hit = bool((box_iou(d.boxes[same], box)[:, 0] >= 0.5).any()) if same.any() else False
        fixed = hit if r.outcome == "fn" else not hit
        assert fixed == bool(r.counterfactual_success), (r.candidate_id, r.outcome, n)
        checked += 1
    assert checked >= 3


def test_evaluate_explanations_cli_on_a_tiny_run(tmp_path, tiny_benchmark, capsys):
    import yaml

    from e2x_cli.main import main
    from e2x_pipeline.config import load_config
    from e2x_pipeline.metrics.stage import explanation_metrics
    from e2x_pipeline.stages import detector_for, explain_stage, mine_stage

    fixture = Path(__file__).parent / "fixtures" / "compact_ssd_benchmark.pt"
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "device": "cpu",
                "output_dir": str(tmp_path / "run"),
                "data": {"root": str(tiny_benchmark)},
                "model": {"checkpoint": str(fixture)},
                "explain": {
                    "methods": ["e2x", "drise", "odam", "odsmoothgrad"],
                    "k": 4,
                    "drise_masks": 16,
                    "max_candidates": 6,
                    "options": {"odsmoothgrad": {"n_samples": 4}},
                },
                "metrics": {"steps": 4, "sanity": True},
            }
        )
    )
    assert main(["evaluate-explanations", "--config", str(cfg_path)]) == 1  # nothing explained
    assert "run 'e2x explain --split val'" in capsys.readouterr().err
    cfg = load_config(cfg_path)
    det = detector_for(cfg)
    mine_stage(cfg, det, "val")
    explain_stage(cfg, det, "val", progress=False)
    assert main(["evaluate-explanations", "--config", str(cfg_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "pointing_hit" in out and "explanation_metrics.parquet" in out
    d = tmp_path / "run" / "val"
    table = pd.read_parquet(d / "explanation_metrics.parquet")
    expl = pd.read_parquet(d / "explanations.parquet")
    score = expl[expl["output"] == "score"]
    assert len(table) == len(score.drop_duplicates(["candidate_id", "method"])) == 24
    assert set(table["method"]) == {"e2x", "drise", "odam", "odsmoothgrad"}
    assert {"rho_vs_drise", "rho_vs_e2x"} <= set(table.columns)
    ok = table[table["valid"]]
    assert len(ok) >= 8
    assert ok["deletion_auc"].between(0, 1).all() and ok["insertion_auc"].between(0, 1).all()
    assert ok["pointing_hit"].isin([0.0, 1.0]).all() and ok["energy"].between(0, 1).all()
    assert ok.loc[ok["method"] == "e2x", "rho_vs_drise"].notna().any()
    assert ok.loc[ok["method"] == "e2x", "sanity_rho"].notna().all()
    assert set(table["region_source"]) <= {"cause", "gt", "candidate"}
    assert (table["sign"] == np.where(table["outcome"] == "fn", -1, 1)).all()
    _check_counterfactual_against_detect(table, pd.read_parquet(d / "candidates.parquet"), d, det)
    summary = json.loads((d / "explanation_metrics.json").read_text())
    assert summary["rows"] == 24 and set(summary["methods"]) == set(table["method"])
    cf = summary["methods"]["e2x"]["counterfactual"]
    assert cf and set(cf) <= {"fn", "fp"} and all(0 <= v["rate"] <= 1 for v in cf.values())
    assert summary["methods"]["e2x"]["deletion_auc"]["n"] == int(ok["method"].eq("e2x").sum())
    # without planted causes (any other dataset) the regions are GT boxes (or the candidate's)
    cands = pd.read_parquet(d / "candidates.parquet")
    plain = explanation_metrics(expl, cands, d, cfg.metrics, None, None, progress=False)
    assert "cause" not in set(plain["region_source"])
    assert plain["deletion_auc"].isna().all()  # no detector: no deletion
