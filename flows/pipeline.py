"""The end-to-end E2X flow. Tasks wrap ``e2x_pipeline.stages``; no logic lives here."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from e2x_pipeline import stages
from e2x_pipeline.config import E2XConfig
from e2x_pipeline.io_utils import write_json


@task(name="make-benchmark")
def make_benchmark_task(cfg: E2XConfig) -> Path:
    return stages.ensure_benchmark(cfg)


@task(name="train")
def train_task(cfg: E2XConfig, progress: bool) -> tuple[Path, dict]:
    return stages.train_stage(cfg, progress=progress)


@task(name="evaluate", retries=0)
def evaluate_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool) -> dict:
    return stages.evaluate_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)


@flow(name="e2x-pipeline", log_prints=True)
def e2x_pipeline(config: dict, progress: bool = True) -> dict:
    """Benchmark -> train (cached) -> evaluate; later stages join as they land."""
    cfg = E2XConfig.model_validate(config)
    t0 = time.perf_counter()
    make_benchmark_task(cfg)
    ckpt, meta = train_task(cfg, progress)
    evaluation = [evaluate_task(cfg, ckpt, s, progress) for s in ("val", "test")]
    summary = {
        "config": config,
        "checkpoint": str(ckpt),
        "train_seconds": meta.get("train_seconds"),
        "evaluation": evaluation,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(cfg.output_dir / "summary.json", summary)
    create_markdown_artifact(
        key="e2x-summary",
        markdown="# E2X run\n\n```\n" + stages.format_evaluation(evaluation) + "\n```\n",
        description="Detector evaluation per planted cause",
    )
    return summary
