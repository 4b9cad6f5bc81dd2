"""Building torchvision detection models by name, without downloading anything by default."""

from __future__ import annotations

from torch import nn


def one_stage_kwargs(image_size: int) -> dict:
    """Transform sizes for torchvision's FPN detectors: shorter side ``image_size``.

    The longer side is capped at torchvision's 1333/800 ratio of it, as in its COCO recipe.
    """
    return {"min_size": image_size, "max_size": max(image_size, round(image_size * 1333 / 800))}


def build_torchvision(
    arch: str, num_classes: int, image_size: int, weights: str | None, **kwargs
) -> nn.Module:
    """A torchvision detection model by builder name: random init, or pretrained by name.

    Random init uses ``weights_backbone=None`` so nothing is downloaded. Named ``weights`` (e.g.
    ``"DEFAULT"``) are fetched by torchvision on first use and fix the class count to theirs.
    """
    from torchvision.models import detection as tv_detection

    builder = getattr(tv_detection, arch)
    kwargs = {**one_stage_kwargs(image_size), **kwargs}
    if weights is None:
        return builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    try:
        return builder(weights=weights, num_classes=num_classes, **kwargs)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"{arch} pretrained weights {weights!r} cannot be used with {num_classes} classes "
            f"({exc}); name weights torchvision has for {arch} (e.g. 'DEFAULT') and use their "
            "class list (weights.meta['categories']), or unset model.weights to start from scratch"
        ) from None
