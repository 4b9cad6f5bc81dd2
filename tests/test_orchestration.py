"""Orchestration: the HTML report in a real browser, SIGKILL resume of explain, cache keys.

One module fixture mines the tiny benchmark's val split with the committed compact SSD and
explains a few failures, so the report is built from real stage tables.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURE_CHECKPOINT
from PIL import Image

from e2x_pipeline.config import load_config

ROOT = Path(__file__).resolve().parents[1]
N_EXPLAIN = 10


def _overrides(bench: Path, out: Path) -> dict:
    return {
        "data.root": str(bench),
        "output_dir": str(out),
        "model.checkpoint": str(FIXTURE_CHECKPOINT),
        "explain.methods": ["e2x"],
        "explain.max_candidates": N_EXPLAIN,
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def mined_run(tiny_benchmark, tmp_path_factory):
    """``<out>/val`` with candidates (mined by the committed detector) and explanations."""
    from e2x_pipeline import stages

    out = tmp_path_factory.mktemp("mined") / "run"
    cfg = load_config(None, _overrides(tiny_benchmark, out))
    det = stages.detector_for(cfg)
    stages.mine_stage(cfg, det, "val")
    return cfg, det


def _explained(mined_run):
    from e2x_pipeline import stages

    cfg, det = mined_run
    if not (cfg.split_layout("val").root / "explanations.parquet").is_file():
        stages.explain_stage(cfg, det, "val", progress=False)
        stages.overlay_stage(cfg, "val")
    return cfg


def _synthetic_later_stages(cfg) -> None:
    """Failure modes, a repair set, a retrain result and a bench plot in the run's layout."""
    from e2x_pipeline.io_utils import write_json

    d = cfg.output_dir / "val"
    (d / "modes").mkdir(exist_ok=True)
    Image.new("RGB", (96, 16), (200, 60, 40)).save(d / "modes" / "mode-0.png")
    pd.DataFrame(
        [
            {
                "mode_id": 0,
                "kind": "fn",
                "size": 5,
                "n_candidates": 3,
                "n_images": 3,
                "classes": '{"disk": 3}',
                "error_types": '{"missed": 3}',
                "cause": "camouflage",
                "cause_share": 0.8,
                "crops": "modes/mode-0.png",
            }
        ]
    ).to_parquet(d / "failure_modes.parquet")
    pool = sorted((cfg.data.root / "images" / "pool").glob("*.png"))[:3]
    pd.DataFrame(
        [
            {
                "image_id": i + 1,
                "file_name": p.name,
                "image_path": str(p),
                "mode_id": 0,
                "score": 0.5 - i / 10,
                "rank": i + 1,
                "support": 4,
                "segment": 7,
                "x1": 10.0,
                "y1": 12.0,
                "x2": 40.0,
                "y2": 44.0,
            }
            for i, p in enumerate(pool)
        ]
    ).to_parquet(d / "repair_set.parquet")
    write_json(cfg.output_dir / "retrain.json", {"before": {"map50": 0.8}, "after": {"map50": 0.9}})


def test_report_renders_in_chromium_with_every_image(mined_run, tmp_path):
    from e2x_pipeline.report import build_report, check_in_browser, chromium_path, screenshot

    cfg = _explained(mined_run)
    _synthetic_later_stages(cfg)
    bench = tmp_path / "bench"
    bench.mkdir()
    Image.new("RGB", (60, 40), (20, 90, 200)).save(bench / "explain.png")
    (bench / "explain.md").write_text("# Benchmark: explain\n")
    index = build_report(cfg, "val", tmp_path / "reports", "r1", bench_dir=bench)
    page = index.read_text()
    for section in ("Summary metrics", "Error breakdown", "Failure gallery", "Failure modes"):
        assert section in page
    assert "Repair set" in page and "Before / after" in page and "bench-explain.png" in page
    # every <img> names a valid PNG inside the report folder
    srcs = pd.Series(__import__("re").findall(r"<img src='([^']+)'", page))
    assert len(srcs) >= 8 and srcs.is_unique
    for src in srcs:
        path = index.parent / src
        assert path.resolve().is_relative_to(index.parent.resolve()), src
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 0
            im.verify()
    assert any("-e2x-score.png" in s for s in srcs), "no heatmap overlay in the gallery"
    if chromium_path() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    result = check_in_browser(index)
    assert result["images"] == len(srcs)
    assert result["loaded"] == len(srcs) and result["broken"] == 0, result["text"]
    shot = screenshot(index, tmp_path / "shot.png", height=900)
    with Image.open(shot) as im:
        assert im.size == (1280, 900)
        assert len(np.unique(np.asarray(im.convert("L")))) > 20  # not a blank page


