"""The App plugin's operator "E2X: explain selected samples", run through FiftyOne's operator API.

One module fixture makes a small real run (the tiny benchmark's val split mined by the committed
compact SSD, a few failures explained with E2X) and publishes its failures dataset into the
session's mongod. `e2x app --install-plugin` links the repository's plugin into a temporary
plugins folder, and ``fiftyone.operators.execute_operator`` runs the operator as the App would.
The heatmaps it writes must be exactly what ``explain_image`` gives for the same candidates.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURE_CHECKPOINT

from e2x_pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DATASET = "e2x-test-plugin"  # the failures dataset is "<data.fiftyone_dataset>-failures"


@pytest.fixture(scope="module")
def run(tiny_benchmark, tmp_path_factory, fo_db):
    """A mined and explained run (8 failures, E2X) and its published failures dataset."""
    from e2x_pipeline import fiftyone_io, stages

    out = tmp_path_factory.mktemp("plugin-run") / "run"
    cfg = load_config(
        None,
        {
            "data.root": str(tiny_benchmark),
            "data.fiftyone_dataset": DATASET,
            "output_dir": str(out),
            "model.checkpoint": str(FIXTURE_CHECKPOINT),
            "explain.methods": ["e2x"],
            "explain.max_candidates": 8,
            "device": "cpu",
        },
    )
    det = stages.detector_for(cfg)
    stages.mine_stage(cfg, det, "val")
    stages.explain_stage(cfg, det, "val", progress=False)
    name = stages.publish_failures_stage(cfg, "val")
    yield cfg, det, name
    fiftyone_io.delete_dataset(name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory, fo_db):
    """`e2x app --install-plugin` into a temporary FiftyOne plugins folder."""
    import fiftyone as fo

    from e2x_cli.main import main

    plugins = tmp_path_factory.mktemp("fo-plugins")
    old = fo.config.plugins_dir
    fo.config.plugins_dir = str(plugins)
    try:
        assert main(["app", "--install-plugin"]) == 0
        yield plugins
    finally:
        fo.config.plugins_dir = old


def _execute(ds, selected, **params):
    import fiftyone as fo
    from fiftyone.operators import execute_operator

    from e2x_pipeline.fiftyone_io import OPERATOR_URI

    where = {"dataset": ds} if isinstance(ds, fo.Dataset) else {"view": ds}
    return execute_operator(OPERATOR_URI, ctx={**where, "selected": selected, "params": params})


def _expected(cfg, det, cids, method, output, explain_cfg):
    """The maps ``explain_image`` gives for ``cids`` (one image), as the explain stage calls it."""
    from e2x_pipeline import stages
    from e2x_pipeline.data.coco import load_image
    from e2x_pipeline.detectors.base import Target
    from e2x_pipeline.explain.stage import explain_image
    from e2x_pipeline.explain.superpixels import slic_segments

    cands = pd.read_parquet(cfg.split_layout("val").candidates).set_index("candidate_id")
    rows = cands.loc[cids]
    assert rows["image_id"].nunique() == 1
    image = load_image(rows["image_path"].iloc[0])
    exps = explain_image(
        det,
        image,
        [Target.from_row(r) for _, r in rows.iterrows()],
        [method],
        explain_cfg,
        cfg.seed,
        segments=slic_segments(image, explain_cfg.n_segments, explain_cfg.compactness),
        mean=stages.reference_image(cfg),
        candidate_ids=list(cids),
        outputs=[output],
    )
    return {e.candidate_id: e.pixel_map for e in exps}


def _one_image(ds):
    """The sample ids and candidate ids of the failures on the image with the most of them."""
    ids, cids, image_ids = ds.values(["id", "candidate_id", "image_id"])
    best = pd.Series(image_ids).value_counts().index[0]
    pick = [(i, c) for i, c, im in zip(ids, cids, image_ids, strict=True) if im == best]
    return [i for i, _ in pick], [c for _, c in pick]


def test_install_links_the_plugin_and_fiftyone_lists_the_operator(installed):
    from fiftyone.operators import OperatorRegistry

    from e2x_pipeline.fiftyone_io import OPERATOR_URI

    link = installed / "e2x"
    assert link.is_symlink() and link.resolve() == (ROOT / "plugins" / "e2x").resolve()
    assert OperatorRegistry().operator_exists(OPERATOR_URI)
    op = OperatorRegistry().get_operator(OPERATOR_URI)
    assert op.config.label == "E2X: explain selected samples"
    assert op.config.allow_delegated_execution and op.config.allow_immediate_execution


def test_publish_records_the_run_with_absolute_paths(run):
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.run_record import config_of

    cfg, _, name = run
    record = fiftyone_io.run_record_of(name)
    again, split = config_of(record)
    assert split == "val" and again.model.checkpoint == FIXTURE_CHECKPOINT.resolve()
    assert again.output_dir == cfg.output_dir.resolve() and again.output_dir.is_absolute()
    assert again.explain == cfg.explain


def test_form_offers_the_registered_methods_and_refuses_box_outputs_they_cannot_do(run, installed):
    import asyncio

    from fiftyone.operators import OperatorRegistry
    from fiftyone.operators.executor import resolve_type

    from e2x_pipeline.fiftyone_io import OPERATOR_URI
    from e2x_pipeline.registry import EXPLAINERS

    def form(**params):
        request = {"dataset_name": run[2], "selected": [], "params": params}
        prop = asyncio.run(resolve_type(OperatorRegistry(), OPERATOR_URI, request))
        return prop.to_json()["type"]["properties"]

    props = form()
    choices = [c["value"] for c in props["methods"]["view"]["choices"]]
    assert choices == EXPLAINERS.names() and "lime" in choices
    assert props["output"]["type"]["values"] == ["score", "x1", "y1", "x2", "y2"]
    assert not props["output"]["invalid"]
    assert "count" in props  # nothing selected: the view's first N
    bad = form(methods=["e2x", "lime"], output="x1")["output"]
    assert bad["invalid"] and "lime" in bad["error_message"]


def test_operator_writes_heatmaps_equal_to_explain_image(run, installed):
    import fiftyone as fo

    from e2x_pipeline.fiftyone_io.convert import heatmap_range

    cfg, det, name = run
    ds = fo.load_dataset(name)
    before = {f: ds.values(f"{f}.map") for f in ("e2x_heatmap",)}
    gt_before = ds.values("ground_truth")
    sample_ids, cids = _one_image(ds)
    res = _execute(
        ds, sample_ids, methods=["e2x", "ig"], which="selected", output="score", samples=8
    )
    assert res.result["explained"] == 2 * len(cids), res.result
    assert res.result["fields"] == ["e2x_heatmap", "ig_heatmap"]
    ds.reload()
    k8 = cfg.explain.model_copy(update={"k": 8})
    for method in ("e2x", "ig"):
        want = _expected(cfg, det, cids, method, "score", k8)
        view = ds.select(sample_ids, ordered=True)
        for cid, heatmap in zip(view.values("candidate_id"), view.values(f"{method}_heatmap")):
            assert heatmap.map.shape == (128, 128) and heatmap.map.dtype == np.float32
            np.testing.assert_array_equal(heatmap.map, want[cid])
            assert heatmap.range == pytest.approx(heatmap_range(want[cid]))
            assert heatmap.range[0] == -heatmap.range[1] < 0
    # the other samples keep their published maps and have no ig map; GT is never touched
    others = ds.exclude(sample_ids)
    assert all(h is None for h in others.values("ig_heatmap"))
    old = dict(zip(ds.values("id"), before["e2x_heatmap"], strict=True))
    for sid, m in zip(others.values("id"), others.values("e2x_heatmap.map"), strict=True):
        np.testing.assert_array_equal(m, old[sid])
    assert ds.values("ground_truth") == gt_before
    colorscales = {c["path"] for c in ds.app_config.color_scheme.colorscales}
    assert {"e2x_heatmap", "ig_heatmap"} <= colorscales


def test_run_settings_reproduce_the_explain_stage_and_box_maps_get_their_own_field(run, installed):
    """With the run's own settings the operator's E2X map is the stage's stored map."""
    import fiftyone as fo

    cfg, det, name = run
    ds = fo.load_dataset(name)
    sample_ids, cids = _one_image(ds)
    res = _execute(ds, sample_ids, methods=["e2x"], which="selected", output="score")
    assert res.result["fields"] == ["e2x_heatmap"]
    expl = pd.read_parquet(cfg.split_layout("val").explanations).set_index("candidate_id")
    view = fo.load_dataset(name).select(sample_ids, ordered=True)
    for cid, heatmap in zip(view.values("candidate_id"), view.values("e2x_heatmap")):
        row = expl.loc[cid]
        with np.load(cfg.split_layout("val").root / row["map_file"]) as maps:
            stored = maps[row["map_key"]].astype(np.float32)  # float16 on disk
        np.testing.assert_allclose(heatmap.map, stored, rtol=2e-3, atol=1e-3 * np.abs(stored).max())
    # a box coordinate goes to <method>_<output>_heatmap, the score map stays
    res = _execute(ds, sample_ids[:1], methods=["e2x"], which="selected", output="x1", samples=4)
    assert res.result["fields"] == ["e2x_x1_heatmap"]
    want = _expected(cfg, det, cids[:1], "e2x", "x1", cfg.explain.model_copy(update={"k": 4}))
    got = fo.load_dataset(name).select(sample_ids[:1]).first()["e2x_x1_heatmap"].map
    np.testing.assert_array_equal(got, want[cids[0]])


