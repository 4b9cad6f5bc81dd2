"""Deletion and insertion AUC for detections, with the D-RISE similarity score.

Petsiuk et al. (2021, "Black-box explanation of object detectors via saliency maps", D-RISE,
Sec. 4.2) carry the deletion and insertion metrics of RISE (Petsiuk et al. 2018) over to
detectors. Pixels are removed from the image (deletion) or inserted into a blank one (insertion)
in decreasing order of attribution; the score of each step is the best match between the target
detection d_t and the detections d_a on the perturbed image:

    s(x') = max_a  IoU(box_a, box_t) * cos(p_a, p_t) [* o_a],

with p the class-probability vectors (and o_a the objectness where the family has one). The
curve s over the fraction of pixels changed, 0..1 in ``steps`` equal steps, is integrated with
the trapezoid rule (:func:`numpy.trapezoid`). A faithful map gives a LOW deletion AUC (the
score collapses once the first pixels go) and a HIGH insertion AUC.

Choices, as documented in D-RISE / RISE or made here on purpose:

* Removed pixels take the ``deletion_baseline`` (RISE: zeros, i.e. black); insertion starts from
  the ``insertion_baseline`` (RISE: a blurred copy of the image) and puts the original pixels back.
  ``mean`` uses the dataset mean (E2X's reference) when given.
* ``class_vector="onehot"`` compares with the one-hot target class e_c, D-RISE's choice for a
  user-given target and the same similarity the D-RISE explainer here uses (a below-threshold FN
  candidate's own probability vector is mostly background); ``"detection"`` uses the candidate's
  own probability vector on the clean image.
* The detections d_a are ALL candidates of the detector's dense view (before score threshold and
  NMS). The final detections are a subset of them with the same boxes and probabilities, so this
  max is an upper bound of the max over final detections; it keeps below-threshold targets (FN
  near misses) measurable and needs one forward per perturbed image.
* Pixels with equal attribution (superpixel maps are piecewise constant) are taken in raster
  order (stable sort).

Every perturbed image of every target of one image goes through :meth:`Detector.dense` in
batches of ``batch_size`` on the detector's device; only the [T, steps+1] curves come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from ..detectors.base import DenseOutput, Detector, Target
from ..explain.superpixels import make_reference

Baseline = Literal["zeros", "blur", "mean"]
ClassVector = Literal["onehot", "detection"]


@dataclass
class PerturbationCurves:
    """Deletion and insertion curves of T maps of one image (NaN rows for invalid maps)."""

    fractions: np.ndarray  # [S+1] fraction of pixels removed / inserted
    deletion: np.ndarray  # [T, S+1] similarity after removing that fraction
    insertion: np.ndarray  # [T, S+1] similarity after inserting that fraction
    passes: int  # images pushed through the model

    @property
    def deletion_auc(self) -> np.ndarray:
        """[T] area under the deletion curve (lower is better)."""
        return auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        """[T] area under the insertion curve (higher is better)."""
        return auc(self.fractions, self.insertion)


def auc(fractions: np.ndarray, curves: np.ndarray) -> np.ndarray:
    """Trapezoid-rule area under each curve (rows of ``curves``) over ``fractions``."""
    return np.trapezoid(np.asarray(curves, dtype=np.float64), np.asarray(fractions), axis=-1)


def max_similarity(
    dense: DenseOutput, boxes: Tensor, labels: Tensor, vectors: Tensor, objectness: bool
) -> Tensor:
    """``[B]``: max over candidates a of IoU(box_a, boxes[b]) * cos(p_a, vectors[b]) [* o_a].

    ``boxes`` ``[B, 4]`` and ``vectors`` ``[B, C]`` are each image's target box and class vector;
    ``labels`` ``[B]`` picks the class-specific box when the family has one (``[B, A, C, 4]``).
    """
    probs = dense.probs.float()
    cand = dense.boxes.float()
    b, a = probs.shape[:2]
    if cand.dim() == 4:  # class-specific boxes: the target's class
        cand = cand[torch.arange(b, device=cand.device), :, labels]
    # IoU of every candidate with every distinct target box of the batch, then each image's own.
    uniq, inverse = torch.unique(boxes.float(), dim=0, return_inverse=True)
    iou = box_iou(cand.reshape(-1, 4), uniq).view(b, a, -1)
    iou = iou.gather(2, inverse.view(b, 1, 1).expand(b, a, 1)).squeeze(2)
    cos = F.cosine_similarity(probs, vectors.float().unsqueeze(1).expand_as(probs), dim=-1)
    sim = iou * cos
    if objectness and dense.objectness is not None:
        sim = sim * dense.objectness.float()
    return sim.max(dim=1).values


def _class_vectors(
    detector: Detector, image: Tensor, targets: list[Target], how: ClassVector
) -> Tensor:
    """``[T, C]`` class vectors; ``detection`` falls back to one-hot for targets without a
    candidate (uncovered FNs, candidate -1)."""
    if how not in ("onehot", "detection"):
        raise ValueError(f"class_vector must be 'onehot' or 'detection', got {how!r}")
    with torch.no_grad():
        probs = detector.dense(image.unsqueeze(0)).probs[0].float()  # [A, C]
    labels = torch.as_tensor([t.label for t in targets], device=probs.device)
    vectors = F.one_hot(labels, probs.shape[-1]).float()
    if how == "detection":
        for i, t in enumerate(targets):
            if t.candidate >= 0:
                vectors[i] = probs[t.candidate]
    return vectors


def _pixel_ranks(m: Tensor, h: int, w: int) -> Tensor:
    """``[T, H, W]``: the position of each pixel in its map's decreasing order (0 = most
    positive attribution); equal values in raster order (stable sort)."""
    order = torch.argsort(-m, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=m.device).expand_as(order))
    return rank.view(len(m), h, w)


def _perturbed_scores(
    detector: Detector,
    image: Tensor,
    rank: Tensor,
    n_changed: Tensor,
    bases: tuple[Tensor, Tensor],
    goal: tuple[Tensor, Tensor, Tensor],
    batch_size: int,
) -> Tensor:
    """``[2, T, S+1]`` similarity after each step of deletion (0) and insertion (1).

    ``bases`` are the deletion and insertion baselines; ``goal`` each target's clean box,
    label and class vector. All 2 * T * (S+1) perturbed images go through the dense view in
    batches of ``batch_size``.
    """
    base_del, base_ins = bases
    tboxes, labels, vectors = goal
    n_targets, n_steps = rank.shape[0], n_changed.shape[0]
    per_mode = n_targets * n_steps
    total = 2 * per_mode  # index i = mode * per_mode + t * (steps + 1) + s
    scores = torch.empty(total, device=image.device)
    with torch.no_grad():
        for i0 in range(0, total, batch_size):
            idx = torch.arange(i0, min(total, i0 + batch_size), device=image.device)
            mode, rest = idx // per_mode, idx % per_mode
            t_idx, s_idx = rest // n_steps, rest % n_steps
            changed = (rank[t_idx] < n_changed[s_idx].view(-1, 1, 1)).unsqueeze(1)
            deleting = (mode == 0).view(-1, 1, 1, 1)
            first = torch.where(deleting, base_del, image)  # pixels changed -> this
            other = torch.where(deleting, image, base_ins)  # pixels not changed -> this
            batch = torch.where(changed, first, other)
            dense = detector.dense(batch)
            sim = max_similarity(
                dense, tboxes[t_idx], labels[t_idx], vectors[t_idx], detector.has_objectness
            )
            scores[idx] = torch.where(torch.isfinite(sim), sim, torch.full_like(sim, np.nan))
    return scores.view(2, n_targets, n_steps)


def deletion_insertion(
    detector: Detector,
    image: Tensor,
    maps: np.ndarray | Tensor,
    targets: list[Target],
    *,
    steps: int = 32,
    batch_size: int = 256,
    deletion_baseline: Baseline = "zeros",
    insertion_baseline: Baseline = "blur",
    class_vector: ClassVector = "onehot",
    mean: Tensor | None = None,
) -> PerturbationCurves:
    """Deletion and insertion curves of ``maps`` ``[T, H, W]`` for ``targets`` on ``image``.

    ``image`` is ``[3, H, W]`` in [0, 1]; target t needs its clean-image ``box``. Pixels go in
    decreasing order of ``maps[t]``; after step s of ``steps``, round(s * H * W / steps) pixels
    are changed. Rows of maps with a non-finite value get NaN curves.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if any(t.box is None for t in targets):
        raise ValueError("deletion/insertion needs each target's box on the clean image")
    dev = detector.device
    image = image.to(dev, torch.float32)
    h, w = int(image.shape[1]), int(image.shape[2])
    m = torch.as_tensor(np.asarray(maps, dtype=np.float32), device=dev).reshape(len(targets), -1)
    if m.shape[1] != h * w:
        raise ValueError(f"maps of {m.shape[1]} pixels for an image of {h}x{w}")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    n_changed = torch.as_tensor(np.round(fractions * h * w), device=dev).long()
    out = np.full((2, len(targets), steps + 1), np.nan)
    valid = [i for i in range(len(targets)) if bool(torch.isfinite(m[i]).all())]
    if not valid:
        return PerturbationCurves(fractions, out[0], out[1], 0)
    rank = _pixel_ranks(m[valid], h, w)
    bases = (
        make_reference(image, deletion_baseline, mean)[0],
        make_reference(image, insertion_baseline, mean)[0],
    )
    vt = [targets[i] for i in valid]
    goal = (
        torch.as_tensor([t.box for t in vt], dtype=torch.float32, device=dev),
        torch.as_tensor([t.label for t in vt], device=dev),
        _class_vectors(detector, image, vt, class_vector),
    )
    scores = _perturbed_scores(detector, image, rank, n_changed, bases, goal, batch_size)
    out[:, valid] = scores.cpu().double().numpy()
    return PerturbationCurves(fractions, out[0], out[1], 2 * len(vt) * (steps + 1))
