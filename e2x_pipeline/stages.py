"""Stage functions shared by the CLI and the Prefect flows: each reads and writes files only.

They resolve paths from the config's run layout (:mod:`e2x_pipeline.layout`), call the library,
and write their outputs atomically. The flows in ``flows/`` wrap these as tasks; the CLI calls
them directly or through the flow. The formatters live next to their results
(:func:`~e2x_pipeline.evaluation.format_evaluation`, :func:`~e2x_pipeline.retrain.format_retrain`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import torch

from .config import E2XConfig, resolve_device
from .data.benchmark import GENERATOR_VERSION, HARD_VERSION, SUMMARY_FILE, make_benchmark
from .data.coco import CocoDataset, load_coco
from .data.inputs import check_split, split_causes
from .detectors import configured_checkpoint, load_detector
from .detectors.base import Detector
from .evaluation import evaluate_detector_outputs, format_evaluation  # noqa: F401 (re-exported)
from .fiftyone_io.convert import dataset_names as fiftyone_names  # noqa: F401 (CLI uses it)
from .generation import generation
from .inference import detect_dataset
from .io_utils import safe_join, write_json
from .locking import run_lock
from .training import train_detector


def ensure_benchmark(cfg: E2XConfig) -> Path:
    """Generate the benchmark under ``data.root`` unless an identical one is already there."""
    root = cfg.data.root
    b = cfg.benchmark
    want = {
        "seed": b.seed,
        "image_size": b.image_size,
        "sizes": {"train": b.n_train, "val": b.n_val, "test": b.n_test, "pool": b.n_pool},
        "variant": b.variant,
    }
    stamp = root / SUMMARY_FILE
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        sizes = {k: v["images"] for k, v in have.get("splits", {}).items()}
        # a default benchmark's summary has no "variant" (as before the variants existed)
        key = (
            have.get("seed"),
            have.get("image_size"),
            have.get("version"),
            sizes,
            have.get("variant", "default"),
            have.get("hard_version"),
        )
        if key == (
            want["seed"],
            want["image_size"],
            GENERATOR_VERSION,
            want["sizes"],
            want["variant"],
            HARD_VERSION if b.variant == "hard" else None,
        ):
            return root
    make_benchmark(
        root, seed=b.seed, image_size=b.image_size, sizes=want["sizes"], variant=b.variant
    )
    return root


def open_split(cfg: E2XConfig, split: str) -> CocoDataset:
    """The split's validated COCO data; a missing split is an error listing those that exist."""
    check_split(cfg, split)
    if cfg.data.fiftyone is not None:
        from .fiftyone_io.source import read_split

        # the pool's labels are not read: selection must not see them (pool_labels reveals them)
        labels = split != cfg.repair.pool_split
        return read_split(cfg.data.fiftyone, split, cfg.mining.on_bad_record, labels=labels)
    spec = cfg.data.split(split)
    return load_coco(spec.annotations, spec.images, cfg.mining.on_bad_record)


def train_stage(cfg: E2XConfig, progress: bool = True, force: bool = False) -> tuple[Path, dict]:
    """Train the configured detector on ``train`` (cached by data hash and config)."""
    device = resolve_device(cfg.device)
    return train_detector(
        cfg, open_split(cfg, "train"), cfg.layout.checkpoints, device, progress, force
    )


def resolve_checkpoint(cfg: E2XConfig, progress: bool = True) -> Path:
    """The checkpoint a stage runs on: ``model.checkpoint`` (or a ``model.weights`` file) when
    set, else the one ``e2x train`` makes (cached by data hash and config, so this trains only
    the first time)."""
    given = configured_checkpoint(cfg.model)
    if given is not None:
        return given
    return train_stage(cfg, progress=progress)[0]


def detector_for(cfg: E2XConfig, checkpoint: Path | None = None) -> Detector:
    model_cfg = (
        cfg.model if checkpoint is None else cfg.model.model_copy(update={"checkpoint": checkpoint})
    )
    return load_detector(model_cfg, resolve_device(cfg.device))


