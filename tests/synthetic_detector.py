"""Synthetic detectors with known answers, for the explainer tests.

* :class:`LinearSuperpixelDetector` -- candidate a's score for class c is
  ``bias + sum_i coef[a, c, i] * mean of superpixel i`` (mean over its pixels and channels), and
  its box coordinates move linearly with the same features. For such a model the exact Shapley
  value of superpixel i (and LIME's regression coefficient) is ``coef[a, c, i] * (mean_i(x) -
  mean_i(ref))``. Classes listed in ``nan_labels`` output NaN. Its one feature map (for ODAM) is
  the channel mean A_p = mean_c x_{c,p}; since the score is linear in A with weight
  ``coef[a, c, seg(p)] / |seg(p)|``, ODAM's map before the ReLU is that weight times A_p, and
  its sum over superpixel i is ``coef[a, c, i] * mean_i(x)``.
* :class:`SmoothConvDetector` -- a small smooth (tanh / sigmoid) convolutional "detector" with
  fixed candidate regions, for IG completeness, batching and the Captum oracle. Its feature map
  (for ODAM) is the output of its convolutions, read by every candidate.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from e2x_pipeline.detectors.base import DenseOutput, Detections, Detector, FeatureDense

# The toy scene the explainer tests share: a 48 px image and five candidate boxes with labels.
SIZE = 48
BOXES = torch.tensor(
    [[4, 4, 20, 20], [10, 6, 34, 30], [24, 24, 44, 44], [2, 28, 18, 46], [8, 8, 40, 40]],
    dtype=torch.float32,
)
LABELS = [1, 2, 0, 1, 2]


def make_image(size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """Smooth random colour blobs in [0.2, 0.9] plus fine texture (SLIC has edges to follow)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 6, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")[0]
    img = 0.2 + 0.6 * img + 0.1 * torch.rand(3, size, size, generator=g)
    return img.clamp(0, 1)


class LinearSuperpixelDetector(Detector):
    family = "synthetic_linear"

    def __init__(
        self,
        segments: np.ndarray,
        coef: Tensor,
        boxes: Tensor,
        box_coef: Tensor | None = None,
        bias: float = 0.1,
        nan_labels: tuple[int, ...] = (),
    ) -> None:
        n_cand, n_cls, m = coef.shape
        super().__init__(nn.Identity(), [f"c{i}" for i in range(n_cls)], "cpu")
        seg = torch.as_tensor(segments, dtype=torch.long).flatten()
        if int(seg.max()) + 1 != m:
            raise ValueError("coef must have one column per superpixel")
        onehot = torch.nn.functional.one_hot(seg, m).float()
        self.avg = onehot / onehot.sum(0, keepdim=True)  # [HW, M]
        self.coef = coef.float()
        self.base_boxes = boxes.float()
        self.box_coef = box_coef.float() if box_coef is not None else torch.zeros(n_cand, 4, m)
        self.bias = bias
        self.nan_labels = tuple(nan_labels)

    def features(self, images: Tensor) -> Tensor:
        """Superpixel means ``[B, M]``."""
        return images.mean(1).flatten(1) @ self.avg

    def dense(self, images: Tensor) -> DenseOutput:
        return self.dense_with_features(images).dense

    def dense_with_features(self, images: Tensor) -> FeatureDense:
        images = self._batch(images)
        a = images.mean(1, keepdim=True)  # [B, 1, H, W], the one feature map
        f = a.flatten(1) @ self.avg
        scores = self.bias + torch.einsum("bm,acm->bac", f, self.coef)
        if self.nan_labels:
            bad = torch.zeros(scores.shape[-1], dtype=torch.bool)
            bad[list(self.nan_labels)] = True
            scores = torch.where(bad, torch.full_like(scores, float("nan")), scores)
        boxes = self.base_boxes + torch.einsum("bm,akm->bak", f, self.box_coef)
        probs = torch.softmax(torch.nan_to_num(scores), dim=-1)
        dense = DenseOutput(boxes=boxes, scores=scores, probs=probs)
        return FeatureDense(dense, [a], [boxes.shape[1]], [tuple(a.shape[-2:])])

    @torch.no_grad()
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        d = self.dense(self._batch(images))
        out = []
        for boxes, scores in zip(d.boxes, d.scores, strict=True):
            s, lab = scores.max(-1)
            keep = torch.nonzero(s > score_threshold).squeeze(1)
            out.append(Detections(boxes[keep], s[keep], lab[keep], keep))
        return out


class SmoothConvDetector(Detector):
    """Candidate a's class-c score is sigmoid(<w_c, pooled tanh features over region a> + b_c)."""

    family = "synthetic_smooth"
    has_objectness = True

    def __init__(self, boxes: Tensor, n_classes: int = 3, size: int = 48, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 6, 5, padding=2), nn.Tanh(), nn.Conv2d(6, 8, 3, padding=1), nn.Tanh()
        )
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.6)
        super().__init__(model, [f"c{i}" for i in range(n_classes)], "cpu")
        self.boxes = boxes.float()
        ys = torch.arange(size).view(-1, 1) + 0.5
        xs = torch.arange(size).view(1, -1) + 0.5
        regions = []
        for x1, y1, x2, y2 in self.boxes.tolist():
            r = ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).float()
            regions.append(r / r.sum())
        self.regions = torch.stack(regions)  # [A, H, W]
        self.w = torch.randn(n_classes, 8, generator=g) * 2.0
        self.b = torch.randn(n_classes, generator=g) * 0.3
        self.wbox = torch.randn(4, 8, generator=g)

    def dense(self, images: Tensor) -> DenseOutput:
        return self.dense_with_features(images).dense

    def dense_with_features(self, images: Tensor) -> FeatureDense:
        images = self._batch(images)
        feat = self.model(images)  # [B, 8, H, W]
        pooled = torch.einsum("bfhw,ahw->baf", feat, self.regions)
        logits = pooled @ self.w.T + self.b
        scores = torch.sigmoid(logits)
        boxes = self.boxes + 2.0 * torch.tanh(pooled @ self.wbox.T)
        objectness = torch.sigmoid(pooled.sum(-1))
        dense = DenseOutput(
            boxes=boxes, scores=scores, probs=torch.softmax(logits, -1), objectness=objectness
        )
        return FeatureDense(dense, [feat], [boxes.shape[1]], [tuple(feat.shape[-2:])])

    @torch.no_grad()
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        d = self.dense(self._batch(images))
        out = []
        for boxes, scores in zip(d.boxes, d.scores, strict=True):
            s, lab = scores.max(-1)
            keep = torch.nonzero(s > score_threshold).squeeze(1)
            out.append(Detections(boxes[keep], s[keep], lab[keep], keep))
        return out
