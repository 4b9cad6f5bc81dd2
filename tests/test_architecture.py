"""The architecture's promises, checked: a new explainer is one class, and the run layout is the
only place that spells a table's file name. (The layer contracts run as ``lint-imports`` in
``make test``; see ``[tool.importlinter]`` in pyproject.toml.)"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from e2x_pipeline.config import ConfigError, load_config
from e2x_pipeline.detectors.base import Target, TargetOutput
from e2x_pipeline.explain.base import Attribution, Explainer
from e2x_pipeline.layout import SplitLayout, StageOutputMissing
from e2x_pipeline.registry import EXPLAINERS

ROOT = Path(__file__).parent.parent
FIXTURE = Path(__file__).parent / "fixtures" / "compact_ssd_benchmark.pt"


class BoxShareOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float = 1.0


@pytest.fixture
def toy_method():
    """A toy method registered for one test only (the registry is process-wide)."""

    class BoxShareExplainer(Explainer):
        """A toy method with a known answer: each superpixel's value is ``scale`` times the share of
        its pixels inside the target's box. It follows boxes, not candidates, so it also explains
        uncovered FNs, which only a capability (not a method name) can tell the explain stage."""

        name = "toy_box_share"
        Options = BoxShareOptions
        needs_candidate = False

        def method_params(self) -> dict:
            return {"scale": self.options.scale}

        def attribute(
            self,
            image: Tensor,
            targets: list[Target],
            output: TargetOutput,
            segments: Tensor,
            n_segments: int,
            reference: Tensor,
            generator: torch.Generator,
        ) -> Attribution:
            h, w = segments.shape
            ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            area = torch.bincount(segments.flatten(), minlength=n_segments).double()
            values = []
            for t in targets:
                x1, y1, x2, y2 = t.box
                inside = ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).flatten().double()
                share = torch.bincount(segments.flatten(), inside, minlength=n_segments) / area
                values.append(self.options.scale * share)
            v = torch.stack(values)
            return Attribution(
                v, v[:, segments].float(), 0, torch.zeros(len(targets), dtype=torch.long)
            )

    yield BoxShareExplainer.name
    EXPLAINERS.unregister(BoxShareExplainer.name)


def _expected(segments: np.ndarray, box: tuple[float, ...], scale: float) -> np.ndarray:
    h, w = segments.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])
    m = segments.max() + 1
    return scale * np.bincount(segments.ravel(), inside.ravel(), m) / np.bincount(segments.ravel())


def test_a_toy_explainer_is_one_class_and_runs_through_e2x_explain(
    tmp_path, tiny_benchmark, toy_method
):
    from e2x_cli.main import main

    out = tmp_path / "run"
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "device": "cpu",
                "output_dir": str(out),
                "data": {"root": str(tiny_benchmark)},
                "model": {"checkpoint": str(FIXTURE)},
                "explain": {
                    "methods": ["toy_box_share"],
                    "n_segments": 30,
                    "max_candidates": 8,
                    "options": {"toy_box_share": {"scale": 2.0}},
                },
            }
        )
    )
    common = ["--config", str(cfg_path), "--no-progress"]
    assert main(["mine", *common, "--no-fiftyone"]) == 0
    assert main(["explain", *common]) == 0
    layout = SplitLayout(out / "val")
    table = pd.read_parquet(layout.explanations)
    cands = pd.read_parquet(layout.candidates).set_index("candidate_id")
    assert set(table["method"]) == {"toy_box_share"} and len(table) > 0
    assert table["valid"].all()  # uncovered FNs too: needs_candidate = False
    assert (table["params"].str.contains('"scale": 2.0')).all()
    for r in table.itertuples():
        c = cands.loc[r.candidate_id]
        with np.load(out / "val" / r.map_file) as maps:
            segments = maps[r.segments_key]
        box = (c.box_x1, c.box_y1, c.box_x2, c.box_y2)
        np.testing.assert_allclose(r.values, _expected(segments, box, 2.0), atol=1e-9)


def test_the_config_takes_method_choices_and_options_from_the_registry(toy_method):
    cfg = load_config(None, ["explain.methods=[e2x,toy_box_share]"])
    assert cfg.explain.methods == ["e2x", "toy_box_share"]
    with pytest.raises(ConfigError, match="unknown explanation method 'nope'.*toy_box_share"):
        load_config(None, ["explain.methods=[nope]"])
    with pytest.raises(ConfigError, match="options.toy_box_share: unknown key 'scal'"):
        load_config(None, ["explain.options={toy_box_share: {scal: 2}}"])
    with pytest.raises(ConfigError, match="unknown architecture 'yolo'"):
        load_config(None, ["model.arch=yolo"])
    EXPLAINERS.unregister("toy_box_share")
    with pytest.raises(ConfigError, match="unknown explanation method 'toy_box_share'"):
        load_config(None, ["explain.methods=[toy_box_share]"])


def test_missing_stage_output_names_the_command(tmp_path):
    with pytest.raises(StageOutputMissing, match=r"run 'e2x mine --split val'"):
        SplitLayout(tmp_path / "val", "val").require("candidates")
    with pytest.raises(AttributeError):
        SplitLayout(tmp_path).require("no_such_table")


def test_only_the_layout_spells_run_table_file_names():
    from e2x_pipeline.layout import RunLayout, SplitLayout, Table

    names = {
        t.file_name
        for cls in (SplitLayout, RunLayout)
        for t in vars(cls).values()
        if isinstance(t, Table)
    }
    assert "candidates.parquet" in names and len(names) >= 15
    pattern = re.compile("|".join(re.escape(f'"{n}"') for n in names))
    offenders = []
    for pkg in ("e2x_pipeline", "flows", "e2x_bench", "e2x_cli"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path.name == "layout.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
