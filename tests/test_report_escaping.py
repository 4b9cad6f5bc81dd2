"""The report escapes what comes from a run: a category, a file name or a cause that carries
markup shows as text (Jinja2 autoescaping), and no run value can inject a script."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from e2x_pipeline.config import load_config
from e2x_pipeline.report import build_report

EVIL = "<script>alert(1)</script>"


def _run(tmp_path: Path):
    """A hand-made run: one image, one explained FN of class ``EVIL``, a repair set whose one
    pool image is named ``EVIL``, and a failure mode whose cause is ``EVIL``."""
    cfg = load_config(None, {"output_dir": str(tmp_path / "run"), "data.root": str(tmp_path)})
    d = cfg.split_layout("val").root
    (d / "maps").mkdir(parents=True)
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (90, 120, 60)).save(image)
    box = {"box_x1": 4.0, "box_y1": 4.0, "box_x2": 20.0, "box_y2": 20.0}
    gt = {"gt_x1": 5.0, "gt_y1": 5.0, "gt_x2": 21.0, "gt_y2": 21.0}
    pd.DataFrame(
        [
            {
                "candidate_id": "c1",
                "image_id": 1,
                "file_name": EVIL,
                "image_path": str(image),
                "outcome": "fn",
                "error_type": "missed",
                "fn_kind": "near_miss",
                "category": EVIL,
                "score": 0.2,
                "gt_id": 7,
                "cause": EVIL,
                **box,
                **gt,
            }
        ]
    ).to_parquet(d / "candidates.parquet")
    np.savez(d / "maps" / "1.npz", **{"c1|e2x|score": np.linspace(-1, 1, 32 * 32).reshape(32, 32)})
    pd.DataFrame(
        [
            {
                "candidate_id": "c1",
                "image_id": 1,
                "method": "e2x",
                "output": "score",
                "valid": True,
                "map_file": "maps/1.npz",
                "map_key": "c1|e2x|score",
            }
        ]
    ).to_parquet(d / "explanations.parquet")
    pd.DataFrame(
        [{"mode_id": 0, "kind": "fn", "size": 1, "n_candidates": 1, "cause": EVIL}]
    ).to_parquet(d / "failure_modes.parquet")
    pd.DataFrame(
        [
            {
                "image_id": 9,
                "file_name": EVIL,
                "image_path": str(image),
                "mode_id": 0,
                "score": 0.5,
                "rank": 1,
                "x1": 2.0,
                "y1": 2.0,
                "x2": 12.0,
                "y2": 12.0,
            }
        ]
    ).to_parquet(d / "repair_set.parquet")
    return cfg


def test_category_and_file_name_are_escaped(tmp_path):
    cfg = _run(tmp_path)
    index = build_report(cfg, "val", tmp_path / "reports", "r1", bench_dir=None, fiftyone=False)
    page = index.read_text()
    assert "Failure gallery" in page and "Repair set" in page and "Failure modes" in page
    # the category (gallery card), the file name (repair caption) and the cause (mode title)
    assert f"class {EVIL.replace('<', '&lt;').replace('>', '&gt;')}" in page
    assert "#1 &lt;script&gt;alert(1)&lt;/script&gt; (0.500)" in page
    assert "planted cause: &lt;script&gt;" in page
    assert page.count("&lt;script&gt;") >= 4
    assert "<script>alert" not in page
    # the page's own script (the image check) is the only <script> element
    assert page.count("<script>") == 1
