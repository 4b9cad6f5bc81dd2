"""Per-row fidelity metrics: one candidate's explanation against its region, and the
deletion / insertion AUCs of an image's maps. ``e2x evaluate-explanations`` (:mod:`.stage`) and
``e2x bench explain`` both compute their rows here, so the two agree by construction.

Per (candidate, method) row (:func:`row_metrics`):

* ``region_source`` / ``region_fraction``: the candidate's region
  (:func:`.pointing.candidate_region`: the planted cause's region, else the GT box, else the
  candidate's box) and its share of the image, the hit rate a random superpixel would get;
* ``sign``: :func:`e2x_pipeline.vocab.outcome_sign`, -1 for a FN (look for suppressing evidence);
* ``pointing_hit``: the most extreme superpixel of ``sign * values`` on the region
  (:func:`.pointing.pointing_hit`, at least ``min_overlap`` of its pixels inside);
* ``energy``: the share of ``max(sign * map, 0)`` inside the region
  (:func:`.pointing.energy_in_region`).

Per image (:func:`perturbation_aucs`): deletion and insertion AUC of every map through the
detector (:func:`.perturbation.deletion_insertion`, batched over the image's targets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from ..config import MetricsConfig
from ..detectors.base import Detector, Target
from ..vocab import outcome_sign
from .perturbation import deletion_insertion
from .pointing import Region, box_mask, candidate_region, energy_in_region, pointing_hit


@dataclass(frozen=True)
class RowRegion:
    """Where one candidate's explanation should point, as a pixel mask, and with which sign."""

    region: Region
    mask: np.ndarray  # [H, W] bool
    sign: int

    @property
    def fraction(self) -> float:
        """The region's share of the image."""
        return float(self.mask.mean())


def row_region(
    row: Mapping[str, Any], hw: tuple[int, int], causes: Mapping[str, Mapping[str, Any]] | None
) -> RowRegion:
    """The region mask and sign of one candidates-table row (as a mapping) on an ``hw`` image."""
    region = candidate_region(row, causes)
    return RowRegion(region, box_mask(region.box, hw), outcome_sign(str(row["outcome"])))


def row_metrics(
    row: Mapping[str, Any],
    hw: tuple[int, int],
    causes: Mapping[str, Mapping[str, Any]] | None,
    values: np.ndarray | None,
    segments: np.ndarray | None,
    pixel_map: np.ndarray | None,
    *,
    min_overlap: float,
) -> dict[str, Any]:
    """``region_source``, ``region_fraction``, ``sign``, ``pointing_hit`` and ``energy`` of one
    candidate's explanation (module docstring).

    ``values`` ``[M]`` are per superpixel of ``segments`` ``[H, W]``; ``pixel_map`` is ``[H, W]``.
    Without them (an invalid explanation, or no stored map) the pointing hit and energy are NaN.
    """
    r = row_region(row, hw, causes)
    out: dict[str, Any] = {
        "region_source": r.region.source,
        "region_fraction": r.fraction,
        "sign": r.sign,
        "pointing_hit": np.nan,
        "energy": np.nan,
    }
    if values is not None and segments is not None:
        v = np.asarray(values, dtype=np.float64)
        out["pointing_hit"] = float(
            pointing_hit(v, segments, r.mask, r.sign, min_overlap=min_overlap)
        )
    if pixel_map is not None:
        out["energy"] = energy_in_region(pixel_map, r.mask, r.sign)
    return out


def perturbation_aucs(
    detector: Detector,
    image: Tensor,
    maps: np.ndarray,
    targets: list[Target],
    cfg: MetricsConfig,
    *,
    mean: Tensor | None = None,
    steps: int | None = None,
) -> list[dict[str, float]]:
    """``deletion_auc`` / ``insertion_auc`` of each of ``maps`` ``[T, H, W]`` for its target on
    ``image``, with the baselines, class vector and batch size of ``cfg`` (``steps`` overrides
    ``cfg.steps``). A map with a non-finite value gets NaN."""
    curves = deletion_insertion(
        detector,
        image,
        maps,
        targets,
        steps=cfg.steps if steps is None else steps,
        batch_size=cfg.batch_size,
        deletion_baseline=cfg.deletion_baseline,
        insertion_baseline=cfg.insertion_baseline,
        class_vector=cfg.class_vector,
        mean=mean,
    )
    return [
        {"deletion_auc": float(d), "insertion_auc": float(i)}
        for d, i in zip(curves.deletion_auc, curves.insertion_auc, strict=True)
    ]


__all__ = ["RowRegion", "perturbation_aucs", "row_metrics", "row_region"]
