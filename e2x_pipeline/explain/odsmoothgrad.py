"""ODSmoothGrad (Gwon & Howell, CVPRW 2023): SmoothGrad of a detection's score and box.

SmoothGrad (Smilkov et al. 2017) averages the input gradient over noisy copies of the image.
ODSmoothGrad applies it to a detector, for the class score and for each box coordinate
(x1, y1, x2, y2). For target t and output f_t (its class-c_t score, or one of its box
coordinates):

    g_t = (1/|K_t|) sum_{k in K_t} d f_t(x + eps_k) / d x,     eps_k ~ N(0, sigma^2 I), k = 1..n,

with n = 20 and sigma = 0.05 of the input range by default, as in the paper. Images are in [0, 1],
so that range is 1 and the noise std is ``sigma`` itself. The noisy copies are not clipped to
[0, 1]; SmoothGrad does not clip either. The pixel map (``map``) is one of:

* ``gradient_x_input`` (default): phi_p = sum_c x_{c,p} * g_{t,c,p}, the signed gradient times
  the clean input;
* ``abs``: phi_p = sum_c |g_{t,c,p}|, the unsigned magnitude SmoothGrad is usually shown with.

The default is the signed map for three reasons:

1. It is signed like E2X, IG, LIME and PDA. For an FN the regions that suppressed the detection
   stay negative, and the metrics and the clustering read an FN's most negative superpixels.
   An absolute map has no negative superpixels, so it cannot say what suppressed a miss.
2. It adds up over a superpixel to something meaningful: the first-order Taylor term of
   f(x) - f(0) restricted to the superpixel. On a linear model this is exactly the Shapley
   value against the black image. A sum of |gradient| over a superpixel mostly measures its area.
3. SmoothGrad's paper lists gradient x input as one of the maps it smooths.

The input factor is the CLEAN image x. The noise only smooths the gradient; putting it in the
factor as well would add the zero-mean term E[eps * g] and nothing else. The map does not use
``explain.reference``: gradient x input is taken against zero (``uses_reference = False``).

Which candidate f_t follows in a noisy copy (``matching``):

* ``iou`` (default, the paper's): in copy k the target is the candidate whose decoded box has
  IoU >= ``match_iou`` (0.7) with the target's clean box (``Target.box``) and, among those, the
  highest score for class c_t. The paper matches final detections. We match the dense view
  before NMS and without a score threshold. The highest-scoring overlapping candidate is the one
  NMS would keep, and with no threshold an FN, whose score is below threshold, can be explained
  too. A copy in which no candidate matches is DROPPED: it is left out of both the sum and
  |K_t|. ``details`` gives ``kept_copies`` and ``dropped_copies`` for every target, which shows
  how often the paper's matching loses the detection. A target with no kept copy is invalid.
  The choice of candidate is not differentiated; the gradient is that of the chosen
  candidate's output.
* ``anchor``: the same candidate index in every copy (``detector.target_outputs``, the dense
  view E2X and IG follow; Faster R-CNN's soft target). No copy is dropped.

``needs_candidate``: the iou matching needs only the target's box and class, not its candidate
index. So the class declares ``needs_candidate = False``, like D-RISE, and explains an uncovered
FN from its box as well. With ``matching="anchor"`` an instance sets ``needs_candidate = True``,
which the explain stage reads from the instance. A target whose box is missing (``None``) takes
its candidate's box on the clean image from the dense view; that costs one pass.

Batching: the n noise draws come from the call's seeded generator on the device. All targets of
the call share them, so a target's result does not depend on which other targets are explained
with it. The T x n (target, copy) inputs are pushed through the detector in chunks of
``cfg.batch_size``, with ONE backward per chunk, as in :func:`~.base.path_gradients`.
The superpixel values aggregate the pixel map with ``cfg.aggregate``, and the pixel map is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ..detectors.base import Target, TargetOutput, matched_outputs
from .base import Attribution, Explainer, path_gradients
from .superpixels import superpixel_aggregate


def noise_copies(image: Tensor, n: int, sigma: float, generator: torch.Generator) -> Tensor:
    """The n noise draws eps_k ``[n, 3, H, W]`` ~ N(0, sigma^2), from ``generator`` on the image's
    device. The copies are ``image + eps_k``. The tests draw the same noise through this
    function."""
    eps = torch.randn(
        (n, *image.shape), generator=generator, device=image.device, dtype=image.dtype
    )
    return eps * sigma


class ODSmoothGradOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n_samples: int = Field(20, ge=1)
    """Noisy copies per target (the paper: 20)."""
    sigma: float = Field(0.05, ge=0)
    """Noise std as a fraction of the input range [0, 1] (the paper: 0.05)."""
    matching: Literal["iou", "anchor"] = "iou"
    """``iou``: the paper's box matching (copies that lose the box are dropped); ``anchor``: follow
    the candidate index."""
    match_iou: float = Field(0.7, gt=0, le=1)
    """IoU a noisy copy's candidate needs with the clean box to be the target (``iou`` only)."""
    map: Literal["gradient_x_input", "abs"] = "gradient_x_input"
    """Signed gradient x input (default; see the module docstring for why) or |gradient|."""


