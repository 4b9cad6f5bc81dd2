"""Microsoft's D-RISE (PyPI ``vision-explanation-methods==0.1.1``) behind our :class:`Detector`.

The benchmark's reference implementation of D-RISE (Petsiuk et al. 2021). Everything D-RISE does
-- the masks, the masked images, the affinity of detections and the fusion of the masks -- is
the package's own code (``vision_explanation_methods.explanations.drise`` and ``.common``); this
module only wraps our detector in the package's ``GeneralObjectDetectionModelWrapper`` and
builds its ``DetectionRecord`` targets. Only that submodule is imported: the package's
``DRISE_runner`` needs ``ml_wrappers`` (not installed, since the package is installed with
``--no-deps``: it pins matplotlib < 3.7), matplotlib, captum and requests; ``explanations.drise``
needs only torch, torchvision, pandas, PIL and tqdm.

What the package computes, for an image ``[3, H, W]``, N masks and a ``h x w`` grid:

* mask n (``generate_mask``): ``h x w`` cells, each kept with p = 0.5 (``torch.randint(0, 2)``),
  resized with NEAREST interpolation to ``(H + P) x (W + P)``, ``P = int(max(H/h, W/w))``
  pixels on both axes, and randomly cropped (``T.RandomCrop``) to ``H x W``: binary, blocky
  masks. The masked image is ``image * M_n`` (black where masked), one mask per model call.
* affinity (``compute_affinity_matrix``): target detection t (box B_t, objectness o_t, class
  vector c_t) against every detection j of the masked image,
  ``w_{n,t} = max_j IoU(B_t, B_j) * o_t * o_j * cos(c_t, c_j)`` (0 if there is none).
* fusion (``saliency_fusion``, ``normalize=True``):
  ``S_t = sum_n w_{n,t} M_n - mean_n(w_{n,t}) * sum_n M_n``, then min-max scaled to [0, 1],
  ``(S_t - min S_t) / (max S_t - min S_t)``.

How it differs from our D-RISE (:mod:`e2x_pipeline.explain.drise`): ours bilinearly upsamples
the grid to ``(h+1)*ceil(H/h) x (w+1)*ceil(W/w)`` and shifts it by ``0..ceil(H/h)-1`` (soft
masks, as the paper), with a configurable p; the package's masks are binary (NEAREST), p = 0.5,
with one pixel padding for both axes. The similarity is the same (ours uses the one-hot target
and objectness 1 for the target, as the choices below give the package). Ours divides by N and
centres only with ``center=True``, never min-max scales; the package always centres and min-max
scales, so its map is in [0, 1] whatever the detector, and a map that is constant (a target that
never matched on any masked image) is 0/0 = NaN. Our map with ``center=True`` is therefore an
affine image of the package's up to the masks, and Pearson's rho compares them directly.

Choices made here (what the package is given):

* **The masked image's detections** (``proposals="dense"``, the default) are every candidate of
  ``detector.dense()`` (before threshold and NMS, as the paper and our D-RISE): its box, its
  class-probability vector ``probs`` and its objectness (families with one; else 1).
  Faster R-CNN's class-specific boxes ``[A, C, 4]`` become one detection per (proposal, label of
  the call's targets), box of that label, the proposal's probability vector; with one label per
  call this is exactly our D-RISE's match, with several a target may also match a proposal's
  box of another target's label. Candidates whose probabilities are all zero (Faster R-CNN's
  padding) are left out: their cosine is 0/0. ``proposals="detections"`` gives the final
  detections of ``detector.detect(x, score_threshold)`` instead (as Microsoft's ml_wrappers
  ``PytorchDRiseWrapper`` does), each with its candidate's probability vector and objectness
  from ``dense()`` (ml_wrappers fabricates a vector from the score with ``expand_class_scores``);
  a target below the threshold on every masked image then gets a NaN map.
* **The target detection** of each of our targets is its box, objectness 1 and the one-hot
  vector of its label: the paper's choice for a user-specified target, and our D-RISE's. The
  detector's own probability vector would, for a false negative, favour the background class
  and explain what the model saw rather than the missed class.
* **An image without detections** is given one zero-area box with objectness 0 (affinity exactly
  0, as the package intends): the package's own empty case returns affinities of shape ``[1]``
  instead of ``[D]``, and when that is the first mask, ``saliency_fusion`` swallows the shape
  errors of every later mask (``except RuntimeError: continue``) and returns one map for D
  targets.
* **Batching**: the package calls ``model.predict`` once per mask. With ``batch_size == 1`` this
  module calls ``drise.DRISE_saliency`` itself; otherwise it runs the same loop with the
  package's own ``generate_mask``, ``fuse_mask``, ``compute_affinity_scores``,
  ``MaskAffinityRecord`` and ``saliency_fusion``, ``batch_size`` masked images per call. The
  detector draws no random numbers, so both draw the same masks and give the same maps (up to
  float rounding of batched forwards; tests/test_msdrise.py checks it).
* **Seeding**: the package draws from torch's global generators (CPU and the device's); a call
  seeds them (and numpy's) with ``seed`` inside ``torch.random.fork_rng`` and restores them
  afterwards, so a call is deterministic and leaves the caller's random state alone.

The package keeps all N masks (``3 x H x W`` float32 each, plus a copy): about ``12 N H W``
bytes of host memory, e.g. 1 GB for N = 1000 at 300 x 300.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from e2x_pipeline.detectors.base import Detector, Target

Proposals = Literal["dense", "detections"]
Rows = tuple[Tensor, Tensor, Tensor]  # boxes [D, 4], objectness [D], class vectors [D, C]


def available() -> bool:
    """Whether the package's D-RISE (``vision_explanation_methods.explanations.drise``) imports."""
    try:
        import vision_explanation_methods.explanations.drise  # noqa: F401
    except ImportError:
        return False
    return True


