"""Timing inside the benchmark: the detector's own forward / backward seconds, and one setting's
explanations of one image with their wall time.

The fraction of E2X wall time spent in the model is measured by timing every forward of the
detector's dense view and every backward through it (autograd hooks at the model's input and
output, synchronised on CUDA), against the whole E2X wall time (SLIC included).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from e2x_pipeline.config import ExplainConfig
from e2x_pipeline.detectors.base import DenseOutput, Detections, Detector, Target, TargetOutput
from e2x_pipeline.explain.base import Explanation
from e2x_pipeline.explain.pda import pda_window
from e2x_pipeline.explain.registry import get_explainer
from e2x_pipeline.explain.superpixels import slic_segments

from .settings import Setting


class _Stamp(torch.autograd.Function):
    """Identity whose backward records the time: at the model's output (backward starts) and
    at its input (backward through the model is done)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, clock: ModelClock, where: str) -> Tensor:  # type: ignore[override]
        ctx.clock, ctx.where = clock, where
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        ctx.clock.stamp(ctx.where, grad.device)
        return grad, None, None


class ModelClock:
    """Seconds spent in the detector's forward and in the backward through it."""

    def __init__(self) -> None:
        self.forward_s = 0.0
        self.backward_s = 0.0
        self._t0: float | None = None

    @staticmethod
    def sync(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def stamp(self, where: str, device: torch.device) -> None:
        self.sync(device)
        now = time.perf_counter()
        if where == "output":
            self._t0 = now
        elif self._t0 is not None:
            self.backward_s += now - self._t0
            self._t0 = None

    def reset(self) -> None:
        self.forward_s = self.backward_s = 0.0
        self._t0 = None


class TimedDetector(Detector):
    """A detector that times its forwards and the backwards through it (see :class:`ModelClock`)."""

    def __init__(self, inner: Detector) -> None:  # no super().__init__: share the inner model
        self.inner = inner
        self.model = inner.model
        self.classes = inner.classes
        self.device = inner.device
        self.meta = inner.meta
        self.family = inner.family
        self.has_objectness = inner.has_objectness
        self.clock = ModelClock()

    def _timed(self, fn: Callable[[], Any]) -> Any:
        self.clock.sync(self.device)
        t0 = time.perf_counter()
        out = fn()
        self.clock.sync(self.device)
        self.clock.forward_s += time.perf_counter() - t0
        return out

    def dense(self, images: Tensor) -> DenseOutput:
        return self._timed(lambda: self.inner.dense(images))

    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        return self._timed(lambda: self.inner.detect(images, score_threshold))

    def target_outputs(
        self, images: Tensor, targets: list[Target], output: TargetOutput = "score"
    ) -> Tensor:
        x = images
        if torch.is_grad_enabled() and images.requires_grad:
            x = _Stamp.apply(images, self.clock, "input")
        out = self._timed(lambda: self.inner.target_outputs(x, targets, output))
        if out.requires_grad:
            out = _Stamp.apply(out, self.clock, "output")
        return out


# ---------------------------------------------------------------------------------------------
# running one setting on one image


@dataclass
class Run:
    """One setting's explanations of one image's targets, with the wall time they took."""

    exps: list[Explanation]
    seconds: float  # explanation calls (+ its own SLIC for references with own segments)
    segments: np.ndarray
    model_seconds: float = 0.0


def run_setting(
    s: Setting,
    detector: Detector,
    base: ExplainConfig,
    image: Tensor,
    targets: list[Target],
    segments: np.ndarray,
    mean: Tensor,
    seed: int,
) -> Run:
    """Explain ``targets`` on ``image`` with setting ``s`` (``base`` updated by ``s.cfg``)."""
    cfg = base.model_copy(update=s.cfg)
    t0 = time.perf_counter()
    if s.segments is not None:
        segments = slic_segments(image, s.segments, cfg.compactness)
    if s.method == "msdrise":
        exps = _msdrise(s, detector, cfg, image, targets, segments, seed + s.seed_offset)
    elif s.pda_stride_mult is None:
        ex = get_explainer(s.method, detector, cfg, seed + s.seed_offset, mean=mean, **s.options)
        exps = ex.explain(image, targets, segments=segments)
    else:  # PDA: stride relative to each target's window; targets sharing a window share work
        h, w = int(image.shape[1]), int(image.shape[2])
        wins = [pda_window(t.box, h, w) for t in targets]
        by_index: dict[int, Explanation] = {}
        for win in sorted(set(wins)):
            idx = [i for i, v in enumerate(wins) if v == win]
            opts = {**s.options, "stride": s.pda_stride_mult * win}
            ex = get_explainer("pda", detector, cfg, seed + s.seed_offset, mean=mean, **opts)
            for i, e in zip(idx, ex.explain(image, [targets[i] for i in idx], segments=segments)):
                by_index[i] = e
        exps = [by_index[i] for i in range(len(targets))]
    return Run(exps, time.perf_counter() - t0, segments)


def _msdrise(
    s: Setting,
    detector: Detector,
    cfg: ExplainConfig,
    image: Tensor,
    targets: list[Target],
    segments: np.ndarray,
    seed: int,
) -> list[Explanation]:
    """Microsoft's D-RISE (``vision-explanation-methods``) as explanations on our superpixels:
    its pixel maps, and per superpixel their mean (as the pointing game and counterfactual read
    every method's values)."""
    from e2x_pipeline.explain.superpixels import superpixel_aggregate

    from .msdrise import explain_msdrise

    t0 = time.perf_counter()
    n_masks = int(s.cfg["drise_masks"])
    maps = explain_msdrise(detector, image, targets, n_masks, seed, min(cfg.batch_size, 64))
    seconds = (time.perf_counter() - t0) / max(len(targets), 1)
    seg = np.asarray(segments)
    m = int(seg.max()) + 1
    stack = torch.as_tensor(np.stack(maps), dtype=torch.float64)
    values = superpixel_aggregate(stack, torch.as_tensor(seg, dtype=torch.long), m, "mean")
    return [
        Explanation(
            target=t,
            method="msdrise",
            output="score",
            segments=seg,
            values=v.numpy(),
            pixel_map=pm,
            params={"masks": n_masks, "grid": 16, "package": "vision-explanation-methods 0.1.1"},
            seed=seed,
            seconds=seconds,
            passes=float(n_masks) / len(targets),  # the package's masks serve every target
            valid=bool(np.isfinite(pm).all()),
            reason="" if np.isfinite(pm).all() else "the target never matched (NaN map)",
            shared_by=len(targets),
        )
        for t, v, pm in zip(targets, values, maps, strict=True)
    ]
