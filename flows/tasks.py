"""Prefect tasks: each calls one library function from ``e2x_pipeline.stages``.

Compute tasks are cached on content hashes (:mod:`flows.caching`); they never retry, because a
failure there is bad data or a bug, and retrying would only repeat it. The publish tasks write to
FiftyOne's database, whose connection can drop: only they retry. :func:`run_cached` runs a
stage task (refreshing its cache when the stage's tables are gone) and :func:`trained_checkpoint`
resolves the checkpoint through the cached train task; every flow uses both.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from e2x_pipeline import stages
from e2x_pipeline.config import E2XConfig
from e2x_pipeline.detectors import configured_checkpoint

from .caching import cache_key_for, refresh_needed


@task(name="make-benchmark")
def make_benchmark_task(cfg: E2XConfig) -> Path:
    return stages.ensure_benchmark(cfg)


@task(name="train", cache_key_fn=cache_key_for("train"))
def train_task(cfg: E2XConfig, progress: bool = True) -> tuple[Path, dict]:
    return stages.train_stage(cfg, progress=progress)


@task(name="evaluate", cache_key_fn=cache_key_for("evaluate"))
def evaluate_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool = True) -> dict:
    return stages.evaluate_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)


@task(name="mine", cache_key_fn=cache_key_for("mine"))
def mine_task(cfg: E2XConfig, checkpoint: Path, split: str) -> dict:
    return stages.mine_stage(cfg, stages.detector_for(cfg, checkpoint), split).metrics


@task(name="explain", cache_key_fn=cache_key_for("explain"))
def explain_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool = True) -> dict:
    table = stages.explain_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)
    overlays = stages.overlay_stage(cfg, split)
    return stages.explain_summary(table, overlays)


@task(name="cluster", cache_key_fn=cache_key_for("cluster"))
def cluster_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool = True) -> dict:
    from e2x_pipeline.cluster import format_modes

    result = stages.cluster_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)
    return {**result.metrics, "table": format_modes(result.modes, result.metrics)}


@task(name="repair", cache_key_fn=cache_key_for("repair"))
def repair_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool = True) -> dict:
    from e2x_pipeline.repair import format_repair

    result = stages.repair_stage(cfg, stages.detector_for(cfg, checkpoint), split, progress)
    return {**result.metrics, "table": format_repair(result.metrics)}


@task(name="retrain", cache_key_fn=cache_key_for("retrain"))
def retrain_task(cfg: E2XConfig, checkpoint: Path, split: str, progress: bool = True) -> dict:
    return stages.retrain_stage(cfg, checkpoint, split, progress)


# A database connection can drop; bad data cannot be retried away, so only these tasks retry.
@task(name="publish-fiftyone", retries=2, retry_delay_seconds=5)
def publish_task(cfg: E2XConfig, split: str, checkpoint: Path | None = None) -> str:
    return stages.publish_stage(cfg, split, checkpoint=checkpoint)


@task(name="publish-evaluation", retries=2, retry_delay_seconds=5)
def publish_evaluation_task(cfg: E2XConfig, split: str, checkpoint: Path, predictions: Path) -> str:
    return stages.publish_evaluation_stage(cfg, split, checkpoint, predictions)


@task(name="publish-failure-modes", retries=2, retry_delay_seconds=5)
def publish_failures_task(
    cfg: E2XConfig, split: str, stable_ids: dict[int, str] | None = None
) -> str:
    return stages.publish_failures_stage(cfg, split, stable_ids)


# Not cached: recording is cheap, and a rerun must see (and replace) the run's own record.
@task(name="history")
def history_task(cfg: E2XConfig, split: str, checkpoint: Path) -> dict:
    return stages.history_stage(cfg, split, checkpoint)


@task(name="publish-repair-set", retries=2, retry_delay_seconds=5)
def publish_repair_task(cfg: E2XConfig, split: str) -> str:
    return stages.publish_repair_stage(cfg, split)


@task(name="report")
def report_task(cfg: E2XConfig, split: str, reports_dir: str, run_id: str, fiftyone: bool) -> str:
    from e2x_pipeline.report import build_report

    return str(build_report(cfg, split, reports_dir, run_id, fiftyone=fiftyone))


def run_cached(task, stage: str, cfg: E2XConfig, split: str, *args, **kwargs):
    """Call ``task``; its cache is refreshed when the stage's output files are missing."""
    return task.with_options(refresh_cache=refresh_needed(stage, cfg, split))(*args, **kwargs)


def trained_checkpoint(cfg: E2XConfig, progress: bool) -> tuple[Path, dict]:
    """``model.checkpoint`` when configured, else the (cached) trained one: the flows' form of
    :func:`e2x_pipeline.stages.resolve_checkpoint`, with training as a Prefect task."""
    given = configured_checkpoint(cfg.model)
    if given is not None:  # model.checkpoint, or a model.weights file: nothing to train
        return given, {"train_seconds": None}
    ckpt, meta = train_task(cfg, progress)
    if not Path(ckpt).is_file():  # the cached result names a deleted checkpoint
        ckpt, meta = train_task.with_options(refresh_cache=True)(cfg, progress)
    return ckpt, meta


def default_eval_splits(cfg: E2XConfig) -> list[str]:
    """The splits the flows evaluate: val and test, where their annotation files exist."""
    return [s for s in ("val", "test") if Path(cfg.data.split(s).annotations).is_file()]
