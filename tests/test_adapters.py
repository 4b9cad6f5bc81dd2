"""Detector adapters against torchvision itself (issue 2, section 5).

For every family, on random-init weights (no download): ``detect()`` equals the torchvision
model's own eval forward, ``dense()`` at each detection's candidate reproduces its score and box,
and ``target_outputs()`` is differentiable in the input. Inputs are smaller or larger than the
model's working size so that the resize back to input pixels is exercised too. Faster R-CNN's
soft target is checked against a brute-force oracle and on a model whose answer is known.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign, box_iou

from e2x_pipeline.config import ModelConfig
from e2x_pipeline.detectors import (
    CheckpointError,
    Detections,
    Detector,
    Target,
    build_detector,
    load_detector,
    save_checkpoint,
)
from e2x_pipeline.detectors.faster_rcnn import FasterRCNNDetector

CLASSES = ["__background__", "disc", "square", "bar"]
THRESHOLD = 1e-3
TOL = dict(rtol=0, atol=1e-5)

# arch -> (model working size, input H x W, batch). Inputs differ from the working size on
# purpose; SSD300 is fixed at 300 px, so it runs one image to stay fast.
FAMILIES = {
    "compact_ssd": (128, (112, 144), 2),
    "ssd300_vgg16": (300, (240, 320), 1),
    "ssdlite320_mobilenet_v3_large": (96, (72, 104), 2),
    "retinanet_resnet50_fpn": (96, (72, 104), 2),
    "retinanet_resnet50_fpn_v2": (96, (72, 104), 2),
    "fcos_resnet50_fpn": (96, (72, 104), 2),
    "fasterrcnn_mobilenet_v3_large_fpn": (96, (72, 104), 2),
    "fasterrcnn_resnet50_fpn": (96, (72, 104), 2),
    "fasterrcnn_resnet50_fpn_v2": (96, (72, 104), 2),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 2 cores shared with other processes, OpenMP threads that spin
    waiting for each other made these forwards 20-50x slower; one thread is predictable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _set_threshold(det: Detector, threshold: float) -> None:
    """Make torchvision's own post-processing use the threshold detect() is called with."""
    if isinstance(det, FasterRCNNDetector):
        det.model.roi_heads.score_thresh = threshold
    else:
        det.model.score_thresh = threshold


def _box_of(dense_boxes: Tensor, b: int, cand: Tensor, label: Tensor) -> Tensor:
    """A detection's box in the dense view: per candidate, or per (proposal, class) for R-CNN."""
    if dense_boxes.dim() == 4:
        return dense_boxes[b, cand, label]
    return dense_boxes[b, cand]


