"""D-RISE (Petsiuk et al. 2021): saliency of a detection from randomly masked images.

N binary grids of h x w cells (16 x 16, p = 0.5) are bilinearly upsampled to
(h+1)*CH x (w+1)*CW (CH = ceil(H/h), CW = ceil(W/w)) and cropped to H x W at a random shift
(0..CH-1, 0..CW-1). The masked image is image (.) mask (black where masked). For target t with box
B_t and class c_t the weight of mask n is the best match among the masked image's dense
candidates a (all of them, before NMS):

    w_{n,t} = max_a IoU(box_a, B_t) * cos(p_a, e_{c_t}) * o_a,

p_a the candidate's class-probability vector, e_c the one-hot target class (the paper's choice for
a user-specified target; the detection's own vector would favour the background class for FN
candidates), o_a the objectness where the family has one (else 1). The saliency is

    S_t = (1/N) sum_n w_{n,t} M_n      (optionally minus mean_n(w_{n,t}) * (1/N) sum_n M_n,
                                         as Microsoft's implementation; no min-max scaling).

The masks are shared by all targets of the image and batched through the model. Targets need a
box; a candidate without one takes its box from the dense view of the clean image. D-RISE scores
class similarity only, so it does not explain box coordinates. Its map is not a signed
attribution (it is >= 0 unless centred).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ..boxes import broadcast_iou
from ..detectors.base import Target, TargetOutput
from .base import Attribution, Explainer
from .superpixels import superpixel_aggregate


def batched_iou(boxes: Tensor, targets: Tensor) -> Tensor:
    """IoU ``[B, A, T]`` of boxes ``[B, A, 4]`` against target boxes ``[T, 4]`` (xyxy).

    Class-specific boxes (Faster R-CNN) come already picked per target as ``[B, A, T, 4]``.
    """
    b = boxes if boxes.dim() == 4 else boxes.unsqueeze(2)
    return broadcast_iou(b, targets.view(1, 1, -1, 4))


def drise_masks(
    idx: Tensor,
    grids: Tensor,
    shifts: Tensor,
    hw: tuple[int, int],
    cell: tuple[int, int],
) -> Tensor:
    """Masks ``[B, H, W]`` for mask indices ``idx`` from binary grids ``[N, 1, h, w]``."""
    h, w = grids.shape[-2:]
    up = F.interpolate(
        grids[idx],
        size=((h + 1) * cell[0], (w + 1) * cell[1]),
        mode="bilinear",
        align_corners=False,
    )[:, 0]
    rows = shifts[idx, 0].unsqueeze(1) + torch.arange(hw[0], device=up.device)
    cols = shifts[idx, 1].unsqueeze(1) + torch.arange(hw[1], device=up.device)
    b = torch.arange(idx.numel(), device=up.device).view(-1, 1, 1)
    return up[b, rows.unsqueeze(2), cols.unsqueeze(1)]


class DRiseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    grid: tuple[int, int] = (16, 16)
    """Cells of the random binary grid (h, w) each mask is upsampled from."""
    p: float = Field(0.5, gt=0, lt=1)
    """Probability that a cell is kept."""
    center: bool = False


class DRiseExplainer(Explainer):
    name = "drise"
    samples_setting = "drise_masks"
    Options = DRiseOptions
    shares_targets = True
    uses_reference = False
    needs_candidate = False  # it matches the target box on every masked image

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grid = (int(self.options.grid[0]), int(self.options.grid[1]))
        self.p = float(self.options.p)
        self.center = bool(self.options.center)

    def method_params(self) -> dict[str, Any]:
        return {
            "masks": self.cfg.drise_masks,
            "grid": list(self.grid),
            "p": self.p,
            "center": self.center,
        }

    def _target_boxes(self, image: Tensor, targets: list[Target]) -> tuple[Tensor, int]:
        missing = [i for i, t in enumerate(targets) if t.box is None]
        boxes = torch.zeros(len(targets), 4, device=image.device)
        for i, t in enumerate(targets):
            if t.box is not None:
                boxes[i] = torch.as_tensor(t.box, dtype=torch.float32, device=image.device)
        if not missing:
            return boxes, 0
        if any(targets[i].candidate < 0 for i in missing):
            raise ValueError("D-RISE needs a box for targets without a candidate (candidate -1)")
        with torch.no_grad():
            dense = self.detector.dense(image.unsqueeze(0))
        cand = torch.as_tensor([targets[i].candidate for i in missing], device=image.device)
        picked = dense.boxes[0, cand]
        if picked.dim() == 3:  # class-specific boxes [n, C, 4]: the target's class
            lab = torch.as_tensor([targets[i].label for i in missing], device=image.device)
            picked = picked[torch.arange(len(missing), device=image.device), lab]
        boxes[missing] = picked.float()
        return boxes, 1

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
        dev = image.device
        n, (gh, gw) = self.cfg.drise_masks, self.grid
        hw = (int(image.shape[1]), int(image.shape[2]))
        cell = (math.ceil(hw[0] / gh), math.ceil(hw[1] / gw))
        grids = (torch.rand(n, 1, gh, gw, generator=generator, device=dev) < self.p).float()
        shifts = torch.stack(
            [
                torch.randint(0, cell[0], (n,), generator=generator, device=dev),
                torch.randint(0, cell[1], (n,), generator=generator, device=dev),
            ],
            dim=1,
        )
        tboxes, passes = self._target_boxes(image, targets)
        labels = torch.as_tensor([t.label for t in targets], device=dev)
        sal = torch.zeros(len(targets), *hw, device=dev)
        mask_sum = torch.zeros(hw, device=dev)
        w_sum = torch.zeros(len(targets), device=dev)
        bad = torch.zeros(len(targets), dtype=torch.long, device=dev)
        with torch.no_grad():
            for i0 in range(0, n, self.cfg.batch_size):
                idx = torch.arange(i0, min(n, i0 + self.cfg.batch_size), device=dev)
                masks = drise_masks(idx, grids, shifts, hw, cell)
                dense = self.detector.dense(image.unsqueeze(0) * masks.unsqueeze(1))
                probs = dense.probs.float()
                cos = probs[..., labels] / probs.norm(dim=-1, keepdim=True).clamp(min=1e-12)
                boxes = dense.boxes if dense.boxes.dim() == 3 else dense.boxes[:, :, labels]
                sim = batched_iou(boxes.float(), tboxes) * cos  # [B, A, T]
                if self.detector.has_objectness and dense.objectness is not None:
                    sim = sim * dense.objectness.float().unsqueeze(-1)
                weight = sim.max(dim=1).values  # [B, T]
                finite = torch.isfinite(weight)
                bad += (~finite).long().sum(0)
                weight = torch.where(finite, weight, torch.zeros_like(weight))
                sal += torch.einsum("bt,bhw->thw", weight, masks)
                w_sum += weight.sum(0)
                mask_sum += masks.sum(0)
        sal = sal / n
        if self.center:
            sal = sal - (w_sum / n).view(-1, 1, 1) * (mask_sum / n)
        values = superpixel_aggregate(sal, segments, n_segments, self.cfg.aggregate)
        return Attribution(values, sal, passes + n, bad)
