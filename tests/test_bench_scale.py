"""The scale benchmark's linear-cost fits, on times with a known answer."""

from __future__ import annotations

import pytest

from e2x_bench.scale import COST_MODELS, LINEAR_POINTS, fit_linear_cost

# images per point as the first n failures of a split would spread: fewer than n
IMAGES = {8: 7, 16: 13, 32: 25, 64: 50}
BOTH = ("images K", "n K")


def _points(cost):
    return [(n, k, IMAGES[n], cost(n, k, IMAGES[n])) for n, k in LINEAR_POINTS]


def test_fit_recovers_a_known_line_and_flags_a_bend():
    assert set(COST_MODELS) == {"a + b n K", "a + b images K"}
    fit = fit_linear_cost(_points(lambda n, k, m: 0.5 + 0.002 * n * k), ("n K",))
    assert fit["intercept_s"] == pytest.approx(0.5, abs=1e-6)
    assert fit["ms_per"]["n K"] == pytest.approx(2.0, abs=1e-4)
    assert fit["r2"] == pytest.approx(1.0)
    assert max(abs(r) for r in fit["relative_residuals"]) < 1e-6
    # a quadratic cost is not a line: R^2 drops and the residuals show it
    fit = fit_linear_cost(_points(lambda n, k, m: 0.5 + 2e-6 * (n * k) ** 2), ("n K",))
    assert fit["r2"] < 0.99
    assert max(abs(r) for r in fit["relative_residuals"]) > 0.1
    # n and K are each varied with the other held (the points the bench runs)
    assert len({n for n, _ in LINEAR_POINTS}) >= 3 and len({k for _, k in LINEAR_POINTS}) >= 3


def test_a_cost_per_image_step_is_told_apart_from_one_per_candidate_step():
    points = _points(lambda n, k, m: 0.3 + 0.004 * m * k + 0.001 * n * k)
    fit = fit_linear_cost(points, BOTH)
    assert fit["ms_per"]["images K"] == pytest.approx(4.0, abs=1e-3)
    assert fit["ms_per"]["n K"] == pytest.approx(1.0, abs=1e-3)
    assert fit["r2"] == pytest.approx(1.0)
    # the n K line alone explains it less well than the model that holds both terms
    assert fit_linear_cost(points, ("n K",))["r2"] < fit["r2"]
