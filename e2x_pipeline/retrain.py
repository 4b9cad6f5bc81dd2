"""The retrain stage: label the repair set, retrain, and show whether the failure modes close.

* :func:`reveal_labels` simulates labelling: the selected pool images get their labels from the
  pool's label file (the benchmark's hidden ``pool_labels.json``, or a user's labelled export).
* :func:`retrain_detector` fine-tunes the checkpoint (or trains from scratch) on ``train`` plus
  the labelled images, each repeated ``repeat`` times per epoch so that a few dozen new images
  are not drowned by the train split. Every selection strategy gets the same recipe.
* :func:`closure_by_mode` re-checks every member failure of every failure mode with the new
  detector, on the split where the modes were found: an fn is *closed* when a detection of the
  GT's class at the operating threshold now overlaps it with IoU >= ``iou``; an fp is closed when
  no detection of its class at the operating threshold overlaps its box with IoU >= ``iou``.

The checkpoint's metadata records its parent checkpoint, the repair set's id (a hash of the
selected file names) and the data hash of train + added images. :func:`retrained_detector` caches
it under the run's ``checkpoints/`` by the parent checkpoint, the repair set and the retrain
settings (:func:`retrain_key`); :func:`format_retrain` prints the before/after of ``retrain.json``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pandas as pd
import torch
from torchvision.ops import box_iou

from .config import E2XConfig, RetrainConfig, TrainConfig, resolve_device
from .data.coco import CocoDataset
from .detectors import load_checkpoint, load_detector, save_checkpoint
from .detectors.base import Detector
from .evaluation import cell
from .inference import detect_dataset
from .io_utils import file_hash
from .training import dataset_hash, train


def repair_set_id(file_names: list[str]) -> str:
    """A stable id of a selection: the hash of its sorted file names."""
    return hashlib.sha256("\n".join(sorted(file_names)).encode()).hexdigest()[:12]


def reveal_labels(labels: CocoDataset, file_names: list[str]) -> CocoDataset:
    """The sub-dataset of ``labels`` holding exactly the images named (labels revealed)."""
    by_name = {im["file_name"]: i for i, im in labels.images.items()}
    missing = [f for f in file_names if f not in by_name]
    if missing:
        raise ValueError(
            f"{len(missing)} selected images have no record in {labels.path} "
            f"(e.g. {missing[:3]}); label them there, or point repair.pool_labels at the file "
            "that holds their labels"
        )
    ids = [by_name[f] for f in file_names]
    return CocoDataset(
        path=labels.path,
        image_dir=labels.image_dir,
        images={i: labels.images[i] for i in ids},
        annotations={i: labels.annotations.get(i, []) for i in ids},
        categories=dict(labels.categories),
    )


def _repeated(ds: CocoDataset, times: int) -> CocoDataset:
    """``ds`` with every image listed ``times`` times (new ids, same files and labels)."""
    images, anns = {}, {}
    step = max(ds.images) + 1 if ds.images else 1
    for r in range(times):
        for i in ds.image_ids:
            images[i + r * step] = ds.images[i]
            anns[i + r * step] = ds.annotations.get(i, [])
    return CocoDataset(ds.path, ds.image_dir, images, anns, dict(ds.categories))


def retrain_detector(
    base: Detector,
    train_split: CocoDataset,
    added: CocoDataset | None,
    cfg: RetrainConfig,
    train_cfg: TrainConfig,
    seed: int = 0,
    progress: bool = True,
    fresh: Detector | None = None,
) -> tuple[Detector, dict]:
    """Fine-tune a copy of ``base`` (or train ``fresh`` from scratch) on train + ``added``."""
    if cfg.mode == "finetune":
        det = copy.deepcopy(base)
        recipe = train_cfg.model_copy(update={"epochs": cfg.epochs, "lr": cfg.lr})
    else:
        if fresh is None:
            raise ValueError("retrain.mode 'scratch' needs a freshly built detector")
        det, recipe = fresh, train_cfg
    extra = _repeated(added, cfg.repeat) if added is not None and added.images else None
    log = train(det, train_split, recipe, seed, progress, extra=extra)
    return det, log


def closure_by_mode(
    detector: Detector,
    split: CocoDataset,
    candidates: pd.DataFrame,
    features: pd.DataFrame,
    operating_threshold: float = 0.5,
    iou: float = 0.5,
) -> pd.DataFrame:
    """Per failure mode: its member failures and how many the detector has closed (module doc)."""
    cols = ["mode_id", "failures", "closed", "closed_share"]
    if not len(features):
        return pd.DataFrame(columns=cols)
    members = features[features["mode_id"] >= 0][["mode_id", "candidate_id"]].drop_duplicates()
    cands = candidates.set_index("candidate_id")
    image_ids = sorted({int(cands.loc[c, "image_id"]) for c in members["candidate_id"]})
    sub = CocoDataset(
        split.path,
        split.image_dir,
        {i: split.images[i] for i in image_ids},
        {i: split.annotations.get(i, []) for i in image_ids},
        split.categories,
    )
    dets = detect_dataset(detector, sub, operating_threshold, progress=False)

    def closed(cid: str) -> bool:
        c = cands.loc[cid]
        d = dets.get(int(c["image_id"]))
        prefix = "gt" if c["outcome"] == "fn" else "box"
        box = torch.tensor([[float(c[f"{prefix}_{k}"]) for k in ("x1", "y1", "x2", "y2")]])
        hit = False
        if d is not None and len(d):
            same = (d.labels == int(c["label"])) & (d.scores >= operating_threshold)
            if same.any():
                hit = bool((box_iou(d.boxes[same].cpu(), box) >= iou).any())
        return hit if c["outcome"] == "fn" else not hit

    members["closed"] = [closed(c) for c in members["candidate_id"]]
    out = members.groupby("mode_id")["closed"].agg(failures="size", closed="sum").reset_index()
    out["closed_share"] = out["closed"] / out["failures"]
    return out[cols]


def save_retrained(
    path: Path,
    detector: Detector,
    parent: Path | None,
    added: CocoDataset | None,
    log: dict,
    train_split: CocoDataset,
    cfg: RetrainConfig,
) -> dict:
    """Write the retrained checkpoint with its lineage in the metadata; returns the metadata."""
    names = [added.images[i]["file_name"] for i in added.image_ids] if added else []
    h = hashlib.sha256(dataset_hash(train_split).encode())
    if added is not None and added.images:
        h.update(dataset_hash(added).encode())
    meta = {
        **{k: v for k, v in detector.meta.items() if k not in ("parent", "train_key")},
        "classes": detector.classes,
        "parent": str(parent) if parent else None,
        "repair_set_id": repair_set_id(names),
        "repair_set_images": len(names),
        "data_hash": h.hexdigest()[:16],
        "retrain": cfg.model_dump(mode="json"),
        "train_seconds": round(log["seconds"], 1),
        "final_loss": log["epochs"][-1]["loss"],
    }
    state = {k: v.detach().cpu() for k, v in detector.model.state_dict().items()}
    save_checkpoint(path, state, meta)
    return json.loads(json.dumps(meta, default=str))


def retrain_key(cfg: E2XConfig, parent: Path, added: CocoDataset) -> str:
    """The retrained checkpoint's cache key: the parent checkpoint's content hash, the repair
    set's id and the retrain, train (less ``num_threads``) and seed settings."""
    names = [im["file_name"] for im in added.images.values()]
    key_src = {
        "parent": file_hash(parent),
        "repair_set": repair_set_id(names),
        "retrain": cfg.retrain.model_dump(mode="json"),
        "train": cfg.train.model_dump(mode="json", exclude={"num_threads"}),
        "seed": cfg.seed,
    }
    return hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:16]


