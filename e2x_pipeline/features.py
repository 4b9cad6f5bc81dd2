"""Failing features and region embeddings: what the cluster and repair stages compare.

A *failing feature* is one superpixel of an explained failure whose attribution has the failing
sign and is strong (Gudovskiy et al. 2018 proposed mining these, Fig. 3, but never built it):

* for a false negative, ``s = -1``: the superpixels that pushed the missed object's score DOWN
  (what suppressed the detection);
* for a false positive, ``s = +1``: the superpixels that pushed the false detection's score UP.

Superpixel ``i`` with attribution ``phi_i`` is a failing feature when

    s * phi_i > 0  and  s * phi_i >= fraction * max_j |phi_j|,

keeping at most ``max_per_candidate`` of them, strongest first.

Every region (a failing feature on an explained image, or any superpixel of a pool image) is
embedded the same way, by :class:`RegionEmbedder`: the detector's own backbone feature maps,
mask-pooled over the superpixel, L2-normalised per level and concatenated,

    e_l(R) = sum_u A_l(R)_u f_l[u] / sum_u A_l(R)_u,    e(R) = concat_l e_l(R)/||e_l(R)|| / sqrt(L),

where ``A_l(R)_u`` is the fraction of feature cell ``u`` of level ``l`` covered by region R
(adaptive average pooling of the region's mask). Using the detector's own features means that two
regions are close when the DETECTOR sees them alike, which is what a failure mode is about.
Optionally (``appearance=True``) the CIE-Lab mean and standard deviation of the region's pixels
are appended, with weight ``appearance_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import rgb2lab
from torch import Tensor

from .detectors.base import Detector
from .vocab import failing_sign

FEATURE_COLUMNS = [
    "feature_id",
    "candidate_id",
    "image_id",
    "image_path",
    "outcome",
    "error_type",
    "label",
    "category",
    "segment",
    "value",
    "strength",
    "area",
    "x1",
    "y1",
    "x2",
    "y2",
    "cause",
    "on_cause",
]


def failing_superpixels(
    values: np.ndarray, outcome: str, fraction: float = 0.3, max_per_candidate: int = 3
) -> np.ndarray:
    """Indices of the failing superpixels of one explanation, strongest first (module formula)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return np.zeros(0, dtype=np.int64)
    strength = failing_sign(outcome) * values
    peak = np.abs(values).max()
    if peak <= 0:
        return np.zeros(0, dtype=np.int64)
    keep = np.flatnonzero((strength > 0) & (strength >= fraction * peak))
    order = np.argsort(-strength[keep], kind="stable")
    return keep[order][:max_per_candidate]


def all_segment_boxes(segments: np.ndarray) -> np.ndarray:
    """``[M, 5]``: every segment's pixel box (x1, y1, x2, y2; x2/y2 exclusive) and area, in one
    pass over the pixels (an absent label gets x1 = y1 = inf and area 0)."""
    ys, xs = np.indices(segments.shape)
    flat = segments.ravel()
    n = int(flat.max()) + 1
    out = np.zeros((n, 5), dtype=np.float64)
    out[:, :2] = np.inf
    np.minimum.at(out[:, 0], flat, xs.ravel())
    np.minimum.at(out[:, 1], flat, ys.ravel())
    np.maximum.at(out[:, 2], flat, xs.ravel() + 1)
    np.maximum.at(out[:, 3], flat, ys.ravel() + 1)
    out[:, 4] = np.bincount(flat, minlength=n)
    return out


