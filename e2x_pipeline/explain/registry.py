"""Looking up explanation methods by name.

Every :class:`~.base.Explainer` subclass with a ``name`` registers itself in
:data:`e2x_pipeline.registry.EXPLAINERS` (see :meth:`Explainer.__init_subclass__`); the first
lookup imports every module of this package. So a new method is one new file here, and the
config, the explain stage and the metrics learn of it from the registry and its capabilities.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..config import ExplainConfig
from ..detectors.base import Detector
from ..registry import EXPLAINERS
from .base import Explainer

__all__ = ["EXPLAINERS", "explainer_class", "get_explainer"]


def explainer_class(name: str) -> type[Explainer]:
    """The class registered as ``name``; its capability flags say what the method can do."""
    return EXPLAINERS.get(name)


def get_explainer(
    name: str,
    detector: Detector,
    cfg: ExplainConfig | None = None,
    seed: int = 0,
    *,
    mean: Tensor | None = None,
    **options: Any,
) -> Explainer:
    """The explainer called ``name``; ``mean`` is the dataset mean reference, ``options`` the
    method's own settings (its ``Options`` model, e.g. ``scheme`` for IG, ``n_samples`` for
    PDA), on top of ``cfg.options[name]``."""
    return explainer_class(name)(detector, cfg, seed, mean, **options)