def test_first_n_of_the_view_when_nothing_is_selected(run, installed):
    import fiftyone as fo

    name = run[2]
    ds = fo.load_dataset(name)
    view = ds.sort_by("candidate_id")
    res = _execute(view, [], methods=["drise"], which="view", count=2, samples=50)
    assert res.result["explained"] == 2 and res.result["fields"] == ["drise_heatmap"]
    has = [
        h is not None for h in fo.load_dataset(name).sort_by("candidate_id").values("drise_heatmap")
    ]
    assert has[:2] == [True, True] and not any(has[2:])


def test_delegated_execution_queues_and_a_delegated_executor_writes_the_maps(run, installed):
    """What `fiftyone delegated launch` does with a request scheduled from the App."""
    import fiftyone as fo
    from fiftyone.operators import execute_operator
    from fiftyone.operators.delegated import DelegatedOperationService

    from e2x_pipeline.fiftyone_io import OPERATOR_URI

    name = run[2]
    ds = fo.load_dataset(name)
    ids = ds.sort_by("candidate_id", reverse=True).limit(2).values("id")
    params = {"methods": ["lime"], "which": "selected", "samples": 20}
    ctx = {"dataset": ds, "selected": ids, "params": params, "request_delegation": True}
    res = execute_operator(OPERATOR_URI, ctx=ctx)
    assert res.delegated and "lime_heatmap" not in ds.get_field_schema()  # queued, not run
    DelegatedOperationService().execute_queued_operations(operator=OPERATOR_URI, dataset_name=name)
    ds.reload()
    assert all(h is not None for h in ds.select(ids).values("lime_heatmap"))
    assert sum(h is not None for h in ds.values("lime_heatmap")) == 2


