"""Stage functions shared by the CLI and the Prefect flows: each reads and writes files only.

They resolve paths from the config, call the library, and write their outputs atomically. The
flows in ``flows/`` wrap these as tasks; the CLI calls them directly or through the flow.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import E2XConfig, resolve_device
from .data.benchmark import load_causes, make_benchmark
from .data.coco import CocoDataset, load_coco
from .detectors import load_detector
from .detectors.base import Detector
from .evaluation import evaluate_detector_outputs
from .inference import detect_dataset
from .io_utils import write_json
from .training import train_detector


def ensure_benchmark(cfg: E2XConfig) -> Path:
    """Generate the benchmark under ``data.root`` unless an identical one is already there."""
    root = cfg.data.root
    b = cfg.benchmark
    want = {
        "seed": b.seed,
        "image_size": b.image_size,
        "sizes": {"train": b.n_train, "val": b.n_val, "test": b.n_test, "pool": b.n_pool},
    }
    stamp = root / "benchmark.json"
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        sizes = {k: v["images"] for k, v in have.get("splits", {}).items()}
        if (have.get("seed"), have.get("image_size"), sizes) == (
            want["seed"],
            want["image_size"],
            want["sizes"],
        ):
            return root
    make_benchmark(root, seed=b.seed, image_size=b.image_size, sizes=want["sizes"])
    return root


def open_split(cfg: E2XConfig, split: str) -> CocoDataset:
    spec = cfg.data.split(split)
    return load_coco(spec.annotations, spec.images)


def checkpoint_dir(cfg: E2XConfig) -> Path:
    return cfg.output_dir / "checkpoints"


def train_stage(cfg: E2XConfig, progress: bool = True, force: bool = False) -> tuple[Path, dict]:
    """Train the configured detector on ``train`` (cached by data hash and config)."""
    device = resolve_device(cfg.device)
    return train_detector(
        cfg, open_split(cfg, "train"), checkpoint_dir(cfg), device, progress, force
    )


def detector_for(cfg: E2XConfig, checkpoint: Path | None = None) -> Detector:
    model_cfg = (
        cfg.model if checkpoint is None else cfg.model.model_copy(update={"checkpoint": checkpoint})
    )
    return load_detector(model_cfg, resolve_device(cfg.device))


def evaluate_stage(cfg: E2XConfig, detector: Detector, split: str, progress: bool = True) -> dict:
    """mAP@0.5 (all and clean images), recall per planted cause, distractor FP rate."""
    ds = open_split(cfg, split)
    dets = detect_dataset(
        detector, ds, cfg.mining.low_threshold, cfg.mining.batch_size, progress=progress
    )
    result = evaluate_detector_outputs(
        ds,
        dets,
        detector.classes,
        load_causes(cfg.data.root, split),
        cfg.mining.operating_threshold,
        cfg.mining.iou,
    )
    result["split"] = split
    write_json(cfg.output_dir / f"evaluation-{split}.json", result)
    return result


def format_evaluation(results: list[dict]) -> str:
    """A plain-text table of evaluation results, one column per split."""
    rows = [
        ("images", "images"),
        ("mAP@0.5 (all)", "map50"),
        ("mAP@0.5 (clean images)", "map50_clean"),
        ("recall, clean objects", "recall_clean"),
    ]
    causes = sorted({c for r in results for c in r.get("recall_by_cause", {})})
    lines = [f"{'metric':<32}" + "".join(f"{r['split']:>10}" for r in results)]
    for title, key in rows:
        lines.append(f"{title:<32}" + "".join(_fmt(r.get(key)) for r in results))
    for c in causes:
        lines.append(
            f"{'recall, cause ' + c:<32}"
            + "".join(_fmt(r.get("recall_by_cause", {}).get(c)) for r in results)
        )
    lines.append(
        f"{'FP rate on distractors':<32}"
        + "".join(_fmt(r.get("distractor_fp_rate")) for r in results)
    )
    return "\n".join(lines)


def _fmt(v: object) -> str:
    if v is None:
        return f"{'-':>10}"
    if isinstance(v, float):
        return f"{v:>10.3f}"
    return f"{v!s:>10}"
