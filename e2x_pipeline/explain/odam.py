"""ODAM (Zhao et al., ICLR 2023): gradient-weighted feature maps for one detection.

For a target t (one candidate's class-c score, or one of its box coordinates x1, y1, x2, y2) with
output y_t, and the feature map A (``[C, h, w]``) the detector's head read the candidate from,
ODAM's map (the paper's eq. 2-3) is

    H_t = ReLU( sum_c  dy_t/dA_c  (.)  A_c ),

an element-wise product of the gradient and the activation, summed over channels. The gradient is
NOT pooled over space: Grad-CAM's global average pooling (Selvaraju et al. 2017) gives one weight
per channel, which makes a map class-specific but the same for every instance of the class. Per
location weights keep the map specific to the one detection.

Which map A is depends on the family and is the detector's choice, not this module's
(:meth:`~e2x_pipeline.detectors.base.Detector.feature_targets`): the FPN level the candidate came
from (RetinaNet, FCOS, Faster R-CNN) or the map its anchor sits on (SSD).

From the cell map to the image: H_t is cropped to the cells that cover the image (the transform
may pad a batch) and upsampled bilinearly to the image size, as in the paper. The upsampled map
is divided by the number of pixels per cell, (H * W) / (h * w). Then the sum of the pixel map
over the image equals the sum of H_t over its cells, and a superpixel's ``sum`` aggregate is the
share of that total under the superpixel. Without the division a coarse level (4 x 4 cells)
would count 64 times as much per cell as a fine one.

Before the ReLU, sum_{c,p} dy/dA_{c,p} A_{c,p} is the first-order Taylor term of y against the
zero feature map, so ODAM is "gradient x input" taken at a feature layer. Captum's
``LayerGradientXActivation`` computes the same product; the tests use it as the oracle.

Signs: with ``relu=True`` (the paper's default) the map is non-negative. It shows what supports a
detection, and it has no negative superpixels, so it cannot name what suppressed a missed object.
``relu=False`` keeps the signed map, which the FN clustering can read like E2X's.

Cost: one forward per call, shared by its targets, and one backward per target from the output
to A (the targets of an image are batched in one forward, as the paper's "one backward per
target"). ``passes`` counts one per target.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor
from torch.nn import functional as F

from ..detectors.base import Detector, Target, TargetOutput
from .base import Attribution, Explainer
from .superpixels import superpixel_aggregate


class ODAMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    relu: bool = True
    """The paper's ReLU (non-negative maps). ``False`` keeps the signed map (see the docstring)."""


def odam_cell_maps(
    detector: Detector,
    image: Tensor,
    targets: list[Target],
    output: TargetOutput = "score",
    relu: bool = True,
) -> tuple[list[Tensor], list[int], Tensor]:
    """Per target, H_t on the cells of its feature map that cover the image ``[rows, cols]``.

    Returns the maps, each target's level, and a ``[T]`` bool of targets whose output or gradient
    was not finite. One forward for all targets; one backward per target (``retain_graph``).
    """
    x = image.unsqueeze(0).detach().requires_grad_(True)  # so A is in the graph when weights
    ft = detector.feature_targets(x, targets, output)  # are frozen
    maps: list[Tensor] = []
    bad = torch.zeros(len(targets), dtype=torch.bool, device=image.device)
    for t in range(len(targets)):
        a = ft.features[ft.levels[t]]
        y = ft.outputs[0, t]
        if y.requires_grad:
            (g,) = torch.autograd.grad(y, a, retain_graph=True, allow_unused=True)
        else:
            g = None
        if g is None:  # an output that does not read this map has zero gradient on it
            g = torch.zeros_like(a)
        rows, cols = ft.extents[ft.levels[t]]
        cam = (g[0] * a[0]).sum(dim=0)[:rows, :cols].detach()
        bad[t] = not bool(torch.isfinite(y).item() and torch.isfinite(cam).all().item())
        maps.append(cam.clamp(min=0) if relu else cam)
    return maps, ft.levels, bad


def upsample_cell_map(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling of a ``[h, w]`` cell map to ``size`` pixels, divided by the pixels per
    cell so that the pixel sum equals the cell sum (see the module docstring)."""
    h, w = cam.shape
    up = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return up * (h * w) / (size[0] * size[1])


class ODAMExplainer(Explainer):
    name = "odam"
    Options = ODAMOptions
    needs_gradients = True
    supports_box_maps = True
    uses_reference = False  # gradient x activation is taken against the zero feature map

    def method_params(self) -> dict[str, Any]:
        return {"relu": self.options.relu}

    def attribute(
        self,
        image: Tensor,
        targets: list[Target],
        output: TargetOutput,
        segments: Tensor,
        n_segments: int,
        reference: Tensor,
        generator: torch.Generator,
    ) -> Attribution:
        size = (int(image.shape[1]), int(image.shape[2]))
        cams, levels, bad = odam_cell_maps(self.detector, image, targets, output, self.options.relu)
        pixel = torch.stack([upsample_cell_map(c, size) for c in cams])
        values = superpixel_aggregate(pixel, segments, n_segments, self.cfg.aggregate)
        details = [
            {"level": lv, "cells": [int(c.shape[0]), int(c.shape[1])]}
            for lv, c in zip(levels, cams, strict=True)
        ]
        return Attribution(values, pixel, len(targets), bad.long(), details)
