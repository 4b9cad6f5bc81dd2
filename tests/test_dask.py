"""The explain stage on Dask: chunks of images on a 2-worker LocalCluster, merged into the same
table and maps as a local run.

The workers are processes. The session's Prefect harness sets PREFECT_API_URL in the settings
context, which prefect-dask sends with every task, so the workers report to the harness's server
instead of starting temporary servers of their own (checked through each chunk's reported URL
and the task runs the server holds).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURE_CHECKPOINT

from e2x_pipeline.config import load_config

pytest.importorskip("prefect_dask")
pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]
N_EXPLAIN = 8
KEYS = ["candidate_id", "method", "output", "params_hash"]


def _overrides(bench: Path, out: Path) -> dict:
    return {
        "data.root": str(bench),
        "output_dir": str(out),
        "model.checkpoint": str(FIXTURE_CHECKPOINT),
        "explain.methods": ["e2x", "drise"],
        "explain.max_candidates": N_EXPLAIN,
        "explain.drise_masks": 16,
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def mined(tiny_benchmark, tmp_path_factory):
    """``<out>/val/candidates.parquet`` from a real ``e2x mine --no-fiftyone``."""
    out = tmp_path_factory.mktemp("dask") / "mined"
    cmd = [sys.executable, "-m", "e2x_cli.main", "mine", "--no-fiftyone", "--no-progress"]
    for k, v in _overrides(tiny_benchmark, out).items():
        v = "[" + ",".join(v) + "]" if isinstance(v, list) else v
        cmd += ["--set", f"{k}={v}"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return tiny_benchmark, out


def _copy_mined(src: Path, dst: Path) -> None:
    (dst / "val").mkdir(parents=True)
    for name in ("candidates.parquet", "predictions.parquet", "metrics.json"):
        shutil.copy(src / "val" / name, dst / "val" / name)


def test_dask_chunks_merge_to_the_local_table(mined, tmp_path, prefect_harness, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from e2x_pipeline import stages
    from flows.dask_explain import dask_explain_flow, explain_with_dask

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the worker processes inherit it
    bench, src = mined
    local_out, dask_out = tmp_path / "local", tmp_path / "dask"
    _copy_mined(src, local_out)
    _copy_mined(src, dask_out)

    local_cfg = load_config(None, _overrides(bench, local_out))
    stages.explain_stage(local_cfg, stages.detector_for(local_cfg), "val", progress=False)
    local = pd.read_parquet(local_out / "val" / "explanations.parquet")
    assert local["image_id"].nunique() >= 4, "too few images to split into chunks"

    cfg = load_config(None, _overrides(bench, dask_out))
    # 3 chunks on 2 workers; every task asks for one GPU resource, which each worker offers once
    opts = {"workers": 2, "chunks": 3, "gpus_per_task": 1}
    result = explain_with_dask(cfg, "val", opts, progress=False)
    merged = pd.read_parquet(dask_out / "val" / "explanations.parquet")

    # the same rows in the same order; only the timings differ
    cols = [c for c in local.columns if c not in ("seconds", "values")]
    pd.testing.assert_frame_equal(merged[cols], local[cols])
    for a, b in zip(merged["values"], local["values"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert not merged.duplicated(KEYS).any()
    assert not (dask_out / "val" / "parts").exists()
    # the maps: one file per image, the same arrays
    for f in sorted((local_out / "val" / "maps").glob("*.npz")):
        with np.load(f) as a, np.load(dask_out / "val" / "maps" / f.name) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-6)

    # the chunks ran in two worker processes, all reporting to the harness's server
    chunks = result["chunks"]
    assert len(chunks) == 3 and sum(c["images"] for c in chunks) == local["image_id"].nunique()
    assert len({c["pid"] for c in chunks}) == 2
    assert {c["api_url"] for c in chunks} == {PREFECT_API_URL.value()}
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_task_runs() if r.name.startswith("explain-chunk")]
    assert sum(r.state.name == "Completed" for r in runs) >= 3

    # a rerun in other chunks (the flow on Prefect's thread runner: no cluster to start) explains
    # nothing again and leaves the table as it was
    maps = {f: f.stat().st_mtime_ns for f in (dask_out / "val" / "maps").glob("*.npz")}
    again = dask_explain_flow(cfg.model_dump(mode="json"), "val", False, chunks=2)
    assert len(again["chunks"]) == 2
    assert {f: f.stat().st_mtime_ns for f in maps} == maps  # no image explained again
    rerun = pd.read_parquet(dask_out / "val" / "explanations.parquet")
    pd.testing.assert_frame_equal(rerun, merged)


def test_plan_chunks_and_merge_parts(tmp_path):
    """No cluster: chunks are contiguous and even; the merge keeps the main table's copy of a
    row, sorts by image id (stable) and removes the parts."""
    from e2x_pipeline.explain.parts import merge_parts, plan_chunks
    from e2x_pipeline.explain.stage import TABLE_COLUMNS, _typed
    from e2x_pipeline.io_utils import write_table
    from e2x_pipeline.layout import SplitLayout

    cands = pd.DataFrame({"image_id": [5, 1, 1, 9, 3, 7, 2]})
    assert plan_chunks(cands, 3) == [[1, 2], [3, 5], [7, 9]]
    assert plan_chunks(cands, 10) == [[1], [2], [3], [5], [7], [9]]
    assert plan_chunks(cands.iloc[:0], 3) == []

    def rows(image_id, cid, seconds):
        row = dict.fromkeys(TABLE_COLUMNS)
        row.update(candidate_id=cid, image_id=image_id, method="e2x", output="score")
        row.update(params_hash="h", seed=0, values=[1.0], n_segments=1, seconds=seconds)
        row.update(passes=1.0, shared_by=1, valid=True)
        return _typed(pd.DataFrame([row], columns=list(TABLE_COLUMNS)))

    write_table(tmp_path / "explanations.parquet", rows(3, "c3", 1.0))
    write_table(
        SplitLayout(tmp_path).part_file(3, 5), pd.concat([rows(5, "c5", 2.0), rows(3, "c3", 9.0)])
    )
    write_table(SplitLayout(tmp_path).part_file(1, 2), rows(1, "c1", 3.0))
    table = merge_parts(tmp_path)
    assert list(table["candidate_id"]) == ["c1", "c3", "c5"]
    assert list(table["seconds"]) == [3.0, 1.0, 2.0]  # c3: the main table's row
    assert not (tmp_path / "parts").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "explanations.parquet"), table)