class Run:
    """One family's detector, input, torchvision reference and adapter outputs (built once)."""

    def __init__(self, arch: str):
        size, hw, batch = FAMILIES[arch]
        torch.manual_seed(0)
        self.det = build_detector(arch, CLASSES, size)
        if arch.startswith("ssdlite"):
            # torchvision's N(0, 0.03) init makes SSDlite's features vanish (~1e-13), so every
            # score would be exactly 1/C; He init gives the comparison something to compare.
            for mod in self.det.model.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
        if arch.startswith("fasterrcnn_resnet50"):
            # Keep 64 of the RPN's 1000 proposals: the box head's cost is per proposal.
            self.det.model.rpn._post_nms_top_n["testing"] = 64
        _set_threshold(self.det, THRESHOLD)
        self.x = torch.rand(batch, 3, *hw, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            self.ref = self.det.model(list(self.x))
            self.got = self.det.detect(self.x, THRESHOLD)
            self.dense = self.det.dense(self.x)


@pytest.fixture(scope="module", params=list(FAMILIES))
def run(request) -> Run:
    return Run(request.param)


def test_detect_equals_torchvision_forward(run: Run) -> None:
    """(a) Same boxes, scores, labels in the same order as ``model(list_of_images)``."""
    assert len(run.got) == len(run.x)
    for ref, got in zip(run.ref, run.got):
        assert isinstance(got, Detections)
        assert len(got) > 0, "the threshold must yield detections, or the test checks nothing"
        assert torch.unique(got.scores).numel() > 1
        torch.testing.assert_close(got.boxes, ref["boxes"], **TOL)
        torch.testing.assert_close(got.scores, ref["scores"], **TOL)
        assert torch.equal(got.labels, ref["labels"])
        assert got.candidates.dtype == torch.long


def test_dense_reproduces_every_detection(run: Run) -> None:
    """(b) ``dense(x).scores[b, cand, label]`` and its box are the detection's score and box."""
    d = run.dense
    assert d.scores.shape[:2] == d.boxes.shape[:2] and d.scores.shape[-1] == len(CLASSES)
    for b, got in enumerate(run.got):
        torch.testing.assert_close(d.scores[b, got.candidates, got.labels], got.scores, **TOL)
        torch.testing.assert_close(
            _box_of(d.boxes, b, got.candidates, got.labels), got.boxes, **TOL
        )
    assert run.det.has_objectness == (d.objectness is not None)
    if d.objectness is not None:  # FCOS: score = sqrt(class probability * centerness)
        assert d.objectness.shape == d.scores.shape[:2]
        torch.testing.assert_close(d.scores, torch.sqrt(d.probs * d.objectness[..., None]))


def test_detect_with_dense_is_one_forward(run: Run) -> None:
    """(b') ``detect_with_dense``: the same detections and dense view as ``detect`` and ``dense``,
    from ONE pass through the backbone (mining gives uncovered misses their candidates from it)."""
    calls = []
    hook = run.det.model.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        dets, dense = run.det.detect_with_dense(run.x, THRESHOLD)
    finally:
        hook.remove()
    assert len(calls) == 1 and dense is not None
    torch.testing.assert_close(dense.scores, run.dense.scores, **TOL)
    torch.testing.assert_close(dense.boxes, run.dense.boxes, **TOL)
    for got, ref in zip(dets, run.got, strict=True):
        torch.testing.assert_close(got.scores, ref.scores, **TOL)
        assert torch.equal(got.candidates, ref.candidates)


def test_target_outputs_backpropagate_to_input(run: Run) -> None:
    """(c) The explainer's target is the detection's own score and has a gradient at the input.

    Only image 0's targets are back-propagated, so image 1 (if any) must get no gradient.
    """
    got = run.got[0]
    top = got.scores.argsort(descending=True)[:3]
    targets = [
        Target(int(got.candidates[i]), int(got.labels[i]), tuple(got.boxes[i].tolist()))
        for i in top
    ]
    x = run.x.clone().requires_grad_(True)
    out = run.det.target_outputs(x, targets)
    assert out.shape == (len(run.x), len(targets))
    if isinstance(run.det, FasterRCNNDetector):
        # Soft target: at least the own score, as the own proposal has IoU 1.
        assert bool((out[0] >= got.scores[top] - 1e-6).all())
    else:
        torch.testing.assert_close(out[0], got.scores[top], **TOL)
    out[0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad[0].abs().sum() > 0
    assert (x.grad[1:] == 0).all()
    with torch.no_grad():
        y1 = run.det.target_outputs(run.x, targets, output="y1")
    torch.testing.assert_close(y1[0], got.boxes[top, 1], **TOL)


def test_feature_targets_read_exactly_their_own_level(run: Run) -> None:
    """(d) ODAM's feature map: ``feature_targets`` gives the same outputs as ``target_outputs``,
    and each target's output depends on its own level's map and on no other one. A wrong level
    (an off-by-one in the level sizes, the wrong LevelMapper) has zero gradient and fails."""
    got = run.got[0]
    x = run.x[:1]
    targets = [
        Target(int(got.candidates[i]), int(got.labels[i]), tuple(got.boxes[i].tolist()))
        for i in got.scores.argsort(descending=True)[:4]
    ]
    ft = run.det.feature_targets(x, targets)
    with torch.no_grad():
        torch.testing.assert_close(ft.outputs, run.det.target_outputs(x, targets), **TOL)
    assert len(ft.levels) == len(targets) and len(ft.extents) == len(ft.features)
    for (rows, cols), f in zip(ft.extents, ft.features, strict=True):
        assert 0 < rows <= f.shape[-2] and 0 < cols <= f.shape[-1]
    for t, level in enumerate(ft.levels):
        grads = torch.autograd.grad(
            ft.outputs[0, t], ft.features, retain_graph=True, allow_unused=True
        )
        norms = [0.0 if g is None else float(g.abs().sum()) for g in grads]
        assert norms[level] > 0, (t, level, norms)
        assert sum(norms) == norms[level], (t, level, norms)


# ---- Faster R-CNN soft target -------------------------------------------------------------


@pytest.fixture(scope="module")
def frcnn() -> tuple[FasterRCNNDetector, Tensor, Detections]:
    torch.manual_seed(0)
    det = build_detector("fasterrcnn_mobilenet_v3_large_fpn", CLASSES, 96)
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    return det, x, det.detect(x, THRESHOLD)[0]


def test_soft_target_equals_bruteforce_oracle(frcnn) -> None:
    """out = max_i IoU(box_i[c], b) * p_i[c], with torchvision's box_iou as the IoU oracle."""
    det, x, got = frcnn
    # Boxes that are not detections: the clean ones shifted by a few pixels.
    targets = [
        Target(
            0, int(got.labels[i]), tuple((got.boxes[i] + torch.tensor([3.0, -2, 3, -2])).tolist())
        )
        for i in range(4)
    ]
    d = det.dense(x)
    for output in ("score", "x2"):
        out = det.target_outputs(x, targets, output=output)[0]
        for t, value in zip(targets, out):
            boxes = d.boxes[0, :, t.label]
            sim = box_iou(boxes, torch.tensor([t.box]))[:, 0] * d.probs[0, :, t.label]
            expected = sim.max() if output == "score" else boxes[sim.argmax(), 2]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)


def test_soft_target_bounds_on_clean_image(frcnn) -> None:
    """Clean image: own score <= target <= 1 for every detection."""
    det, x, got = frcnn
    targets = [
        Target(int(c), int(lab), tuple(b.tolist()))
        for c, lab, b in zip(got.candidates, got.labels, got.boxes)
    ]
    out = det.target_outputs(x, targets)[0]
    assert bool((out >= got.scores - 1e-6).all()) and bool((out <= 1).all())


def test_soft_target_needs_a_box(frcnn) -> None:
    det, x, _ = frcnn
    with pytest.raises(ValueError, match="no box"):
        det.target_outputs(x, [Target(0, 1)])


class Redness(nn.Module):
    """Backbone of a model with a known answer: mean redness R - (G + B) / 2 at stride 4.

    Cell k averages pixels 4k-2 ... 4k+1, so it sits where RoIAlign (aligned=False) samples it.
    """

    out_channels = 1

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        red = nn.functional.pad(x[:, :1] - 0.5 * (x[:, 1:2] + x[:, 2:3]), (2, 0, 2, 0))
        return OrderedDict([("0", nn.functional.avg_pool2d(red, 4))])


def red_square_rcnn() -> FasterRCNNDetector:
    """A Faster R-CNN (torchvision's class) whose answer is known.

    The RPN head is zero, so the proposals are all anchors (32 px squares every 4 px, no NMS).
    The box head flattens the 7x7 RoI redness; class 1's logit is a steep function of its mean,
    so only a proposal lying on a 32 px red square scores ~1. Box regression is zero.
    """
    rpn_head = RPNHead(1, 1)
    predictor = FastRCNNPredictor(49, 2)
    for p in (*rpn_head.parameters(), *predictor.parameters()):
        nn.init.zeros_(p)
    with torch.no_grad():
        # Mean RoI redness is 0.749 for a proposal on the square, <= 0.70 for one 4 px off.
        predictor.cls_score.weight[1] = 250 / 49
        predictor.cls_score.bias[1] = -250 * 0.725
    model = FasterRCNN(
        Redness(),
        min_size=128,
        max_size=128,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=AnchorGenerator(((32,),), ((1.0,),)),
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_test=2000,
        rpn_post_nms_top_n_test=2000,
        rpn_nms_thresh=1.0,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=nn.Flatten(),
        box_predictor=predictor,
        box_score_thresh=0.5,
    )
    return FasterRCNNDetector(model, ["__background__", "red square"])


def test_soft_target_follows_a_shifted_object() -> None:
    """Shift the content by a few pixels: the soft target moves with the square; the index not.

    On the shifted image the best match is the proposal on the moved square, so the target is
    ``IoU(clean box, moved box) * p`` and its box is the moved box, whereas the proposal at the
    clean detection's index no longer scores the square.
    """
    det = red_square_rcnn()
    image = 0.35 + 0.3 * torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(3))
    image[:, 44:76, 48:80] = torch.tensor([0.95, 0.1, 0.1])[:, None, None]
    got = det.detect(image, 0.5)[0]
    assert len(got) == 1
    torch.testing.assert_close(got.boxes[0], torch.tensor([48.0, 44, 80, 76]))
    target = Target(int(got.candidates[0]), 1, tuple(got.boxes[0].tolist()))
    for dy, dx in [(0, 4), (-4, 4), (8, 0)]:
        shifted = torch.roll(image, (dy, dx), dims=(1, 2))
        moved = got.boxes[0] + torch.tensor([dx, dy, dx, dy], dtype=torch.float)
        out = {o: det.target_outputs(shifted, [target], o)[0, 0] for o in ("score", "x1", "y1")}
        torch.testing.assert_close(torch.stack([out["x1"], out["y1"]]), moved[:2])
        expected = box_iou(got.boxes[:1], moved[None])[0, 0] * got.scores[0]
        torch.testing.assert_close(out["score"], expected, rtol=1e-4, atol=1e-5)
        fixed_index = det.dense(shifted).scores[0, target.candidate, 1].detach()
        assert float(fixed_index) < 0.01 * float(got.scores[0])


