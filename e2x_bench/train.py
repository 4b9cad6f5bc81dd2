"""``e2x bench train``: training time and the benchmark detector's accuracy targets."""

from __future__ import annotations

import time
from pathlib import Path

from e2x_pipeline.config import E2XConfig

from .common import environment, write_bench


def bench_train(cfg: E2XConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train from scratch (no cache) and evaluate on val and test: the foundation's targets.

    Targets (issue 2): mAP@0.5 >= 0.8 on clean val images, recall <= 0.5 on each planted FN
    cause, training <= 5 min on 2 CPU cores.
    """
    from e2x_pipeline.stages import (
        detector_for,
        ensure_benchmark,
        evaluate_stage,
        format_evaluation,
        train_stage,
    )

    ensure_benchmark(cfg)
    t0 = time.perf_counter()
    ckpt, meta = train_stage(cfg, progress=progress, force=True)
    wall = time.perf_counter() - t0
    det = detector_for(cfg, ckpt)
    evaluation = [evaluate_stage(cfg, det, s, progress) for s in ("val", "test")]
    val = evaluation[0]
    targets = {
        "map50_clean_val >= 0.8": val.get("map50_clean", float("nan")) >= 0.8,
        "train_seconds <= 300": meta["train_seconds"] <= 300,
        **{f"recall[{c}] <= 0.5": r <= 0.5 for c, r in val["recall_by_cause"].items()},
    }
    result = {
        "train_seconds": meta["train_seconds"],
        "train_wall_seconds": round(wall, 1),
        "checkpoint": str(ckpt),
        "evaluation": evaluation,
        "targets_met": targets,
    }
    md = (
        f"Training: {meta['train_seconds']} s for {cfg.train.epochs} epochs on "
        f"{cfg.benchmark.n_train} images ({environment()['cpu_count']} CPU cores).\n\n"
        f"```\n{format_evaluation(evaluation)}\n```\n\nTargets:\n\n"
        + "\n".join(f"- {k}: {'met' if v else 'MISSED'}" for k, v in targets.items())
    )
    write_bench(out_dir, "train", result, md)
    return result