def retrained_detector(
    cfg: E2XConfig,
    base: Detector,
    parent: Path,
    train_split: CocoDataset,
    added: CocoDataset,
    progress: bool = True,
    force: bool = False,
) -> tuple[Detector, Path, dict]:
    """``base`` retrained on train + ``added``: loaded from ``checkpoints/retrained-<key>.pt``
    when that exists (and not ``force``), else trained and saved there with its lineage."""
    path = cfg.layout.checkpoints / f"retrained-{retrain_key(cfg, parent, added)}.pt"
    if path.is_file() and not force:
        model = cfg.model.model_copy(update={"checkpoint": path})
        return load_detector(model, resolve_device(cfg.device)), path, load_checkpoint(path)[1]
    after, log = retrain_detector(
        base, train_split, added, cfg.retrain, cfg.train, cfg.seed, progress
    )
    return after, path, save_retrained(path, after, parent, added, log, train_split, cfg.retrain)


def closure_table(
    before: Detector,
    after: Detector,
    split: CocoDataset,
    candidates: pd.DataFrame,
    features: pd.DataFrame,
    operating_threshold: float = 0.5,
) -> list[dict]:
    """Per failure mode: its failures and how many each detector closes (``closed_before``,
    ``closed_after``, and their shares), as ``retrain.json`` records them."""
    b = closure_by_mode(before, split, candidates, features, operating_threshold)
    a = closure_by_mode(after, split, candidates, features, operating_threshold)
    merged = b.merge(a, on=["mode_id", "failures"], suffixes=("_before", "_after"))
    return merged.to_dict("records")


def format_retrain(result: dict) -> str:
    """Before/after as plain text: the headline metrics, then the failure modes."""
    b, a = result["before"], result["after"]
    lines = [
        f"retrained on train + {result['added_images']} repair-set images "
        f"-> {result['checkpoint']}",
        f"{'metric (' + result['eval_split'] + ')':<32}{'before':>10}{'after':>10}",
    ]
    rows = [("mAP@0.5", b.get("map50"), a.get("map50"))]
    rows += [("recall, clean objects", b.get("recall_clean"), a.get("recall_clean"))]
    for c in sorted(b.get("recall_by_cause", {})):
        rows.append((f"recall, cause {c}", b["recall_by_cause"][c], a["recall_by_cause"].get(c)))
    if "distractor_fp_rate" in b:
        rows.append(("FP rate on distractors", b["distractor_fp_rate"], a["distractor_fp_rate"]))
    for name, x, y in rows:
        lines.append(f"{name:<32}{cell(x)}{cell(y)}")
    for m in result["closure_by_mode"]:
        lines.append(
            f"{'failure mode ' + str(m['mode_id']) + ' closed':<32}"
            f"{m['closed_before']:>6}/{m['failures']:<3}{m['closed_after']:>6}/{m['failures']:<3}"
        )
    return "\n".join(lines)
