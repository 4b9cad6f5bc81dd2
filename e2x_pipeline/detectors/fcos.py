"""Adapter for torchvision's FCOS (``fcos_resnet50_fpn``).

FCOS predicts at every feature-map location (one "anchor" point per location) a class logit per
class, a centerness logit and the distances to the box sides. Its detection score is the
geometric mean of classification and centerness (Tian et al. 2019, Sec. 3.3; torchvision's
``FCOS.postprocess_detections``)::

    s[a, c] = sqrt(sigmoid(cls_logits[a, c]) * sigmoid(centerness[a]))

``dense().scores`` is ``s``, ``.probs`` is ``sigmoid(cls_logits)`` and ``.objectness`` is
``sigmoid(centerness)``. The candidate index is the location's global index over the
concatenated FPN levels. As for RetinaNet, label 0 (the background slot E2X counts in
``num_classes``) is an ordinary sigmoid output and kept, as torchvision keeps it.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection import FCOS
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from .base import DenseOutput
from .builders import build_torchvision
from .per_level import LevelledDense, PerLevelDetector, head_levels


class FCOSDetector(PerLevelDetector):
    family = "fcos"
    has_objectness = True

    def __init__(self, model: FCOS, classes: list[str], device: str | torch.device = "cpu"):
        if not isinstance(model, FCOS):
            raise TypeError(
                f"FCOSDetector wraps torchvision FCOS models, got {type(model).__name__}"
            )
        super().__init__(model, classes, device)

    def _levelled(self, images: Tensor) -> LevelledDense:
        images = self._batch(images)
        m: FCOS = self.model
        orig_hw = images.shape[-2:]
        hl = head_levels(m, images)
        head, anchors, sizes = hl.head, hl.anchors, hl.image_sizes
        probs = torch.sigmoid(head["cls_logits"])
        centerness = torch.sigmoid(head["bbox_ctrness"])  # [B, A, 1]
        # Same expression as torchvision's so the scores agree to the last bit.
        scores = torch.sqrt(probs * centerness)
        model_boxes, boxes = [], []
        for reg, anc, size in zip(head["bbox_regression"], anchors, sizes):
            b = box_ops.clip_boxes_to_image(m.box_coder.decode(reg, anc), size)
            model_boxes.append(b)
            boxes.append(resize_boxes(b, size, orig_hw))
        dense = DenseOutput(
            boxes=torch.stack(boxes), scores=scores, probs=probs, objectness=centerness[..., 0]
        )
        return LevelledDense(
            dense, torch.stack(model_boxes), hl.level_sizes, hl.features, hl.extents
        )


def build(arch: str, num_classes: int, image_size: int, weights: str | None = None) -> FCOS:
    """Registry builder (see ``registry.ARCHITECTURES``); ``num_classes`` counts the background."""
    if arch != "fcos_resnet50_fpn":
        raise ValueError(f"fcos.build makes ['fcos_resnet50_fpn'], not {arch!r}")
    return build_torchvision(arch, num_classes, image_size, weights)
