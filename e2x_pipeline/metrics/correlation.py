"""Correlation of an explanation with a reference explanation, as in the E2X paper.

Gudovskiy et al. (2018, "Explain to Fix", Sec. 4 and Fig. 2) compare methods by the Pearson
correlation coefficient of their flattened pixel maps with a reference map (a long LIME run with
1000 SLIC segments and K=10000 samples, and conditional PDA):

    rho(a, b) = sum_p (a_p - mean(a)) (b_p - mean(b))
                / sqrt( sum_p (a_p - mean(a))^2 * sum_p (b_p - mean(b))^2 )

over every pixel p of the image. It is computed by :func:`scipy.stats.pearsonr`. A map that is
constant (or holds a non-finite value) has no defined correlation: the result is NaN, never 0, so
that an empty explanation is not mistaken for an uncorrelated one. The signed maps are compared
as they are (no absolute value, no rescaling: Pearson's rho is invariant to a positive affine
change of either map, and flips sign under negation).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def pearson_rho(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's rho between two maps of the same shape, flattened (NaN when undefined)."""
    x, y = _flat(a), _flat(b)
    if x.shape != y.shape:
        raise ValueError(f"maps of different shapes cannot be correlated: {a.shape} vs {b.shape}")
    if x.size < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return float("nan")
    if np.ptp(x) == 0 or np.ptp(y) == 0:  # constant map: rho undefined
        return float("nan")
    return float(pearsonr(x, y).statistic)


def mean_rho(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """E[rho] over (map, reference) pairs, ignoring undefined ones (the paper's E[rho])."""
    values = np.array([pearson_rho(a, b) for a, b in pairs], dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
