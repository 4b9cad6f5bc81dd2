"""E2X: integrated gradients with per-superpixel sampled weights (Gudovskiy et al. 2018, eq. 5).

For superpixels S_1..S_M of image x and reference x~ (the dataset mean by default), every
superpixel i gets its own random permutation pi_i of the K levels linspace(0, 1, K), so each level
is used exactly once per superpixel. Sample k is

    u_k = x~ + w_k (.) (x - x~),   w_k(p) = levels[pi_i(k)] for every pixel p in S_i,

and the attribution is

    phi_i = agg_{p in S_i}  sum_c (x - x~)_{c,p} * (1/K) sum_k d f(u_k) / d u_{k,c,p}

with agg = sum (default, as the original code) or mean (the paper's s_x). The paper writes eq. 5
with x~ = 0; we keep the (x - x~) factor so the reference can be the dataset mean, as the code did.
f is the candidate's class score from the detector's dense view (no NMS), so the same candidate is
followed in every sample; with ``output`` = x1/y1/x2/y2 it is that candidate's decoded box
coordinate (ODAM / ODSmoothGrad-style box maps).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..detectors.base import Target, TargetOutput
from .base import Attribution, Explainer, path_gradients
from .superpixels import superpixel_aggregate


def permuted_levels(
    n_segments: int, k: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """W ``[K, M]``: column i is a random permutation of linspace(0, 1, K) (one per superpixel)."""
    levels = torch.linspace(0.0, 1.0, k, device=device)
    order = torch.rand(n_segments, k, generator=generator, device=device).argsort(dim=1)
    return levels[order].T.contiguous()


class E2XExplainer(Explainer):
    name = "e2x"
    samples_setting = "k"
    needs_gradients = True
    supports_box_maps = True

    def method_params(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "levels": "permuted_linspace"}

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
        k = self.cfg.k
        weights = permuted_levels(n_segments, k, generator, image.device)
        delta = image - reference

        def inputs(k_idx: Tensor) -> Tensor:
            w = weights[k_idx][:, segments]  # [B, H, W], constant within each superpixel
            return reference + w.unsqueeze(1) * delta

        step = torch.full((k,), 1.0 / k, device=image.device)
        grad, bad, passes = path_gradients(
            self.detector, targets, output, inputs, step, self.cfg.batch_size
        )
        pixel = (delta * grad).sum(dim=1)  # [T, H, W]
        values = superpixel_aggregate(pixel, segments, n_segments, self.cfg.aggregate)
        return Attribution(values, values[:, segments], passes, bad)
