"""Adapter for torchvision's RetinaNet (``retinanet_resnet50_fpn`` and ``_v2``).

RetinaNet scores every (anchor ``a``, class ``c``) pair independently with a sigmoid,
``s[a, c] = sigmoid(cls_logits[a, c])`` (Lin et al. 2017, Sec. 4), and decodes the box from the
anchor with ``BoxCoder(weights=(1, 1, 1, 1))``. The candidate index is the anchor's global index
over the concatenated FPN levels, in the order torchvision's head emits them (level by level,
then row, column, anchor shape), so ``dense(x).scores[b, candidate, label]`` is the very sigmoid
output the detection was thresholded on.

torchvision's RetinaNet has no background logit: with ``num_classes`` counting a background
class (as everywhere in E2X), label 0 is an ordinary sigmoid output that training never makes
positive. It is kept in :meth:`RetinaNetDetector.detect` because torchvision keeps it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from .base import DenseOutput, Detections, Detector


@dataclass
class LevelledDense:
    """A dense view plus what per-level post-processing needs.

    ``model_boxes`` are the same boxes as ``dense.boxes`` but in the model's resized frame, where
    torchvision runs NMS; ``level_sizes`` is the number of candidates per FPN level.
    """

    dense: DenseOutput
    model_boxes: Tensor  # [B, A, 4]
    level_sizes: list[int]


def per_level_postprocess(
    scores: Tensor,
    model_boxes: Tensor,
    level_sizes: list[int],
    score_threshold: float,
    topk_candidates: int,
    nms_thresh: float,
    detections_per_img: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """torchvision's RetinaNet/FCOS ``postprocess_detections`` for one image, keeping anchor ids.

    Per FPN level: keep (anchor, class) pairs with score > ``score_threshold``, then the
    ``topk_candidates`` best; over all levels, class-wise NMS (``batched_nms``) and the first
    ``detections_per_img``. ``scores`` is ``[A, C]``, ``model_boxes`` ``[A, 4]``. Returns the
    kept ``(candidates, labels, scores)`` in torchvision's output order.
    """
    num_classes = scores.shape[-1]
    all_cands, all_labels, all_scores = [], [], []
    start = 0
    for n in level_sizes:
        # Same ops on the same values as torchvision, so ties in topk resolve the same way.
        flat = scores[start : start + n].flatten()
        keep = flat > score_threshold
        level_scores = flat[keep]
        idx = torch.where(keep)[0]
        level_scores, order = level_scores.topk(min(topk_candidates, idx.numel()))
        idx = idx[order]
        all_cands.append(torch.div(idx, num_classes, rounding_mode="floor") + start)
        all_labels.append(idx % num_classes)
        all_scores.append(level_scores)
        start += n
    cands = torch.cat(all_cands)
    labels = torch.cat(all_labels)
    kept_scores = torch.cat(all_scores)
    keep = box_ops.batched_nms(model_boxes[cands], kept_scores, labels, nms_thresh)
    keep = keep[:detections_per_img]
    return cands[keep], labels[keep], kept_scores[keep]


def head_levels(
    model: nn.Module, images: Tensor
) -> tuple[dict[str, Tensor], list[Tensor], list[tuple[int, int]], list[int]]:
    """Transform, backbone, head and anchors of a torchvision one-stage FPN detector.

    Returns ``(head_outputs, anchors, image_sizes, level_sizes)`` where ``level_sizes`` counts
    candidates per level exactly as torchvision's ``forward`` recovers them.
    """
    image_list, _ = model.transform(list(images))
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    features = list(features.values())
    head = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    hw = [f.size(2) * f.size(3) for f in features]
    per_location = head["cls_logits"].size(1) // sum(hw)
    return head, anchors, image_list.image_sizes, [n * per_location for n in hw]


class PerLevelDetector(Detector):
    """Shared ``dense``/``detect`` of the families whose torchvision post-processing runs per FPN
    level (RetinaNet, FCOS); subclasses provide ``_levelled``."""

    def _levelled(self, images: Tensor) -> LevelledDense:
        raise NotImplementedError

    def dense(self, images: Tensor) -> DenseOutput:
        """Every candidate's scores, probabilities and decoded, clipped box in input pixels."""
        return self._levelled(images).dense

    @torch.no_grad()
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        """torchvision's per-level ``postprocess_detections`` (RetinaNet, FCOS), keeping each
        detection's candidate (anchor or location) index."""
        m = self.model
        lv = self._levelled(self._batch(images))
        out = []
        for b in range(lv.dense.scores.shape[0]):
            cands, labels, scores = per_level_postprocess(
                lv.dense.scores[b],
                lv.model_boxes[b],
                lv.level_sizes,
                score_threshold,
                m.topk_candidates,
                m.nms_thresh,
                m.detections_per_img,
            )
            out.append(Detections(lv.dense.boxes[b, cands], scores, labels, cands))
        return out


