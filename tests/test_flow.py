"""The e2x-pipeline Prefect flow end to end on a tiny benchmark: a real Prefect run (session
harness), a real FiftyOne database (session mongod), and an idempotent rerun."""

from pathlib import Path

import pandas as pd

from e2x_pipeline.config import load_config


def test_pipeline_flow_runs_and_reruns_idempotently(
    tiny_benchmark, tmp_path, fo_db, prefect_harness
):
    import fiftyone as fo

    from flows.pipeline import e2x_pipeline

    cfg = load_config(
        None,
        {
            "data.root": str(tiny_benchmark),
            "output_dir": str(tmp_path / "run"),
            "benchmark.seed": 1,
            "benchmark.n_train": 60,
            "benchmark.n_val": 40,
            "benchmark.n_test": 20,
            "benchmark.n_pool": 40,
            "train.epochs": 2,
            "explain.max_candidates": 4,
            "data.fiftyone_dataset": "e2x-test-flow",
        },
    )
    reports = str(tmp_path / "reports")
    summary = e2x_pipeline(cfg.model_dump(mode="json"), progress=False, reports_dir=reports)
    run = tmp_path / "run" / "val"
    report = tmp_path / "reports" / Path(summary["report"]).parent.name / "index.html"
    assert report.is_file() and "Failure gallery" in report.read_text()
    cands = pd.read_parquet(run / "candidates.parquet")
    expl = pd.read_parquet(run / "explanations.parquet")
    n_failures = int(cands["outcome"].isin(["fp", "fn"]).sum())
    assert summary["mining"]["outcomes"]["fn"] + summary["mining"]["outcomes"]["fp"] == n_failures
    assert len(expl) == min(4, n_failures) and set(expl["method"]) == {"e2x"}
    assert len(summary["explain"]["overlays"]) == int(expl["valid"].sum())

    ds = fo.load_dataset("e2x-test-flow")
    n_samples = len(ds)
    n_labels = ds.count("e2x_predictions.detections")
    assert n_samples == 40 and "e2x-failures" in ds.list_saved_views()
    # cluster and repair ran, and their FiftyOne datasets hold one sample per failure / pool image
    modes = pd.read_parquet(run / "failure_modes.parquet")
    assert summary["failure_modes"]["failure_modes"] == len(modes) >= 1
    assert summary["repair"]["selected"] == len(pd.read_parquet(run / "repair_set.parquet")) > 0
    failures = fo.load_dataset(summary["fiftyone_datasets"]["failures"])
    pool = fo.load_dataset(summary["fiftyone_datasets"]["pool"])
    n_failures_ds = len(failures)
    assert n_failures_ds == int(expl["valid"].sum()) and len(pool) == 40
    assert len(pool.load_saved_view("e2x-repair")) == summary["repair"]["selected"]

    # A rerun: the checkpoint is reused, nothing is explained twice, FiftyOne holds no duplicates.
    state2 = e2x_pipeline(
        cfg.model_dump(mode="json"), progress=False, reports_dir=reports, return_state=True
    )
    summary2 = state2.result()
    # nothing changed: the compute tasks are served from the cache (content-hash keys)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state2.state_details.flow_run_id])
            )
        )
    states = {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}
    for name in ("train", "evaluate", "mine", "explain", "cluster", "repair"):
        assert states[name] == "Cached", states
    assert summary2["checkpoint"] == summary["checkpoint"]
    expl2 = pd.read_parquet(run / "explanations.parquet")
    pd.testing.assert_frame_equal(expl, expl2)
    ds.reload()
    assert len(ds) == n_samples and ds.count("e2x_predictions.detections") == n_labels
    failures.reload()
    pool.reload()
    assert len(failures) == n_failures_ds and len(pool) == 40
    # the run history: the rerun replaced its record; each mode has a view by its stable id
    from e2x_pipeline.history import HistoryStore

    store = HistoryStore(tmp_path / "run" / "history.sqlite")
    assert len(store.runs()) == 1
    stable = [m["stable_id"] for m in summary2["history"]["modes"]]
    assert stable == [m["stable_id"] for m in summary["history"]["modes"]] and stable
    assert {f"e2x-mode-{s}" for s in stable} <= set(failures.list_saved_views())
    assert "Failure modes across runs" in report.read_text() and stable[0] in report.read_text()

    # --watch: nothing newer than the last run's checkpoint -> skipped; a newer one -> a run that
    # compares with the first
    import os
    import shutil

    from e2x_pipeline.detectors import load_checkpoint, save_checkpoint

    watch = tmp_path / "ckpts"
    watch.mkdir()
    shutil.copy2(summary["checkpoint"], watch / "base.pt")
    quiet = {"progress": False, "fiftyone": False, "report": False, "retrain": False}
    skipped = e2x_pipeline(cfg.model_dump(mode="json"), watch=str(watch), **quiet)
    assert skipped["skipped"] and "last run" in skipped["reason"]
    state, meta = load_checkpoint(summary["checkpoint"])
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] * 0.9  # another checkpoint of the same detector
    save_checkpoint(watch / "next.pt", state, {**meta, "parent": str(watch / "base.pt")})
    t = (watch / "base.pt").stat().st_mtime + 60
    os.utime(watch / "next.pt", (t, t))
    third = e2x_pipeline(cfg.model_dump(mode="json"), watch=str(watch), **quiet)
    assert Path(third["checkpoint"]) == watch / "next.pt"
    runs = store.runs()
    assert len(runs) == 2 and runs["previous_key"].iloc[1] == runs["run_key"].iloc[0]
    assert runs["parent"].iloc[1] == str(watch / "base.pt")
    assert third["history"]["previous_seq"] == 1
    for name in ("e2x-test-flow", failures.name, pool.name):
        fo.delete_dataset(name)
