"""Overlay images of explanations in the E2X paper's colours.

The map is divided by max |value| to [-1, 1]; positive values are painted red, negative blue, with
opacity growing with |value| so that 0 is transparent (paper, Fig. 1 and 4).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from ..io_utils import atomic_write


def normalise_signed(pixel_map: np.ndarray) -> np.ndarray:
    """m / max|m| in [-1, 1]; an all-zero (or all-NaN) map stays 0. NaN becomes 0."""
    m = np.nan_to_num(np.asarray(pixel_map, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = np.abs(m).max() if m.size else 0.0
    return m / peak if peak > 0 else np.zeros_like(m)


def render_overlay(
    image: Tensor | np.ndarray,
    pixel_map: np.ndarray | Tensor,
    path: str | Path | None = None,
    *,
    max_alpha: float = 0.75,
    segments: np.ndarray | None = None,
) -> np.ndarray:
    """Composite a signed map on the image; returns ``[H, W, 3]`` uint8 and writes a PNG if asked.

    ``image`` is ``[3, H, W]`` (tensor or array) in [0, 1] or ``[H, W, 3]`` uint8. Each pixel gets
    ``(1 - a) * image + a * colour`` with colour red (+) or blue (-) and a = max_alpha * |m|.
    ``segments`` draws superpixel boundaries in grey.
    """
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = np.transpose(img, (1, 2, 0))
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    if isinstance(pixel_map, Tensor):
        pixel_map = pixel_map.detach().cpu().numpy()
    m = normalise_signed(pixel_map)
    if m.shape != img.shape[:2]:
        raise ValueError(f"map {m.shape} and image {img.shape[:2]} differ in size")
    colour = np.zeros_like(img)
    colour[..., 0] = m > 0
    colour[..., 2] = m < 0
    a = (max_alpha * np.abs(m))[..., None]
    out = (1 - a) * img + a * colour
    if segments is not None:
        from skimage.segmentation import find_boundaries

        edge = find_boundaries(segments, mode="inner")
        out[edge] = 0.5 * out[edge] + 0.25
    rgb = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
    if path is not None:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        with atomic_write(path, "wb") as fh:
            fh.write(buf.getvalue())
    return rgb
