"""The one Explainer interface and the record every method returns.

An :class:`Explainer` answers ``explain(image, targets, output) -> [Explanation]``: for each target
(one candidate's class score, or one of its decoded box coordinates) a signed value per SLIC
superpixel and a pixel map. Like Captum's attribution classes there is one class per method
(e2x.py, lime.py, pda.py, ig.py, drise.py).

Every method

* draws its randomness from a ``torch.Generator`` on the detector's device seeded with ``seed``
  at each call, so the result depends on (image, target, seed) only -- explaining five targets
  together gives what explaining each alone gives;
* is batched over samples and over the targets of one image, in chunks of ``cfg.batch_size``
  images, with no per-sample host round trip;
* counts ``passes``: the images pushed through the model (a forward plus, for gradient methods, a
  backward). Work shared by the targets of one call (LIME's and D-RISE's masked images) is split
  evenly among them, and so is the wall time;
* never averages non-finite model outputs in: a target whose outputs or gradients were NaN/inf in
  any sample gets ``valid=False``, NaN values, and a ``reason``.

Per-superpixel values mean the same in every method: with ``aggregate="sum"`` (the default, as in
the original E2X code) the contribution of the whole superpixel; with ``"mean"`` (the paper's s_x
in eq. 5) that contribution divided by the superpixel's area. Pixel-level methods (IG, PDA,
D-RISE) are aggregated the same way from their pixel maps.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from ..config import ExplainConfig
from ..detectors.base import BOX_COORDS, Detector, Target, TargetOutput
from ..registry import EXPLAINERS
from .superpixels import check_segments, make_reference, slic_segments

OUTPUTS: tuple[str, ...] = ("score", *BOX_COORDS)


def params_hash(method: str, params: dict[str, Any], seed: int) -> str:
    """A short stable hash of what determines an explanation's values (not batch size)."""
    payload = json.dumps({"method": method, "params": params, "seed": seed}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Explanation:
    """One target's explanation by one method, on one image."""

    target: Target
    method: str
    output: str
    segments: np.ndarray  # [H, W] int32 superpixel labels 0..M-1 (shared by the image's targets)
    values: np.ndarray  # [M] float64 signed value per superpixel (NaN when not valid)
    pixel_map: np.ndarray  # [H, W] float32 (superpixel methods: values painted on their pixels)
    params: dict[str, Any]
    seed: int
    seconds: float  # wall time, the shared part split evenly among the call's targets
    passes: float  # images through the model on behalf of this target (shared part split)
    valid: bool = True
    reason: str = ""
    candidate_id: str | None = None
    shared_by: int = 1  # how many targets shared the call that made this explanation
    details: dict[str, Any] = field(default_factory=dict)  # per-target facts (PDA window, ...)

    @property
    def n_segments(self) -> int:
        return int(self.values.shape[0])

    @property
    def params_hash(self) -> str:
        return params_hash(self.method, self.params, self.seed)

    def top_superpixels(self, n: int, sign: int = -1) -> np.ndarray:
        """Labels of the n most negative (``sign=-1``) or most positive (``sign=1``) superpixels,
        strongest first. For an FN the most negative ones are what suppressed the detection."""
        if sign not in (-1, 1):
            raise ValueError(f"sign must be -1 or 1, got {sign}")
        if not self.valid:
            raise ValueError(f"explanation of {self.candidate_id} is not valid: {self.reason}")
        order = np.argsort(sign * -self.values, kind="stable")
        return order[:n]

    def top_mask(self, n: int, sign: int = -1) -> np.ndarray:
        """``[H, W]`` bool mask of the pixels in :meth:`top_superpixels`."""
        return np.isin(self.segments, self.top_superpixels(n, sign))


@dataclass
class Attribution:
    """What a method computes for the T targets of one call, still on the device."""

    values: Tensor  # [T, M]
    pixel_maps: Tensor  # [T, H, W]
    passes: int  # images through the model for all T targets together
    bad: Tensor  # [T] count of samples whose output (or gradient) was not finite
    details: list[dict[str, Any]] | None = None
    reasons: list[str] | None = None  # per target, why it is invalid ("" = the generic reason)


def path_gradients(
    detector: Detector,
    targets: list[Target],
    output: TargetOutput,
    make_inputs: Callable[[Tensor], Tensor],
    step_weights: Tensor,
    batch_size: int,
    share_forward: bool = False,
) -> tuple[Tensor, Tensor, int]:
    """G[t] = sum_k c_k * d f_t(u_k) / d u_k for every target t, batched over (t, k).

    The T x K inputs are indexed i = t*K + k; ``make_inputs(k)`` builds u_k for a 1-D tensor of
    sample indices. Each chunk of ``batch_size`` inputs gets ONE backward of
    sum_i f_{t(i)}(u_i): copy i carries only its own target's score, and since the copies are
    independent its gradient is d f_{t(i)} / d u_i. Returns (G ``[T, 3, H, W]``, non-finite sample
    count per target ``[T]``, passes = T x K gradient evaluations).

    ``share_forward``: the path u_k is the same for every target (E2X and IG sample it once per
    image), so each chunk of ``batch_size`` samples is run forward once for all T targets and
    backpropagated T times (``retain_graph``): K forwards and T x K backwards instead of T x K of
    each. The values are the same as without sharing.
    """
    n_targets, k = len(targets), int(step_weights.numel())
    device = step_weights.device
    total = n_targets * k
    bad = torch.zeros(n_targets, dtype=torch.long, device=device)
    if share_forward and n_targets > 1:
        grad = _shared_path_gradients(
            detector, targets, output, make_inputs, step_weights, batch_size, bad
        )
        return grad, bad, total
    grad: Tensor | None = None
    for i0 in range(0, total, batch_size):
        i1 = min(total, i0 + batch_size)
        idx = torch.arange(i0, i1, device=device)
        t_idx, k_idx = idx // k, idx % k
        t_lo, t_hi = i0 // k, (i1 - 1) // k  # only the targets present in this chunk
        u = make_inputs(k_idx).detach().requires_grad_(True)
        out = detector.target_outputs(u, targets[t_lo : t_hi + 1], output)
        sel = out.gather(1, (t_idx - t_lo).unsqueeze(1)).squeeze(1)
        g, finite = _input_gradient(sel, u, retain=False)
        bad.index_add_(0, t_idx, (~finite).long())
        g = g * step_weights[k_idx].view(-1, 1, 1, 1)
        if grad is None:
            grad = torch.zeros((n_targets, *g.shape[1:]), dtype=g.dtype, device=device)
        grad.index_add_(0, t_idx, g)
    assert grad is not None
    return grad, bad, total


def _input_gradient(sel: Tensor, u: Tensor, retain: bool) -> tuple[Tensor, Tensor]:
    """d sum(sel) / d u with non-finite samples zeroed, and which samples were finite."""
    if sel.requires_grad:
        (g,) = torch.autograd.grad(sel.sum(), u, retain_graph=retain)
    else:  # an output that does not depend on the input has zero gradient
        g = torch.zeros_like(u)
    finite = torch.isfinite(sel) & torch.isfinite(g).flatten(1).all(1)
    return torch.where(finite.view(-1, 1, 1, 1), g, torch.zeros_like(g)), finite


def _shared_path_gradients(
    detector: Detector,
    targets: list[Target],
    output: TargetOutput,
    make_inputs: Callable[[Tensor], Tensor],
    step_weights: Tensor,
    batch_size: int,
    bad: Tensor,
) -> Tensor:
    """G of :func:`path_gradients` with one forward per chunk of samples for all targets;
    non-finite sample counts are added to ``bad``."""
    n_targets, k = len(targets), int(step_weights.numel())
    device = step_weights.device
    grad: Tensor | None = None
    for k0 in range(0, k, batch_size):
        k_idx = torch.arange(k0, min(k, k0 + batch_size), device=device)
        u = make_inputs(k_idx).detach().requires_grad_(True)
        out = detector.target_outputs(u, targets, output)  # [B, T]
        step = step_weights[k_idx].view(-1, 1, 1, 1)
        for t in range(n_targets):
            g, finite = _input_gradient(out[:, t], u, retain=t < n_targets - 1)
            bad[t] += (~finite).sum()  # stays on the device: no sync per target
            if grad is None:
                grad = torch.zeros((n_targets, *g.shape[1:]), dtype=g.dtype, device=device)
            grad[t] += (g * step).sum(0)
    assert grad is not None
    return grad


class NoOptions(BaseModel):
    """A method without settings of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Explainer(ABC):
    """Explains targets of one image: ``explain(image, targets, output) -> [Explanation]``.

    A subclass is one method. It sets ``name`` (which registers it in
    :data:`e2x_pipeline.registry.EXPLAINERS`, so ``explain.methods`` accepts it), declares its
    capabilities below, and declares its own settings as a pydantic ``Options`` model. Its
    settings come from ``explain.options.<name>`` in the YAML, overridden by keyword arguments.
    """

    name: ClassVar[str] = "abstract"
    Options: ClassVar[type[BaseModel]] = NoOptions
    # Capabilities, declared per class (as Captum's attribution classes do), so that the
    # explain stage, the metrics and the config never test a method by name.
    needs_gradients: bool = False  # backpropagates through the detector
    supports_box_maps: bool = False  # explains box coordinates x1, y1, x2, y2, not only the score
    needs_candidate: bool = True  # follows a candidate index; False: matches boxes (D-RISE)
    shares_targets: bool = False  # the targets of one call share its perturbed forward passes
    uses_reference: bool = True  # PDA samples from the image, D-RISE masks to black
    # Which setting is the method's number of samples (the App's "samples" knob): an
    # ExplainConfig field (``k``), ``options.<field>`` of its Options, or None (no samples).
    samples_setting: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            EXPLAINERS.register(cls.name, cls)

    def __init__(
        self,
        detector: Detector,
        cfg: ExplainConfig | None = None,
        seed: int = 0,
        mean: Tensor | None = None,
        **options: Any,
    ) -> None:
        self.detector = detector
        self.cfg = cfg if cfg is not None else ExplainConfig()
        self.seed = int(seed)
        self.mean = mean
        try:
            self.options = self.Options.model_validate(
                {**self.cfg.options.get(self.name, {}), **options}
            )
        except ValidationError as exc:
            raise ValueError(
                f"{self.name} options: {exc.errors()[0]['msg']} "
                f"({'.'.join(map(str, exc.errors()[0]['loc']))})"
            ) from None

    @property
    def device(self) -> torch.device:
        return self.detector.device

    def reference_name(self) -> str:
        if not self.uses_reference:
            return "none"
        if self.cfg.reference == "mean" and self.mean is None:
            return "image_channel_mean"
        return self.cfg.reference

    def params(self) -> dict[str, Any]:
        """Everything that determines the values (the params hash is taken over this)."""
        return {
            "n_segments": self.cfg.n_segments,
            "compactness": self.cfg.compactness,
            "reference": self.reference_name(),
            "aggregate": self.cfg.aggregate,
            **self.method_params(),
        }

    @abstractmethod
    def method_params(self) -> dict[str, Any]:
        """The method's own settings (K, samples, masks, ...)."""

    @abstractmethod
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
        """The method itself, on the device, for all targets at once."""

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed)

    def explain(
        self,
        image: Tensor,
        targets: list[Target],
        output: TargetOutput = "score",
        *,
        segments: np.ndarray | Tensor | None = None,
        reference: Tensor | None = None,
        candidate_ids: list[str] | None = None,
    ) -> list[Explanation]:
        """Explain ``output`` of every target on ``image`` ``[3, H, W]`` in [0, 1].

        ``segments`` (``[H, W]`` labels 0..M-1) lets the targets of one image, and several
        methods, share one SLIC segmentation; without it SLIC runs here. ``reference`` overrides
        the configured reference image (it should be what ``cfg.reference`` names).
        """
        self._check_call(image, targets, output, candidate_ids)
        if not targets:
            return []
        start = time.perf_counter()
        image = image.to(self.device, torch.float32)
        seg_np = self._segments(image, segments)
        n_seg = int(seg_np.max()) + 1
        seg = torch.as_tensor(seg_np, dtype=torch.long, device=self.device)
        reference = self._reference(image, reference)
        with torch.enable_grad():
            att = self.attribute(image, targets, output, seg, n_seg, reference, self.generator())
        seconds = (time.perf_counter() - start) / len(targets)
        return self._explanations(att, targets, output, seg_np, seconds, candidate_ids)

    def _check_call(
        self,
        image: Tensor,
        targets: list[Target],
        output: str,
        candidate_ids: list[str] | None,
    ) -> None:
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"explain() takes one image [3, H, W], got {tuple(image.shape)}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if output != "score" and not self.supports_box_maps:
            raise ValueError(f"{self.name} explains class scores only, not box coordinate {output}")
        if candidate_ids is not None and len(candidate_ids) != len(targets):
            raise ValueError(f"{len(candidate_ids)} candidate ids for {len(targets)} targets")

    def _segments(self, image: Tensor, segments: np.ndarray | Tensor | None) -> np.ndarray:
        if segments is None:
            return slic_segments(image, self.cfg.n_segments, self.cfg.compactness)
        check_segments(segments, (int(image.shape[1]), int(image.shape[2])))
        seg = segments.detach().cpu().numpy() if isinstance(segments, Tensor) else segments
        return seg.astype(np.int32, copy=False)

    def _reference(self, image: Tensor, reference: Tensor | None) -> Tensor:
        if not self.uses_reference:
            return torch.zeros_like(image)  # unused
        if reference is None:
            return make_reference(image, self.cfg.reference, self.mean)[0]
        return reference.to(self.device, torch.float32).expand_as(image)

    def _explanations(
        self,
        att: Attribution,
        targets: list[Target],
        output: str,
        seg_np: np.ndarray,
        seconds: float,
        candidate_ids: list[str] | None,
    ) -> list[Explanation]:
        """One record per target; a target with any non-finite sample is invalid (NaN values)."""
        values = att.values.detach().to("cpu", torch.float64).numpy()
        maps = att.pixel_maps.detach().to("cpu", torch.float32).numpy()
        bad = att.bad.cpu().numpy()
        params = self.params()
        out: list[Explanation] = []
        for t, target in enumerate(targets):
            ok = bad[t] == 0 and np.isfinite(values[t]).all() and np.isfinite(maps[t]).all()
            reason = "" if ok else "non-finite attribution"
            if bad[t]:
                reason = f"non-finite model output or gradient in {int(bad[t])} sample(s)"
            if not ok and att.reasons and att.reasons[t]:
                reason = att.reasons[t]
            out.append(
                Explanation(
                    target=target,
                    method=self.name,
                    output=output,
                    segments=seg_np,
                    values=values[t] if ok else np.full_like(values[t], np.nan),
                    pixel_map=maps[t] if ok else np.full_like(maps[t], np.nan),
                    params=params,
                    seed=self.seed,
                    seconds=seconds,
                    passes=att.passes / len(targets),
                    valid=bool(ok),
                    reason=reason,
                    candidate_id=None if candidate_ids is None else candidate_ids[t],
                    shared_by=len(targets),
                    details=att.details[t] if att.details else {},
                )
            )
        return out