class ODSmoothGradExplainer(Explainer):
    name = "odsmoothgrad"
    samples_setting = "options.n_samples"
    Options = ODSmoothGradOptions
    needs_gradients = True
    supports_box_maps = True
    needs_candidate = False  # the default iou matching needs only the box; anchor sets True
    uses_reference = False  # gradient x input is against zero; the noise needs no reference

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Following the anchor needs one. The explain stage reads this from the instance, so
        # uncovered FNs (anchor -1) get its "no candidate" row rather than a wrong anchor.
        self.needs_candidate = self.options.matching == "anchor"

    def method_params(self) -> dict[str, Any]:
        o = self.options
        params: dict[str, Any] = {
            "n_samples": o.n_samples,
            "sigma": o.sigma,
            "matching": o.matching,
            "map": o.map,
        }
        if o.matching == "iou":
            params["match_iou"] = o.match_iou
        return params

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
        o = self.options
        eps = noise_copies(image, o.n_samples, o.sigma, generator)

        def inputs(k_idx: Tensor) -> Tensor:
            return image.unsqueeze(0) + eps[k_idx]

        if o.matching == "anchor":
            missing = [i for i, t in enumerate(targets) if t.candidate < 0]
            if missing:
                raise ValueError(
                    f"odsmoothgrad matching='anchor' follows the candidate index, but targets "
                    f"{missing} have none (candidate -1); use matching='iou'"
                )
            weights = torch.full((o.n_samples,), 1.0 / o.n_samples, device=image.device)
            grad, bad, passes = path_gradients(
                self.detector, targets, output, inputs, weights, self.cfg.batch_size
            )
            details = [
                {
                    "matching": "anchor",
                    "kept_copies": o.n_samples - b,
                    "dropped_copies": 0,
                    "non_finite_copies": b,
                }
                for b in bad.tolist()
            ]
            reasons = None
        else:
            grad, bad, passes, details = self._iou_gradients(image, targets, output, inputs)
            reasons = [
                f"the detection was lost: in none of the {d['dropped_copies']} noisy copies did "
                f"a candidate match the box at IoU >= {o.match_iou}"
                if d["kept_copies"] == 0 and d["non_finite_copies"] == 0
                else ""
                for d in details
            ]
        if o.map == "gradient_x_input":
            pixel = (image.unsqueeze(0) * grad).sum(dim=1)  # [T, H, W]
        else:
            pixel = grad.abs().sum(dim=1)
        values = superpixel_aggregate(pixel, segments, n_segments, self.cfg.aggregate)
        return Attribution(values, pixel, passes, bad, details, reasons)

    def _iou_gradients(
        self,
        image: Tensor,
        targets: list[Target],
        output: TargetOutput,
        inputs: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, Tensor, int, list[dict[str, Any]]]:
        """The mean gradient over the kept copies ``[T, 3, H, W]``, the non-finite count ``[T]``
        (the number of copies when none was kept), the passes, and the per-target details."""
        dev = image.device
        n, bs = self.options.n_samples, self.cfg.batch_size
        n_targets = len(targets)
        ref_boxes, passes = self._clean_boxes(image, targets)
        labels = torch.as_tensor([t.label for t in targets], dtype=torch.long, device=dev)
        grad = torch.zeros((n_targets, *image.shape), dtype=image.dtype, device=dev)
        kept = torch.zeros(n_targets, dtype=torch.long, device=dev)
        dropped = torch.zeros_like(kept)
        bad = torch.zeros_like(kept)
        total = n_targets * n
        for i0 in range(0, total, bs):
            idx = torch.arange(i0, min(total, i0 + bs), device=dev)
            t_idx, k_idx = idx // n, idx % n
            u = inputs(k_idx).detach().requires_grad_(True)
            dense = self.detector.dense(u)
            sel, matched = matched_outputs(
                dense, ref_boxes[t_idx], labels[t_idx], output, self.options.match_iou
            )
            # One backward for the chunk: each copy carries only its own target's output, and a
            # dropped copy carries nothing.
            carried = torch.where(matched, sel, torch.zeros_like(sel))
            if carried.requires_grad:
                (g,) = torch.autograd.grad(carried.sum(), u)
            else:  # an output that does not depend on the input has zero gradient
                g = torch.zeros_like(u)
            finite = torch.isfinite(sel) & torch.isfinite(g).flatten(1).all(1)
            keep = matched & finite
            bad.index_add_(0, t_idx, (matched & ~finite).long())
            kept.index_add_(0, t_idx, keep.long())
            dropped.index_add_(0, t_idx, (~matched).long())
            grad.index_add_(0, t_idx, torch.where(keep.view(-1, 1, 1, 1), g, torch.zeros_like(g)))
        # The mean over the kept copies only: a dropped copy enters neither sum nor count.
        grad = grad / kept.clamp(min=1).view(-1, 1, 1, 1).to(grad.dtype)
        details = [
            {"matching": "iou", "kept_copies": k, "dropped_copies": d, "non_finite_copies": b}
            for k, d, b in zip(kept.tolist(), dropped.tolist(), bad.tolist(), strict=True)
        ]
        # No kept copy: nothing to average, so the target is invalid (through ``bad``).
        lost = (kept == 0) & (bad == 0)
        bad = torch.where(lost, torch.full_like(bad, n), bad)
        return grad, bad, passes + total, details

    def _clean_boxes(self, image: Tensor, targets: list[Target]) -> tuple[Tensor, int]:
        """The targets' clean boxes ``[T, 4]``: ``Target.box``, else the candidate's box in the
        dense view of the clean image (one pass)."""
        boxes = torch.zeros(len(targets), 4, dtype=torch.float32, device=image.device)
        missing = []
        for i, t in enumerate(targets):
            if t.box is None:
                missing.append(i)
            else:
                boxes[i] = torch.as_tensor(t.box, dtype=torch.float32, device=image.device)
        if not missing:
            return boxes, 0
        if any(targets[i].candidate < 0 for i in missing):
            raise ValueError(
                "odsmoothgrad needs a box for targets without a candidate (candidate -1)"
            )
        with torch.no_grad():
            dense = self.detector.dense(image.unsqueeze(0))
        cand = torch.as_tensor([targets[i].candidate for i in missing], device=image.device)
        picked = dense.boxes[0, cand]
        if picked.dim() == 3:  # class-specific boxes [n, C, 4]: the target's class
            lab = torch.as_tensor([targets[i].label for i in missing], device=image.device)
            picked = picked[torch.arange(len(missing), device=image.device), lab]
        boxes[missing] = picked.float()
        return boxes, 1
