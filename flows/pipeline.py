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


@task(name="cluster")
def cluster_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool) -> dict:
    from e2x_pipeline.cluster import format_modes

    result = stages.cluster_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)
    return {**result.metrics, "table": format_modes(result.modes, result.metrics)}


@task(name="repair")
def repair_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool) -> dict:
    from e2x_pipeline.repair import format_repair

    result = stages.repair_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)
    return {**result.metrics, "table": format_repair(result.metrics)}


@task(name="publish-failure-modes", retries=2, retry_delay_seconds=5)
def publish_failures_task(cfg: E2XConfig, split: str) -> str:
    return stages.publish_failures_stage(cfg, split)


@task(name="publish-repair-set", retries=2, retry_delay_seconds=5)
def publish_repair_task(cfg: E2XConfig, split: str) -> str:
    return stages.publish_repair_stage(cfg, split)


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
    modes = cluster_task(cfg, ckpt, split, progress)
    repair = repair_task(cfg, ckpt, split, progress)
    names = {}
    if fiftyone:
        names = {
            "failures": publish_failures_task(cfg, split),
            "pool": publish_repair_task(cfg, split),
        }
    summary = {
        "config": config,
        "checkpoint": str(ckpt),
        "train_seconds": meta.get("train_seconds"),
        "evaluation": evaluation,
        "mining": mining,
        "mining_table": format_metrics(mining),
        "fiftyone_dataset": dataset_name,
        "explain": explained,
        "failure_modes": modes,
        "repair": repair,
        "fiftyone_datasets": names,
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
            f"({explained['valid']} valid), overlays under `{stages.split_dir(cfg, split)}`.\n\n"
            f"## Failure modes\n\n```\n{modes['table']}\n```\n\n"
            f"## Repair set\n\n```\n{repair['table']}\n```\n\n"
            + (
                f"FiftyOne: `{names['failures']}` (views `e2x-failures`, `e2x-mode-<k>`), "
                f"`{names['pool']}` (view `e2x-repair`).\n"
                if names
                else ""
            )
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
    create_table_artifact(
        key="e2x-failure-modes",
        table=[
            {k: m[k] for k in ("mode_id", "kind", "size", "n_candidates", "cause", "cause_share")}
            for m in modes["modes"]
        ],
        description="Failure modes: clusters of failing features",
    )
    create_table_artifact(
        key="e2x-repair-set",
        table=[
            {"cause": c, **v} for c, v in repair.get("precision", {}).get("per_cause", {}).items()
        ],
        description="Repair set: precision per planted cause against the pool's base rate",
    )
    return summary