def evaluate_stage(
    cfg: E2XConfig, detector: Detector, split: str, progress: bool = True, record: bool = True
) -> dict:
    """mAP@0.5 (all and clean images), recall per planted cause, distractor FP rate."""
    ds = open_split(cfg, split)
    dets = detect_dataset(
        detector, ds, cfg.mining.low_threshold, cfg.mining.batch_size, progress=progress
    )
    result = evaluate_detector_outputs(
        ds,
        dets,
        detector.classes,
        split_causes(cfg, split),
        cfg.mining.operating_threshold,
        cfg.mining.iou,
    )
    result["split"] = split
    if record:  # the configured detector's evaluation; retrained ones go into retrain.json
        write_json(cfg.layout.evaluation(split), result)
    return result


def mine_stage(cfg: E2XConfig, detector: Detector, split: str):
    """Mine FP/FN candidates on ``split``; writes the split's candidates and predictions."""
    from .mining import run_mining_stage

    out = cfg.split_layout(split).root
    with run_lock(cfg.output_dir):
        ds = open_split(cfg, split)
        return run_mining_stage(detector, ds, cfg.mining, out, split_causes(cfg, split), split)


def publish_stage(
    cfg: E2XConfig, split: str, dataset_name: str | None = None, checkpoint: Path | None = None
) -> str:
    """Push the split, its predictions and the ``e2x-failures`` view into FiftyOne. With the
    ``checkpoint`` the predictions came from, they are also stored as that checkpoint's
    FiftyOne evaluation run ``e2x_<first 12 hex of its file hash>``."""
    import pandas as pd

    from . import fiftyone_io
    from .io_utils import file_hash

    name = dataset_name or cfg.data.fiftyone_dataset or f"e2x-{split}"
    layout = cfg.split_layout(split)
    key = file_hash(checkpoint)[:12] if checkpoint is not None else None
    rerun = f"'e2x mine --split {split}' (or the same 'e2x run')"
    with run_lock(cfg.output_dir), fiftyone_io.publishing(name, str(cfg.output_dir), rerun):
        fiftyone_io.publish_mining(
            name,
            open_split(cfg, split),
            pd.read_parquet(layout.require("candidates")),
            pd.read_parquet(layout.require("predictions")),
            split_causes(cfg, split),
            checkpoint_key=key,
            iou=cfg.mining.iou,
        )
    return name


def publish_evaluation_stage(
    cfg: E2XConfig, split: str, checkpoint: Path, predictions: Path, dataset_name: str | None = None
) -> str:
    """Add ``checkpoint``'s FiftyOne evaluation run ``e2x_<first 12 hex of its file hash>``,
    from its ``predictions`` table, to the mining dataset that :func:`publish_stage` published
    for the base run; nothing else there changes. Returns the evaluation key."""
    import pandas as pd

    from . import fiftyone_io
    from .io_utils import file_hash

    name = dataset_name or cfg.data.fiftyone_dataset or f"e2x-{split}"
    rerun = "the same 'e2x run' (or 'e2x demo')"
    with run_lock(cfg.output_dir), fiftyone_io.publishing(name, str(cfg.output_dir), rerun):
        return fiftyone_io.publish_checkpoint_evaluation(
            name,
            open_split(cfg, split),
            pd.read_parquet(predictions),
            file_hash(checkpoint)[:12],
            iou=cfg.mining.iou,
        )


def reference_image(cfg: E2XConfig, max_images: int = 256) -> torch.Tensor:
    """The E2X reference: the mean image of (up to ``max_images`` of) the train split (the
    explained split when there is no train split).

    The paper's reference is the dataset mean (input = mean + w * (x - mean)); a subset keeps
    this cheap and changes the mean by well under one grey level on the benchmark.
    """
    from .explain.superpixels import dataset_mean

    # A user with a checkpoint may have no train split: then the mean of the split explained
    # (per channel when image sizes differ) stands in for the training-set mean.
    has_train = cfg.data.split("train").annotations.is_file()
    ds = open_split(cfg, "train" if has_train else cfg.data.eval_split)
    return dataset_mean([ds.image_path(i) for i in ds.image_ids], max_images=max_images)


def failures(candidates: pd.DataFrame, max_candidates: int | None = None) -> pd.DataFrame:
    """The candidates an explainer should look at: every fp and fn, in a stable order."""
    rows = candidates[candidates["outcome"].isin(["fp", "fn"])]
    rows = rows.sort_values(["image_id", "candidate_id"], kind="stable")
    return rows.head(max_candidates) if max_candidates else rows