def segment_boxes(segments: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """``[n, 5]``: the boxes and areas (:func:`all_segment_boxes`) of segments ``ids``."""
    return all_segment_boxes(segments)[np.asarray(ids, dtype=np.int64)]


def region_cover(segments: np.ndarray, ids: Sequence[int], box: Sequence[float]) -> np.ndarray:
    """For each segment, the fraction of its pixels inside the box ``(x, y, w, h)``."""
    x, y, w, h = box
    ys, xs = np.mgrid[: segments.shape[0], : segments.shape[1]]
    inside = (xs + 0.5 >= x) & (xs + 0.5 <= x + w) & (ys + 0.5 >= y) & (ys + 0.5 <= y + h)
    out = np.zeros(len(ids))
    for k, s in enumerate(ids):
        mask = segments == s
        out[k] = inside[mask].mean() if mask.any() else 0.0
    return out


@dataclass
class RegionEmbedder:
    """Embeds superpixel regions with a detector's backbone features (module formula).

    ``levels`` picks which backbone outputs to use (default: all). The backbone runs once per
    batch of images on the detector's device, without gradients.
    """

    detector: Detector
    levels: Sequence[int] | None = None
    appearance: bool = False
    appearance_weight: float = 0.5
    batch_size: int = 64

    @torch.no_grad()
    def _feature_maps(self, images: Tensor) -> list[Tensor]:
        maps = self.detector.feature_maps(images)
        if self.levels is not None:
            maps = [maps[i] for i in self.levels]
        return maps

    def embed(
        self, images: Sequence[Tensor], segments: Sequence[np.ndarray], ids: Sequence[Sequence[int]]
    ) -> list[np.ndarray]:
        """Per image, ``[len(ids[b]), D]`` float32 embeddings of the listed segments."""
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            out += self._embed_batch(list(images[chunk]), list(segments[chunk]), list(ids[chunk]))
        return out

    def _embed_batch(
        self, images: list[Tensor], segments: list[np.ndarray], ids: list[Sequence[int]]
    ) -> list[np.ndarray]:
        per_image = self._per_image_maps(images)
        out = []
        for b, (image, seg, wanted) in enumerate(zip(images, segments, ids, strict=True)):
            wanted = np.asarray(wanted, dtype=np.int64)
            if wanted.size == 0:
                out.append(np.zeros((0, self.dim(per_image[b])), dtype=np.float32))
                continue
            masks = torch.from_numpy(seg[None] == wanted[:, None, None])
            emb_np = self._pool(per_image[b], masks)
            if self.appearance:
                emb_np = np.concatenate([emb_np, self._appearance(image, seg, wanted)], axis=1)
            out.append(emb_np)
        return out

    def _per_image_maps(self, images: list[Tensor]) -> list[list[Tensor]]:
        if len({tuple(im.shape) for im in images}) == 1:
            levels = self._feature_maps(torch.stack(images))
            return [[lv[b : b + 1] for lv in levels] for b in range(len(images))]
        return [self._feature_maps(im.unsqueeze(0)) for im in images]  # one pass per size

    @staticmethod
    def _pool(maps: list[Tensor], masks: Tensor) -> np.ndarray:
        """``[n, D]``: the module formula for the ``[n, H, W]`` region masks of one image."""
        masks = masks.float().to(maps[0].device).unsqueeze(1)  # [n, 1, H, W]
        parts = []
        for fmap in maps:
            h, w = fmap.shape[-2:]
            cover = F.adaptive_avg_pool2d(masks, (h, w)).flatten(1)  # [n, h*w]
            feats = fmap[0].flatten(1)  # [C, h*w]
            e = cover @ feats.T / cover.sum(1, keepdim=True).clamp_min(1e-12)
            parts.append(F.normalize(e, dim=1))
        return (torch.cat(parts, dim=1) / len(parts) ** 0.5).cpu().numpy().astype(np.float32)

    def embed_boxes(
        self, images: Sequence[Tensor], boxes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Per image, ``[len(boxes[b]), D]`` embeddings of its ``[n, 4]`` xyxy pixel boxes.

        The module formula with the box as the region R (a pixel is in the box when its centre
        is), the way FiftyOne Brain's patch similarity embeds a label's patch; no appearance
        part. Boxes may overlap, which one label map of segments could not express.
        """
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start : start + self.batch_size])
            maps = self._per_image_maps(chunk)
            for b, image in enumerate(chunk):
                xyxy = np.asarray(boxes[start + b], dtype=np.float64).reshape(-1, 4)
                h, w = image.shape[-2:]
                ys, xs = np.mgrid[:h, :w] + 0.5
                masks = (
                    (xs >= xyxy[:, 0, None, None])
                    & (xs <= xyxy[:, 2, None, None])
                    & (ys >= xyxy[:, 1, None, None])
                    & (ys <= xyxy[:, 3, None, None])
                )
                if not len(xyxy):
                    out.append(np.zeros((0, sum(int(m.shape[1]) for m in maps[b])), np.float32))
                    continue
                out.append(self._pool(maps[b], torch.from_numpy(masks)))
        return out

    def dim(self, maps: list[Tensor]) -> int:
        return sum(int(m.shape[1]) for m in maps) + (6 if self.appearance else 0)

    def _appearance(self, image: Tensor, seg: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """Lab mean and std per region, scaled to roughly unit range, times the weight."""
        lab = rgb2lab(image.permute(1, 2, 0).cpu().numpy()).reshape(-1, 3)
        flat = seg.reshape(-1)
        scale = np.array([100.0, 128.0, 128.0])
        out = np.zeros((wanted.size, 6), dtype=np.float32)
        for k, s in enumerate(wanted):
            px = lab[flat == s] / scale
            out[k, :3] = px.mean(0)
            out[k, 3:] = px.std(0)
        return out * self.appearance_weight / np.sqrt(2.0)
