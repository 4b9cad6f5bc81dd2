"""Reading COCO-format detection datasets, with errors that name the bad record.

:func:`load_coco` validates the JSON (keys, ids, boxes, categories) before anything uses it.
:func:`load_image` decodes one image to an RGB float tensor in [0, 1]. It applies EXIF rotation and
converts grayscale, RGBA, 16-bit and palette images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


class DatasetError(ValueError):
    """A dataset file or record that cannot be used. The message names it and says what to do."""


@dataclass
class CocoDataset:
    """A validated COCO split: images by id, annotations grouped by image, category names."""

    path: Path
    image_dir: Path
    images: dict[int, dict]
    annotations: dict[int, list[dict]]
    categories: dict[int, str]
    extra: dict = field(default_factory=dict)

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.images)

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.images[image_id]["file_name"]

    @property
    def category_ids(self) -> list[int]:
        return sorted(self.categories)


def load_coco(annotations: str | Path, image_dir: str | Path) -> CocoDataset:
    """Load and validate a COCO detection JSON. Raises :class:`DatasetError` naming the record."""
    path = Path(annotations)
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist; check data paths in the config")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"annotation file {path} is not valid JSON ({exc}); re-export it"
        ) from None
    if not isinstance(raw, dict):
        raise DatasetError(
            f"{path}: the top level must be an object with images/annotations/categories"
        )
    for key in ("images", "annotations", "categories"):
        if key not in raw:
            raise DatasetError(f"{path}: missing the '{key}' key; a COCO detection file needs it")
        if not isinstance(raw[key], list):
            raise DatasetError(f"{path}: '{key}' must be a list")

    categories: dict[int, str] = {}
    for c in raw["categories"]:
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetError(f"{path}: category {c!r} needs 'id' and 'name'")
        if c["id"] in categories:
            raise DatasetError(f"{path}: duplicate category id {c['id']}")
        categories[int(c["id"])] = str(c["name"])

    images: dict[int, dict] = {}
    for im in raw["images"]:
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DatasetError(f"{path}: image record {im!r} needs 'id' and 'file_name'")
        if im["id"] in images:
            raise DatasetError(f"{path}: duplicate image id {im['id']} ({im['file_name']})")
        images[int(im["id"])] = im

    by_image: dict[int, list[dict]] = {i: [] for i in images}
    seen: set[int] = set()
    for a in raw["annotations"]:
        aid = a.get("id")
        where = f"{path}: annotation {aid}"
        if aid is None:
            raise DatasetError(f"{path}: annotation {a!r} has no 'id'")
        if aid in seen:
            raise DatasetError(f"{where}: duplicate annotation id")
        seen.add(aid)
        if a.get("image_id") not in images:
            raise DatasetError(f"{where}: refers to unknown image id {a.get('image_id')}")
        if a.get("category_id") not in categories:
            raise DatasetError(f"{where}: refers to unknown category id {a.get('category_id')}")
        bbox = a.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox)
        ):
            raise DatasetError(f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise DatasetError(f"{where}: bbox {bbox} has zero or negative size; fix or drop it")
        im = images[a["image_id"]]
        w, h = im.get("width"), im.get("height")
        if (
            w
            and h
            and (
                bbox[0] < -1
                or bbox[1] < -1
                or bbox[0] + bbox[2] > w + 1
                or bbox[1] + bbox[3] > h + 1
            )
        ):
            raise DatasetError(
                f"{where}: bbox {bbox} lies outside image {im['file_name']} ({w}x{h}); fix the box"
            )
        by_image[a["image_id"]].append(a)
    extra = {k: v for k, v in raw.items() if k not in ("images", "annotations", "categories")}
    return CocoDataset(path, Path(image_dir), images, by_image, categories, extra)


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a ``[3, H, W]`` float tensor in [0, 1] (RGB, EXIF-rotated)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist; check the image folder in the config")
    if path.stat().st_size == 0:
        raise DatasetError(f"image {path} is an empty file; re-export it or remove its record")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32)
                arr = arr / (65535.0 if arr.max() > 255 else 255.0)
                arr = np.repeat(arr[..., None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(
            f"image {path} cannot be decoded ({exc}); it is corrupt or not an image"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