def explain_stage(
    cfg: E2XConfig, detector: Detector, split: str, progress: bool = True
) -> pd.DataFrame:
    """Explain the split's mined failures with every configured method (skips finished work)."""
    import pandas as pd

    from .explain.stage import explain_candidates

    layout = cfg.split_layout(split)
    with run_lock(cfg.output_dir):
        cands = failures(pd.read_parquet(layout.require("candidates")), cfg.explain.max_candidates)
        ref = reference_image(cfg)
        return explain_candidates(
            detector, cands, cfg.explain, layout.root, ref, cfg.seed, progress=progress
        )


def overlay_stage(cfg: E2XConfig, split: str, method: str = "e2x", limit: int = 24) -> list[Path]:
    """Write heatmap overlays (red +, blue -, scaled by max |value|) for explained failures."""
    import numpy as np
    import pandas as pd

    from .data.coco import load_image
    from .explain.overlay import render_overlay

    layout = cfg.split_layout(split)
    table = pd.read_parquet(layout.require("explanations"))
    cands = pd.read_parquet(layout.require("candidates")).set_index("candidate_id")
    rows = table[(table["method"] == method) & (table["output"] == "score") & table["valid"]]
    written = []
    with run_lock(cfg.output_dir):
        for _, r in rows.head(limit).iterrows():
            c = cands.loc[r["candidate_id"]]
            with np.load(safe_join(layout.root, r["map_file"]), allow_pickle=False) as maps:
                pixel_map = maps[r["map_key"]].astype(np.float32)
            image = load_image(c["image_path"])
            safe = r["candidate_id"].replace("/", "_")
            out = safe_join(layout.overlays, f"{safe}-{method}.png")
            _side_by_side(image, render_overlay(image, pixel_map), c, out)
            written.append(out)
    return written


