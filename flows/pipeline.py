"""The end-to-end E2X flow (``e2x run``, ``e2x demo``, ``e2x serve``, prefect.yaml's deployment).

Orchestration only: every task calls one function of ``e2x_pipeline.stages`` (flows/tasks.py);
the cache keys are in flows/caching.py. The flow's steps are plain helpers, not sub-flows, so that
every task run belongs to the one ``e2x-pipeline`` flow run.
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
from e2x_pipeline.config import E2XConfig, load_config
from e2x_pipeline.data.inputs import check_data
from e2x_pipeline.io_utils import write_json

from .tasks import (  # noqa: F401  (re-exported: these used to live here)
    cluster_task,
    default_eval_splits,
    evaluate_task,
    explain_task,
    history_task,
    make_benchmark_task,
    mine_task,
    publish_evaluation_task,
    publish_failures_task,
    publish_repair_task,
    publish_task,
    repair_task,
    report_task,
    retrain_task,
    run_cached,
    train_task,
    trained_checkpoint,
)


def _evaluate(cfg: E2XConfig, ckpt: Path, progress: bool) -> list[dict]:
    """The evaluate task on val and test, where their annotation files exist."""
    splits = default_eval_splits(cfg)
    return [run_cached(evaluate_task, "evaluate", cfg, s, cfg, ckpt, s, progress) for s in splits]


def _explain(cfg: E2XConfig, split: str, ckpt: Path, progress: bool, dask: dict | None) -> dict:
    """The explain task, or with ``dask`` chunks of images on Dask workers (not task-cached)."""
    if dask:  # flows/dask_explain.py
        from .dask_explain import explain_with_dask

        return explain_with_dask(cfg, split, dask, progress, checkpoint=ckpt)
    return run_cached(explain_task, "explain", cfg, split, cfg, ckpt, split, progress)


def _stages(
    cfg: E2XConfig,
    split: str,
    ckpt: Path,
    progress: bool,
    fiftyone: bool,
    retrain: bool,
    dask: dict | None,
) -> dict:
    """Evaluate -> mine -> FiftyOne -> explain -> cluster -> repair -> retrain -> FiftyOne, as the
    run summary's entries (``retrain`` only when it ran)."""
    from e2x_pipeline.mining import format_metrics

    evaluation = _evaluate(cfg, ckpt, progress)
    mining = run_cached(mine_task, "mine", cfg, split, cfg, ckpt, split)
    dataset_name = publish_task(cfg, split, ckpt) if fiftyone else None
    explained = _explain(cfg, split, ckpt, progress, dask)
    modes = run_cached(cluster_task, "cluster", cfg, split, cfg, ckpt, split, progress)
    repair = run_cached(repair_task, "repair", cfg, split, cfg, ckpt, split, progress)
    retrained = None
    if retrain and stages.pool_labels(cfg) is not None:
        retrained = run_cached(retrain_task, "retrain", cfg, split, cfg, ckpt, split, progress)
    history = history_task(cfg, split, ckpt)
    names = {}
    if fiftyone:
        stable_ids = {m["mode_id"]: m["stable_id"] for m in history["modes"]}
        names = {
            "failures": publish_failures_task(cfg, split, stable_ids),
            "pool": publish_repair_task(cfg, split),
        }
    out = {
        "evaluation": evaluation,
        "mining": mining,
        "mining_table": format_metrics(mining),
        "fiftyone_dataset": dataset_name,
        "explain": explained,
        "failure_modes": modes,
        "repair": repair,
        "history": history,
        "fiftyone_datasets": names,
    }
    return out if retrained is None else {**out, "retrain": retrained}


def _rerun_retrained(
    cfg: E2XConfig,
    split: str,
    retrained: dict,
    progress: bool,
    dask: dict | None,
    fiftyone: bool = False,
) -> dict:
    """The run a schedule would make next, on the retrained checkpoint: evaluate -> mine ->
    explain -> cluster -> history, in ``<output_dir>/retrained/`` and recorded in this run's
    history, so the history says which failure modes the repair set closed. No repair set and
    no curation in FiftyOne: the base run's stays what the App shows. With ``fiftyone`` the
    retrained checkpoint's evaluation run is added to the mining dataset beside the base one,
    for the App's Model Evaluation panel to compare."""
    from e2x_pipeline.mining import format_metrics

    ckpt = Path(retrained["checkpoint"])
    cfg2 = cfg.model_copy(
        update={
            "output_dir": cfg.output_dir / "retrained",
            "model": cfg.model.model_copy(update={"checkpoint": ckpt}),
            "history": cfg.history.model_copy(update={"store": cfg.history_path}),
        }
    )
    evaluation = _evaluate(cfg2, ckpt, progress)
    mining = run_cached(mine_task, "mine", cfg2, split, cfg2, ckpt, split)
    explained = _explain(cfg2, split, ckpt, progress, dask)
    modes = run_cached(cluster_task, "cluster", cfg2, split, cfg2, ckpt, split, progress)
    eval_key = None
    if fiftyone:
        predictions = cfg2.split_layout(split).require("predictions")
        eval_key = publish_evaluation_task(cfg, split, ckpt, predictions)
    return {
        "checkpoint": str(ckpt),
        "fiftyone_evaluation": eval_key,
        "output_dir": str(cfg2.output_dir),
        "evaluation": evaluation,
        "mining": mining,
        "mining_table": format_metrics(mining),
        "explain": explained,
        "failure_modes": modes,
        "history": history_task(cfg2, split, ckpt),
    }