def _dense_rows(detector: Detector, x: Tensor, labels: list[int]) -> list[Rows]:
    """Per image of ``x``: every candidate of the dense view (see the module docstring)."""
    d = detector.dense(x)
    out = []
    for b in range(x.shape[0]):
        probs = d.probs[b].detach().float()
        boxes = d.boxes[b].detach().float()
        if detector.has_objectness and d.objectness is not None:
            obj = d.objectness[b].detach().float()
        else:
            obj = torch.ones(probs.shape[0], device=probs.device)
        keep = ~(probs == 0).all(-1)  # padding rows; NaN rows stay (and make the map NaN)
        probs, boxes, obj = probs[keep], boxes[keep], obj[keep]
        if boxes.dim() == 3:  # class-specific [A, C, 4]: one row per (candidate, target label)
            boxes = boxes[:, labels].reshape(-1, 4)
            probs = probs.repeat_interleave(len(labels), 0)
            obj = obj.repeat_interleave(len(labels), 0)
        out.append((boxes.cpu(), obj.cpu(), probs.cpu()))
    return out


def _detection_rows(detector: Detector, x: Tensor, score_threshold: float) -> list[Rows]:
    """Per image of ``x``: its final detections, with their candidates' dense class vectors."""
    dets, d = detector.detect_with_dense(x, score_threshold)
    if d is None:  # a family whose detect does not compute the dense view
        d = detector.dense(x)
    out = []
    for b, det in enumerate(dets):
        cand = det.candidates.to(d.probs.device)
        probs = d.probs[b, cand].detach().float()
        if detector.has_objectness and d.objectness is not None:
            obj = d.objectness[b, cand].detach().float()
        else:
            obj = torch.ones(cand.numel(), device=probs.device)
        out.append((det.boxes.detach().float().cpu(), obj.cpu(), probs.cpu()))
    return out


@functools.cache
def _wrapper_class() -> type[Any]:
    """The package's model wrapper around our :class:`Detector` (built on first use, since the
    package is optional)."""
    from vision_explanation_methods.explanations.common import (
        DetectionRecord,
        GeneralObjectDetectionModelWrapper,
    )

    class E2XDetectorWrapper(GeneralObjectDetectionModelWrapper):
        """``predict(x [B, 3, H, W]) -> [DetectionRecord]``, one record per image."""

        def __init__(
            self,
            detector: Detector,
            labels: list[int],
            proposals: Proposals = "dense",
            score_threshold: float = 0.05,
        ) -> None:
            self.detector = detector
            self.labels = labels
            self.proposals = proposals
            self.score_threshold = score_threshold

        @torch.no_grad()
        def predict(self, x: Tensor) -> list[DetectionRecord]:
            x = x.to(self.detector.device)
            if self.proposals == "dense":
                rows = _dense_rows(self.detector, x, self.labels)
            else:
                rows = _detection_rows(self.detector, x, self.score_threshold)
            records = []
            for boxes, obj, probs in rows:
                if boxes.shape[0] == 0:  # the package mis-shapes this case: give affinity 0
                    boxes, obj = torch.zeros(1, 4), torch.zeros(1)
                    probs = torch.zeros(1, self.detector.num_classes)
                    probs[0, 0] = 1.0
                records.append(
                    DetectionRecord(bounding_boxes=boxes, objectness_scores=obj, class_scores=probs)
                )
            return records

    return E2XDetectorWrapper