def _side_by_side(image: torch.Tensor, overlay, cand: pd.Series, out: Path, scale: int = 3):
    """The image with the candidate (red) and its GT (green) boxes, beside the overlay."""
    import numpy as np
    from PIL import Image, ImageDraw

    from .io_utils import atomic_write

    left = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    pair = Image.new("RGB", (left.width * 2 + 4, left.height), "white")
    pair.paste(left, (0, 0))
    pair.paste(Image.fromarray(overlay), (left.width + 4, 0))
    pair = pair.resize((pair.width * scale, pair.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pair)
    boxes = [("box", (255, 40, 40))]
    if cand.get("gt_x1") is not None and not np.isnan(cand.get("gt_x1")):
        boxes.append(("gt", (40, 220, 40)))
    for prefix, colour in boxes:
        xyxy = [float(cand[f"{prefix}_{k}"]) * scale for k in ("x1", "y1", "x2", "y2")]
        for dx in (0, (left.width + 4) * scale):
            draw.rectangle([xyxy[0] + dx, xyxy[1], xyxy[2] + dx, xyxy[3]], outline=colour, width=2)
    with atomic_write(out) as fh:
        pair.save(fh, format="PNG")


def cluster_stage(cfg: E2XConfig, detector: Detector, split: str, progress: bool = True):
    """Failing features of the split's explained failures, clustered into failure modes."""
    from .cluster import run_cluster_stage

    return run_cluster_stage(
        detector,
        cfg.split_layout(split).root,
        cfg.cluster,
        split_causes(cfg, split),
        cfg.seed,
        progress,
    )


def repair_stage(cfg: E2XConfig, detector: Detector, split: str, progress: bool = True):
    """Match the split's failure modes to the pool; writes the split's repair set."""
    from .cluster import embedder_for
    from .repair import run_repair_stage

    pool = cfg.repair.pool_split
    return run_repair_stage(
        detector,
        cfg.split_layout(split).root,
        open_split(cfg, pool),
        cfg.split_layout(pool).root,
        embedder_for(detector, cfg.cluster),
        cfg.explain,
        cfg.repair,
        split_causes(cfg, pool),
        progress,
    )


def publish_failures_stage(
    cfg: E2XConfig, split: str, stable_ids: dict[int, str] | None = None
) -> str:
    """Explained failures with their heatmaps and failure modes, as a FiftyOne dataset;
    ``stable_ids`` (from :func:`history_stage`) add a saved view per mode named by its id."""
    from . import fiftyone_io

    name = fiftyone_names(cfg, split)["failures"]
    rerun = f"'e2x cluster --split {split}' (or the same 'e2x run')"
    with fiftyone_io.publishing(name, str(cfg.output_dir), rerun):
        _publish_failures(cfg, split, name, stable_ids)
    return name


def _publish_failures(
    cfg: E2XConfig, split: str, name: str, stable_ids: dict[int, str] | None
) -> None:
    import pandas as pd

    from . import fiftyone_io
    from .run_record import run_record

    layout = cfg.split_layout(split)
    features, modes = layout.features, layout.failure_modes
    fiftyone_io.publish_failures(
        name,
        open_split(cfg, split),
        pd.read_parquet(layout.require("candidates")),
        pd.read_parquet(layout.require("explanations")),
        layout.root,
        pd.read_parquet(features) if features.is_file() else None,
        pd.read_parquet(modes) if modes.is_file() else None,
        run=run_record(cfg, split),  # what the App's explain-on-demand operator reruns with
        stable_ids=stable_ids,
    )


def publish_repair_stage(cfg: E2XConfig, split: str) -> str:
    """The repair set on the pool's FiftyOne dataset, with the saved view ``e2x-repair``, and
    the pool's regions as the Brain similarity index ``e2x_regions`` (the failing features as
    its queries)."""
    import numpy as np
    import pandas as pd

    from . import fiftyone_io

    layout, pool_layout = cfg.split_layout(split), cfg.split_layout(cfg.repair.pool_split)
    table = layout.require("repair_set")
    regions = fiftyone_io.PoolRegions(
        pd.read_parquet(pool_layout.require("regions")),
        np.load(pool_layout.require("region_embeddings"), allow_pickle=False),
        pd.read_parquet(layout.require("features")),
        cfg.repair.neighbours,
    )
    name = fiftyone_names(cfg, split)["pool"]
    rerun = f"'e2x repair --split {split}' (or the same 'e2x run')"
    with fiftyone_io.publishing(name, str(cfg.output_dir), rerun):
        pool = open_split(cfg, cfg.repair.pool_split)
        fiftyone_io.publish_repair(name, pool, pd.read_parquet(table), regions=regions)
    return name


def pool_labels(cfg: E2XConfig) -> CocoDataset | None:
    """The pool's labels to reveal on export: ``repair.pool_labels``, else the benchmark's."""
    path = cfg.repair.pool_labels
    if path is None and cfg.data.fiftyone is not None:  # the pool view's own ground truth
        from .fiftyone_io.source import read_split

        return read_split(cfg.data.fiftyone, cfg.repair.pool_split, labels=True)
    if path is None:
        default = cfg.data.root / "annotations" / f"{cfg.repair.pool_split}_labels.json"
        if not default.is_file():
            return None
        path = default
    if not Path(path).is_file():
        raise FileNotFoundError(f"repair.pool_labels {path} does not exist; fix the path")
    return load_coco(path, cfg.data.split(cfg.repair.pool_split).images)


def export_stage(
    cfg: E2XConfig, split: str, name: str = "repair-set", fmt: str = "coco"
) -> tuple[Path, int]:
    """Export the ``e2x-repair`` view under ``<output_dir>/export/<name>`` in ``fmt`` (coco,
    yolov5, voc or cvat: FiftyOne's exporter and layout for it)."""
    from . import fiftyone_io

    fiftyone_io.check_export_format(fmt)  # a typo fails before the pool's labels are read
    out = cfg.layout.export(name)
    pool = fiftyone_names(cfg, split)["pool"]
    with fiftyone_io.publishing(pool, str(cfg.output_dir), f"'e2x export --split {split}'"):
        n = fiftyone_io.export_repair(pool, out, pool_labels(cfg), fmt=fmt)
    return out, n


def retrain_stage(
    cfg: E2XConfig, checkpoint: Path, split: str, progress: bool = True, force: bool = False
) -> dict:
    """Label the split's repair set, retrain, evaluate before/after; writes ``retrain.json`` (one
    generation with the retrained checkpoint: :mod:`e2x_pipeline.generation`).

    The retrained checkpoint is cached under ``<output_dir>/checkpoints`` by the parent
    checkpoint, the repair set and the retrain settings (:func:`e2x_pipeline.retrain.retrain_key`).
    Before/after: mAP@0.5, recall per planted cause and the distractor FP rate on
    ``retrain.eval_split``, and the share of each failure mode's member failures the new detector
    closes on ``split``.
    """
    import pandas as pd

    from .retrain import reveal_labels

    layout = cfg.split_layout(split)
    table = layout.require("repair_set")
    labels = pool_labels(cfg)
    if labels is None:
        raise FileNotFoundError(
            "no labels for the pool: label the exported repair set ('e2x export') and set "
            "repair.pool_labels to its labels.json"
        )
    added = reveal_labels(labels, pd.read_parquet(table)["file_name"].tolist())
    base = detector_for(cfg, checkpoint)
    train = open_split(cfg, "train")
    run_dir = cfg.layout.root
    # "writing" from before the checkpoint is trained until retrain.json is written
    with generation(run_dir, "retrain") as gen:
        result = _retrain(cfg, base, checkpoint, split, train, added, progress, force)
        write_json(cfg.layout.retrain_summary, result)
        gen.add(cfg.layout.retrain_summary)
        path = Path(result["checkpoint"]).resolve()
        if path.is_relative_to(run_dir.resolve()):
            gen.add(run_dir / path.relative_to(run_dir.resolve()))
    return result


def _retrain(
    cfg: E2XConfig,
    base: Detector,
    checkpoint: Path,
    split: str,
    train: CocoDataset,
    added: CocoDataset,
    progress: bool,
    force: bool,
) -> dict:
    import pandas as pd

    from .retrain import closure_table, retrained_detector

    layout = cfg.split_layout(split)
    after, path, meta = retrained_detector(cfg, base, checkpoint, train, added, progress, force)
    ev_split = cfg.retrain.eval_split
    before_eval = evaluate_stage(cfg, base, ev_split, progress, record=False)
    after_eval = evaluate_stage(cfg, after, ev_split, progress, record=False)
    closure = []
    if layout.features.is_file():
        cands = pd.read_parquet(layout.require("candidates"))
        features = pd.read_parquet(layout.features, columns=["mode_id", "candidate_id"])
        thr = cfg.mining.operating_threshold
        closure = closure_table(base, after, open_split(cfg, split), cands, features, thr)
    result = {
        "checkpoint": str(path),
        "parent": str(checkpoint),
        "repair_set_id": meta.get("repair_set_id"),
        "added_images": len(added.images),
        "eval_split": ev_split,
        "before": before_eval,
        "after": after_eval,
        "closure_by_mode": closure,
        "meta": meta,
    }
    return result


def history_stage(cfg: E2XConfig, split: str, checkpoint: Path) -> dict:
    """Record this run in ``<output_dir>/history.sqlite`` and compare its failure modes with the
    previous run's on the same split (:mod:`e2x_pipeline.history`); returns the comparison.

    The record's metrics are the split's evaluation (``evaluation-<split>.json``, when the run
    evaluated it) and the cluster stage's adjusted Rand index."""
    from .explain.stage import segments_key
    from .history import HistoryStore, build_run_record, comparison_summary

    layout = cfg.split_layout(split)
    metrics: dict = {}
    ev = cfg.layout.evaluation(split)
    if ev.is_file():
        evaluation = json.loads(ev.read_text())
        metrics.update({k: evaluation.get(k) for k in ("map50", "recall_clean")})
        metrics["recall_by_cause"] = evaluation.get("recall_by_cause")
    if layout.cluster_summary.is_file():
        ari = json.loads(layout.cluster_summary.read_text()).get("adjusted_rand_index")
        metrics["adjusted_rand_index"] = ari
    config_hash = cfg.section_hash("mining", "explain", "cluster", "history")
    record = build_run_record(
        layout.root,
        split,
        open_split(cfg, split).content_hash(),
        config_hash,
        Path(checkpoint),
        segments_key(cfg.explain),
        metrics,
    )
    store = HistoryStore(cfg.history_path)
    comparison = store.record(record, cfg.history.match_threshold, cfg.history.member_weight)
    return comparison_summary(comparison, comparison.previous, record.run_key)


def explain_summary(table: pd.DataFrame, overlays: list[Path]) -> dict:
    """Counts of an explanations table, as the flows report them."""
    return {
        "explanations": int(len(table)),
        "valid": int(table["valid"].sum()) if len(table) else 0,
        "seconds": float(table["seconds"].sum()) if len(table) else 0.0,
        "overlays": [str(p) for p in overlays],
    }
