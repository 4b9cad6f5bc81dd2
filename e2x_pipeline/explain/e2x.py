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

Options (``explain.options.e2x``):

* ``levels``: how the K weights of a superpixel are drawn. ``permuted_linspace`` (default, the
  original code): a permutation of linspace(0, 1, K). ``permuted_midpoint``: a permutation of the
  midpoints (k + 1/2) / K, the midpoint rule of the path integral. ``sobol``: the K points of a
  scrambled Sobol sequence in M dimensions (Owen scrambling, ``torch.quasirandom.SobolEngine``),
  one dimension per superpixel: every superpixel's levels are stratified as in the permuted
  schemes, and the M-dimensional point set is low-discrepancy, where independent permutations are
  only a Latin hypercube.
* ``share_forward``: the T targets of one image share each sample's forward pass (the samples are
  the same for every target): K forwards and T x K backwards instead of T x K of each. Same values.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from ..detectors.base import Target, TargetOutput
from .base import Attribution, Explainer, path_gradients
from .superpixels import superpixel_aggregate

Levels = Literal["permuted_linspace", "permuted_midpoint", "sobol"]


def permuted_levels(
    n_segments: int, k: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """W ``[K, M]``: column i is a random permutation of linspace(0, 1, K) (one per superpixel)."""
    levels = torch.linspace(0.0, 1.0, k, device=device)
    order = torch.rand(n_segments, k, generator=generator, device=device).argsort(dim=1)
    return levels[order].T.contiguous()


def permuted_midpoints(
    n_segments: int, k: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """W ``[K, M]``: column i is a random permutation of (k + 1/2) / K, k = 0..K-1."""
    levels = (torch.arange(k, device=device, dtype=torch.float32) + 0.5) / k
    order = torch.rand(n_segments, k, generator=generator, device=device).argsort(dim=1)
    return levels[order].T.contiguous()


def sobol_levels(
    n_segments: int, k: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """W ``[K, M]``: the first K points of an Owen-scrambled Sobol sequence in M dimensions.

    The scrambling seed is drawn from ``generator``, so a seeded explainer is deterministic.
    """
    from torch.quasirandom import SobolEngine

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    points = SobolEngine(dimension=n_segments, scramble=True, seed=seed).draw(k)
    return points.to(device=device, dtype=torch.float32)


LEVELS = {
    "permuted_linspace": permuted_levels,
    "permuted_midpoint": permuted_midpoints,
    "sobol": sobol_levels,
}


class E2XOptions(BaseModel):
    """E2X's own settings (``explain.options.e2x``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    levels: Levels = "permuted_linspace"
    share_forward: bool = True


class E2XExplainer(Explainer):
    name = "e2x"
    Options = E2XOptions
    samples_setting = "k"
    needs_gradients = True
    supports_box_maps = True

    def method_params(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "levels": self.options.levels}

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
        weights = LEVELS[self.options.levels](n_segments, k, generator, image.device)
        delta = image - reference

        def inputs(k_idx: Tensor) -> Tensor:
            w = weights[k_idx][:, segments]  # [B, H, W], constant within each superpixel
            return reference + w.unsqueeze(1) * delta

        step = torch.full((k,), 1.0 / k, device=image.device)
        grad, bad, passes = path_gradients(
            self.detector,
            targets,
            output,
            inputs,
            step,
            self.cfg.batch_size,
            share_forward=self.options.share_forward,
        )
        pixel = (delta * grad).sum(dim=1)  # [T, H, W]
        values = superpixel_aggregate(pixel, segments, n_segments, self.cfg.aggregate)
        return Attribution(values, values[:, segments], passes, bad)
