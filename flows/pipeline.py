"""The end-to-end E2X flow (``e2x run``, ``e2x demo``, ``e2x serve``).

Orchestration only: every task calls one function of ``e2x_pipeline.stages`` (flows/tasks.py);
the cache keys are in flows/caching.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from e2x_pipeline import stages
from e2x_pipeline.config import E2XConfig
from e2x_pipeline.io_utils import write_json

from .caching import refresh_needed
from .tasks import (  # noqa: F401  (re-exported: the tasks used to live here)
    cluster_task,
    evaluate_task,
    explain_task,
    make_benchmark_task,
    mine_task,
    publish_failures_task,
    publish_repair_task,
    publish_task,
    repair_task,
    report_task,
    retrain_task,
    train_task,
)


def run_cached(task, stage: str, cfg: E2XConfig, split: str, *args, **kwargs):
    """Call ``task``; its cache is refreshed when the stage's output files are missing."""
    return task.with_options(refresh_cache=refresh_needed(stage, cfg, split))(*args, **kwargs)


def trained_checkpoint(cfg: E2XConfig, progress: bool) -> tuple[Path, dict]:
    """``model.checkpoint`` when configured, else the (cached) trained one."""
    if cfg.model.checkpoint is not None:
        return Path(cfg.model.checkpoint), {"train_seconds": None}
    ckpt, meta = train_task(cfg, progress)
    if not Path(ckpt).is_file():  # the cached result names a deleted checkpoint
        ckpt, meta = train_task.with_options(refresh_cache=True)(cfg, progress)
    return ckpt, meta


@flow(name="e2x-pipeline", log_prints=True)
def e2x_pipeline(
    config: dict,
    progress: bool = True,
    fiftyone: bool = True,
    report: bool = True,
    reports_dir: str = "reports",
    benchmark: bool = True,
    retrain: bool = True,
    dask: dict | None = None,
) -> dict:
    """Benchmark -> train (cached) -> evaluate -> mine -> FiftyOne -> explain -> cluster -> repair
    -> retrain -> report. ``benchmark=False`` skips generating the planted-failure benchmark
    (your own data in ``data``); retraining runs when ``retrain`` and the pool has labels
    (``repair.pool_labels`` or the benchmark's). ``dask`` (``flows.runners.dask_options``) runs
    the explain stage in chunks of images on Dask workers."""
    from e2x_pipeline.mining import format_metrics
    from e2x_pipeline.report import default_run_id
    from e2x_pipeline.report.summary import mode_rows, repair_rows, run_markdown

    cfg = E2XConfig.model_validate(config)
    split = cfg.data.eval_split
    t0 = time.perf_counter()
    if benchmark:
        make_benchmark_task(cfg)
    ckpt, meta = trained_checkpoint(cfg, progress)
    eval_splits = [s for s in ("val", "test") if Path(cfg.data.split(s).annotations).is_file()]
    evaluation = [
        run_cached(evaluate_task, "evaluate", cfg, s, cfg, ckpt, s, progress) for s in eval_splits
    ]
    mining = run_cached(mine_task, "mine", cfg, split, cfg, ckpt, split)
    dataset_name = publish_task(cfg, split) if fiftyone else None
    if dask:  # chunks of images on Dask workers (flows/dask_explain.py; not task-cached)
        from .dask_explain import explain_with_dask

        explained = explain_with_dask(cfg, split, dask, progress, checkpoint=ckpt)
    else:
        explained = run_cached(explain_task, "explain", cfg, split, cfg, ckpt, split, progress)
    modes = run_cached(cluster_task, "cluster", cfg, split, cfg, ckpt, split, progress)
    repair = run_cached(repair_task, "repair", cfg, split, cfg, ckpt, split, progress)
    retrained = None
    if retrain and stages.pool_labels(cfg) is not None:
        retrained = run_cached(retrain_task, "retrain", cfg, split, cfg, ckpt, split, progress)
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
    if retrained is not None:
        summary["retrain"] = retrained
    write_json(cfg.output_dir / "summary.json", summary)
    report_path = None
    if report:
        report_path = Path(
            report_task(cfg, split, reports_dir, default_run_id(cfg), fiftyone=fiftyone)
        )
        summary["report"] = str(report_path)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(cfg.output_dir / "summary.json", summary)
        create_link_artifact(
            key="e2x-report",
            link=report_path.resolve().as_uri(),
            link_text=f"E2X report {report_path.parent.name}",
            description="The run's self-contained HTML report",
        )
    create_markdown_artifact(
        key="e2x-summary",
        markdown=run_markdown(
            cfg,
            split,
            summary,
            report=report_path,
            evaluation_text=stages.format_evaluation(evaluation) if evaluation else "",
        ),
        description="E2X pipeline summary",
    )
    create_table_artifact(
        key="e2x-failure-modes",
        table=mode_rows(modes.get("modes", [])),
        description="Failure modes: clusters of failing features",
    )
    create_table_artifact(
        key="e2x-repair-set",
        table=repair_rows(cfg, split),
        description="Repair set: the selected pool images and their matching regions",
    )
    return summary
