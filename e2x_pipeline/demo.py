"""``e2x demo``: the whole product story on the planted-failure benchmark, on embedded defaults."""

from __future__ import annotations

import time

from .config import E2XConfig
from .io_utils import write_json


def run_demo_stages(cfg: E2XConfig, progress: bool = True) -> dict:
    """Run every stage that exists, in order, without Prefect. Returns the summary."""
    from .stages import detector_for, ensure_benchmark, evaluate_stage, train_stage

    t0 = time.perf_counter()
    summary: dict = {"config": cfg.model_dump(mode="json")}
    ensure_benchmark(cfg)
    summary["benchmark_seconds"] = round(time.perf_counter() - t0, 1)
    ckpt, meta = train_stage(cfg, progress=progress)
    summary["checkpoint"] = str(ckpt)
    summary["train_seconds"] = meta.get("train_seconds")
    det = detector_for(cfg, ckpt)
    summary["evaluation"] = [evaluate_stage(cfg, det, s, progress) for s in ("val", "test")]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(cfg.output_dir / "summary.json", summary)
    return summary


def print_summary(summary: dict) -> None:
    from .stages import format_evaluation

    print("\n== Detector on the planted-failure benchmark ==")
    print(f"checkpoint: {summary['checkpoint']} (trained in {summary.get('train_seconds')} s)")
    print(format_evaluation(summary["evaluation"]))
    print(f"\ndemo finished in {summary['seconds']} s")


def run_demo(cfg: E2XConfig, progress: bool = True, use_prefect: bool = True) -> int:
    if use_prefect:
        from flows.pipeline import e2x_pipeline

        summary = e2x_pipeline(cfg.model_dump(mode="json"), progress=progress)
    else:
        summary = run_demo_stages(cfg, progress)
    print_summary(summary)
    return 0