# ---- Models by name: checkpoints and entry points -----------------------------------------


@pytest.mark.parametrize("arch", ["compact_ssd", "ssdlite320_mobilenet_v3_large"])
def test_checkpoint_round_trip(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    det = build_detector(arch, CLASSES, 96)
    path = tmp_path / "model.pt"
    state = {k: v.detach().clone() for k, v in det.model.state_dict().items()}
    save_checkpoint(path, state, {"arch": arch, "classes": CLASSES, "image_size": 96})
    torch.manual_seed(1)  # the loaded model must not depend on the fresh init
    loaded = load_detector(ModelConfig(arch=arch, checkpoint=path, image_size=64))
    assert type(loaded) is type(det) and loaded.classes == CLASSES
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        a, b = det.dense(x), loaded.dense(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.boxes, b.boxes)
    da, db = det.detect(x, 0.01)[0], loaded.detect(x, 0.01)[0]
    assert len(da) > 0 and torch.equal(da.candidates, db.candidates)


def test_bare_torchvision_state_dict_loads(tmp_path: Path) -> None:
    """A plain ``torch.save(model.state_dict())`` of a torchvision model, classes given."""
    arch = "fasterrcnn_mobilenet_v3_large_fpn"
    torch.manual_seed(0)
    det = build_detector(arch, CLASSES, 96)
    path = tmp_path / "frcnn.pth"
    torch.save(det.model.state_dict(), path)
    torch.manual_seed(1)
    loaded = load_detector(ModelConfig(arch=arch, checkpoint=path, image_size=96), classes=CLASSES)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = det.dense(x), loaded.dense(x)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.boxes, b.boxes)


