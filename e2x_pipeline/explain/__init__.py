"""Explainers: one interface (:class:`Explainer`), one file per method, built by name.

``get_explainer(name, detector, cfg, seed)`` returns E2X, LIME, PDA, IG or D-RISE;
``explain_image`` runs several methods on the targets of one image with one shared SLIC
segmentation; ``explain_candidates`` is the pipeline stage over a candidates table.
"""

from __future__ import annotations

from .base import Attribution, Explainer, Explanation, params_hash, path_gradients
from .drise import DRiseExplainer
from .e2x import E2XExplainer
from .ig import IGExplainer
from .lime import LimeExplainer
from .overlay import normalise_signed, render_overlay
from .pda import PDAExplainer
from .registry import EXPLAINERS, get_explainer
from .stage import explain_candidates, explain_image
from .superpixels import (
    dataset_mean,
    make_reference,
    relabel_contiguous,
    slic_segments,
    superpixel_aggregate,
)

__all__ = [
    "Attribution",
    "DRiseExplainer",
    "E2XExplainer",
    "EXPLAINERS",
    "Explainer",
    "Explanation",
    "IGExplainer",
    "LimeExplainer",
    "PDAExplainer",
    "dataset_mean",
    "explain_candidates",
    "explain_image",
    "get_explainer",
    "make_reference",
    "normalise_signed",
    "params_hash",
    "path_gradients",
    "relabel_contiguous",
    "render_overlay",
    "slic_segments",
    "superpixel_aggregate",
]
