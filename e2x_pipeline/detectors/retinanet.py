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

import torch
from torch import Tensor
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from .base import DenseOutput
from .builders import build_torchvision
from .per_level import LevelledDense, PerLevelDetector, head_levels


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
        hl = head_levels(m, images)
        head, anchors, sizes = hl.head, hl.anchors, hl.image_sizes
        probs = torch.sigmoid(head["cls_logits"])
        model_boxes, boxes = [], []
        for reg, anc, size in zip(head["bbox_regression"], anchors, sizes):
            b = box_ops.clip_boxes_to_image(m.box_coder.decode_single(reg, anc), size)
            model_boxes.append(b)
            boxes.append(resize_boxes(b, size, orig_hw))
        dense = DenseOutput(boxes=torch.stack(boxes), scores=probs, probs=probs)
        return LevelledDense(
            dense, torch.stack(model_boxes), hl.level_sizes, hl.features, hl.extents
        )


_ARCHS = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")


def build(arch: str, num_classes: int, image_size: int, weights: str | None = None) -> RetinaNet:
    """Registry builder (see ``registry.ARCHITECTURES``); ``num_classes`` counts the background."""
    if arch not in _ARCHS:
        raise ValueError(f"retinanet.build makes {list(_ARCHS)}, not {arch!r}")
    return build_torchvision(arch, num_classes, image_size, weights)