def _explain_cmd(cfg_overrides: dict) -> list[str]:
    cmd = [sys.executable, "-m", "e2x_cli.main", "explain", "--no-progress"]
    for k, v in cfg_overrides.items():
        v = "[" + ",".join(v) + "]" if isinstance(v, list) else v
        cmd += ["--set", f"{k}={v}"]
    return cmd


def _sorted(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(["candidate_id", "method", "output"]).reset_index(drop=True)


def test_explain_killed_with_sigkill_resumes_to_the_same_table(mined_run, tmp_path):
    """A real ``e2x explain`` process is killed (SIGKILL) after some images; the rerun redoes
    only the unfinished images and the table equals an uninterrupted run's, without duplicates."""
    cfg = _explained(mined_run)  # the uninterrupted run (in-process)
    reference = _sorted(pd.read_parquet(cfg.output_dir / "val" / "explanations.parquet"))
    n_images = reference["image_id"].nunique()
    assert n_images >= 3, "too few images to kill a run in the middle"

    out = tmp_path / "killed"
    (out / "val").mkdir(parents=True)
    for name in ("candidates.parquet", "predictions.parquet", "metrics.json"):
        shutil.copy(cfg.split_layout("val").root / name, out / "val" / name)
    overrides = _overrides(cfg.data.root, out)
    env = {**os.environ, "E2X_EXPLAIN_FLUSH_SECONDS": "0", "OMP_NUM_THREADS": "1"}
    table = out / "val" / "explanations.parquet"
    proc = subprocess.Popen(
        _explain_cmd(overrides), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while not table.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "explain finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    partial = pd.read_parquet(table)
    assert 0 < partial["image_id"].nunique() < n_images, "not killed in the middle"

    rerun = subprocess.run(
        _explain_cmd(overrides), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    final = _sorted(pd.read_parquet(table))
    keys = ["candidate_id", "method", "output", "params_hash"]
    assert not final.duplicated(keys).any()
    # rows finished before the kill were kept as they were (their timings too): not redone
    kept = final.merge(partial[[*keys, "seconds"]], on=keys, suffixes=("", "_partial"))
    assert len(kept) == len(partial) and (kept["seconds"] == kept["seconds_partial"]).all()
    # and the whole table equals the uninterrupted run's
    cols = [c for c in reference.columns if c not in ("seconds", "values")]
    pd.testing.assert_frame_equal(final[cols], reference[cols])
    for a, b in zip(final["values"], reference["values"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_cache_keys_follow_data_checkpoint_and_config(mined_run, tmp_path):
    from flows.caching import refresh_needed, stage_key

    cfg, _ = mined_run
    base = stage_key("explain", cfg, "val", FIXTURE_CHECKPOINT)
    assert stage_key("explain", cfg, "val", FIXTURE_CHECKPOINT) == base
    # a config section the stage uses changes the key; one it does not use leaves it
    changed = cfg.model_copy(update={"explain": cfg.explain.model_copy(update={"k": 7})})
    assert stage_key("explain", changed, "val", FIXTURE_CHECKPOINT) != base
    other = cfg.model_copy(update={"repair": cfg.repair.model_copy(update={"budget": 3})})
    assert stage_key("explain", other, "val", FIXTURE_CHECKPOINT) == base
    # a different checkpoint (content) changes it
    ckpt = tmp_path / "other.pt"
    ckpt.write_bytes(FIXTURE_CHECKPOINT.read_bytes() + b"\0")
    assert stage_key("explain", cfg, "val", ckpt) != base
    assert not refresh_needed("mine", cfg, "val")
    empty = cfg.model_copy(update={"output_dir": tmp_path / "fresh"})
    assert refresh_needed("mine", empty, "val") and refresh_needed("explain", empty, "val")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGINT the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_flow_config_takes_the_dict_or_reads_the_file(tmp_path):
    """The pipeline flow's config: the dict of ``e2x run``, or a YAML file with ``--set``
    overrides (the deployment's ``config_path``), never both."""
    from e2x_pipeline.config import ConfigError
    from flows.pipeline import flow_config

    path = tmp_path / "c.yaml"
    path.write_text("seed: 7\nmining: {iou: 0.6}\n")
    cfg = flow_config(None, str(path), ["mining.iou=0.4", "device=cpu"])
    assert (cfg.seed, cfg.mining.iou, cfg.device) == (7, 0.4, "cpu")
    assert flow_config(cfg.model_dump(mode="json"), None, None) == cfg
    with pytest.raises(ValueError, match="not both"):
        flow_config(cfg.model_dump(mode="json"), str(path), None)
    with pytest.raises(ConfigError, match="does not exist"):
        flow_config(None, str(tmp_path / "missing.yaml"), None)


def _prefect() -> str:
    # the venv's prefect: CI runs .venv/bin/pytest without the venv on PATH
    return str(Path(sys.executable).with_name("prefect"))


def _set_args(overrides: dict) -> list[str]:
    """``--set`` strings, as ``e2x run --set`` and the deployment's ``overrides`` take them."""
    out = []
    for k, v in overrides.items():
        v = "[" + ",".join(v) + "]" if isinstance(v, list) else v
        out.append(f"{k}={v}")
    return out


def _tiny_run(bench: Path, out: Path) -> list[str]:
    """The tiny benchmark with two explained candidates: scheduling is under test here."""
    return _set_args({**_overrides(bench, out), "explain.max_candidates": 2})


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One real ``prefect server start`` on a free loopback port for this module's serve and
    deployment tests (start-up is 15-60 s on a loaded machine), with its own PREFECT_HOME.
    Yields ``(api_url, env)``: the environment every client process of the tests runs with."""
    import httpx

    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        # a few runs ahead, not 100: fewer SQLite writes while the tests run
        "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "5",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_UI_ENABLED": "false",
        "OMP_NUM_THREADS": "1",
    }
    server = subprocess.Popen(
        [_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("the Prefect server did not start within 90 s")
        yield api, env
    finally:
        _stop(server)


def _runs_of(api: str, deployment: str) -> list[dict]:
    """The flow runs of the deployment named ``deployment`` (the server is shared)."""
    import httpx

    body = {"deployments": {"name": {"any_": [deployment]}}}
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10).json()


@pytest.mark.slow
def test_serve_fires_a_scheduled_run_that_completes(prefect_server, tiny_benchmark, tmp_path):
    """``e2x serve --interval`` against a local ``prefect server``: a scheduled run fires and
    completes (about half a minute: the pipeline on the tiny benchmark)."""
    import httpx

    api, env = prefect_server
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "e2x_cli.main", "serve", "--interval", "5"]
    cmd += ["--name", "e2x-test", "--no-fiftyone", "--no-benchmark", "--no-progress"]
    cmd += ["--no-retrain"]  # scheduling is under test here; retraining is tested elsewhere
    cmd += ["--reports-dir", str(tmp_path / "reports")]
    for arg in _tiny_run(tiny_benchmark, out):
        cmd += ["--set", arg]
    serve = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        completed = []
        deadline = time.monotonic() + 300
        while not completed and time.monotonic() < deadline and serve.poll() is None:
            time.sleep(2)
            runs = _runs_of(api, "e2x-test")
            completed = [r for r in runs if (r.get("state") or {}).get("type") == "COMPLETED"]
            failed = [r for r in runs if (r.get("state") or {}).get("type") == "FAILED"]
            if failed:
                err = serve.stderr.read1().decode(errors="replace") if serve.stderr else ""
                pytest.fail(f"{failed[0]['state'].get('message')}\n{err[-4000:]}")
        if serve.poll() is not None:
            pytest.fail(f"e2x serve exited: {serve.stderr.read().decode()[-3000:]}")
        assert completed, "no scheduled run completed within 300 s"
        assert (out / "summary.json").is_file()
        assert list((tmp_path / "reports").glob("*/index.html"))
    finally:
        _stop(serve)  # serve runners stop before the server, or they hang
        # its interval schedule would keep the shared server's scheduler busy
        dep = httpx.get(f"{api}/deployments/name/e2x-pipeline/e2x-test", timeout=10)
        if dep.status_code == 200:
            httpx.delete(f"{api}/deployments/{dep.json()['id']}", timeout=10)


def _ok(response):
    """The JSON of a Prefect API response, or a failure that shows the server's answer."""
    assert response.status_code < 400, f"{response.request.url}: {response.text[-2000:]}"
    return response.json()


def _cli(env: dict, *args: str, cwd: Path = ROOT, timeout: float = 120) -> str:
    proc = subprocess.run(
        [_prefect(), "--no-prompt", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout


@pytest.mark.slow
def test_shipped_deployment_runs_on_a_process_worker(prefect_server, tiny_benchmark, tmp_path):
    """The README's commands on the shipped prefect.yaml: a process work pool ``e2x``,
    ``prefect deploy --all`` (in the repository), a run of the deployment with the tiny benchmark
    as ``overrides`` of its config file, and ``prefect worker start --pool e2x --run-once``
    started elsewhere: its pull step changes into the project, the run completes and writes the
    summary (about 40 s: the deploy and the flow run each import torch and Prefect)."""
    import json

    import httpx

    api, env = prefect_server
    # `prefect work-pool create e2x --type process`, without the CLI's 3-5 s start-up
    from prefect.workers.process import ProcessWorker

    pool = {"name": "e2x", "type": "process"}
    pool["base_job_template"] = ProcessWorker.get_default_base_job_template()
    _ok(httpx.post(f"{api}/work_pools/", json=pool, timeout=10))
    _cli(env, "deploy", "--all")
    dep = _ok(httpx.get(f"{api}/deployments/name/e2x-pipeline/nightly", timeout=10))
    assert dep["work_pool_name"] == "e2x" and dep["entrypoint"] == "flows/pipeline.py:e2x_pipeline"
    [(step, spec)] = [next(iter(s.items())) for s in dep["pull_steps"]]
    assert step == "prefect.deployments.steps.set_working_directory"
    assert Path(spec["directory"]).resolve() == ROOT  # the project, recorded at deploy time
    assert (ROOT / dep["parameters"]["config_path"]).is_file()
    [schedule] = dep["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["active"]

    out = tmp_path / "run"
    params = {
        "overrides": _tiny_run(tiny_benchmark, out),
        "fiftyone": False,
        "retrain": False,
        "reports_dir": str(tmp_path / "reports"),
    }
    # `prefect deployment run e2x-pipeline/nightly --params JSON`, without the CLI's start-up;
    # the server merges these over the deployment's parameters. Its own work queue keeps the
    # worker off the nightly schedule's runs (one is due when the test runs at 02:00 UTC).
    url = f"{api}/deployments/{dep['id']}/create_flow_run"
    body = {"parameters": params, "work_queue_name": "e2x-test"}
    run = _ok(httpx.post(url, json=body, timeout=10))
    assert run["parameters"]["config_path"] == "configs/demo.yaml"
    worker = tmp_path / "worker"  # not the project: the pull step must find it
    worker.mkdir()
    cmd = ["worker", "start", "--pool", "e2x", "--work-queue", "e2x-test", "--run-once"]
    _cli(env, *cmd, cwd=worker, timeout=240)
    state = _ok(httpx.get(f"{api}/flow_runs/{run['id']}", timeout=10))["state"]
    assert state["type"] == "COMPLETED", state.get("message")
    summary = json.loads((out / "summary.json").read_text())
    # the config file, read in the project, with the run's overrides on top
    expected = load_config(ROOT / "configs" / "demo.yaml", params["overrides"])
    assert summary["config"] == expected.model_dump(mode="json")
    assert summary["config"]["data"]["root"] == str(tiny_benchmark)
    assert summary["mining"] and list((tmp_path / "reports").glob("*/index.html"))
