"""``e2x bench mine``: mining cost against plain batched inference."""

from __future__ import annotations

import time
from pathlib import Path

from e2x_pipeline.config import E2XConfig

from .common import write_bench


def bench_mine(cfg: E2XConfig, out_dir: Path, progress: bool = True, repeats: int = 7) -> dict:
    """Mining cost against plain batched inference over the same images (target <= 1.1x).

    Both run on the eval split with the same detector, batch size and low threshold. Runs are
    interleaved (plain, mine, plain, mine, ...) so that machine load hits both alike; the ratio of
    medians is reported.
    """
    import statistics

    from e2x_pipeline.data.benchmark import load_causes
    from e2x_pipeline.inference import detect_dataset
    from e2x_pipeline.mining import mine
    from e2x_pipeline.stages import (
        detector_for,
        ensure_benchmark,
        open_split,
        resolve_checkpoint,
    )

    ensure_benchmark(cfg)
    ckpt = resolve_checkpoint(cfg, progress)
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