def _report(cfg: E2XConfig, split: str, reports_dir: str, fiftyone: bool) -> Path:
    """The report task: ``<reports_dir>/<run id>/index.html``."""
    from e2x_pipeline.report import default_run_id

    return Path(report_task(cfg, split, reports_dir, default_run_id(cfg), fiftyone=fiftyone))


def _summary_artifacts(cfg: E2XConfig, split: str, summary: dict, report: Path | None) -> None:
    """The run's artifacts: a link to the report, the markdown summary, and the failure-mode and
    repair-set tables."""
    from e2x_pipeline.report.summary import mode_rows, repair_rows, run_markdown

    if report is not None:
        create_link_artifact(
            key="e2x-report",
            link=report.resolve().as_uri(),
            link_text=f"E2X report {report.parent.name}",
            description="The run's self-contained HTML report",
        )
    evaluation = summary["evaluation"]
    create_markdown_artifact(
        key="e2x-summary",
        markdown=run_markdown(
            cfg,
            split,
            summary,
            report=report,
            evaluation_text=stages.format_evaluation(evaluation) if evaluation else "",
        ),
        description="E2X pipeline summary",
    )
    create_table_artifact(
        key="e2x-failure-modes",
        table=mode_rows(summary["failure_modes"].get("modes", [])),
        description="Failure modes: clusters of failing features",
    )
    # the demo's second run compares the retrained checkpoint with the base run
    history = (summary.get("after_retrain") or summary).get("history")
    if history:
        create_markdown_artifact(
            key="e2x-history",
            markdown="## Failure modes since the previous run\n\n" + history["markdown"],
            description="What this run closed, kept and opened (e2x history)",
        )
    create_table_artifact(
        key="e2x-repair-set",
        table=repair_rows(cfg, split),
        description="Repair set: the selected pool images and their matching regions",
    )


def flow_config(
    config: dict | None, config_path: str | None, overrides: list[str] | None
) -> E2XConfig:
    """The run's config: the ``config`` dict (``e2x run``/``serve``), or the YAML file
    ``config_path`` read at run time with ``overrides`` (``--set`` strings) applied, as
    ``e2x run --config PATH --set ...`` does (a deployment of prefect.yaml); neither: the defaults.
    A relative ``config_path`` is relative to the working directory (a worker: its pull step's)."""
    if config is not None:
        if config_path is not None or overrides:
            raise ValueError("pass the flow either config or config_path/overrides, not both")
        return E2XConfig.model_validate(config)
    return load_config(config_path, overrides or [])


@flow(name="e2x-pipeline", log_prints=True)
def e2x_pipeline(
    config: dict | None = None,
    progress: bool = True,
    fiftyone: bool = True,
    report: bool = True,
    reports_dir: str = "reports",
    benchmark: bool = False,
    retrain: bool = True,
    dask: dict | None = None,
    watch: str | None = None,
    rerun_retrained: bool = False,
    config_path: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Benchmark -> train (cached) -> evaluate -> mine -> FiftyOne -> explain -> cluster -> repair
    -> retrain -> report. ``benchmark=True`` (``e2x demo``, ``e2x run --make-benchmark``) first
    generates the planted-failure benchmark under ``data.root``, which must then be empty or
    hold the generator's own marker; without it the flow never writes under ``data``.
    Retraining runs when ``retrain`` and the pool has labels
    (``repair.pool_labels`` or the benchmark's). ``dask`` (``flows.runners.dask_options``) runs
    the explain stage in chunks of images on Dask workers. ``watch`` (a folder) runs on the newest
    checkpoint there and skips the run when it is not newer than the last recorded run's
    (:func:`e2x_pipeline.history.watch_decision`). ``rerun_retrained`` (``e2x demo``) runs the
    pipeline again on the retrained checkpoint (:func:`_rerun_retrained`), so the run history
    holds both checkpoints and says which failure modes the repair set closed. ``config_path``
    and ``overrides`` replace ``config`` (:func:`flow_config`): the deployment in prefect.yaml
    reads its YAML file when each run starts, so an edited config needs no redeploy."""
    cfg = flow_config(config, config_path, overrides)
    if config is None:  # the summary records the config the run used, as read from the file
        config = cfg.model_dump(mode="json")
    split = cfg.data.eval_split
    t0 = time.perf_counter()
    if benchmark:
        make_benchmark_task(cfg)
    if watch:
        from e2x_pipeline.history import HistoryStore, watch_decision

        picked, reason = watch_decision(watch, HistoryStore(cfg.history_path))
        print(f"watching {watch}: {reason}")
        if picked is None:
            return {"skipped": True, "reason": reason, "watch": watch}
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"checkpoint": picked})})
        config = cfg.model_dump(mode="json")
    check_data(cfg, split)
    ckpt, meta = trained_checkpoint(cfg, progress)
    results = _stages(cfg, split, ckpt, progress, fiftyone, retrain, dask)
    retrained = results.pop("retrain", None)
    summary = {
        "config": config,
        "checkpoint": str(ckpt),
        "train_seconds": meta.get("train_seconds"),
        **results,
        "history_store": str(cfg.history_path),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if retrained is not None:
        summary["retrain"] = retrained
        if rerun_retrained:
            summary["after_retrain"] = _rerun_retrained(
                cfg, split, retrained, progress, dask, fiftyone
            )
            summary["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(cfg.layout.run_summary, summary)
    report_path = None
    if report:
        report_path = _report(cfg, split, reports_dir, fiftyone)
        summary["report"] = str(report_path)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        write_json(cfg.layout.run_summary, summary)
    _summary_artifacts(cfg, split, summary, report_path)
    return summary
