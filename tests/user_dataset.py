"""A "user dataset" that has nothing in common with the benchmark's layout.

* images of two real sizes (640x480 and 500x375), JPEG and PNG, under subfolders that their
  ``file_name``s name (``2024/cams/a.jpg``);
* COCO category ids 1, 3 and 17, named as COCO's ``person``, ``car`` and ``cat`` (non-contiguous,
  as in real COCO), annotations with a segmentation but no ``area``;
* splits ``val`` and ``pool`` in the user's own file names (``labels/instances_val.json``), no
  ``train`` split, no ``causes.json``;
* a torchvision COCO-format checkpoint: ``fasterrcnn_mobilenet_v3_large_fpn`` with the 91-entry
  COCO label space, saved as a bare state_dict (random init, seeded: nothing can be downloaded).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ARCH = "fasterrcnn_mobilenet_v3_large_fpn"
CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 17, "name": "cat", "supercategory": "animal"},
]
# split -> [(file_name, (width, height), [(category_id, [x, y, w, h]), ...])]
IMAGES = {
    "val": [
        ("2024/cams/a.jpg", (640, 480), [(1, [60, 80, 120, 260]), (3, [300, 220, 240, 160])]),
        ("2024/cams/b.png", (500, 375), [(17, [150, 120, 180, 140])]),
        ("2024/phone/c.jpg", (640, 480), [(3, [40, 300, 200, 120]), (1, [420, 60, 90, 230])]),
    ],
    "pool": [
        ("pool/d.jpg", (640, 480), [(1, [200, 100, 100, 250])]),
        ("pool/e.png", (500, 375), [(3, [100, 150, 220, 120])]),
        ("pool/f.jpg", (500, 375), []),
    ],
}


def _image(size: tuple[int, int], boxes: list, seed: int) -> Image.Image:
    """Smooth colour blobs with a textured rectangle per object (SLIC has edges to follow)."""
    w, h = size
    g = np.random.default_rng(seed)
    coarse = g.uniform(40, 200, size=(6, 8, 3))
    arr = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    arr = arr.astype(np.float32) + g.normal(0, 6, size=(h, w, 3))
    for _, (x, y, bw, bh) in boxes:
        arr[int(y) : int(y + bh), int(x) : int(x + bw)] = g.uniform(0, 255, size=3)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_user_dataset(root: Path) -> dict[str, Path]:
    """Write the dataset under ``root``; return the paths a config needs."""
    photos = root / "photos"
    labels = root / "labels"
    labels.mkdir(parents=True)
    ann_id = 100
    for s, (split, records) in enumerate(IMAGES.items()):
        images, anns = [], []
        for i, (file_name, size, boxes) in enumerate(records):
            image_id = 1000 * (s + 1) + 7 * i  # ids as users have them: neither 0.. nor dense
            path = photos / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            _image(size, boxes, seed=image_id).save(path)
            images.append(
                {"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]}
            )
            for cat, (x, y, w, h) in boxes:
                ann_id += 1
                poly = [x, y, x + w, y, x + w, y + h, x, y + h]
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cat,
                        "bbox": [x, y, w, h],
                        "segmentation": [poly],  # and no "area"
                        "iscrowd": 0,
                    }
                )
        doc = {"images": images, "annotations": anns, "categories": CATEGORIES}
        (labels / f"instances_{split}.json").write_text(json.dumps(doc))
    weights = root / "weights" / "frcnn_coco.pth"
    weights.parent.mkdir()
    torch.save(coco_format_state_dict(), weights)
    return {"photos": photos, "labels": labels, "weights": weights}


def coco_format_state_dict() -> dict[str, torch.Tensor]:
    """A state_dict of the real shape of torchvision's COCO weights for :data:`ARCH` (91
    classes), from a seeded random init."""
    from torchvision.models import detection

    torch.manual_seed(0)
    model = getattr(detection, ARCH)(weights=None, weights_backbone=None, num_classes=91)
    return model.state_dict()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), and the folders."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out
