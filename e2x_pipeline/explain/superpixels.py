"""Superpixels, references and per-superpixel aggregation shared by every explainer.

* :func:`slic_segments` -- SLIC (Achanta et al. 2012) via scikit-image with the E2X settings
  (M=200, compactness 10, sigma 0, RGB in [0, 1]). Labels are renumbered ``0..M-1`` with no gap.
  The original E2X code assumed labels start at 0; scikit-image >= 0.19 starts them at 1, so
  that code silently dropped one superpixel. Here every pixel keeps its superpixel.
* :func:`make_reference` -- the reference x~ every perturbation moves towards: the dataset mean
  image (E2X's choice), zeros, or a Gaussian blur of the image.
* :func:`superpixel_aggregate` -- phi_i = sum (or mean) of a pixel map over superpixel i, computed
  on the map's device with ``index_add_`` / ``bincount``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from skimage.segmentation import slic
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

ReferenceKind = Literal["mean", "zeros", "blur"]
Aggregate = Literal["sum", "mean"]


def _hwc(image: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, Tensor):
        arr = image.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(image, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(f"expected one image [3, H, W] or [H, W, 3], got shape {arr.shape}")
    if arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = np.transpose(arr, (1, 2, 0))
    return np.ascontiguousarray(arr)


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Renumber any integer label image to ``0..M-1`` keeping every distinct label (int32)."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    return inverse.reshape(np.shape(labels)).astype(np.int32)


def slic_segments(
    image: Tensor | np.ndarray, n_segments: int = 200, compactness: float = 10.0
) -> np.ndarray:
    """SLIC superpixels of an image in [0, 1]: ``[H, W]`` int32 labels, contiguous ``0..M-1``.

    M is close to, not exactly, ``n_segments`` (SLIC merges small regions when it enforces
    connectivity); every explanation stores its own M.
    """
    arr = _hwc(image)
    labels = slic(
        arr,
        n_segments=n_segments,
        compactness=compactness,
        sigma=0,
        start_label=0,
        channel_axis=-1,
    )
    return relabel_contiguous(labels)


def check_segments(segments: np.ndarray | Tensor, hw: tuple[int, int]) -> int:
    """Validate caller-given superpixels and return M. Labels must be exactly ``0..M-1``."""
    seg = segments.detach().cpu().numpy() if isinstance(segments, Tensor) else np.asarray(segments)
    if seg.shape != tuple(hw):
        raise ValueError(f"segments have shape {seg.shape} but the image is {tuple(hw)}")
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"segments must be integer labels, got dtype {seg.dtype}")
    present = np.unique(seg)
    m = int(present.size)
    if present[0] != 0 or present[-1] != m - 1:
        raise ValueError(
            f"segment labels must be contiguous 0..M-1 (got {present[0]}..{present[-1]} with {m}"
            " distinct labels); pass them through relabel_contiguous() first"
        )
    return m


def superpixel_aggregate(
    maps: Tensor, segments: Tensor, n_segments: int, how: Aggregate = "sum"
) -> Tensor:
    """phi[t, i] = sum_{p in S_i} maps[t, p], or that sum / |S_i| for ``how="mean"``.

    ``sum`` is what the original E2X code did; ``mean`` is the paper's s_x() in eq. 5 (the average
    over the H_i x W_i pixels of segment i). ``maps`` is ``[T, H, W]``, ``segments`` ``[H, W]``
    long on the same device. Returns ``[T, M]``.
    """
    flat = maps.reshape(maps.shape[0], -1)
    idx = segments.reshape(-1)
    out = torch.zeros(maps.shape[0], n_segments, dtype=maps.dtype, device=maps.device)
    out.index_add_(1, idx, flat)
    if how == "mean":
        counts = torch.bincount(idx, minlength=n_segments).to(maps.dtype)
        out = out / counts
    elif how != "sum":
        raise ValueError(f"aggregate must be 'sum' or 'mean', got {how!r}")
    return out


def segment_areas(segments: Tensor, n_segments: int) -> Tensor:
    """|S_i|: pixel count of every superpixel, ``[M]`` float."""
    return torch.bincount(segments.reshape(-1), minlength=n_segments).float()


def blur_reference(image: Tensor, sigma: float | None = None) -> Tensor:
    """A Gaussian blur of ``image`` with sigma = max(H, W) / 16 px unless given."""
    h, w = image.shape[-2:]
    sigma = float(sigma) if sigma is not None else max(h, w) / 16.0
    radius = min(math.ceil(3 * sigma), (min(h, w) - 1) // 2)
    size = 2 * max(radius, 0) + 1
    if size < 3:
        return image.clone()
    return gaussian_blur(image.unsqueeze(0), [size, size], [sigma, sigma])[0]


def make_reference(
    image: Tensor, kind: ReferenceKind = "mean", mean: Tensor | None = None
) -> tuple[Tensor, str]:
    """The reference image x~ ``[3, H, W]`` on the image's device, and the name it is recorded by.

    ``mean`` is the dataset mean, either an image ``[3, H, W]`` or per channel ``[3]`` /
    ``[3, 1, 1]``. When ``kind == "mean"`` and no dataset mean is given, the image's own channel
    mean is used instead and the name says so (``"image_channel_mean"``), with a warning.
    """
    if kind == "zeros":
        return torch.zeros_like(image), "zeros"
    if kind == "blur":
        return blur_reference(image), "blur"
    if kind != "mean":
        raise ValueError(f"reference must be mean, zeros or blur, got {kind!r}")
    if mean is None:
        warnings.warn(
            "explain.reference is 'mean' but no dataset mean was given; using the image's own "
            "channel mean (recorded as reference='image_channel_mean'); pass "
            "mean=dataset_mean(...)",
            stacklevel=3,
        )
        ref = image.mean(dim=(1, 2), keepdim=True).expand_as(image).clone()
        return ref, "image_channel_mean"
    m = mean.to(image.device, image.dtype)
    if m.dim() == 1:
        m = m.view(-1, 1, 1)
    if m.shape[0] != image.shape[0] or m.dim() != 3:
        raise ValueError(
            f"dataset mean of shape {tuple(mean.shape)} cannot serve {tuple(image.shape)}"
        )
    if m.shape[1:] != image.shape[1:]:
        if m.shape[1:] != (1, 1):
            raise ValueError(
                f"dataset mean image is {tuple(m.shape[1:])} but this image is "
                f"{tuple(image.shape[1:])}; use a per-channel mean [3] for mixed sizes"
            )
        m = m.expand_as(image)
    return m.clone(), "mean"


def dataset_mean(images: Iterable[Tensor | str | Path], max_images: int | None = None) -> Tensor:
    """Mean image ``[3, H, W]`` over ``images`` (tensors or paths); per channel ``[3, 1, 1]``
    when their sizes differ. This is E2X's reference (the training-set mean)."""
    from ..data.coco import load_image

    total: Tensor | None = None
    chan = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    n = 0
    same_size = True
    for item in images:
        img = item if isinstance(item, Tensor) else load_image(item)
        img = img.to(torch.float64)
        chan += img.sum(dim=(1, 2))
        pixels += img.shape[1] * img.shape[2]
        if same_size:
            if total is None:
                total = img.clone()
            elif total.shape == img.shape:
                total += img
            else:
                same_size = False
        n += 1
        if max_images is not None and n >= max_images:
            break
    if n == 0:
        raise ValueError("dataset_mean got no images; give the training split's images")
    if same_size and total is not None:
        return (total / n).float()
    return (chan / pixels).float().view(3, 1, 1)
