"""An example of a user's own model behind ``model.arch: custom``.

Point the config at it with ``model.entrypoint: "custom_entrypoint_example:make_detector"`` (the
module must be importable, e.g. on ``PYTHONPATH``). The function gets the validated
``ModelConfig`` and the device and returns any :class:`~e2x_pipeline.detectors.Detector`. Here
the user's model is a torchvision ``SSD`` with their own two-stage backbone and their own class
list; it reuses the SSD adapter, so explanations can follow its anchors like any SSD's.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDHead

from e2x_pipeline.config import ModelConfig
from e2x_pipeline.detectors import Detector, load_checkpoint
from e2x_pipeline.detectors.ssd import SSDDetector

CLASSES = ["__background__", "disc", "bar"]


class TwoLevelBackbone(nn.Module):
    out_channels = (16, 32)

    def __init__(self) -> None:
        super().__init__()
        self.s8 = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1)
        )
        self.s16 = nn.Sequential(nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1))

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        f8 = self.s8(x)
        return OrderedDict([("0", f8), ("1", self.s16(f8))])


def user_model(image_size: int) -> SSD:
    anchors = DefaultBoxGenerator([[2], [2]], min_ratio=0.2, max_ratio=0.6)
    backbone = TwoLevelBackbone()
    head = SSDHead(list(backbone.out_channels), anchors.num_anchors_per_location(), len(CLASSES))
    return SSD(backbone, anchors, (image_size, image_size), len(CLASSES), head=head)


def make_detector(cfg: ModelConfig, device: str) -> Detector:
    """The entry point: a Detector for ``cfg``; loads ``cfg.checkpoint`` weights when given."""
    torch.manual_seed(0)
    model = user_model(cfg.image_size)
    if cfg.checkpoint is not None:
        state, _ = load_checkpoint(cfg.checkpoint)
        model.load_state_dict(state)
    return SSDDetector(model, CLASSES, device)


def not_a_detector(cfg: ModelConfig, device: str) -> nn.Module:
    """A wrong entry point (returns a bare module), to test the error message."""
    return user_model(cfg.image_size)
