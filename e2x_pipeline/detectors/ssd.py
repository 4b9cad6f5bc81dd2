"""Adapter for torchvision's ``SSD`` class: the compact SSD, SSD300-VGG16 and SSDlite320.

SSD scores a candidate (prior box / anchor) ``a`` for class ``c`` with a softmax over classes,
``s[a, c] = softmax(cls_logits[a])[c]``, and decodes its box from the anchor with
``BoxCoder(weights=(10, 10, 5, 5))``. The candidate index is the anchor index, exactly the
prior-box index E2X's patched Caffe SSD reported (Gudovskiy et al. 2018, Sec. 4).

ODAM's feature map (:meth:`SSDDetector.dense_with_features`): SSD's head reads one backbone map
per anchor scale, and a candidate's anchor sits on exactly one of them, so a candidate is
explained on the map its anchor sits on (candidates are concatenated map by map, finest first,
``h_l * w_l * anchors_per_location_l`` per map).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from .base import DenseOutput, Detections, Detector, FeatureDense, covering_extents


class SSDDetector(Detector):
    family = "ssd"

    def __init__(self, model: SSD, classes: list[str], device: str | torch.device = "cpu"):
        if not isinstance(model, SSD):
            raise TypeError(f"SSDDetector wraps torchvision SSD models, got {type(model).__name__}")
        super().__init__(model, classes, device)

    def dense(self, images: Tensor) -> DenseOutput:
        return self.dense_with_features(images).dense

    def dense_with_features(self, images: Tensor) -> FeatureDense:
        """The dense view and the backbone maps the head read (see the module docstring)."""
        images = self._batch(images)
        m: SSD = self.model
        orig_hw = images.shape[-2:]
        image_list, _ = m.transform(list(images))
        features = m.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        features = list(features.values())
        head = m.head(features)
        anchors = m.anchor_generator(image_list, features)
        probs = torch.softmax(head["cls_logits"], dim=-1)
        boxes = []
        for reg, anc, size in zip(head["bbox_regression"], anchors, image_list.image_sizes):
            b = m.box_coder.decode_single(reg, anc)
            b = box_ops.clip_boxes_to_image(b, size)
            boxes.append(resize_boxes(b, size, orig_hw))
        per_location = m.anchor_generator.num_anchors_per_location()
        level_sizes = [f.shape[-2] * f.shape[-1] * a for f, a in zip(features, per_location)]
        extents = covering_extents(
            features, tuple(image_list.tensors.shape[-2:]), tuple(image_list.image_sizes[0])
        )
        dense = DenseOutput(boxes=torch.stack(boxes), scores=probs, probs=probs)
        return FeatureDense(dense, features, level_sizes, extents)

    @torch.no_grad()
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        """torchvision's ``SSD.postprocess_detections``, keeping each detection's anchor index."""
        m: SSD = self.model
        dense = self.dense(self._batch(images))
        out = []
        for boxes, scores in zip(dense.boxes, dense.scores):
            all_idx, all_scores, all_labels = [], [], []
            for label in range(1, scores.shape[-1]):
                score = scores[:, label]
                idx = torch.nonzero(score > score_threshold).squeeze(1)
                score = score[idx]
                k = min(m.topk_candidates, score.numel())
                score, order = score.topk(k)
                all_idx.append(idx[order])
                all_scores.append(score)
                all_labels.append(torch.full_like(order, label))
            idx = torch.cat(all_idx)
            sc = torch.cat(all_scores)
            lab = torch.cat(all_labels)
            keep = box_ops.batched_nms(boxes[idx], sc, lab, m.nms_thresh)[: m.detections_per_img]
            out.append(Detections(boxes[idx[keep]], sc[keep], lab[keep], idx[keep]))
        return out


# Input side each torchvision SSD was designed for. SSD300's anchor steps (8 ... 300 px) are laid
# out for exactly 300x300 inputs; SSDlite's anchors follow its feature maps, so any size works.
_NATIVE_SIZE = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320}


def build(arch: str, num_classes: int, image_size: int, weights: str | None = None) -> SSD:
    """Registry builder (``registry.ARCHITECTURES``) for torchvision's SSD300-VGG16 and SSDlite320.

    ``num_classes`` counts the background. Without ``weights`` the model is randomly initialised
    (no pretrained backbone either, so nothing is downloaded). ``weights`` names torchvision
    pretrained weights (e.g. ``"DEFAULT"``, ``"COCO_V1"``); they need network on first use and fix
    the class count to theirs (91 COCO labels). ``image_size`` is the square side the model's
    transform resizes every input to; SSD300 only works at 300.
    """
    from torchvision.models import detection as tv_detection

    if arch not in _NATIVE_SIZE:
        raise ValueError(f"ssd.build makes {sorted(_NATIVE_SIZE)}, not {arch!r}")
    if arch == "ssd300_vgg16" and image_size != 300:
        raise ValueError(
            f"ssd300_vgg16's anchors are laid out for 300x300 inputs, but model.image_size is "
            f"{image_size}; set model.image_size: 300"
        )
    builder = getattr(tv_detection, arch)
    if weights is None:
        model = builder(weights=None, weights_backbone=None, num_classes=num_classes)
    else:
        try:
            model = builder(weights=weights, num_classes=num_classes)
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"{arch} pretrained weights {weights!r} cannot be used with {num_classes} classes "
                f"({exc}); name weights torchvision has for {arch} (e.g. 'DEFAULT') and use their "
                "class list (weights.meta['categories']), or unset model.weights to start from "
                "scratch"
            ) from None
    model.transform.fixed_size = (image_size, image_size)
    return model