def test_bad_requests_fail_with_one_line_that_says_what_to_do(run, installed):
    import fiftyone as fo
    from fiftyone.operators.executor import ExecutionError

    from e2x_pipeline.on_demand import OnDemandError, explain_on_demand

    cfg, det, name = run
    ds = fo.load_dataset(name)
    sample_ids, _ = _one_image(ds)
    with pytest.raises(ExecutionError, match="lime explain.s. class scores only.*pick output"):
        _execute(ds, sample_ids, methods=["lime"], which="selected", output="y2")
    with pytest.raises(ExecutionError, match="pick at least one explanation method"):
        _execute(ds, sample_ids, methods=[], which="selected", output="score")
    with pytest.raises(ExecutionError, match="no samples selected: select samples"):
        _execute(ds, [], methods=["e2x"], which="selected", output="score")
    with pytest.raises(OnDemandError, match="not in .*candidates.parquet.*republish"):
        explain_on_demand((cfg, "val"), ["val/9999/nope"], ["e2x"], detector=det)
    with pytest.raises(OnDemandError, match="samples=0"):
        explain_on_demand((cfg, "val"), ds.values("candidate_id")[:1], ["e2x"], samples=0)
    # bounded requests: the operator runs inside the App's server
    with pytest.raises(OnDemandError, match="samples=1000000: choose 1..20000 per explanation"):
        explain_on_demand((cfg, "val"), ds.values("candidate_id")[:1], ["e2x"], samples=10**6)
    many = [f"val/{i}/x" for i in range(201)]
    with pytest.raises(OnDemandError, match="201 samples selected; explain at most 200"):
        explain_on_demand((cfg, "val"), many, ["e2x"], detector=det)
    with pytest.raises(OnDemandError, match="unknown explanation method.*'rm -rf'"):
        explain_on_demand((cfg, "val"), ds.values("candidate_id")[:1], ["rm -rf"], detector=det)
    # a dataset that is not an e2x failures dataset: refused, nothing written
    other = fo.Dataset("e2x-test-plugin-foreign")
    try:
        other.add_sample(fo.Sample(filepath=ds.first().filepath, candidate_id="x"))
        with pytest.raises(ExecutionError, match="records no E2X run.*e2x cluster"):
            _execute(other, [other.first().id], methods=["e2x"], which="selected")
        assert "e2x_heatmap" not in other.get_field_schema()
    finally:
        other.delete()


def test_the_plugin_imports_only_fiftyone_and_the_library():
    """FiftyOne loads the plugin by path, so lint-imports cannot see it (``plugins`` is also
    FiftyOne's own package name); this holds its contract: no CLI, bench or flows."""
    tree = ast.parse((ROOT / "plugins" / "e2x" / "__init__.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots == {"__future__", "typing", "fiftyone", "e2x_pipeline"}
