"""Superpixel LIME (Ribeiro et al. 2016) as the E2X paper ran it for its comparison.

K binary vectors z in {0,1}^M are drawn Bernoulli(0.5), the first one all on. Sample k shows the
image where z_k,i = 1 and the reference (+ N(0, sigma), sigma = 12.8/255 as in the E2X code;
``noise=0`` turns it off; clamped to [0, 1]) on the switched-off superpixels. With the cosine
distance d_k = 1 - cos(z_k, 1) to the all-on vector and the kernel
pi_k = sqrt(exp(-d_k^2 / 0.25^2)), the values solve the weighted ridge regression (eq. 2)

    phi = argmin sum_k pi_k (f(z_k) - phi_0 - phi . z_k)^2 + ||phi||^2     (Ridge(alpha=1)).

All M superpixels enter the regression (no LIME feature selection). phi_i is the contribution of
the whole superpixel i, the scale of E2X's ``sum`` values; with ``aggregate="mean"`` it is divided
by the superpixel's area. The K masked images are shared by all targets of the image: one batched
forward set, one regression per target (scikit-learn, on the host).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from sklearn.linear_model import Ridge
from torch import Tensor

from ..detectors.base import Target, TargetOutput
from .base import Attribution, Explainer
from .superpixels import segment_areas

E2X_LIME_NOISE = 12.8 / 255.0


def lime_kernel(z: np.ndarray, width: float = 0.25) -> np.ndarray:
    """pi = sqrt(exp(-d^2 / width^2)) with d the cosine distance of each row of z to all-ones.

    cos(z, 1) = |z| / sqrt(|z| M) = sqrt(|z| / M); an all-off row has distance 1 (as sklearn's
    cosine_distances gives for a zero vector).
    """
    d = 1.0 - np.sqrt(z.sum(axis=1) / z.shape[1])
    return np.sqrt(np.exp(-(d**2) / width**2))


class LimeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    noise: float = Field(E2X_LIME_NOISE, ge=0)
    """Std of the Gaussian noise painted into switched-off superpixels (the E2X code's 12.8/255)."""
    kernel_width: float = Field(0.25, gt=0)
    alpha: float = Field(1.0, ge=0)
    """Ridge regularisation of the surrogate."""


class LimeExplainer(Explainer):
    name = "lime"
    samples_setting = "lime_samples"
    Options = LimeOptions
    shares_targets = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noise = float(self.options.noise)
        self.kernel_width = float(self.options.kernel_width)
        self.alpha = float(self.options.alpha)

    def method_params(self) -> dict[str, Any]:
        return {
            "samples": self.cfg.lime_samples,
            "noise": round(self.noise, 8),
            "kernel_width": self.kernel_width,
            "ridge_alpha": self.alpha,
        }

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
        k, dev = self.cfg.lime_samples, image.device
        z = torch.rand(k, n_segments, generator=generator, device=dev) < 0.5
        z[0] = True
        outs = []
        with torch.no_grad():
            for i0 in range(0, k, self.cfg.batch_size):
                zc = z[i0 : i0 + self.cfg.batch_size]
                on = zc[:, segments].unsqueeze(1)  # [B, 1, H, W]
                off = reference.expand(zc.shape[0], *image.shape)
                if self.noise > 0:
                    eps = torch.randn(off.shape, generator=generator, device=dev)
                    off = (off + self.noise * eps).clamp(0.0, 1.0)
                masked = torch.where(on, image, off)
                outs.append(self.detector.target_outputs(masked, targets, output).float())
        y = torch.cat(outs).to("cpu", torch.float64).numpy()  # [K, T], one host transfer
        zf = z.to("cpu").numpy().astype(np.float64)
        weights = lime_kernel(zf, self.kernel_width)
        bad = (~np.isfinite(y)).sum(axis=0)
        values = np.full((len(targets), n_segments), np.nan)
        for t in range(len(targets)):
            if bad[t]:
                continue
            model = Ridge(alpha=self.alpha, fit_intercept=True)
            model.fit(zf, y[:, t], sample_weight=weights)
            values[t] = model.coef_
        vals = torch.as_tensor(values, dtype=torch.float32, device=dev)
        if self.cfg.aggregate == "mean":
            vals = vals / segment_areas(segments, n_segments)
        return Attribution(vals, vals[:, segments], k, torch.as_tensor(bad, device=dev))
