"""Adapter for torchvision's ``SSD`` class: the compact SSD, SSD300-VGG16 and SSDlite320.

SSD scores a candidate (prior box / anchor) ``a`` for class ``c`` with a softmax over classes,
``s[a, c] = softmax(cls_logits[a])[c]``, and decodes its box from the anchor with
``BoxCoder(weights=(10, 10, 5, 5))``. The candidate index is the anchor index, exactly the
prior-box index E2X's patched Caffe SSD reported (Gudovskiy et al. 2018, Sec. 4).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor
from torchvision.models.detection import SSD
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import boxes as box_ops

from .base import DenseOutput, Detections, Detector


class SSDDetector(Detector):
    family = "ssd"

    def __init__(self, model: SSD, classes: list[str], device: str | torch.device = "cpu"):
        if not isinstance(model, SSD):
            raise TypeError(f"SSDDetector wraps torchvision SSD models, got {type(model).__name__}")
        super().__init__(model, classes, device)

    def dense(self, images: Tensor) -> DenseOutput:
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
        return DenseOutput(boxes=torch.stack(boxes), scores=probs, probs=probs)

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
