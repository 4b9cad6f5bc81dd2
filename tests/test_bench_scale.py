"""The scale benchmark's linear-cost fit, on times with a known line."""

from __future__ import annotations

import pytest

from e2x_bench.scale import LINEAR_POINTS, fit_linear_cost


def test_fit_recovers_a_known_line_and_flags_a_bend():
    exact = [(n, k, 0.5 + 0.002 * n * k) for n, k in LINEAR_POINTS]
    fit = fit_linear_cost(exact)
    assert fit["intercept_s"] == pytest.approx(0.5, abs=1e-6)
    assert fit["ms_per_candidate_step"] == pytest.approx(2.0, abs=1e-4)
    assert fit["r2"] == pytest.approx(1.0)
    assert max(abs(r) for r in fit["relative_residuals"]) < 1e-6
    # a quadratic cost is not a line: R^2 drops and the residuals show it
    bent = [(n, k, 0.5 + 2e-6 * (n * k) ** 2) for n, k in LINEAR_POINTS]
    fit = fit_linear_cost(bent)
    assert fit["r2"] < 0.99
    assert max(abs(r) for r in fit["relative_residuals"]) > 0.1
    # n and K are each varied with the other held (the points the bench runs)
    assert len({n for n, _ in LINEAR_POINTS}) >= 3 and len({k for _, k in LINEAR_POINTS}) >= 3
