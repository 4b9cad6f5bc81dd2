"""Training a detector from scratch on a COCO split, cached by (data hash, config).

The recipe is the one measured in shared/METHODS.md for the compact SSD: AdamW (lr 2e-3,
weight decay 1e-4), a OneCycle schedule, batch 32, random horizontal flips, 30 epochs.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm.auto import tqdm

from .config import E2XConfig, ModelConfig, TrainConfig
from .data.coco import CocoDataset, load_image
from .detectors import build_detector, save_checkpoint
from .detectors.base import Detector
from .evaluation import classes_for, label_to_category


def dataset_hash(dataset: CocoDataset) -> str:
    """Content hash of a split: its annotation file and every image file."""
    return dataset.content_hash()


def training_key(data_hash: str, model: ModelConfig, train: TrainConfig, seed: int) -> str:
    from .detectors.compact_ssd import ARCH_VERSION

    payload = {
        "data": data_hash,
        "arch_version": ARCH_VERSION if model.arch == "compact_ssd" else 1,
        # classes unset is left out, so keys made before model.classes existed still match
        "model": model.model_dump(
            mode="json", exclude={"checkpoint"} | ({"classes"} if model.classes is None else set())
        ),
        "train": train.model_dump(mode="json", exclude={"num_threads"}),
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class DetectionSplit(Dataset):
    """A COCO split as ``(image [3, H, W], {"boxes": xyxy, "labels"})`` items, read from disk.

    Images of any size are fine: torchvision's detection models take a list and resize each
    with their own transform. Decoded images are kept in memory while they fit in
    ``cache_bytes`` (the benchmark's 900 small images all do, so epochs after the first read
    no file); beyond that, items stream from disk every epoch.
    """

    def __init__(
        self, dataset: CocoDataset, l2c: dict[int, int], cache_bytes: int = 512 * 2**20
    ) -> None:
        self.dataset = dataset
        self.ids = dataset.image_ids
        self.c2l = {c: lab for lab, c in l2c.items()}
        self.cache: dict[int, torch.Tensor] = {}
        self.cache_left = cache_bytes

    def __len__(self) -> int:
        return len(self.ids)

    def target(self, j: int) -> dict[str, torch.Tensor]:
        anns = [
            a
            for a in self.dataset.annotations[self.ids[j]]
            if not a.get("iscrowd", 0) and a["category_id"] in self.c2l
        ]
        boxes = torch.tensor(
            [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.tensor([self.c2l[a["category_id"]] for a in anns], dtype=torch.int64)
        return {"boxes": boxes, "labels": labels}

    def __getitem__(self, j: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.cache.get(j)
        if img is None:
            img = load_image(self.dataset.image_path(self.ids[j]))
            size = img.numel() * img.element_size()
            if size <= self.cache_left:
                self.cache[j], self.cache_left = img, self.cache_left - size
        return img, self.target(j)


def _hflip(img: torch.Tensor, t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """The image mirrored left-right and its boxes with it (x -> width - x, per image)."""
    width = img.shape[-1]
    b = t["boxes"].clone()
    b[:, [0, 2]] = width - t["boxes"][:, [2, 0]]
    return img.flip(-1), {"boxes": b, "labels": t["labels"]}


def train(
    detector: Detector,
    dataset: CocoDataset,
    cfg: TrainConfig,
    seed: int = 0,
    progress: bool = True,
    extra: CocoDataset | None = None,
) -> dict:
    """Train ``detector.model`` in place on ``dataset`` (plus ``extra``); returns a log.

    The items stream through a ``DataLoader`` (:class:`DetectionSplit`) in a seeded order, with
    a seeded horizontal flip per item and epoch.
    """
    torch.manual_seed(seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    parts = [DetectionSplit(dataset, label_to_category(detector.classes, dataset))]
    if extra is not None:
        parts.append(DetectionSplit(extra, label_to_category(detector.classes, extra)))
    items = ConcatDataset(parts)
    n = len(items)
    if n == 0:
        raise ValueError(f"{dataset.path} has no images to train on")
    model = detector.model.train()
    device = detector.device
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    log = {"epochs": [], "images": n}
    t0 = time.perf_counter()
    for epoch in tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress):
        order = torch.randperm(n, generator=gen)
        flips = (
            torch.rand(n, generator=gen) < 0.5 if cfg.hflip else torch.zeros(n, dtype=torch.bool)
        )
        batches = [order[i : i + cfg.batch_size].tolist() for i in range(0, n, cfg.batch_size)]
        loader = DataLoader(items, batch_sampler=batches, collate_fn=list, num_workers=0)
        total = 0.0
        for idx, pairs in zip(batches, loader, strict=True):
            batch, tgts = [], []
            for j, (img, t) in zip(idx, pairs, strict=True):
                if flips[j]:
                    img, t = _hflip(img, t)
                batch.append(img.to(device))
                tgts.append({k: v.to(device) for k, v in t.items()})
            losses = model(batch, tgts)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log["epochs"].append({"epoch": epoch + 1, "loss": total / n})
    log["seconds"] = time.perf_counter() - t0
    model.eval()
    return log


def cached_checkpoint(
    cfg: E2XConfig, dataset: CocoDataset, cache_dir: str | Path, data_hash: str | None = None
) -> Path:
    """Where :func:`train_detector` keeps (or will keep) the checkpoint of ``cfg`` on ``dataset``:
    ``<cache_dir>/<arch>-<training key>.pt``. It may not exist yet."""
    data_hash = data_hash or dataset_hash(dataset)
    key = training_key(data_hash, cfg.model, cfg.train, cfg.seed)
    return Path(cache_dir) / f"{cfg.model.arch}-{key}.pt"


def train_detector(
    cfg: E2XConfig,
    dataset: CocoDataset,
    cache_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
    force: bool = False,
) -> tuple[Path, dict]:
    """Train (or reuse) the configured detector on ``dataset``; return (checkpoint path, meta).

    The checkpoint is cached under ``cache_dir`` by a key over the data hash, the model and train
    config sections and the seed, so an unchanged rerun does no training.
    """
    data_hash = dataset_hash(dataset)
    key = training_key(data_hash, cfg.model, cfg.train, cfg.seed)
    path = cached_checkpoint(cfg, dataset, cache_dir, data_hash)
    if path.is_file() and not force:
        from .detectors import load_checkpoint

        return path, load_checkpoint(path)[1]
    classes = classes_for(dataset)
    torch.manual_seed(cfg.seed)
    det = build_detector(cfg.model.arch, classes, cfg.model.image_size, cfg.model.weights, device)
    log = train(det, dataset, cfg.train, cfg.seed, progress)
    meta = {
        "arch": cfg.model.arch,
        "classes": classes,
        "image_size": cfg.model.image_size,
        "data_hash": data_hash,
        "train_key": key,
        "train_config": cfg.train.model_dump(mode="json"),
        "train_seconds": round(log["seconds"], 1),
        "train_first_loss": log["epochs"][0]["loss"],
        "final_loss": log["epochs"][-1]["loss"],
        "parent": None,
    }
    state = {k: v.detach().cpu() for k, v in det.model.state_dict().items()}
    save_checkpoint(path, state, meta)
    return path, meta
