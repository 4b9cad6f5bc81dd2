"""``e2x bench realsize``: seconds to explain one detection of a torchvision detector at its own
input size, per method, in one run.

The detector is ``fasterrcnn_mobilenet_v3_large_fpn`` with torchvision's 91-entry COCO head, at
its native size (``min_size=800``: a 640x480 image is resized to 800x1067). Its weights are a
seeded random init of the real shape, because nothing can be downloaded here; the cost of a
forward and a backward does not depend on the weights' values. The images are 640x480 and
500x375 synthetic photographs (colour blobs, textured boxes). The targets are each image's
highest-scoring detections, on the clean image.

Every method explains the same targets with one shared SLIC segmentation (M=200), and the time
is the explanation call's wall time per detection (SLIC included). The table also gives the
passes per detection, so the ratios can be read as model passes. Ratios are within this run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2x_pipeline.config import E2XConfig, ExplainConfig, resolve_device
from e2x_pipeline.detectors import build_detector, coco_categories
from e2x_pipeline.detectors.base import Target
from e2x_pipeline.explain import dataset_mean, get_explainer, slic_segments

from .common import environment, write_bench

ARCH = "fasterrcnn_mobilenet_v3_large_fpn"
SIZES = ((640, 480), (500, 375))
PER_IMAGE = 1
BATCH = 4  # images per forward (explain.batch_size)
# (label, method, ExplainConfig updates, options)
SETTINGS: tuple[tuple[str, str, dict[str, Any], dict[str, Any]], ...] = (
    ("e2x K=8", "e2x", {"k": 8}, {}),
    ("e2x K=32", "e2x", {"k": 32}, {}),
    ("lime K=100", "lime", {"lime_samples": 100}, {}),
    ("odam", "odam", {}, {}),
    ("odsmoothgrad n=20", "odsmoothgrad", {}, {}),
)


def _image(size: tuple[int, int], seed: int) -> torch.Tensor:
    w, h = size
    g = np.random.default_rng(seed)
    coarse = torch.as_tensor(g.uniform(0.15, 0.85, size=(1, 3, 6, 8)), dtype=torch.float32)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")[0]
    for _ in range(3):
        x, y = int(g.integers(0, w - 120)), int(g.integers(0, h - 120))
        img[:, y : y + 100, x : x + 110] = torch.as_tensor(g.uniform(0, 1, size=(3, 1, 1)))
    return (img + 0.03 * torch.as_tensor(g.normal(size=(3, h, w)), dtype=torch.float32)).clamp(0, 1)


def _targets(det: Any, image: torch.Tensor) -> list[Target]:
    d = det.detect(image, 0.0)[0]
    top = d.scores.argsort(descending=True)[:PER_IMAGE]
    return [Target(int(d.candidates[i]), int(d.labels[i]), tuple(d.boxes[i].tolist())) for i in top]


def bench_realsize(cfg: E2XConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Time every setting on the same detections; write ``realsize.{json,md}``."""
    torch.manual_seed(cfg.seed)
    det = build_detector(ARCH, coco_categories(ARCH), 800, None, resolve_device(cfg.device))
    # a few 800x1067 inputs per batch: 256 of them (the default) would need tens of GB
    base = ExplainConfig(n_segments=200, batch_size=BATCH)
    images = [_image(size, seed) for seed, size in enumerate(SIZES)]
    mean = dataset_mean(images)
    work = []
    for image in images:
        t0 = time.perf_counter()
        seg = slic_segments(image, base.n_segments, base.compactness)
        work.append((image, _targets(det, image), seg, time.perf_counter() - t0))
    # one untimed call per method, so no timed call pays for first-use set-up
    for _, method, _upd, opts in SETTINGS:
        image, targets, seg, _ = work[0]
        small = base.model_copy(update={"k": 2, "lime_samples": 4})
        o = {"n_samples": 1} if method == "odsmoothgrad" else opts
        warm = get_explainer(method, det, small, cfg.seed, mean=mean, **o)
        warm.explain(image, targets, segments=seg)
    rows = []
    for label, method, upd, opts in SETTINGS:
        ecfg = base.model_copy(update=upd)
        ex = get_explainer(method, det, ecfg, cfg.seed, mean=mean, **opts)
        seconds, passes, n = 0.0, 0.0, 0
        for image, targets, seg, slic_s in work:
            t0 = time.perf_counter()
            exps = ex.explain(image, targets, segments=seg)
            seconds += time.perf_counter() - t0 + slic_s
            passes += sum(e.passes for e in exps)
            n += len(exps)
            assert all(e.valid for e in exps), [e.reason for e in exps]
        rows.append(
            {
                "setting": label,
                "seconds_per_detection": round(seconds / n, 2),
                "passes_per_detection": round(passes / n, 1),
                "seconds_per_pass": round(seconds / passes, 3),
            }
        )
        if progress:
            print(rows[-1], flush=True)
    by = {r["setting"]: r["seconds_per_detection"] for r in rows}
    result = {
        "arch": ARCH,
        "input": "640x480 and 500x375 images, resized by the model to 800 px (shorter side)",
        "detections": len(images) * PER_IMAGE,
        "batch_size": BATCH,
        "settings": rows,
        "ratios": {
            "lime K=100 / e2x K=8": round(by["lime K=100"] / by["e2x K=8"], 2),
            "e2x K=32 / odam": round(by["e2x K=32"] / by["odam"], 1),
            "e2x K=32 / odsmoothgrad n=20": round(by["e2x K=32"] / by["odsmoothgrad n=20"], 2),
        },
    }
    write_bench(out_dir, "realsize", result, _markdown(result))
    return result


def _markdown(result: dict[str, Any]) -> str:
    env = environment()
    lines = [
        f"{result['arch']} with the 91-class COCO head (seeded random init of the real shape), "
        f"{result['input']}; {result['detections']} detections, one SLIC (M=200) per image, "
        f"{result['batch_size']} images per forward; "
        f"{env['device']}, {env['cpu_count']} CPU cores, {env['torch_threads']} threads.",
        "",
        "| setting | s / detection | passes / detection | s / pass |",
        "|---|---|---|---|",
    ]
    for r in result["settings"]:
        lines.append(
            f"| {r['setting']} | {r['seconds_per_detection']} | {r['passes_per_detection']} | "
            f"{r['seconds_per_pass']} |"
        )
    lines += [
        "",
        "Ratios (same run): " + ", ".join(f"{k}: {v}" for k, v in result["ratios"].items()),
    ]
    return "\n".join(lines)
