"""Prediction difference analysis (Zintgraf et al. 2017) as the E2X paper compared it.

For a target with box area a on an H x W image the window is

    w = stride = max(1, round(sqrt(H W) / 6 * sqrt(a / (H W))))

(the E2X comparison's adaptive window; no box means the whole image). The window is moved over the
image with that stride. At each position the window's pixels are replaced by ``n_samples`` draws
from the conditional Gaussian of the window given its surrounding ring of ``padding`` pixels,
fitted per colour channel on up to 20,000 (w+2p) x (w+2p) patches of this image (Zintgraf's
conditional sampler fits one Gaussian over all channels on a dataset; fitting on the image itself
and per channel keeps the covariance small enough to solve on the device). Samples are clamped to
[0, 1]. The relevance of a position is

    r = f(x) - (1/n) sum_j f(x with the window replaced by sample j)

(the E2X variant: a probability difference, not Zintgraf's weight of evidence). r is placed at the
window centres and linearly interpolated (separably, edge values held) to every pixel. With stride
1 and window 1 this is exact per pixel; Zintgraf's stride-1 averaging over overlapping windows is
not reproduced. When (w + 2p)^2 exceeds ``max_cond_dim`` the sampler falls back to the marginal:
independent pixels from the image's per-channel mean and standard deviation; ``details`` records
which sampler served each target.

Targets with the same window share one batched set of perturbed images (their random stream is
seeded by (seed, window), so it does not depend on which other targets are explained).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ..detectors.base import Target, TargetOutput
from .base import Attribution, Explainer
from .superpixels import superpixel_aggregate


def pda_window(box: tuple[float, float, float, float] | None, h: int, w: int) -> int:
    """w = max(1, round(sqrt(HW)/6 * sqrt(box area / HW))), at most min(H, W)."""
    area = float(h * w)
    if box is not None:
        x1, y1, x2, y2 = box
        bw = min(max(x2, 0.0), w) - min(max(x1, 0.0), w)
        bh = min(max(y2, 0.0), h) - min(max(y1, 0.0), h)
        area = max(bw, 0.0) * max(bh, 0.0)
    win = round(math.sqrt(h * w) / 6.0 * math.sqrt(area / (h * w)))
    return int(min(max(1, win), h, w))


def window_positions(size: int, win: int, stride: int) -> np.ndarray:
    """Top-left offsets covering ``size`` pixels; the last one is moved in to end at the edge."""
    pos = list(range(0, size - win + 1, stride))
    if pos[-1] != size - win:
        pos.append(size - win)
    return np.asarray(pos)


def interpolation_matrix(size: int, centres: np.ndarray) -> np.ndarray:
    """R ``[size, n]``: linear interpolation from values at ``centres`` to every pixel index."""
    eye = np.eye(len(centres))
    px = np.arange(size, dtype=np.float64)
    return np.stack([np.interp(px, centres, eye[j]) for j in range(len(centres))], axis=1)


class PDAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_samples: int = Field(10, ge=1)
    """Conditional samples per window position."""
    padding: int = Field(1, ge=0)
    """Width of the ring the window is conditioned on."""
    max_patches: int = Field(20000, ge=2)
    stride: int | None = Field(None, ge=1)
    """Window stride (default: the window size)."""
    max_cond_dim: int = Field(1600, ge=1)


class PDAExplainer(Explainer):
    name = "pda"
    samples_setting = "options.n_samples"
    Options = PDAOptions
    shares_targets = True
    uses_reference = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        o = self.options
        self.n_samples, self.padding, self.max_patches = o.n_samples, o.padding, o.max_patches
        self.stride, self.max_cond_dim = o.stride, o.max_cond_dim

    def method_params(self) -> dict[str, Any]:
        return {
            "samples": self.n_samples,
            "padding": self.padding,
            "max_patches": self.max_patches,
            "stride": self.stride if self.stride is not None else "window",
            "max_cond_dim": self.max_cond_dim,
        }

    def _sampler(
        self, image: Tensor, win: int, ys: Tensor, xs: Tensor, gen: torch.Generator
    ) -> tuple[Tensor, Tensor, str]:
        """Conditional means ``[P, 3, w*w]`` per position and a factor L ``[3, w*w, w*w]``
        of the conditional covariance (shared by positions)."""
        dev = image.device
        pad = self.padding
        side = win + 2 * pad
        if pad == 0 or side * side > self.max_cond_dim:
            mu = image.mean(dim=(1, 2))
            sd = image.std(dim=(1, 2))
            cond = mu.view(1, 3, 1).expand(len(ys), 3, win * win)
            chol = torch.diag_embed(sd.view(3, 1).expand(3, win * win))
            return cond, chol, "marginal"
        xp = F.pad(image.unsqueeze(0), (pad, pad, pad, pad), mode="replicate")[0]
        hp, wp = xp.shape[1:]
        n_all = (hp - side + 1) * (wp - side + 1)
        pick = torch.randperm(n_all, generator=gen, device=dev)[: self.max_patches]
        offs = torch.arange(side, device=dev)

        def patches(py: Tensor, px: Tensor) -> Tensor:  # -> [n, 3, side*side]
            r = (py.view(-1, 1) + offs).view(-1, side, 1)
            c = (px.view(-1, 1) + offs).view(-1, 1, side)
            return xp[:, r, c].permute(1, 0, 2, 3).reshape(len(py), 3, side * side)

        s1 = torch.zeros(3, side * side, dtype=torch.float64, device=dev)
        s2 = torch.zeros(3, side * side, side * side, dtype=torch.float64, device=dev)
        for i0 in range(0, pick.numel(), 2048):
            p = pick[i0 : i0 + 2048]
            x = patches(p // (wp - side + 1), p % (wp - side + 1)).double()
            s1 += x.sum(0)
            s2 += torch.einsum("nci,ncj->cij", x, x)
        m = pick.numel()
        mu = s1 / m
        cov = (s2 - m * mu.unsqueeze(2) * mu.unsqueeze(1)) / max(m - 1, 1)
        grid = torch.zeros(side, side, dtype=torch.bool, device=dev)
        grid[pad : pad + win, pad : pad + win] = True
        inner = grid.flatten().nonzero().squeeze(1)
        outer = (~grid.flatten()).nonzero().squeeze(1)
        # A little ridge keeps flat image regions (singular covariance) solvable.
        eye_o = torch.eye(outer.numel(), dtype=cov.dtype, device=dev)
        jitter = 1e-4 * cov.diagonal(dim1=1, dim2=2).mean(1).view(3, 1, 1) + 1e-8
        s_oo = cov[:, outer][:, :, outer] + jitter * eye_o
        s_io = cov[:, inner][:, :, outer]
        s_ii = cov[:, inner][:, :, inner]
        gain = torch.linalg.solve(s_oo, s_io.transpose(1, 2)).transpose(1, 2)  # [3, in, out]
        cond_cov = s_ii - gain @ s_io.transpose(1, 2)
        cond_cov = 0.5 * (cond_cov + cond_cov.transpose(1, 2))
        eye_i = torch.eye(inner.numel(), dtype=cov.dtype, device=dev)
        chol, info = torch.linalg.cholesky_ex(cond_cov + jitter * eye_i)
        if bool((info != 0).any()):
            evals, evecs = torch.linalg.eigh(cond_cov)
            chol = evecs * evals.clamp(min=0).sqrt().unsqueeze(1)
        ring = patches(ys, xs).double()[:, :, outer]  # window at (y, x) has its ring there in xp
        cond = mu[:, inner] + torch.einsum("cio,pco->pci", gain, ring - mu[:, outer])
        return cond.float(), chol.float(), "conditional"

    def _window_relevance(
        self,
        image: Tensor,
        targets: list[Target],
        output: TargetOutput,
        win: int,
        f_clean: Tensor,
    ) -> tuple[Tensor, Tensor, int, str]:
        """Relevance maps ``[T, H, W]`` of targets sharing window ``win``."""
        dev = image.device
        h, w = int(image.shape[1]), int(image.shape[2])
        gen = torch.Generator(device=dev).manual_seed((self.seed * 1_000_003 + win) % 2**63)
        stride = self.stride if self.stride is not None else win
        ys_np, xs_np = window_positions(h, win, stride), window_positions(w, win, stride)
        gy, gx = np.meshgrid(ys_np, xs_np, indexing="ij")
        ys = torch.as_tensor(gy.ravel(), device=dev)
        xs = torch.as_tensor(gx.ravel(), device=dev)
        n_pos = ys.numel()
        cond, chol, sampler = self._sampler(image, win, ys, xs, gen)
        total = n_pos * self.n_samples
        psum = torch.zeros(n_pos, len(targets), dtype=torch.float64, device=dev)  # exact mean
        bad = torch.zeros(len(targets), dtype=torch.long, device=dev)
        offs = torch.arange(win, device=dev)
        hwc = image.permute(1, 2, 0)
        with torch.no_grad():
            for i0 in range(0, total, self.cfg.batch_size):
                idx = torch.arange(i0, min(total, i0 + self.cfg.batch_size), device=dev)
                pos = idx // self.n_samples
                eps = torch.randn(idx.numel(), 3, win * win, generator=gen, device=dev)
                sample = cond[pos] + torch.einsum("cij,bcj->bci", chol, eps)
                sample = sample.clamp(0.0, 1.0).view(-1, 3, win, win).permute(0, 2, 3, 1)
                imgs = hwc.unsqueeze(0).repeat(idx.numel(), 1, 1, 1)
                r = (ys[pos].view(-1, 1) + offs).view(-1, win, 1)
                c = (xs[pos].view(-1, 1) + offs).view(-1, 1, win)
                b = torch.arange(idx.numel(), device=dev).view(-1, 1, 1)
                imgs[b, r, c] = sample
                out = self.detector.target_outputs(imgs.permute(0, 3, 1, 2), targets, output)
                finite = torch.isfinite(out)
                bad += (~finite).long().sum(0)
                psum.index_add_(0, pos, torch.where(finite, out, torch.zeros_like(out)).double())
        rel = (f_clean.double().view(1, -1) - psum / self.n_samples).float()  # [n_pos, T]
        grid = rel.T.reshape(len(targets), len(ys_np), len(xs_np))
        ry = torch.as_tensor(
            interpolation_matrix(h, ys_np + (win - 1) / 2), dtype=torch.float32, device=dev
        )
        rx = torch.as_tensor(
            interpolation_matrix(w, xs_np + (win - 1) / 2), dtype=torch.float32, device=dev
        )
        maps = torch.einsum("yi,tij,xj->tyx", ry, grid, rx)
        return maps, bad, total, sampler

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
        h, w = int(image.shape[1]), int(image.shape[2])
        wins = [pda_window(t.box, h, w) for t in targets]
        with torch.no_grad():
            f_clean = self.detector.target_outputs(image.unsqueeze(0), targets, output)[0]
        maps = torch.zeros(len(targets), h, w, device=image.device)
        bad = (~torch.isfinite(f_clean)).long()
        passes = 1
        details: list[dict[str, Any]] = [{} for _ in targets]
        for win in sorted(set(wins)):
            ts = [i for i, v in enumerate(wins) if v == win]
            m, b, p, sampler = self._window_relevance(
                image, [targets[i] for i in ts], output, win, f_clean[ts].float()
            )
            idx = torch.as_tensor(ts, device=image.device)
            maps[idx] = m
            bad[idx] += b
            passes += p
            for i in ts:
                details[i] = {"window": win, "sampler": sampler, "passes_of_window": p}
        values = superpixel_aggregate(maps, segments, n_segments, self.cfg.aggregate)
        return Attribution(values, maps, passes, bad, details)