def _batched_saliency(
    model: Any,
    x: Tensor,
    target: Any,
    n_masks: int,
    grid: tuple[int, int],
    device: str,
    batch_size: int,
) -> list[list[dict[str, Tensor]]]:
    """``drise.DRISE_saliency`` for one image, ``batch_size`` masked images per predict call."""
    from vision_explanation_methods.explanations import drise

    img_size = x.shape[-2:]
    padding = int(max(img_size[0] / grid[0], img_size[1] / grid[1]))  # the package's default
    records = []
    for i0 in range(0, n_masks, batch_size):
        masks = [
            drise.generate_mask(grid, img_size, padding, device)
            for _ in range(min(batch_size, n_masks - i0))
        ]
        masked = torch.cat([drise.fuse_mask(x, m) for m in masks])
        with torch.no_grad():
            detections = model.predict(masked)
        for mask, det in zip(masks, detections, strict=True):
            scores = [drise.compute_affinity_scores(target, det).detach().to("cpu")]
            records.append(drise.MaskAffinityRecord(mask=mask.to("cpu"), affinity_scores=scores))
    return drise.saliency_fusion(records, device)


def explain_msdrise(
    detector: Detector,
    image: Tensor,
    targets: list[Target],
    n_masks: int,
    seed: int,
    batch_size: int = 16,
    *,
    grid: tuple[int, int] = (16, 16),
    proposals: Proposals = "dense",
    score_threshold: float = 0.05,
) -> list[np.ndarray]:
    """Microsoft's D-RISE maps of ``targets`` on ``image`` ``[3, H, W]`` (in [0, 1]).

    One float32 ``[H, W]`` map per target, in [0, 1] (the package min-max scales), all NaN where
    the package's map is (a target that never matched). ``n_masks`` masks of a ``grid`` of
    cells; ``batch_size`` masked images per forward; ``proposals`` what the package matches the
    target against (see the module docstring). Deterministic in ``seed``.
    """
    from vision_explanation_methods.explanations import drise
    from vision_explanation_methods.explanations.common import DetectionRecord

    if image.dim() != 3:
        raise ValueError(f"image must be [3, H, W], got shape {tuple(image.shape)}")
    if n_masks < 1 or batch_size < 1:
        raise ValueError(f"n_masks and batch_size must be >= 1, got {n_masks}, {batch_size}")
    if proposals not in ("dense", "detections"):
        raise ValueError(f"proposals must be 'dense' or 'detections', got {proposals!r}")
    if not targets:
        return []
    if any(t.box is None for t in targets):
        raise ValueError("Microsoft's D-RISE needs every target's box")
    labels = [int(t.label) for t in targets]
    target = DetectionRecord(
        bounding_boxes=torch.tensor([t.box for t in targets], dtype=torch.float32),
        objectness_scores=torch.ones(len(targets)),
        class_scores=torch.nn.functional.one_hot(
            torch.tensor(labels), detector.num_classes
        ).float(),
    )
    model = _wrapper_class()(detector, sorted(set(labels)), proposals, score_threshold)
    dev = detector.device
    x = image.to(dev, torch.float32).unsqueeze(0)
    forked = []  # the CUDA generator the package's masks draw from, besides the CPU one
    if dev.type == "cuda":
        forked = [dev.index if dev.index is not None else torch.cuda.current_device()]
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            if batch_size == 1:
                out = drise.DRISE_saliency(
                    model, x, [target], n_masks, mask_res=grid, device=str(dev)
                )
            else:
                out = _batched_saliency(model, x, target, n_masks, grid, str(dev), batch_size)
    finally:
        np.random.set_state(np_state)
    maps = [m["detection"][0].detach().cpu().numpy().astype(np.float32) for m in out[0]]
    if len(maps) != len(targets):
        raise RuntimeError(f"the package returned {len(maps)} maps for {len(targets)} targets")
    return maps
