"""``e2x bench ...``: measured targets, written to ``reports/bench/<name>.{json,md}``.

Each result records the command that made it, the machine and the library versions, so a
reader can reproduce it. Ratios are taken within one run, never across days.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from .config import E2XConfig
from .io_utils import write_json, write_text


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_bench(out_dir: Path, name: str, result: dict, markdown: str) -> None:
    command = "e2x " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = {"command": command, "environment": environment(), **result}
    write_json(out_dir / f"{name}.json", result)
    write_text(
        out_dir / f"{name}.md", f"# Benchmark: {name}\n\nCommand: `{command}`\n\n{markdown}\n"
    )


def bench_train(cfg: E2XConfig, out_dir: Path, progress: bool = True) -> dict:
    """Train from scratch (no cache) and evaluate on val and test: the foundation's targets.

    Targets (issue 2): mAP@0.5 >= 0.8 on clean val images, recall <= 0.5 on each planted FN
    cause, training <= 5 min on 2 CPU cores.
    """
    from .stages import (
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


def bench_mine(cfg: E2XConfig, out_dir: Path, progress: bool = True, repeats: int = 7) -> dict:
    """Mining cost against plain batched inference over the same images (target <= 1.1x).

    Both run on the eval split with the same detector, batch size and low threshold. Runs are
    interleaved (plain, mine, plain, mine, ...) so that machine load hits both alike; the ratio of
    medians is reported.
    """
    import statistics

    from .data.benchmark import load_causes
    from .inference import detect_dataset
    from .mining import mine
    from .stages import detector_for, ensure_benchmark, open_split, train_stage

    ensure_benchmark(cfg)
    ckpt = cfg.model.checkpoint or train_stage(cfg, progress=progress)[0]
    det = detector_for(cfg, ckpt)
    split = cfg.data.eval_split
    ds = open_split(cfg, split)
    causes = load_causes(cfg.data.root, split)
    plain, mining = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detect_dataset(det, ds, cfg.mining.low_threshold, cfg.mining.batch_size, progress=False)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = mine(det, ds, cfg.mining, causes, split)
        mining.append(time.perf_counter() - t0)
    ratio = statistics.median(mining) / statistics.median(plain)
    result_d = {
        "split": split,
        "images": len(ds.images),
        "plain_inference_seconds": plain,
        "mining_seconds": mining,
        "ratio_of_medians": round(ratio, 3),
        "target": "<= 1.1",
        "target_met": ratio <= 1.1,
        "candidates": int(len(result.candidates)),
    }
    md = (
        f"Split `{split}`, {len(ds.images)} images, batch {cfg.mining.batch_size}, "
        f"low threshold {cfg.mining.low_threshold}, {repeats} interleaved repeats.\n\n"
        f"| | median seconds |\n|---|---|\n"
        f"| plain batched inference | {statistics.median(plain):.2f} |\n"
        f"| mining (inference + matching + FN candidates + metrics) | "
        f"{statistics.median(mining):.2f} |\n\n"
        f"Ratio: **{ratio:.3f}** (target <= 1.1: {'met' if ratio <= 1.1 else 'MISSED'})."
    )
    write_bench(out_dir, "mine", result_d, md)
    return result_d


def bench_explain(cfg: E2XConfig, out_dir: Path, progress: bool = True, full: bool = False) -> dict:
    """Explanation speed and fidelity, the E2X paper's Fig. 2 (see ``bench_explain.py``).

    Targets (issue 5): E2X >= 20x faster than LIME at >= rho, >= 100x faster than D-RISE 5000 at
    <= deletion AUC, forward/backward >= 85% of E2X wall time, planted-cause hit rate >= 90%,
    sanity rho < 0.2 after full randomisation.
    """
    from .bench_explain import bench_explain as run

    return run(cfg, out_dir, progress, full)


def bench_repair(cfg: E2XConfig, out_dir: Path, progress: bool = True) -> dict:
    """Retraining with E2X's repair set against random, least-confidence and whole-image
    similarity selection at equal budgets (see ``bench_repair.py``).

    Targets (issue 7), at the 5% budget: E2X recovers >= 2x the planted-cause FNs of random and
    >= 1.3x those of similarity, with mAP@0.5 no more than 1 point below the best strategy.
    """
    from .bench_repair import bench_repair as run

    return run(cfg, out_dir, progress)


def bench_scale(cfg: E2XConfig, out_dir: Path, progress: bool = True) -> dict:
    """The explain stage on 1 against 2 Dask workers (LocalCluster, one thread each) in one run
    (see ``bench_scale.py``). Target (issue 8): speedup >= 1.7x."""
    from .bench_scale import bench_scale as run

    return run(cfg, out_dir, progress)
