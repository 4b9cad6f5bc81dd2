"""What the per-level one-stage families (RetinaNet, FCOS) share: the dense view over the
concatenated FPN levels and torchvision's per-level postprocess (top-k per level, then NMS), so
that a detection's candidate index is its anchor's index in the dense view."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import boxes as box_ops

from .base import DenseOutput, Detections, Detector, FeatureDense, covering_extents


@dataclass
class LevelledDense:
    """A dense view plus what per-level post-processing needs.

    ``model_boxes`` are the same boxes as ``dense.boxes`` but in the model's resized frame, where
    torchvision runs NMS; ``level_sizes`` is the number of candidates per FPN level.
    """

    dense: DenseOutput
    model_boxes: Tensor  # [B, A, 4]
    level_sizes: list[int]
    features: list[Tensor] | None = None  # the FPN maps the head read, finest first
    extents: list[tuple[int, int]] | None = None  # rows, cols of each map covering the image


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


@dataclass
class HeadLevels:
    """What the transform, backbone, head and anchor generator of a one-stage FPN detector
    produce for a batch. ``level_sizes`` counts candidates per level exactly as torchvision's
    ``forward`` recovers them; ``extents`` are the rows, cols of each map covering the image."""

    head: dict[str, Tensor]
    anchors: list[Tensor]
    image_sizes: list[tuple[int, int]]
    level_sizes: list[int]
    features: list[Tensor]
    extents: list[tuple[int, int]]


def head_levels(model: nn.Module, images: Tensor) -> HeadLevels:
    """Transform, backbone, head and anchors of a torchvision one-stage FPN detector."""
    image_list, _ = model.transform(list(images))
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    features = list(features.values())
    head = model.head(features)
    anchors = model.anchor_generator(image_list, features)
    hw = [f.size(2) * f.size(3) for f in features]
    per_location = head["cls_logits"].size(1) // sum(hw)
    extents = covering_extents(
        features, tuple(image_list.tensors.shape[-2:]), tuple(image_list.image_sizes[0])
    )
    return HeadLevels(
        head,
        anchors,
        image_list.image_sizes,
        [n * per_location for n in hw],
        features,
        extents,
    )


class PerLevelDetector(Detector):
    """Shared ``dense``/``detect`` of the families whose torchvision post-processing runs per FPN
    level (RetinaNet, FCOS); subclasses provide ``_levelled``."""

    def _levelled(self, images: Tensor) -> LevelledDense:
        raise NotImplementedError

    def dense(self, images: Tensor) -> DenseOutput:
        """Every candidate's scores, probabilities and decoded, clipped box in input pixels."""
        return self._levelled(images).dense

    def dense_with_features(self, images: Tensor) -> FeatureDense:
        """The dense view and the FPN maps the head read (see the module docstring)."""
        lv = self._levelled(images)
        assert lv.features is not None and lv.extents is not None
        return FeatureDense(lv.dense, lv.features, lv.level_sizes, lv.extents)

    @torch.no_grad()
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        """torchvision's per-level ``postprocess_detections`` (RetinaNet, FCOS), keeping each
        detection's candidate (anchor or location) index."""
        return self._postprocess(self._levelled(self._batch(images)), score_threshold)

    @torch.no_grad()
    def detect_with_dense(
        self, images: Tensor, score_threshold: float
    ) -> tuple[list[Detections], DenseOutput | None]:
        """:meth:`detect` and :meth:`dense` from one forward pass."""
        lv = self._levelled(self._batch(images))
        return self._postprocess(lv, score_threshold), lv.dense

    def _postprocess(self, lv: LevelledDense, score_threshold: float) -> list[Detections]:
        m = self.model
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
