"""Fidelity metrics for explanations (issue 5), one module per family.

* :mod:`.correlation` -- Pearson's rho against a reference map (the E2X paper's comparison);
* :mod:`.perturbation` -- deletion / insertion AUC with the D-RISE similarity score;
* :mod:`.pointing` -- pointing game (most negative superpixel for a FN) and energy in a region;
* :mod:`.rows` -- the per-row metrics shared by the stage and ``e2x bench explain``;
* :mod:`.sanity` -- cascading model-parameter randomisation (Adebayo et al. 2018);
* :mod:`.stage` -- ``e2x evaluate-explanations``: all of them over a run's explanations table.
"""

from __future__ import annotations

from .correlation import mean_rho, pearson_rho
from .perturbation import PerturbationCurves, auc, deletion_insertion, max_similarity
from .pointing import (
    Region,
    box_mask,
    candidate_region,
    energy_in_region,
    pointing_hit,
    pointing_sign,
)
from .rows import RowRegion, perturbation_aucs, row_metrics, row_region
from .sanity import cascading_randomization, fully_randomized, layer_groups, map_similarity

__all__ = [
    "PerturbationCurves",
    "Region",
    "RowRegion",
    "auc",
    "box_mask",
    "candidate_region",
    "cascading_randomization",
    "deletion_insertion",
    "energy_in_region",
    "fully_randomized",
    "layer_groups",
    "map_similarity",
    "max_similarity",
    "mean_rho",
    "pearson_rho",
    "perturbation_aucs",
    "pointing_hit",
    "pointing_sign",
    "row_metrics",
    "row_region",
]
