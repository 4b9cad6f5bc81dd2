"""One Prefect flow per stage: evaluate, mine, explain, cluster, repair, retrain.

``e2x run --stage NAME`` runs one of them (:data:`STAGE_FLOWS`). Each checks that the stage's
input tables exist (:func:`check_inputs`, before any training), resolves the checkpoint
(``model.checkpoint`` or the cached trained one) and runs the stage's cached task: the same task,
cache key and cache refresh as ``e2x_pipeline`` in flows/pipeline.py, so a stage flow and the
pipeline share their cached results.
"""

from __future__ import annotations

from prefect import flow

from e2x_pipeline.config import E2XConfig

from .tasks import (
    cluster_task,
    default_eval_splits,
    evaluate_task,
    explain_task,
    mine_task,
    repair_task,
    retrain_task,
    run_cached,
    trained_checkpoint,
)

# The split-layout tables each stage reads (written by the stages before it).
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "evaluate": (),
    "mine": (),
    "explain": ("candidates",),
    "cluster": ("candidates", "explanations"),
    "repair": ("failure_modes", "features"),
    "retrain": ("repair_set",),
}


def check_inputs(cfg: E2XConfig, stage: str, split: str) -> None:
    """:class:`~e2x_pipeline.layout.StageOutputMissing` (naming the command to run first) when
    one of the stage's input tables is missing."""
    layout = cfg.split_layout(split)
    for name in STAGE_INPUTS[stage]:
        layout.require(name)


def _setup(config: dict, stage: str, split: str | None, progress: bool):
    cfg = E2XConfig.model_validate(config)
    split = split or cfg.data.eval_split
    check_inputs(cfg, stage, split)
    ckpt, _ = trained_checkpoint(cfg, progress)
    return cfg, split, ckpt


@flow(name="e2x-evaluate", log_prints=True)
def evaluate_flow(config: dict, splits: list[str] | None = None, progress: bool = True) -> list:
    """Evaluate on ``splits`` (default: val and test, where their annotation files exist)."""
    cfg, _, ckpt = _setup(config, "evaluate", None, progress)
    return [
        run_cached(evaluate_task, "evaluate", cfg, s, cfg, ckpt, s, progress)
        for s in (splits or default_eval_splits(cfg))
    ]


@flow(name="e2x-mine", log_prints=True)
def mine_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, "mine", split, progress)
    return run_cached(mine_task, "mine", cfg, split, cfg, ckpt, split)


@flow(name="e2x-explain", log_prints=True)
def explain_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, "explain", split, progress)
    return run_cached(explain_task, "explain", cfg, split, cfg, ckpt, split, progress)


@flow(name="e2x-cluster", log_prints=True)
def cluster_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, "cluster", split, progress)
    return run_cached(cluster_task, "cluster", cfg, split, cfg, ckpt, split, progress)


@flow(name="e2x-repair", log_prints=True)
def repair_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, "repair", split, progress)
    return run_cached(repair_task, "repair", cfg, split, cfg, ckpt, split, progress)


@flow(name="e2x-retrain", log_prints=True)
def retrain_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, "retrain", split, progress)
    return run_cached(retrain_task, "retrain", cfg, split, cfg, ckpt, split, progress)


STAGE_FLOWS = {
    "evaluate": evaluate_flow,
    "mine": mine_flow,
    "explain": explain_flow,
    "cluster": cluster_flow,
    "repair": repair_flow,
    "retrain": retrain_flow,
}
