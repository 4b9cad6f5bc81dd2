"""``e2x bench targets`` collates the other benches' own results: a bench that has not run is
"not run" (never met), and every flag and value is the one its bench wrote."""

from __future__ import annotations

import json

from e2x_bench.targets import bench_targets
from e2x_pipeline.config import E2XConfig


def test_targets_collates_and_never_invents(tmp_path):
    mine = {
        "command": "e2x bench mine",
        "rows": [
            {"detector": "ssd", "images": 200, "ratio_of_medians": 1.27, "target_met": False},
            {"detector": "frcnn", "images": 16, "ratio_of_medians": 0.99, "target_met": True},
        ],
        "load_average_1_5_15": {"start": [0.5, 0.4, 0.3], "end": [1.0, 0.9, 0.8]},
    }
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    out = bench_targets(E2XConfig(), tmp_path)
    rows = {(r["id"], r["target"].split(" (")[0]): r for r in out["rows"]}
    d = [r for r in out["rows"] if r["id"] == "d"]
    assert [r["met"] for r in d] == [False, True]
    assert [r["measured"] for r in d] == ["1.27x", "0.99x"]
    for key in ("a", "b", "e", "f", "h"):  # not run: no value, no flag
        assert all(
            r["met"] is None and r["measured"] == "not run" for r in out["rows"] if r["id"] == key
        )
    assert len(rows) >= 6
    md = (tmp_path / "targets.md").read_text()
    assert "**MISSED**" in md and "| (d) |" in md and "start [0.50, 0.40, 0.30]" in md
