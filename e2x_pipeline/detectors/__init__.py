"""Detectors: one interface (:class:`Detector`), one file per family, built by name.

``build_detector(arch, classes, ...)`` makes a model with fresh (or torchvision-pretrained)
weights; ``load_detector(model_cfg, device)`` loads an ``e2x train`` checkpoint, a torchvision
state_dict, or a user's ``module:function`` entry point.
"""

from __future__ import annotations

import importlib
from pathlib import Path

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
    "configured_checkpoint",
    "coco_categories",
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
    weights_file = _weights_file(cfg)
    checkpoint = cfg.checkpoint if cfg.checkpoint is not None else weights_file
    if checkpoint is not None:
        state, meta = load_checkpoint(checkpoint)
        if meta.get("arch", cfg.arch) != cfg.arch:
            raise CheckpointError(
                f"checkpoint {checkpoint} is a {meta['arch']} model but model.arch is "
                f"{cfg.arch}; set model.arch: {meta['arch']}"
            )
    classes = meta.get("classes") or _config_classes(cfg) or classes
    if classes is None:
        raise ValueError(
            f"class names are unknown: {checkpoint or 'the model'} has no E2X metadata; list them "
            "in model.classes (index 0 the background, e.g. ['__background__', 'car']) or "
            "model.classes: coco for torchvision's COCO label space"
        )
    image_size = int(meta.get("image_size", cfg.image_size or 128))
    weights = None if state is not None else cfg.weights
    det = build_detector(cfg.arch, classes, image_size, weights, device)
    if state is not None:
        try:
            missing, unexpected = det.model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit {cfg.arch} with {len(classes)} classes"
                f" ({str(exc).splitlines()[-1].strip()}); it was trained for another architecture"
                " or class count (model.classes)"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {checkpoint} does not fit {cfg.arch} with {len(classes)} classes:"
                f" missing {list(missing)[:3]}..., unexpected {list(unexpected)[:3]}...; it was "
                "trained for another architecture or class count"
            )
        det.model.to(device).eval()
    det.meta = meta
    return det


def coco_categories(arch: str) -> list[str]:
    """torchvision's COCO label space for ``arch`` (91 entries: ``__background__``, the 80
    classes and ``N/A`` for the ids COCO left out), from its weights' metadata (no download)."""
    from torchvision.models import get_model_weights

    try:
        return list(get_model_weights(arch).DEFAULT.meta["categories"])
    except (ValueError, KeyError, AttributeError):
        raise ValueError(
            f"{arch} has no torchvision COCO weights, so model.classes: coco means nothing for "
            "it; list the classes"
        ) from None


def _config_classes(cfg: ModelConfig) -> list[str] | None:
    """``model.classes``, with ``coco`` (or pretrained weights and no classes) expanded."""
    if cfg.classes == "coco" or (cfg.classes is None and cfg.weights is not None):
        return coco_categories(cfg.arch)
    return cfg.classes if isinstance(cfg.classes, list) else None


def configured_checkpoint(cfg: ModelConfig) -> Path | None:
    """The weights file the config names, so that nothing needs training: ``model.checkpoint``,
    else ``model.weights`` when it is a local file. None: train (or a weights name)."""
    if cfg.checkpoint is not None:
        return Path(cfg.checkpoint)
    return _weights_file(cfg)


def _weights_file(cfg: ModelConfig) -> Path | None:
    """``model.weights`` when it names a local file (loaded like a bare state_dict), else None
    (a torchvision weights name such as ``DEFAULT``)."""
    if cfg.weights is None:
        return None
    path = Path(cfg.weights)
    if path.is_file():
        return path
    if path.suffix in (".pt", ".pth") or "/" in cfg.weights:
        raise CheckpointError(
            f"model.weights {cfg.weights} looks like a file but does not exist; give the path to "
            "the weights file, or a torchvision weights name such as DEFAULT"
        )
    return None
