"""``e2x bench mine``: mining cost against plain batched inference, on two detectors.

1. The run's detector (the compact SSD of the benchmark, 128 px) on the whole eval split.
2. A detector of realistic cost: ``fasterrcnn_mobilenet_v3_large_fpn`` with the benchmark's
   classes at its own 800 px, randomly initialised with its batch-norm statistics set from the
   split's images (:func:`e2x_bench.realsize.calibrate_norms`; nothing can be downloaded), on the
   split's first :data:`REALSIZE_IMAGES` images. At the low threshold a random head keeps its
   100 detections per image, so the matching has more to do than with a trained one.

Mining adds to the inference the COCO matching (Python per image, :mod:`e2x_pipeline.mining.
matching`), the FN candidates (dense anchors of uncovered misses, from the batch's kept dense
outputs) and the metrics. Its cost is roughly fixed per image and detection, so its share falls
as the detector's cost rises: the two rows measure both ends.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from e2x_pipeline.config import E2XConfig

from .common import write_bench

REALSIZE_ARCH = "fasterrcnn_mobilenet_v3_large_fpn"
REALSIZE_IMAGES = 16
REALSIZE_BATCH = 4
TARGET = 1.1


def _interleaved(
    det: Any, ds: Any, cfg: E2XConfig, causes: list[dict], split: str, batch: int, repeats: int
) -> tuple[list[float], list[float], int]:
    """(plain seconds, mining seconds, candidates): runs interleaved plain, mine, plain, ... so
    that machine load hits both alike."""
    from e2x_pipeline.inference import detect_dataset
    from e2x_pipeline.mining import mine

    mcfg = cfg.mining.model_copy(update={"batch_size": batch})
    plain, mining, n = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        detect_dataset(det, ds, mcfg.low_threshold, batch, progress=False)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n = len(mine(det, ds, mcfg, causes, split).candidates)
        mining.append(time.perf_counter() - t0)
    return plain, mining, n


def _row(
    name: str, images: int, batch: int, plain: list[float], mining: list[float], n: int
) -> dict:
    ratio = statistics.median(mining) / statistics.median(plain)
    return {
        "detector": name,
        "images": images,
        "batch_size": batch,
        "plain_inference_seconds": plain,
        "mining_seconds": mining,
        "plain_median_s": round(statistics.median(plain), 3),
        "mining_median_s": round(statistics.median(mining), 3),
        "ratio_of_medians": round(ratio, 3),
        "overhead_ms_per_image": round(
            1000 * (statistics.median(mining) - statistics.median(plain)) / images, 2
        ),
        "target_met": ratio <= TARGET,
        "candidates": n,
    }


def bench_mine(
    cfg: E2XConfig,
    out_dir: Path,
    progress: bool = True,
    repeats: int = 7,
    realsize_repeats: int = 3,
) -> dict:
    """Mining cost against plain batched inference over the same images (target <= 1.1x), for
    the run's detector and for a real-size one (module docstring); the ratio of medians."""
    import os

    from e2x_pipeline.data.benchmark import load_causes
    from e2x_pipeline.data.coco import load_image
    from e2x_pipeline.detectors import build_detector
    from e2x_pipeline.stages import detector_for, ensure_benchmark, open_split, resolve_checkpoint

    from .realsize import calibrate_norms

    load_start = os.getloadavg()
    ensure_benchmark(cfg)
    ckpt = resolve_checkpoint(cfg, progress)
    det = detector_for(cfg, ckpt)
    split = cfg.data.eval_split
    ds = open_split(cfg, split)
    causes = load_causes(cfg.data.root, split)
    rows = [
        _row(
            f"{det.family} (run's checkpoint, {int(det.meta.get('image_size', 128))} px)",
            len(ds.images),
            cfg.mining.batch_size,
            *_interleaved(det, ds, cfg, causes, split, cfg.mining.batch_size, repeats),
        )
    ]
    ids = ds.image_ids[:REALSIZE_IMAGES]
    small = dataclasses.replace(
        ds,
        images={i: ds.images[i] for i in ids},
        annotations={i: ds.annotations.get(i, []) for i in ids},
    )
    torch.manual_seed(cfg.seed)
    big = build_detector(REALSIZE_ARCH, list(det.classes), 800, None, str(det.device))
    calibrate_norms(big, [load_image(ds.image_path(i)) for i in ds.image_ids[-4:]])
    rows.append(
        _row(
            f"{REALSIZE_ARCH} (random init, BN calibrated, 800 px)",
            len(ids),
            REALSIZE_BATCH,
            *_interleaved(big, small, cfg, causes, split, REALSIZE_BATCH, realsize_repeats),
        )
    )
    result = {
        "split": split,
        "low_threshold": cfg.mining.low_threshold,
        "target": f"<= {TARGET}",
        "rows": rows,
        # the headline stays the run's detector, as before
        "ratio_of_medians": rows[0]["ratio_of_medians"],
        "target_met": rows[0]["target_met"],
        "ratio_realsize": rows[1]["ratio_of_medians"],
        "load_average_1_5_15": {"start": load_start, "end": os.getloadavg()},
    }
    lines = [
        f"Split `{split}`, low threshold {cfg.mining.low_threshold}; runs interleaved (plain, "
        f"mine, ...), {repeats} repeats for the run's detector, {realsize_repeats} for the "
        "real-size one; ratio of medians.",
        "",
        "| detector | images | batch | plain s | mining s | ratio | overhead ms / image | "
        "candidates | target <= 1.1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['detector']} | {r['images']} | {r['batch_size']} | {r['plain_median_s']} | "
            f"{r['mining_median_s']} | **{r['ratio_of_medians']}** | "
            f"{r['overhead_ms_per_image']} | {r['candidates']} | "
            f"{'met' if r['target_met'] else 'MISSED'} |"
        )
    write_bench(out_dir, "mine", result, "\n".join(lines))
    return result
