"""Adapter for torchvision's Faster R-CNN (ResNet50-FPN v1/v2, MobileNetV3-Large-FPN).

A two-stage detector has no fixed candidate set: the region proposal network (RPN) proposes
boxes that move, appear and vanish as the input changes, and the box head then scores each
proposal ``i`` for every class ``c`` with a softmax, ``p[i, c] = softmax(class_logits[i])[c]``,
and decodes a class-specific box ``box[i, c]`` from the proposal.

* :meth:`FasterRCNNDetector.dense` returns those per-proposal class probabilities and
  class-specific boxes for every post-RPN proposal (no threshold, no NMS). Boxes are
  ``[B, P, C, 4]`` (one box per class, unlike one-stage families' ``[B, A, 4]``); images with
  fewer proposals than the batch's most are padded with zero boxes and zero probabilities.
* :meth:`FasterRCNNDetector.detect` reproduces torchvision's own detections. A detection's
  ``candidate`` is the index of the proposal it came from in ``dense()`` of the SAME input, so
  ``dense(x).scores[b, cand, label]`` and ``dense(x).boxes[b, cand, label]`` reproduce it. The
  index is **not stable**: on a perturbed input proposal ``cand`` is another box.
* :meth:`FasterRCNNDetector.target_outputs` therefore follows a detection with a soft target, the
  D-RISE similarity (Petsiuk et al. 2021, Sec. 3.1) between the clean detection ``t`` (box
  ``b_t``, label ``c_t``) and the best-matching proposal on the (perturbed) input::

      out[b, t] = max_i IoU(box_i[c_t], b_t) * p_i[c_t]

  D-RISE multiplies IoU by objectness and the cosine between class-probability vectors; Faster
  R-CNN has no objectness at this stage, and with a one-hot target the cosine becomes
  ``p_i[c_t] / ||p_i||``. Using ``p_i[c_t]`` itself keeps the target in [0, 1] and makes it at
  least the detection's own score on the clean image, where its own proposal has IoU 1.

ODAM's feature map (:meth:`FasterRCNNDetector.feature_targets`): the box head reads a proposal
from ONE FPN level, the one torchvision's ``MultiScaleRoIAlign`` assigns it by its size
(``LevelMapper``: k = floor(4 + log2(sqrt(wh) / 224)), Lin et al. 2017 eq. 1). A target is
explained on the level of the proposal its soft target matched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from ..boxes import broadcast_iou
from .base import (
    BOX_COORDS,
    DenseOutput,
    Detections,
    Detector,
    FeatureTargets,
    Target,
    TargetOutput,
    covering_extents,
)
from .builders import build_torchvision


class FasterRCNNDetector(Detector):
    family = "faster_rcnn"

    def __init__(self, model: FasterRCNN, classes: list[str], device: str | torch.device = "cpu"):
        if not isinstance(model, FasterRCNN):
            raise TypeError(
                "FasterRCNNDetector wraps torchvision FasterRCNN models, got "
                f"{type(model).__name__}"
            )
        super().__init__(model, classes, device)

    def _per_image(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per image: class probabilities ``[P, C]``, class-specific boxes ``[P, C, 4]`` in the
        model's resized frame (where torchvision thresholds and runs NMS) and in input pixels."""
        probs, model_boxes, boxes, _ = self._forward(images)
        return probs, model_boxes, boxes

    def _forward(
        self, images: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], dict[str, Any]]:
        """:meth:`_per_image` plus what ODAM needs: the FPN maps, the proposals (model frame)
        and the padded and image sizes the backbone saw."""
        images = self._batch(images)
        m: FasterRCNN = self.model
        orig_hw = images.shape[-2:]
        image_list, _ = m.transform(list(images))
        features = m.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        proposals, _ = m.rpn(image_list, features)
        rh = m.roi_heads
        box_features = rh.box_head(rh.box_roi_pool(features, proposals, image_list.image_sizes))
        class_logits, box_regression = rh.box_predictor(box_features)
        # The same calls as RoIHeads.postprocess_detections, so values agree to the last bit.
        pred_boxes = rh.box_coder.decode(box_regression, proposals)
        pred_scores = torch.softmax(class_logits, -1)
        counts = [p.shape[0] for p in proposals]
        probs, model_boxes, boxes = [], [], []
        for b, s, size in zip(
            pred_boxes.split(counts, 0), pred_scores.split(counts, 0), image_list.image_sizes
        ):
            b = box_ops.clip_boxes_to_image(b, size)
            probs.append(s)
            model_boxes.append(b)
            boxes.append(resize_boxes(b.reshape(-1, 4), size, orig_hw).reshape(b.shape))
        extra = {
            "features": features,
            "proposals": proposals,
            "padded_hw": tuple(image_list.tensors.shape[-2:]),
            "image_hw": tuple(image_list.image_sizes[0]),
        }
        return probs, model_boxes, boxes, extra

    @staticmethod
    def _padded(probs: list[Tensor], boxes: list[Tensor]) -> DenseOutput:
        n = max(p.shape[0] for p in probs)
        probs_t = torch.stack(
            [torch.nn.functional.pad(p, (0, 0, 0, n - p.shape[0])) for p in probs]
        )
        boxes_t = torch.stack(
            [torch.nn.functional.pad(b, (0, 0, 0, 0, 0, n - b.shape[0])) for b in boxes]
        )
        return DenseOutput(boxes=boxes_t, scores=probs_t, probs=probs_t)

    def dense(self, images: Tensor) -> DenseOutput:
        """Every post-RPN proposal: class probabilities ``[B, P, C]``, boxes ``[B, P, C, 4]``.

        ``scores`` and ``probs`` are the same softmax. Padding proposals (zero box, zero
        probability) fill images with fewer than ``P`` proposals.
        """
        probs, _, boxes = self._per_image(images)
        return self._padded(probs, boxes)

    @torch.no_grad()
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        """torchvision's ``RoIHeads.postprocess_detections``, keeping each detection's proposal.

        Per image: drop the background column, flatten (proposal, class) pairs, keep scores >
        ``score_threshold``, drop boxes under 0.01 px, class-wise NMS, the first
        ``detections_per_img``. ``candidates`` index proposals of this input only (unstable).
        """
        return self._postprocess(*self._per_image(self._batch(images)), score_threshold)

    @torch.no_grad()
    def detect_with_dense(
        self, images: Tensor, score_threshold: float
    ) -> tuple[list[Detections], DenseOutput | None]:
        """:meth:`detect` and :meth:`dense` from one forward pass."""
        probs, model_boxes, boxes = self._per_image(self._batch(images))
        dets = self._postprocess(probs, model_boxes, boxes, score_threshold)
        return dets, self._padded(probs, boxes)

    def _postprocess(
        self,
        probs: list[Tensor],
        model_boxes: list[Tensor],
        boxes: list[Tensor],
        score_threshold: float,
    ) -> list[Detections]:
        rh = self.model.roi_heads
        out = []
        for p, mb, ib in zip(probs, model_boxes, boxes):
            num_classes = p.shape[-1]
            labels = torch.arange(num_classes, device=p.device).view(1, -1).expand_as(p)
            flat_boxes = mb[:, 1:].reshape(-1, 4)
            flat_scores = p[:, 1:].reshape(-1)
            flat_labels = labels[:, 1:].reshape(-1)
            pair = torch.where(flat_scores > score_threshold)[0]
            keep = box_ops.remove_small_boxes(flat_boxes[pair], min_size=1e-2)
            pair = pair[keep]
            keep = box_ops.batched_nms(
                flat_boxes[pair], flat_scores[pair], flat_labels[pair], rh.nms_thresh
            )
            pair = pair[keep[: rh.detections_per_img]]
            cands = torch.div(pair, num_classes - 1, rounding_mode="floor")
            labels_kept = flat_labels[pair]
            out.append(Detections(ib[cands, labels_kept], flat_scores[pair], labels_kept, cands))
        return out

    def target_outputs(
        self, images: Tensor, targets: list[Target], output: TargetOutput = "score"
    ) -> Tensor:
        """Soft target ``out[b, t] = max_i IoU(box_i[c_t], b_t) * p_i[c_t]``, shape ``[B, T]``.

        The D-RISE similarity (Petsiuk et al. 2021, Sec. 3.1; see the module docstring) of the
        clean detection to its best-matching proposal. For a box coordinate (``x1`` ...) the
        output is that coordinate of the arg-max proposal's class-``c_t`` box. Differentiable in
        the input through the winning proposal's probability and box (``max`` routes the
        gradient to the arg-max; proposals themselves are not differentiated, as in torchvision's
        RPN).
        """
        return self._soft_target(self.dense(self._batch(images)), targets, output)[0]

    def _soft_target(
        self, d: DenseOutput, targets: list[Target], output: TargetOutput
    ) -> tuple[Tensor, Tensor]:
        """The soft target ``[B, T]`` and the index of the proposal it matched ``[B, T]``."""
        missing = [i for i, t in enumerate(targets) if t.box is None]
        if missing:
            raise ValueError(
                f"Faster R-CNN targets {missing} have no box: its proposals move with the input, so"
                " a target is matched by its clean detection's box; build Target(candidate, label,"
                " box=detection box)"
            )
        dev = d.probs.device
        lab = torch.tensor([t.label for t in targets], device=dev)
        ref = torch.tensor([t.box for t in targets], device=dev, dtype=d.boxes.dtype)  # [T, 4]
        boxes = d.boxes[:, :, lab]  # [B, P, T, 4]
        similarity = broadcast_iou(boxes, ref, eps=1e-6) * d.probs[:, :, lab]  # [B, P, T]
        best, arg = similarity.max(dim=1)
        if output == "score":
            return best, arg
        coord = boxes[..., BOX_COORDS[output]]  # [B, P, T]
        return coord.gather(1, arg.unsqueeze(1)).squeeze(1), arg

    def feature_targets(
        self, images: Tensor, targets: list[Target], output: TargetOutput = "score"
    ) -> FeatureTargets:
        """The soft targets and, per target, the FPN level its matched proposal was pooled from
        on the first image (see the module docstring); ODAM explains one image at a time."""
        probs, _, boxes, extra = self._forward(self._batch(images))
        outputs, arg = self._soft_target(self._padded(probs, boxes), targets, output)
        pool = self.model.roi_heads.box_roi_pool
        # The maps MultiScaleRoIAlign pools from, in its order: those of the backbone's outputs
        # it names (the MobileNet FPN gives '0', '1' and 'pool' for names '0'..'3').
        features = [f for k, f in extra["features"].items() if k in pool.featmap_names]
        matched = extra["proposals"][0][arg[0]]  # [T, 4] in the model's frame
        levels = pool.map_levels([matched.detach()]).flatten().tolist()
        extents = covering_extents(features, extra["padded_hw"], extra["image_hw"])
        return FeatureTargets(outputs, features, [int(v) for v in levels], extents)


_ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
)


def build(arch: str, num_classes: int, image_size: int, weights: str | None = None) -> FasterRCNN:
    """Registry builder (see ``registry.ARCHITECTURES``); ``num_classes`` counts the background."""
    if arch not in _ARCHS:
        raise ValueError(f"faster_rcnn.build makes {list(_ARCHS)}, not {arch!r}")
    return build_torchvision(arch, num_classes, image_size, weights)
