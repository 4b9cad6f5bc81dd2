"""Detectors: one interface (:class:`Detector`), one file per family, built by name.

``build_detector(arch, classes, ...)`` makes a model with fresh (or torchvision-pretrained)
weights; ``load_detector(model_cfg, device)`` loads an ``e2x train`` checkpoint, a torchvision
state_dict, or a user's ``module:function`` entry point.
"""

from __future__ import annotations

import importlib

from ..config import ModelConfig
from ..registry import ARCHITECTURES
from .base import DenseOutput, Detections, Detector, Target
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = [
    "DenseOutput",
    "Detections",
    "Detector",
    "Target",
    "CheckpointError",
    "build_detector",
    "load_detector",
    "save_checkpoint",
    "load_checkpoint",
]


def build_detector(
    arch: str,
    classes: list[str],
    image_size: int = 128,
    weights: str | None = None,
    device: str = "cpu",
) -> Detector:
    """A Detector of family ``arch`` for ``classes`` (``classes[0]`` is the background)."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown model.arch {arch!r}; choose one of {sorted(ARCHITECTURES)} or custom"
        )
    build_mod, det_mod, cls_name = ARCHITECTURES[arch]
    model = importlib.import_module(f"{__name__}.{build_mod}").build(
        arch, len(classes), image_size, weights
    )
    det_cls = getattr(importlib.import_module(f"{__name__}.{det_mod}"), cls_name)
    return det_cls(model, classes, device)


def load_detector(
    cfg: ModelConfig, device: str = "cpu", classes: list[str] | None = None
) -> Detector:
    """The detector the config names. Checkpoint metadata wins over ``classes`` and image size."""
    if cfg.arch == "custom":
        if not cfg.entrypoint:
            raise ValueError(
                "model.arch 'custom' needs model.entrypoint: 'package.module:function'"
            )
        mod_name, fn_name = cfg.entrypoint.split(":")
        fn = getattr(importlib.import_module(mod_name), fn_name)
        det = fn(cfg, device)
        if not isinstance(det, Detector):
            raise TypeError(
                f"{cfg.entrypoint} must return an e2x_pipeline Detector, got {type(det)}"
            )
        return det
    meta: dict = {}
    state = None
    if cfg.checkpoint is not None:
        state, meta = load_checkpoint(cfg.checkpoint)
        if meta.get("arch", cfg.arch) != cfg.arch:
            raise CheckpointError(
                f"checkpoint {cfg.checkpoint} is a {meta['arch']} model but model.arch is "
                f"{cfg.arch}; set model.arch: {meta['arch']}"
            )
    classes = meta.get("classes", classes)
    if classes is None:
        raise ValueError("class names are unknown: give a checkpoint with metadata or the dataset")
    image_size = int(meta.get("image_size", cfg.image_size))
    weights = None if state is not None else cfg.weights
    det = build_detector(cfg.arch, classes, image_size, weights, device)
    if state is not None:
        try:
            missing, unexpected = det.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise CheckpointError(
                f"checkpoint {cfg.checkpoint} does not fit {cfg.arch} with {len(classes)} classes"
                f" ({str(exc).splitlines()[-1].strip()}); it was trained for another architecture"
                " or class count"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {cfg.checkpoint} does not fit {cfg.arch} with {len(classes)} classes:"
                f" missing {list(missing)[:3]}..., unexpected {list(unexpected)[:3]}...; it was "
                "trained for another architecture or class count"
            )
        det.model.to(device).eval()
    det.meta = meta
    return det