def test_bare_state_dict_takes_model_classes_and_says_when_they_are_missing(
    tmp_path: Path,
) -> None:
    """``model.classes`` names the labels of a checkpoint without E2X metadata; without it the
    error says to give them; ``model.classes: coco`` is torchvision's 91-entry COCO list."""
    from e2x_pipeline.detectors import coco_categories

    arch = "fasterrcnn_mobilenet_v3_large_fpn"
    torch.manual_seed(0)
    det = build_detector(arch, CLASSES, 96)
    path = tmp_path / "bare.pth"
    torch.save(det.model.state_dict(), path)
    loaded = load_detector(ModelConfig(arch=arch, checkpoint=path, classes=CLASSES, image_size=96))
    assert loaded.classes == CLASSES
    with pytest.raises(ValueError, match="list them in model.classes"):
        load_detector(ModelConfig(arch=arch, checkpoint=path, image_size=96))
    coco = coco_categories(arch)
    assert len(coco) == 91 and coco[0] == "__background__" and coco[1] == "person"
    with pytest.raises(CheckpointError, match="does not fit .* 91 classes"):
        load_detector(ModelConfig(arch=arch, checkpoint=path, classes="coco", image_size=96))


def test_checkpoint_for_another_class_count_is_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    det = build_detector("compact_ssd", CLASSES[:3], 96)
    path = tmp_path / "three.pt"
    save_checkpoint(path, det.model.state_dict(), {"arch": "compact_ssd", "image_size": 96})
    with pytest.raises(CheckpointError, match="class count"):
        load_detector(ModelConfig(arch="compact_ssd", checkpoint=path), classes=CLASSES)


