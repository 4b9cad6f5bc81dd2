"""The one Detector interface every model family implements.

Explanations must follow ONE detection across perturbed copies of an image. The E2X paper did
this by patching Caffe's SSD to report each detection's prior-box index. Here every adapter
exposes two views of the same model:

* :meth:`Detector.dense` -- every candidate before thresholding and NMS, differentiable w.r.t. the
  input: decoded boxes, per-class detection scores, class probabilities and objectness.
* :meth:`Detector.detect` -- the final detections, each carrying its **candidate index** (the
  anchor index for anchor-based families), such that
  ``dense(x).scores[b, candidate, label] == score`` and ``dense(x).boxes[b, candidate] == box``.

Explainers call :meth:`Detector.target_outputs`, which gathers one scalar per (image, target)
from the dense view. Families whose candidates move with the input (Faster R-CNN) override it
with a soft target. Feature-map methods (ODAM) call :meth:`Detector.feature_targets`, which
returns the same outputs together with the feature map each target is read from; which map that
is, is the family's choice, documented on its adapter:

* SSD (compact SSD, SSD300, SSDlite): the backbone map the candidate's anchor sits on;
* RetinaNet, FCOS: the FPN level the candidate's anchor (or location) belongs to;
* Faster R-CNN: the FPN level torchvision's ``MultiScaleRoIAlign`` pooled the matched proposal
  from (its ``LevelMapper``, Lin et al. 2017 eq. 1).

Conventions: images are float tensors in [0, 1], shape ``[3, H, W]`` (or a batch
``[B, 3, H, W]``); boxes are ``x1, y1, x2, y2`` in input-image pixels; ``label`` indexes
``classes`` (``classes[0] == "__background__"`` for families with a background class).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..boxes import broadcast_iou

TargetOutput = Literal["score", "x1", "y1", "x2", "y2"]
BOX_COORDS: dict[str, int] = {"x1": 0, "y1": 1, "x2": 2, "y2": 3}


@dataclass
class Detections:
    """Final detections of one image (after threshold, top-k and NMS)."""

    boxes: Tensor  # [N, 4] float, xyxy in input pixels
    scores: Tensor  # [N]
    labels: Tensor  # [N] long, index into Detector.classes
    candidates: Tensor  # [N] long, index into dense(x) candidates

    def __len__(self) -> int:
        return int(self.scores.numel())

    def subset(self, keep: Tensor) -> Detections:
        """The detections where the bool mask (or index tensor) ``keep`` selects them."""
        return Detections(
            self.boxes[keep], self.scores[keep], self.labels[keep], self.candidates[keep]
        )

    def to(self, device: str | torch.device) -> Detections:
        return Detections(
            *(t.to(device) for t in (self.boxes, self.scores, self.labels, self.candidates))
        )


@dataclass
class DenseOutput:
    """Every candidate of a batch, before thresholding and NMS. Differentiable w.r.t. the input."""

    boxes: Tensor  # [B, A, 4] decoded, clipped, in input pixels
    scores: Tensor  # [B, A, C] the family's detection score per class (what detect() thresholds)
    probs: Tensor  # [B, A, C] class probabilities (softmax or sigmoid)
    objectness: Tensor | None = None  # [B, A] where the family has one (FCOS centerness)


@dataclass
class FeatureDense:
    """A dense view together with the feature maps the head read it from (for ODAM).

    ``features[l]`` is ``[B, C_l, h_l, w_l]`` and is in the autograd graph of ``dense``;
    ``level_sizes[l]`` counts the candidates read from level ``l`` (candidates are concatenated
    level by level, finest first); ``extents[l]`` is the ``(rows, cols)`` of map ``l`` that cover
    the image (the rest is the transform's batch padding), so that the covering part maps
    linearly onto the input image.
    """

    dense: DenseOutput
    features: list[Tensor]
    level_sizes: list[int]
    extents: list[tuple[int, int]]


@dataclass
class FeatureTargets:
    """Target outputs ``[B, T]`` and, per target, the feature map they are read from."""

    outputs: Tensor  # [B, T], in the autograd graph of ``features``
    features: list[Tensor]  # per level [B, C_l, h_l, w_l]
    levels: list[int]  # [T] the level of each target
    extents: list[tuple[int, int]]  # per level: rows, cols covering the image


def covering_extents(
    features: list[Tensor], padded_hw: tuple[int, int], image_hw: tuple[int, int]
) -> list[tuple[int, int]]:
    """``(rows, cols)`` of each map that cover an ``image_hw`` image inside the ``padded_hw``
    batch tensor the backbone saw: ``round(h_l * ih / ph)``, ``round(w_l * iw / pw)``."""
    (ph, pw), (ih, iw) = padded_hw, image_hw
    return [
        (max(1, round(f.shape[-2] * ih / ph)), max(1, round(f.shape[-1] * iw / pw)))
        for f in features
    ]


def levels_of(candidates: list[int], level_sizes: list[int]) -> list[int]:
    """The level each candidate index falls in, for candidates concatenated level by level."""
    bounds = torch.tensor(level_sizes).cumsum(0)
    cand = torch.tensor(candidates)
    if (cand < 0).any() or (cand >= bounds[-1]).any():
        raise ValueError(
            f"candidate indices {candidates} out of range 0..{int(bounds[-1]) - 1}: a feature map "
            "is found from a candidate index, so a target needs one (candidate -1 has none)"
        )
    return torch.bucketize(cand, bounds, right=True).tolist()


@dataclass(frozen=True)
class Target:
    """What an explainer explains: one candidate's score for one class (or a box coordinate).

    ``box`` is the detection's box on the clean image; soft targets (Faster R-CNN) use it to find
    the matching proposal on a perturbed image.
    """

    candidate: int
    label: int
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def from_row(cls, row: Any) -> Target:
        """The target of one candidates-table row (a ``pd.Series``, a mapping or an itertuple).

        The row's ``anchor`` is the candidate index, ``label`` the class, ``box_x1..box_y2`` the
        clean detection's box (or the GT box, for an FN).
        """
        get = row.get if hasattr(row, "get") else lambda k: getattr(row, k)
        box = tuple(float(get(k)) for k in ("box_x1", "box_y1", "box_x2", "box_y2"))
        return cls(int(get("anchor")), int(get("label")), box)  # type: ignore[arg-type]


def matched_outputs(
    dense: DenseOutput,
    ref_boxes: Tensor,
    labels: Tensor,
    output: TargetOutput,
    min_iou: float,
) -> tuple[Tensor, Tensor]:
    """Box matching, per row b of a dense batch, each with its own target (ODSmoothGrad's
    alignment of noisy copies, Gwon & Howell 2023; the counterfactual check).

    ``ref_boxes`` ``[B, 4]`` and ``labels`` ``[B]`` belong to the target of row b. Among the
    candidates whose box (the label's box, for class-specific boxes) has IoU >= ``min_iou`` with
    the row's box, the one with the highest label score is picked. Returns its output ``[B]``
    (the score or a box coordinate, differentiable) and whether anything matched ``[B]`` bool.
    """
    rows = torch.arange(labels.numel(), device=labels.device)
    boxes = dense.boxes[rows, :, labels] if dense.boxes.dim() == 4 else dense.boxes  # [B, A, 4]
    scores = dense.scores[rows, :, labels]  # [B, A]
    with torch.no_grad():
        ok = broadcast_iou(boxes.float(), ref_boxes.float().unsqueeze(1)) >= min_iou
        s = scores.float()
        # A NaN score among the matches wins, so that a non-finite output is reported as non-finite
        # (the target becomes invalid) rather than silently stepped over.
        key = torch.where(torch.isnan(s), torch.full_like(s, float("inf")), s)
        key = torch.where(ok, key, torch.full_like(key, float("-inf")))
        idx = key.argmax(dim=1)
        matched = ok.any(dim=1)
    if output == "score":
        return scores[rows, idx], matched
    return boxes[rows, idx, BOX_COORDS[output]], matched


class Detector(ABC):
    """A detection model behind the E2X contract. Subclasses live one file per family."""

    family: str = "abstract"
    has_objectness: bool = False

    def __init__(self, model: nn.Module, classes: list[str], device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.classes = list(classes)
        self.device = torch.device(device)
        self.meta: dict = {}  # checkpoint metadata, when loaded from one

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _batch(self, images: Tensor | list[Tensor]) -> Tensor:
        if isinstance(images, Tensor) and images.dim() == 3:
            images = images.unsqueeze(0)
        if isinstance(images, list):
            sizes = {tuple(im.shape) for im in images}
            if len(sizes) != 1:
                raise ValueError(f"images in one batch must share a size, got {sorted(sizes)}")
            images = torch.stack(images)
        return images.to(self.device)

    @abstractmethod
    def dense(self, images: Tensor) -> DenseOutput:
        """All candidates of a ``[B, 3, H, W]`` batch, with no threshold and no NMS."""

    @abstractmethod
    def detect(self, images: Tensor | list[Tensor], score_threshold: float) -> list[Detections]:
        """Final detections per image, reproducing the family's own post-processing."""

    @torch.no_grad()
    def detect_with_dense(
        self, images: Tensor, score_threshold: float
    ) -> tuple[list[Detections], DenseOutput | None]:
        """:meth:`detect` and the dense view of the same forward pass, so that a caller that needs
        both (mining: the uncovered misses' candidates) runs the model once.

        The default remembers what ``self.dense`` returns while ``detect`` runs (families whose
        detect goes through it); None when it did not. Families whose detect computes the dense
        view another way (Faster R-CNN) override this.
        """
        memo: dict[str, Any] = {}
        orig = self.dense

        def dense(x: Tensor) -> DenseOutput:
            out = orig(x)
            memo["shape"], memo["out"] = tuple(x.shape), out
            return out

        self.dense = dense  # type: ignore[method-assign]
        try:
            dets = self.detect(images, score_threshold)
        finally:
            del self.dense  # back to the class's method
        same = memo.get("shape") == tuple(images.shape)
        return dets, memo.get("out") if same else None

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        """The backbone's feature maps ``[B, C_l, h_l, w_l]`` covering the images, finest first.

        Works for every torchvision detector (``model.transform`` then ``model.backbone``). The
        transform may pad a batch; each map is cropped to the part that covers the image, so a
        cell's position maps linearly onto the input image. Custom detectors override this.
        """
        m = self.model
        if not (hasattr(m, "transform") and hasattr(m, "backbone")):
            raise NotImplementedError(
                f"{type(self).__name__} has no model.transform/model.backbone; override "
                "feature_maps() to return its backbone features for region embeddings"
            )
        images = self._batch(images)
        image_list, _ = m.transform(list(images))
        feats = m.backbone(image_list.tensors)
        feats = [feats] if isinstance(feats, Tensor) else list(feats.values())
        extents = covering_extents(
            feats, tuple(image_list.tensors.shape[-2:]), tuple(image_list.image_sizes[0])
        )
        return [f[..., :h, :w] for f, (h, w) in zip(feats, extents, strict=True)]

    def dense_with_features(self, images: Tensor) -> FeatureDense:
        """:meth:`dense` plus the feature maps it was computed from (see :class:`FeatureDense`).

        Families that support ODAM override this; the base class has no feature maps to give.
        """
        raise NotImplementedError(
            f"{type(self).__name__} does not expose the feature maps its head reads; override "
            "dense_with_features() (or feature_targets()) to explain it with ODAM"
        )

    def feature_targets(
        self, images: Tensor, targets: list[Target], output: TargetOutput = "score"
    ) -> FeatureTargets:
        """What :meth:`target_outputs` returns, plus the feature map each target is read from.

        For families with a fixed candidate set this is the level the candidate index falls in
        (:func:`levels_of` over :attr:`FeatureDense.level_sizes`), and the outputs are gathered
        from the same dense view as :meth:`target_outputs`.
        """
        fd = self.dense_with_features(self._batch(images))
        d = fd.dense
        cand = torch.tensor([t.candidate for t in targets], device=d.scores.device)
        levels = levels_of([t.candidate for t in targets], fd.level_sizes)
        if output == "score":
            lab = torch.tensor([t.label for t in targets], device=d.scores.device)
            outputs = d.scores[:, cand, lab]
        else:
            outputs = d.boxes[:, cand, BOX_COORDS[output]]
        return FeatureTargets(outputs, fd.features, levels, fd.extents)

    def target_outputs(
        self, images: Tensor, targets: list[Target], output: TargetOutput = "score"
    ) -> Tensor:
        """``out[b, t]``: target t's class score (or box coordinate) on image b. Shape [B, T].

        For anchor-based families this is ``dense(x).scores[b, candidate_t, label_t]``: the same
        anchor is followed across perturbations, as E2X's prior-box index did (paper, Sec. 3).
        """
        d = self.dense(self._batch(images))
        cand = torch.tensor([t.candidate for t in targets], device=d.scores.device)
        if output == "score":
            lab = torch.tensor([t.label for t in targets], device=d.scores.device)
            return d.scores[:, cand, lab]
        return d.boxes[:, cand, BOX_COORDS[output]]


def model_fingerprint(detector: Detector) -> str:
    """A short sha256 of the detector's parameters and buffers (its weights, not its file)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in detector.model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
