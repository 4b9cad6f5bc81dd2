"""The registry of explanation methods: name -> Explainer class."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..config import ExplainConfig
from ..detectors.base import Detector
from .base import Explainer
from .drise import DRiseExplainer
from .e2x import E2XExplainer
from .ig import IGExplainer
from .lime import LimeExplainer
from .pda import PDAExplainer

EXPLAINERS: dict[str, type[Explainer]] = {
    "e2x": E2XExplainer,
    "lime": LimeExplainer,
    "pda": PDAExplainer,
    "ig": IGExplainer,
    "drise": DRiseExplainer,
}


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
    method's own keyword settings (e.g. ``scheme`` for IG, ``n_samples`` for PDA)."""
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explanation method {name!r}; choose one of {sorted(EXPLAINERS)}")
    return EXPLAINERS[name](detector, cfg, seed, mean, **options)
