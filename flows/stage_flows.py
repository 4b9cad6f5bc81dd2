"""One Prefect flow per stage: evaluate, mine, explain, cluster, repair, retrain.

Each resolves the checkpoint (``model.checkpoint`` or the cached trained one) and runs the stage's
cached task; ``e2x_pipeline`` in flows/pipeline.py runs them all."""

from __future__ import annotations

from prefect import flow

from e2x_pipeline.config import E2XConfig

from .pipeline import run_cached, trained_checkpoint
from .tasks import (
    cluster_task,
    evaluate_task,
    explain_task,
    mine_task,
    repair_task,
    retrain_task,
)


def _setup(config: dict, split: str | None, progress: bool):
    cfg = E2XConfig.model_validate(config)
    ckpt, _ = trained_checkpoint(cfg, progress)
    return cfg, split or cfg.data.eval_split, ckpt


@flow(name="e2x-evaluate", log_prints=True)
def evaluate_flow(config: dict, splits: list[str] | None = None, progress: bool = True) -> list:
    cfg, _, ckpt = _setup(config, None, progress)
    return [
        run_cached(evaluate_task, "evaluate", cfg, s, cfg, ckpt, s, progress)
        for s in (splits or ["val", "test"])
    ]


@flow(name="e2x-mine", log_prints=True)
def mine_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, split, progress)
    return run_cached(mine_task, "mine", cfg, split, cfg, ckpt, split)


@flow(name="e2x-explain", log_prints=True)
def explain_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, split, progress)
    return run_cached(explain_task, "explain", cfg, split, cfg, ckpt, split, progress)


@flow(name="e2x-cluster", log_prints=True)
def cluster_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, split, progress)
    return run_cached(cluster_task, "cluster", cfg, split, cfg, ckpt, split, progress)


@flow(name="e2x-repair", log_prints=True)
def repair_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, split, progress)
    return run_cached(repair_task, "repair", cfg, split, cfg, ckpt, split, progress)


@flow(name="e2x-retrain", log_prints=True)
def retrain_flow(config: dict, split: str | None = None, progress: bool = True) -> dict:
    cfg, split, ckpt = _setup(config, split, progress)
    return run_cached(retrain_task, "retrain", cfg, split, cfg, ckpt, split, progress)


STAGE_FLOWS = {
    "evaluate": evaluate_flow,
    "mine": mine_flow,
    "explain": explain_flow,
    "cluster": cluster_flow,
    "repair": repair_flow,
    "retrain": retrain_flow,
}
