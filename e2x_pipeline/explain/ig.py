"""Per-pixel integrated gradients (Sundararajan et al. 2017; E2X paper eq. 4) as a baseline.

    phi_p = sum_c (x - x~)_{c,p} * sum_k c_k * d f(x~ + a_k (x - x~)) / d x_{c,p}

from the same reference x~ as E2X. The quadrature (nodes a_k, weights c_k) is ``scheme``:

* ``trapezoid`` (default): a_k = linspace(0, 1, K), the nodes of E2X's original IG code, with the
  trapezoid weights 1/(K-1) (halved at both ends), which sum to 1 so completeness
  sum_p phi_p = f(x) - f(x~) holds up to the quadrature error;
* ``paper``: the same nodes with equal weights 1/K (the original code's mean over steps);
* ``left``, ``right``, ``middle``, ``gausslegendre``: exactly Captum's ``riemann_left`` etc.
  Captum's ``riemann_trapezoid`` uses weights 1/K (halved at the ends), i.e. our ``trapezoid``
  times (K-1)/K.

The pixel map is the channel-summed attribution; superpixel values aggregate it like E2X.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from ..detectors.base import Target, TargetOutput
from .base import Attribution, Explainer, path_gradients
from .superpixels import superpixel_aggregate

Scheme = Literal["trapezoid", "paper", "left", "right", "middle", "gausslegendre"]


def quadrature(k: int, scheme: Scheme) -> tuple[np.ndarray, np.ndarray]:
    """Nodes a_k in [0, 1] and weights c_k of the path integral (see the module docstring)."""
    if scheme == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(k)
        return 0.5 * (1 + x), 0.5 * w
    if k < 2 and scheme != "paper":
        raise ValueError(f"IG scheme {scheme} needs K >= 2 steps, got {k}")
    if scheme in ("trapezoid", "paper"):
        nodes = np.linspace(0.0, 1.0, k)
        if scheme == "paper":
            return nodes, np.full(k, 1.0 / k)
        weights = np.full(k, 1.0 / (k - 1))
        weights[[0, -1]] /= 2
        return nodes, weights
    if scheme == "left":
        return np.linspace(0.0, 1 - 1 / k, k), np.full(k, 1.0 / k)
    if scheme == "right":
        return np.linspace(1 / k, 1.0, k), np.full(k, 1.0 / k)
    if scheme == "middle":
        return np.linspace(1 / (2 * k), 1 - 1 / (2 * k), k), np.full(k, 1.0 / k)
    raise ValueError(f"unknown IG scheme {scheme!r}")


class IGOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Scheme = "trapezoid"
    """The quadrature of the path integral (nodes a_k, weights c_k)."""


class IGExplainer(Explainer):
    name = "ig"
    samples_setting = "k"
    Options = IGOptions
    needs_gradients = True
    supports_box_maps = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scheme = self.options.scheme
        quadrature(self.cfg.k, self.scheme)  # fail early on a bad (K, scheme)

    def method_params(self) -> dict[str, Any]:
        return {"k": self.cfg.k, "scheme": self.scheme}

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
        nodes, weights = quadrature(self.cfg.k, self.scheme)
        alphas = torch.as_tensor(nodes, dtype=torch.float32, device=image.device)
        step = torch.as_tensor(weights, dtype=torch.float32, device=image.device)
        delta = image - reference

        def inputs(k_idx: Tensor) -> Tensor:
            return reference + alphas[k_idx].view(-1, 1, 1, 1) * delta

        grad, bad, passes = path_gradients(
            self.detector, targets, output, inputs, step, self.cfg.batch_size, share_forward=True
        )
        pixel = (delta * grad).sum(dim=1)
        values = superpixel_aggregate(pixel, segments, n_segments, self.cfg.aggregate)
        return Attribution(values, pixel, passes, bad)
