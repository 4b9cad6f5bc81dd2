"""The planted-failure benchmark: a synthetic detection dataset where we KNOW why a detector fails.

Three object classes of distinct shape and colour (``disk``, ``square``, ``triangle``) sit on
varied textured backgrounds. Three failure causes are planted. Each is ABSENT from ``train`` and
present in ``val``, ``test`` and part of ``pool``:

* ``occluder``  -- a dark hatched band covering 50-80% of an object. Expected effect: a miss (FN).
* ``camouflage`` -- a ``disk`` lying on a brick-texture patch. Brick patches do appear in ``train``,
  but only ever under squares and triangles. Expected effect: a miss (FN).
* ``distractor`` -- a hollow ring in the disk's colours. It is not an object. Expected effect: a
  false ``disk`` (FP).

Every cause is recorded with its region (the occluder's box, the brick patch, the ring's box) in
``causes.json``. Object-level causes also go on the COCO annotation as ``"cause"``. Pool labels go
in a separate file (``annotations/pool_labels.json``). The retraining experiment reveals them only
for the images it selects; ``annotations/pool.json`` lists the images without labels.

A measured fact guides the design (shared/METHODS.md): a cause that is merely rare in train does
not fail a small SSD, and mild partial occlusion barely hurts. Changing the object's appearance, or
adding look-alikes, does. So the causes are absent from train, and the occluder darkens most of
the object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.transform import resize

from ..io_utils import atomic_write, write_json

# Bump when the generator's output changes, so that cached benchmarks and checkpoints are rebuilt.
GENERATOR_VERSION = 2
CLASSES = ("disk", "square", "triangle")
CAUSES = ("occluder", "camouflage", "distractor")
SPLITS = ("train", "val", "test", "pool")
TEXTURES = ("noise", "stripes", "checker", "blobs")

# The benchmark's files under its root (dataset inputs, not run tables: see ``layout.py``).
IMAGES_DIR = "images"
"""``images/<split>/<split>_NNNNN.png``."""
ANNOTATIONS_DIR = "annotations"
"""``annotations/<split>.json`` (COCO); for the pool, images only plus the hidden labels."""
POOL_LABELS_FILE = "pool_labels.json"
"""The pool's hidden labels, in :data:`ANNOTATIONS_DIR`."""
CAUSES_FILE = "causes.json"
"""One record per planted cause of every split."""
SUMMARY_FILE = "benchmark.json"
"""What :func:`make_benchmark` returns: seed, image size, generator version, counts per split."""


MARKER_FILE = ".e2x-benchmark"
"""Written first into a folder the generator owns; only such a folder (or an empty one) is
ever (re)generated, so a user's own dataset folder is never overwritten."""


class BenchmarkFolderError(FileExistsError):
    """The benchmark would be written into a folder that holds something else."""


def claim_folder(out: Path) -> None:
    """Make ``out`` the generator's: allowed when it is missing, empty, or already carries the
    generator's marker (or, from before the marker, a ``benchmark.json`` this generator wrote).
    Anything else is a :class:`BenchmarkFolderError` naming the folder."""
    if (out / MARKER_FILE).is_file() or _legacy_benchmark(out):
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchmarkFolderError(
            f"refusing to generate the planted-failure benchmark into {out}: it exists and holds "
            f"files the generator did not write (no {MARKER_FILE} marker). Point data.root at an "
            "empty or new folder for the benchmark; for your own data, give the dataset in the "
            "config and do not ask for the benchmark"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).write_text(
        f"e2x planted-failure benchmark, generator {GENERATOR_VERSION}\n"
    )