def test_custom_entrypoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    cfg = ModelConfig(
        arch="custom", entrypoint="custom_entrypoint_example:make_detector", image_size=96
    )
    det = load_detector(cfg)
    import custom_entrypoint_example as example

    assert isinstance(det, Detector) and det.classes == example.CLASSES
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(5))
    got = det.detect(x, 0.2)[0]
    assert len(got) > 0
    torch.testing.assert_close(det.dense(x).scores[0, got.candidates, got.labels], got.scores)
    # Its weights come from the user's checkpoint when the config names one.
    path = tmp_path / "user.pt"
    state = {
        k: torch.full_like(v, 0.01) if v.is_floating_point() else v
        for k, v in det.model.state_dict().items()
    }
    save_checkpoint(path, state, {})
    det2 = load_detector(cfg.model_copy(update={"checkpoint": path}))
    assert torch.equal(
        det2.model.head.classification_head.module_list[0].weight,
        state["head.classification_head.module_list.0.weight"],
    )
    bad = cfg.model_copy(update={"entrypoint": "custom_entrypoint_example:not_a_detector"})
    with pytest.raises(TypeError, match="must return an e2x_pipeline Detector"):
        load_detector(bad)


def test_builders_refuse_what_they_cannot_make() -> None:
    with pytest.raises(ValueError, match="model.image_size: 300"):
        build_detector("ssd300_vgg16", CLASSES, 128)
    with pytest.raises(ValueError, match="cannot be used with"):
        build_detector("fcos_resnet50_fpn", CLASSES, 128, weights="NO_SUCH_WEIGHTS")
    # COCO weights have 91 classes; refused before any download is attempted.
    with pytest.raises(ValueError, match="cannot be used with 4 classes"):
        build_detector("ssdlite320_mobilenet_v3_large", CLASSES, 128, weights="DEFAULT")
    with pytest.raises(ValueError, match="cannot be used with 4 classes"):
        build_detector("fasterrcnn_resnet50_fpn_v2", CLASSES, 128, weights="DEFAULT")
    with pytest.raises(TypeError, match="wraps torchvision RetinaNet"):
        from e2x_pipeline.detectors.retinanet import RetinaNetDetector

        RetinaNetDetector(nn.Linear(2, 2), CLASSES)  # type: ignore[arg-type]


def test_drise_runs_on_class_specific_boxes_of_faster_rcnn():
    """D-RISE reads dense boxes; Faster R-CNN's are per class ([B, P, C, 4])."""
    from e2x_pipeline.config import ExplainConfig
    from e2x_pipeline.detectors import build_detector
    from e2x_pipeline.detectors.base import Target
    from e2x_pipeline.explain import explain_image

    torch.manual_seed(0)
    det = build_detector("fasterrcnn_mobilenet_v3_large_fpn", ["__background__", "a", "b"], 128)
    det.model.roi_heads.detections_per_img = 5
    image = torch.rand(3, 128, 128)
    targets = [Target(0, 1, (10.0, 10.0, 60.0, 60.0)), Target(0, 2, None)]
    cfg = ExplainConfig(drise_masks=8, batch_size=4, n_segments=20)
    exps = explain_image(det, image, targets, ["drise"], cfg, seed=0)
    assert len(exps) == 2 and all(e.valid for e in exps)
    assert all(e.pixel_map.shape == (128, 128) for e in exps)
