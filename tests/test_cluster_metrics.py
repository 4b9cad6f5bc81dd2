"""Failure-mode quality metrics of the cluster stage against hand-built cases with known answers."""

import numpy as np
import pandas as pd
import pytest

from e2x_pipeline.cluster import precision_at_k


def _features(rows: list[tuple[str, str | None, int, float]]) -> pd.DataFrame:
    """(candidate_id, cause, mode_id, strength) -> a minimal features table."""
    return pd.DataFrame(
        [
            {"candidate_id": c, "cause": cause, "mode_id": m, "strength": s}
            for c, cause, m, s in rows
        ]
    )


def test_precision_at_10_known_answer() -> None:
    rows = []
    # Mode 0: 12 occluder failures and 3 camouflage ones; the 3 camouflage ones are the
    # strongest, so mode 0's top 10 hold 7 occluder failures.
    for i in range(12):
        rows.append((f"occ{i}", "occluder", 0, 1.0 + i * 0.01))
    for i in range(3):
        rows.append((f"cam{i}", "camouflage", 0, 5.0 + i))
    # Mode 1: 4 more camouflage failures (6 camouflage failures in all, but cam2 also in mode 1
    # with a weaker feature: counted once per mode by its strongest feature) and 2 unplanted.
    for i in range(3, 6):
        rows.append((f"cam{i}", "camouflage", 1, 2.0))
    rows.append(("cam2", "camouflage", 1, 0.1))
    rows += [("bg0", None, 1, 3.0), ("bg1", None, 1, 3.0)]
    # A noise feature (mode -1) of an occluder failure does not count.
    rows.append(("occ99", "occluder", -1, 9.0))
    p = precision_at_k(_features(rows), k=10)
    # occluder: 13 failures; best mode 0 has 7 of its top 10 -> 7 / min(10, 13).
    assert p["occluder"] == pytest.approx(0.7)
    # camouflage: 6 failures; mode 1 has 4 camouflage among its 6 members; mode 0 has 3
    # -> 4 / min(10, 6).
    assert p["camouflage"] == pytest.approx(4 / 6)
    assert set(p) == {"occluder", "camouflage"}


def test_precision_at_10_perfect_and_mixed() -> None:
    perfect = _features([(f"a{i}", "a", 0, float(i)) for i in range(20)])
    assert precision_at_k(perfect) == {"a": 1.0}
    # Two causes in one mode, alternating strengths: the top 10 split 5/5.
    mixed = _features(
        [(f"x{i}", "x" if i % 2 else "y", 0, float(np.float64(i))) for i in range(20)]
    )
    assert precision_at_k(mixed) == {"x": 0.5, "y": 0.5}
    assert precision_at_k(mixed.iloc[0:0]) == {}