class RetinaNetDetector(PerLevelDetector):
    family = "retinanet"

    def __init__(self, model: RetinaNet, classes: list[str], device: str | torch.device = "cpu"):
        if not isinstance(model, RetinaNet):
            raise TypeError(
                f"RetinaNetDetector wraps torchvision RetinaNet models, got {type(model).__name__}"
            )
        super().__init__(model, classes, device)

    def _levelled(self, images: Tensor) -> LevelledDense:
        images = self._batch(images)
        m: RetinaNet = self.model
        orig_hw = images.shape[-2:]
        head, anchors, sizes, level_sizes = head_levels(m, images)
        probs = torch.sigmoid(head["cls_logits"])
        model_boxes, boxes = [], []
        for reg, anc, size in zip(head["bbox_regression"], anchors, sizes):
            b = box_ops.clip_boxes_to_image(m.box_coder.decode_single(reg, anc), size)
            model_boxes.append(b)
            boxes.append(resize_boxes(b, size, orig_hw))
        dense = DenseOutput(boxes=torch.stack(boxes), scores=probs, probs=probs)
        return LevelledDense(dense, torch.stack(model_boxes), level_sizes)


def one_stage_kwargs(image_size: int) -> dict:
    """Transform sizes for torchvision's FPN detectors: shorter side ``image_size``.

    The longer side is capped at torchvision's 1333/800 ratio of it, as in its COCO recipe.
    """
    return {"min_size": image_size, "max_size": max(image_size, round(image_size * 1333 / 800))}


def build_torchvision(
    arch: str, num_classes: int, image_size: int, weights: str | None, **kwargs
) -> nn.Module:
    """A torchvision detection model by builder name: random init, or pretrained by name.

    Random init uses ``weights_backbone=None`` so nothing is downloaded. Named ``weights`` (e.g.
    ``"DEFAULT"``) are fetched by torchvision on first use and fix the class count to theirs.
    """
    from torchvision.models import detection as tv_detection

    builder = getattr(tv_detection, arch)
    kwargs = {**one_stage_kwargs(image_size), **kwargs}
    if weights is None:
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    try:
        return builder(weights=weights, num_classes=num_classes, **kwargs)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"{arch} pretrained weights {weights!r} cannot be used with {num_classes} classes "
            f"({exc}); name weights torchvision has for {arch} (e.g. 'DEFAULT') and use their "
            "class list (weights.meta['categories']), or unset model.weights to start from scratch"
        ) from None


_ARCHS = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")


def build(arch: str, num_classes: int, image_size: int, weights: str | None = None) -> RetinaNet:
    """Registry builder (see ``detectors.FAMILIES``); ``num_classes`` counts the background."""
    if arch not in _ARCHS:
        raise ValueError(f"retinanet.build makes {list(_ARCHS)}, not {arch!r}")
    return build_torchvision(arch, num_classes, image_size, weights)
