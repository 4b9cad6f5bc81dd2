"""Box geometry: the COCO ``[x, y, width, height]`` to ``xyxy`` conversion, pairwise IoU with
COCO's crowd rule (numpy), and the broadcast IoU the explainers and detectors use to follow a
box across perturbed inputs (torch, differentiable). Boxes are ``xyxy`` in image pixels unless
named ``xywh``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def xywh_to_xyxy(bbox: Sequence[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` -> ``[x1, y1, x2, y2] = [x, y, x + w, y + h]``."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def pairwise_iou(a: np.ndarray, b: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of boxes ``a`` [N,4] and ``b`` [M,4] (xyxy): |a∩b| / |a∪b|.

    Where ``crowd[j]`` is set the denominator is |a| (COCO's crowd IoU, pycocotools
    ``maskUtils.iou`` with ``iscrowd``), so a detection inside a crowd region overlaps it fully.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area_a = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None]
    area_b = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None, :]
    union = area_a + area_b - inter
    if crowd is not None and len(b):
        union = np.where(np.asarray(crowd, dtype=bool)[None, :], area_a, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def broadcast_iou(a: Tensor, b: Tensor, eps: float = 1e-9) -> Tensor:
    """IoU of ``a[..., 4]`` with ``b[..., 4]`` (xyxy) under broadcasting: |a∩b| / |a∪b|.

    Differentiable in both. The union is floored at ``eps`` so zero-area padding boxes give 0,
    not NaN; a non-finite box gives NaN, which matches nothing.
    """
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=eps)