def _legacy_benchmark(out: Path) -> bool:
    try:
        summary = json.loads((out / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and {"seed", "version", "splits"} <= set(summary)


def split_annotations_file(split: str) -> str:
    """The COCO file name of a split in :data:`ANNOTATIONS_DIR`."""
    return f"{split}.json"


_BASE_COLOURS = {
    "disk": np.array([0.86, 0.30, 0.20]),
    "square": np.array([0.20, 0.35, 0.86]),
    "triangle": np.array([0.22, 0.74, 0.30]),
}
_BRICK = np.array([0.84, 0.31, 0.21])  # nearly the disk colour: camouflage


@dataclass
class _Scene:
    image: np.ndarray
    annotations: list[dict] = field(default_factory=list)
    causes: list[dict] = field(default_factory=list)
    texture: str = ""


def _texture(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grey = rng.uniform(0.3, 0.7)
    tint = rng.uniform(-0.08, 0.08, size=3)
    base = np.clip(grey + tint, 0, 1)
    if kind == "noise":
        img = base + rng.normal(0, 0.07, size=(h, w, 3))
    elif kind == "stripes":
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        img = base + rng.uniform(0.08, 0.2) * wave[..., None]
    elif kind == "checker":
        s = int(rng.integers(5, 16))
        board = ((xx // s + yy // s) % 2) * 2 - 1
        img = base + rng.uniform(0.06, 0.15) * board[..., None]
    elif kind == "blobs":
        coarse = rng.uniform(-1, 1, size=(8, 8, 3))
        img = base + 0.18 * resize(coarse, (h, w, 3), order=3, mode="reflect")
    else:
        raise ValueError(f"unknown texture {kind}")
    return np.clip(img + rng.normal(0, 0.02, size=(h, w, 3)), 0, 1)


def _bricks(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    bh, bw = 8, 16
    row = yy // bh
    shifted = xx + (row % 2) * (bw // 2)
    mortar = (yy % bh == 0) | (shifted % bw == 0)
    colour = np.clip(_BRICK + rng.uniform(-0.06, 0.06, size=3), 0, 1)
    brick_id = row * 97 + shifted // bw
    jitter = np.random.default_rng(int(rng.integers(1 << 30))).uniform(-0.07, 0.07, 4096)
    img = colour + jitter[brick_id % 4096][..., None]
    img[mortar] = 0.78
    return np.clip(img + rng.normal(0, 0.02, size=(h, w, 3)), 0, 1)


def _shape_mask(kind: str, h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    if kind in ("disk", "ring"):
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        mask = d <= 1
        if kind == "ring":
            mask &= d >= 0.45**2
        return mask
    if kind == "square":
        return (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    if kind == "triangle":
        # apex up: the half-width grows linearly from the apex to the base
        t = (yy - y0) / max(y1 - y0, 1)
        return (t >= 0) & (t <= 1) & (np.abs(xx - cx) <= t * rx)
    raise ValueError(kind)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, rng: np.random.Generator) -> None:
    shade = colour + rng.normal(0, 0.03, size=(int(mask.sum()), 3))
    img[mask] = np.clip(shade, 0, 1)


def _free_box(
    rng: np.random.Generator,
    size: int,
    taken: list[tuple[int, int, int, int]],
    lo: int,
    hi: int,
    inside: tuple[int, int, int, int] | None = None,
) -> tuple[int, int, int, int] | None:
    for _ in range(50):
        s = int(rng.integers(lo, hi + 1))
        aspect = rng.uniform(0.8, 1.25)
        bw, bh = s, int(np.clip(round(s * aspect), lo, hi))
        ax0, ay0, ax1, ay1 = inside if inside else (0, 0, size, size)
        if ax1 - ax0 < bw + 2 or ay1 - ay0 < bh + 2:
            return None
        x0 = int(rng.integers(ax0 + 1, ax1 - bw))
        y0 = int(rng.integers(ay0 + 1, ay1 - bh))
        box = (x0, y0, x0 + bw, y0 + bh)
        if all(_overlap(box, t) == 0 for t in taken):
            return box
    return None


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0]) + 2
    h = min(a[3], b[3]) - max(a[1], b[1]) + 2
    return max(w, 0) * max(h, 0)


def _xywh(box: tuple[int, int, int, int]) -> list[float]:
    return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]


def _make_scene(rng: np.random.Generator, size: int, split: str) -> _Scene:
    """Compose one image. ``split == 'train'`` never plants a cause."""
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    img = _texture(rng, texture, size, size)
    scene = _Scene(img, texture=texture)
    taken: list[tuple[int, int, int, int]] = []
    planting = split != "train"
    # Eval splits plant causes in about half the images; the pool mostly holds clean images so
    # that choosing the right ones is a real retrieval task.
    p_cause = {"train": 0.0, "val": 0.5, "test": 0.5, "pool": 0.35}[split]
    causes_here: set[str] = set()
    if planting and rng.random() < p_cause:
        n = 1 if rng.random() < 0.75 else 2
        causes_here = set(rng.choice(CAUSES, size=n, replace=False).tolist())
    lo, hi = max(12, size // 10), max(20, int(size * 0.28))

    # A brick patch: in train only squares/triangles sit on it; "camouflage" puts a disk there.
    brick_patch = None
    if "camouflage" in causes_here or rng.random() < 0.2:
        ps = int(rng.integers(int(size * 0.38), int(size * 0.55)))
        px, py = (int(v) for v in rng.integers(0, size - ps, size=2))
        brick_patch = (px, py, px + ps, py + ps)
        img[py : py + ps, px : px + ps] = _bricks(rng, ps, ps)
        inner = (px + 2, py + 2, px + ps - 2, py + ps - 2)
        if "camouflage" in causes_here:
            cls_on_patch = "disk"
        else:
            cls_on_patch = ("square", "triangle")[int(rng.integers(2))]
        box = _free_box(rng, size, taken, lo, min(hi, ps - 8), inside=inner)
        if box is not None:
            taken.append(box)
            cause = "camouflage" if cls_on_patch == "disk" else None
            _add_object(rng, scene, cls_on_patch, box, cause, brick_patch)

    n_objects = int(rng.integers(1, 5)) - len(taken)
    for _ in range(max(n_objects, 0 if taken else 1)):
        box = _free_box(rng, size, taken + ([brick_patch] if brick_patch else []), lo, hi)
        if box is None:
            continue
        taken.append(box)
        # Disks never land on bricks outside the camouflage cause (the patch is excluded above).
        _add_object(rng, scene, CLASSES[int(rng.integers(3))], box, None, None)

    if "occluder" in causes_here:
        plain = [a for a in scene.annotations if a.get("cause") is None]
        if plain:
            victim = plain[int(rng.integers(len(plain)))]
            _occlude(rng, scene, victim)
    if "distractor" in causes_here:
        for _ in range(int(rng.integers(1, 3))):
            box = _free_box(rng, size, taken, lo, hi)
            if box is None:
                continue
            taken.append(box)
            colour = np.clip(_BASE_COLOURS["disk"] + rng.uniform(-0.06, 0.06, 3), 0, 1)
            _paint(scene.image, _shape_mask("ring", size, size, box), colour, rng)
            scene.causes.append(
                {"cause": "distractor", "annotation_id": None, "region_bbox": _xywh(box)}
            )
    return scene


def _add_object(
    rng: np.random.Generator,
    scene: _Scene,
    cls: str,
    box: tuple[int, int, int, int],
    cause: str | None,
    region: tuple[int, int, int, int] | None,
) -> None:
    h, w = scene.image.shape[:2]
    mask = _shape_mask(cls, h, w, box)
    colour = np.clip(_BASE_COLOURS[cls] + rng.uniform(-0.08, 0.08, 3), 0, 1)
    _paint(scene.image, mask, colour, rng)
    ys, xs = np.nonzero(mask)
    tight = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    ann = {"category": cls, "bbox": _xywh(tight), "area": float(mask.sum()), "cause": cause}
    scene.annotations.append(ann)
    if cause is not None:
        scene.causes.append({"cause": cause, "annotation": ann, "region_bbox": _xywh(region)})


def _occlude(rng: np.random.Generator, scene: _Scene, ann: dict) -> None:
    """Cover 50-80% of the object with a dark hatched band from one side."""
    h, w = scene.image.shape[:2]
    x, y, bw, bh = ann["bbox"]
    frac = rng.uniform(0.5, 0.8)
    side = int(rng.integers(4))
    pad = 2
    if side == 0:  # from the left
        box = (x - pad, y - pad, x + frac * bw, y + bh + pad)
    elif side == 1:  # from the right
        box = (x + (1 - frac) * bw, y - pad, x + bw + pad, y + bh + pad)
    elif side == 2:  # from the top
        box = (x - pad, y - pad, x + bw + pad, y + frac * bh)
    else:
        box = (x - pad, y + (1 - frac) * bh, x + bw + pad, y + bh + pad)
    x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
    x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    hatch = ((xx + yy) % 5 == 0) | ((xx - yy) % 5 == 0)
    patch = np.where(hatch[..., None], 0.38, 0.07) + rng.normal(0, 0.015, (y1 - y0, x1 - x0, 3))
    scene.image[y0:y1, x0:x1] = np.clip(patch, 0, 1)
    ann["cause"] = "occluder"
    scene.causes.append(
        {"cause": "occluder", "annotation": ann, "region_bbox": _xywh((x0, y0, x1, y1))}
    )


def make_benchmark(
    out_dir: str | Path,
    seed: int = 0,
    image_size: int = 128,
    sizes: dict[str, int] | None = None,
) -> dict:
    """Generate the benchmark under ``out_dir``; deterministic in ``seed``. Returns a summary.

    ``out_dir`` must be missing, empty or the generator's own (:func:`claim_folder`).

    Layout: ``images/<split>/<split>_NNNNN.png``, ``annotations/{train,val,test}.json`` (COCO),
    ``annotations/pool.json`` (images only), ``annotations/pool_labels.json`` (hidden labels),
    ``causes.json`` (one record per planted cause, keyed by split, image id and annotation id).
    """
    out = Path(out_dir)
    claim_folder(out)
    sizes = sizes or {"train": 900, "val": 200, "test": 200, "pool": 600}
    categories = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    all_causes: list[dict] = []
    summary: dict = {
        "seed": seed,
        "image_size": image_size,
        "version": GENERATOR_VERSION,
        "splits": {},
    }
    for split_i, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_i])
        images, annotations, causes, counts = _make_split(
            out, rng, split, sizes[split], image_size, cat_id
        )
        all_causes.extend(causes)
        coco = {
            "info": {"description": f"E2X planted-failure benchmark, split {split}", "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        _write_split(out, split, coco)
        summary["splits"][split] = {
            "images": len(images),
            "objects": len(annotations),
            "causes": counts,
        }
    write_json(out / CAUSES_FILE, all_causes)
    write_json(out / SUMMARY_FILE, summary)
    return summary


def _make_split(
    out: Path,
    rng: np.random.Generator,
    split: str,
    n_images: int,
    image_size: int,
    cat_id: dict[str, int],
) -> tuple[list[dict], list[dict], list[dict], dict[str, int]]:
    """Draw and write one split's images. Returns its COCO image and annotation records, its
    cause records and the count of each cause."""
    img_dir = out / IMAGES_DIR / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    causes: list[dict] = []
    counts = {c: 0 for c in CAUSES}
    for i in range(n_images):
        image_id = i + 1
        scene = _make_scene(rng, image_size, split)
        images.append(_write_image(img_dir, split, image_id, scene, image_size))
        for ann in scene.annotations:
            ann["id"] = len(annotations) + 1
            annotations.append(
                {
                    "id": ann["id"],
                    "image_id": image_id,
                    "category_id": cat_id[ann["category"]],
                    "bbox": ann["bbox"],
                    "area": ann["area"],
                    "iscrowd": 0,
                    "cause": ann["cause"],
                }
            )
        for k, c in enumerate(scene.causes):
            counts[c["cause"]] += 1
            causes.append(
                {
                    "split": split,
                    "image_id": image_id,
                    "annotation_id": c["annotation"]["id"] if c.get("annotation") else None,
                    "cause_id": f"{split}/{image_id}/{k}",
                    "cause": c["cause"],
                    "region_bbox": c["region_bbox"],
                }
            )
    return images, annotations, causes, counts


def _write_image(img_dir: Path, split: str, image_id: int, scene: _Scene, size: int) -> dict:
    """Write the scene as ``<split>_NNNNN.png``; returns its COCO image record."""
    name = f"{split}_{image_id:05d}.png"
    pixels = (scene.image * 255).round().astype(np.uint8)
    with atomic_write(img_dir / name) as fh:
        Image.fromarray(pixels).save(fh, format="PNG")
    return {
        "id": image_id,
        "file_name": name,
        "width": size,
        "height": size,
        "texture": scene.texture,
    }


def _write_split(out: Path, split: str, coco: dict) -> None:
    """The split's COCO file; the pool's labels go to a separate file and its COCO file lists
    the images only."""
    ann_dir = out / ANNOTATIONS_DIR
    if split == "pool":
        write_json(ann_dir / POOL_LABELS_FILE, coco)
        write_json(ann_dir / split_annotations_file(split), {**coco, "annotations": []})
    else:
        write_json(ann_dir / split_annotations_file(split), coco)


def load_causes(root: str | Path, split: str | None = None) -> list[dict]:
    """The planted causes (all, or one split's); empty when the dataset is not the benchmark."""
    path = Path(root) / CAUSES_FILE
    if not path.is_file():
        return []
    records = json.loads(path.read_text())
    return [r for r in records if split is None or r["split"] == split]
