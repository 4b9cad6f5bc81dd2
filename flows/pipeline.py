"""The end-to-end E2X flow. Tasks wrap ``e2x_pipeline.stages``; no logic lives here."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from e2x_pipeline import stages
from e2x_pipeline.config import E2XConfig
from e2x_pipeline.io_utils import write_json


@task(name="make-benchmark")
def make_benchmark_task(cfg: E2XConfig) -> Path:
    return stages.ensure_benchmark(cfg)


@task(name="train")
def train_task(cfg: E2XConfig, progress: bool) -> tuple[Path, dict]:
    return stages.train_stage(cfg, progress=progress)


@task(name="evaluate")
def evaluate_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool) -> dict:
    return stages.evaluate_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)


@task(name="mine")
def mine_task(cfg: E2XConfig, checkpoint: Path, split: str) -> dict:
    return stages.mine_stage(cfg, stages.detector_for(cfg, checkpoint), split).metrics


# A database connection can drop; bad data cannot be retried away, so only this task retries.
@task(name="publish-fiftyone", retries=2, retry_delay_seconds=5)
def publish_task(cfg: E2XConfig, split: str) -> str:
    return stages.publish_stage(cfg, split)


@task(name="explain")
def explain_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool) -> dict:
    table = stages.explain_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)
    overlays = stages.overlay_stage(cfg, split)
    return {
        "explanations": int(len(table)),
        "valid": int(table["valid"].sum()) if len(table) else 0,
        "seconds": float(table["seconds"].sum()) if len(table) else 0.0,
        "overlays": [str(p) for p in overlays],
    }


@flow(name="e2x-pipeline", log_prints=True)
def e2x_pipeline(config: dict, progress: bool = True, fiftyone: bool = True) -> dict:
    """Benchmark -> train (cached) -> evaluate -> mine -> FiftyOne -> explain."""
    from e2x_pipeline.mining import format_metrics

    cfg = E2XConfig.model_validate(config)
    split = cfg.data.eval_split
    t0 = time.perf_counter()
    make_benchmark_task(cfg)
    ckpt, meta = train_task(cfg, progress)
    evaluation = [evaluate_task(cfg, ckpt, s, progress) for s in ("val", "test")]
    mining = mine_task(cfg, ckpt, split)
    dataset_name = publish_task(cfg, split) if fiftyone else None
    explained = explain_task(cfg, ckpt, split, progress)
    summary = {
        "config": config,
        "checkpoint": str(ckpt),
        "train_seconds": meta.get("train_seconds"),
        "evaluation": evaluation,
        "mining": mining,
        "mining_table": format_metrics(mining),
        "fiftyone_dataset": dataset_name,
        "explain": explained,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(cfg.output_dir / "summary.json", summary)
    create_markdown_artifact(
        key="e2x-summary",
        markdown=(
            "# E2X run\n\n## Detector\n\n```\n" + stages.format_evaluation(evaluation) + "\n```\n\n"
            f"## Mining ({split})\n\n```\n{format_metrics(mining)}\n```\n\n"
            f"FiftyOne dataset `{dataset_name}`, saved view `e2x-failures`.\n\n"
            f"## Explanations\n\n{explained['explanations']} explanations "
            f"({explained['valid']} valid), overlays under `{stages.split_dir(cfg, split)}`.\n"
        ),
        description="E2X pipeline summary",
    )
    create_table_artifact(
        key="e2x-causes",
        table=[
            {"cause": k, **{kk: vv for kk, vv in v.items() if not isinstance(vv, dict)}}
            for k, v in mining.get("causes", {}).items()
        ],
        description="Failure breakdown per planted cause",
    )
    return summary
