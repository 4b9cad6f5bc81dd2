"""Reading COCO-format detection datasets, with errors that name the bad record.

:func:`load_coco` validates the JSON (keys, ids, boxes, categories) before anything uses it.
A broken file (not JSON, a missing key, bad image or category records, duplicate image or
category ids) is always an error. A bad annotation (unknown image or category id, a box that is
not 4 finite numbers, has zero or negative size or lies outside its image by more than 1 px, a
duplicate annotation id) is an error too, or with ``on_bad_record="skip"`` a row in
:attr:`CocoDataset.rejected`; its image is then left out whole, since mining it with incomplete
ground truth would invent false positives. Boxes are never clipped or repaired.

:func:`load_image` decodes one image to an RGB float tensor in [0, 1], by content (the file
extension is ignored). Choices users could expect otherwise:

* EXIF orientation is applied (``ImageOps.exif_transpose``): labelling tools show, and store
  boxes for, the displayed orientation; the stage that reads images checks the decoded size
  against the record's ``width``/``height``;
* grayscale is repeated to 3 channels; the alpha channel of RGBA/LA images is dropped, not
  composited; palette and bilevel images go through their palette; 16-bit images (``I;16``) are
  divided by 65535 (whatever their maximum), 32-bit integer images (``I``) by 65535 when their
  maximum exceeds 255, else by 255;
* an image above :data:`MAX_IMAGE_PIXELS` is refused (it is never decoded, nor downscaled, which
  would change its boxes and the scale the detector sees); a tiny image (even 1x1) is accepted.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..io_utils import file_hash


class DatasetError(ValueError):
    """A dataset file or record that cannot be used. The message names it and says what to do."""


MAX_IMAGE_PIXELS = 8192 * 8192
"""Images with more pixels are refused (a 8192 x 8192 RGB float tensor is already 805 MB)."""


@dataclass
class CocoDataset:
    """A validated COCO split: images by id, annotations grouped by image, category names."""

    path: Path
    image_dir: Path
    images: dict[int, dict]
    annotations: dict[int, list[dict]]
    categories: dict[int, str]
    extra: dict = field(default_factory=dict)
    rejected: list[dict] = field(default_factory=list)
    """Records skipped with ``on_bad_record="skip"``, as rows of the mining ``rejected`` table."""
    records_hash: str | None = None
    """For data not read from a file (a FiftyOne dataset): a hash of the records, which stands
    in for the annotation file's hash in cache keys."""

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.images)

    def image_path(self, image_id: int) -> Path:
        return self.image_dir / self.images[image_id]["file_name"]

    @property
    def category_ids(self) -> list[int]:
        return sorted(self.categories)

    def content_hash(self) -> str:
        """Hash of the split's content: its annotation file (or :attr:`records_hash`, or its
        records when it was made in memory) and every image file it lists, so that a changed
        label or image changes it."""
        if self.records_hash is not None:
            head = self.records_hash
        elif self.path.is_file():
            head = file_hash(self.path)
        else:  # a split made in memory (a FiftyOne split's subset): hash its records
            records = [self.images, self.annotations, self.categories]
            head = hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode())
            head = head.hexdigest()
        h = hashlib.sha256(head.encode())
        for i in self.image_ids:
            h.update(file_hash(self.image_path(i)).encode())
        return h.hexdigest()[:16]


def _is_id(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _annotation_problem(
    a: object, images: dict[int, dict], categories: dict[int, str], ids: Counter
) -> str | None:
    """What is wrong with one annotation record, or None."""
    if not isinstance(a, dict):
        return f"is not an object but {type(a).__name__} {a!r:.60}"
    if not _is_id(a.get("id")):
        return f"has no integer 'id' (got {a.get('id')!r})"
    if ids[a["id"]] > 1:
        return f"has a duplicate annotation id ({ids[a['id']]} records share it)"
    if not _is_id(a.get("image_id")) or a["image_id"] not in images:
        return f"refers to unknown image id {a.get('image_id')!r}"
    if not _is_id(a.get("category_id")) or a["category_id"] not in categories:
        return f"refers to unknown category id {a.get('category_id')!r}"
    bbox = a.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"has a bbox that is not [x, y, width, height] finite numbers: {bbox!r}"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return f"has a bbox {bbox} with zero or negative size"
    im = images[a["image_id"]]
    w, h = im.get("width"), im.get("height")
    if (
        _is_number(w)
        and _is_number(h)
        and (bbox[0] < -1 or bbox[1] < -1 or bbox[0] + bbox[2] > w + 1 or bbox[1] + bbox[3] > h + 1)
    ):
        return f"has a bbox {bbox} that lies outside image {im['file_name']} ({w}x{h})"
    return None


def load_coco(
    annotations: str | Path, image_dir: str | Path, on_bad_record: str = "error"
) -> CocoDataset:
    """Load and validate a COCO detection JSON. Raises :class:`DatasetError` naming the record.

    ``on_bad_record="skip"``: bad annotations (and their images) go to ``dataset.rejected``
    instead (see the module docstring); a broken file is still an error.
    """
    path = Path(annotations)
    return parse_coco(_read_coco_json(path), path, image_dir, on_bad_record)


def parse_coco(
    raw: dict, path: str | Path, image_dir: str | Path, on_bad_record: str = "error"
) -> CocoDataset:
    """Validate a COCO detection document already in memory (``path`` names where it came
    from in errors: a file, or a FiftyOne dataset and split); see :func:`load_coco`."""
    if on_bad_record not in ("error", "skip"):
        raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    path = Path(path)
    categories = _categories(path, raw["categories"])
    images = _images(path, raw["images"])
    by_image, rejected = _annotations(
        path, raw["annotations"], images, categories, on_bad_record, Path(image_dir)
    )
    extra = {k: v for k, v in raw.items() if k not in ("images", "annotations", "categories")}
    return CocoDataset(path, Path(image_dir), images, by_image, categories, extra, rejected)


def _read_coco_json(path: Path) -> dict:
    """The file's top-level object, with ``images``, ``annotations`` and ``categories`` lists."""
    if not path.is_file():
        raise DatasetError(f"annotation file {path} does not exist; check data paths in the config")
    try:
        raw = json.loads(path.read_bytes())
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
    return raw


def _categories(path: Path, records: list) -> dict[int, str]:
    """Category id -> name; a bad or duplicate category record is an error."""
    categories: dict[int, str] = {}
    for c in records:
        if not isinstance(c, dict) or not _is_id(c.get("id")) or not isinstance(c.get("name"), str):
            raise DatasetError(
                f"{path}: category {c!r:.80} needs an integer 'id' and a string 'name'; fix it"
            )
        if c["id"] in categories:
            raise DatasetError(f"{path}: duplicate category id {c['id']}; category ids must differ")
        categories[c["id"]] = c["name"]
    return categories


def _images(path: Path, records: list) -> dict[int, dict]:
    """Image id -> record; a record without an integer id and a file name, or a duplicate id, is
    an error."""
    images: dict[int, dict] = {}
    for im in records:
        if (
            not isinstance(im, dict)
            or not _is_id(im.get("id"))
            or not isinstance(im.get("file_name"), str)
            or not im["file_name"]
        ):
            raise DatasetError(
                f"{path}: image record {im!r:.80} needs an integer 'id' and a 'file_name'; fix it"
            )
        if im["id"] in images:
            raise DatasetError(
                f"{path}: duplicate image id {im['id']} ({images[im['id']]['file_name']} and "
                f"{im['file_name']}); image ids must differ"
            )
        images[im["id"]] = im
    return images


def _annotations(
    path: Path,
    records: list,
    images: dict[int, dict],
    categories: dict[int, str],
    on_bad_record: str,
    image_dir: Path,
) -> tuple[dict[int, list[dict]], list[dict]]:
    """Annotations grouped by image, and the rejected rows. A bad annotation is an error, or
    with ``on_bad_record="skip"`` a rejected row; its image is then removed from ``images``."""
    ids = Counter(a["id"] for a in records if isinstance(a, dict) and _is_id(a.get("id")))
    by_image: dict[int, list[dict]] = {i: [] for i in images}
    rejected: list[dict] = []
    bad_images: set[int] = set()
    for a in records:
        problem = _annotation_problem(a, images, categories, ids)
        if problem is None:
            by_image[a["image_id"]].append(a)
            continue
        aid = a.get("id") if isinstance(a, dict) else None
        msg = f"{path}: annotation {aid} {problem}"
        if on_bad_record == "error":
            raise DatasetError(
                f"{msg}; fix or remove it, or set mining.on_bad_record=skip to leave its image out"
            )
        image_id = a.get("image_id") if isinstance(a, dict) else None
        im = images.get(image_id) if _is_id(image_id) else None
        if im is not None:
            bad_images.add(image_id)
        rejected.append(_rejected_row(image_id, aid, im, image_dir, msg))
    for image_id in bad_images:
        del images[image_id], by_image[image_id]
    return by_image, rejected


def _rejected_row(
    image_id: object, aid: object, im: dict | None, image_dir: Path, msg: str
) -> dict:
    """A row of the mining ``rejected`` table for a skipped annotation."""
    return {
        "record": "annotation",
        "image_id": image_id if _is_id(image_id) else -1,
        "annotation_id": aid if _is_id(aid) else -1,
        "file_name": im["file_name"] if im else "",
        "path": str(image_dir / im["file_name"]) if im else "",
        "error": msg,
    }


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a ``[3, H, W]`` float tensor in [0, 1] (RGB, EXIF-rotated).

    Raises :class:`DatasetError` naming the file for a missing, empty, corrupt, truncated or
    too large (> :data:`MAX_IMAGE_PIXELS`) image. See the module docstring for the conversions.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image {path} does not exist; check the image folder in the config")
    if path.stat().st_size == 0:
        raise DatasetError(f"image {path} is an empty file; re-export it or remove its record")
    try:
        with warnings.catch_warnings():
            # we apply our own, lower, limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise _TooLarge(im.width, im.height)
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(arr[..., None], 3, axis=2)
            elif im.mode == "I":
                arr = np.asarray(im, dtype=np.float32)
                arr = np.clip(arr / (65535.0 if arr.max() > 255 else 255.0), 0.0, 1.0)
                arr = np.repeat(arr[..., None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except _TooLarge as big:
        raise DatasetError(
            f"image {path} is {big.width}x{big.height} = {big.width * big.height:,} pixels, above "
            f"E2X's limit of {MAX_IMAGE_PIXELS:,} (e2x_pipeline.data.coco.MAX_IMAGE_PIXELS); "
            "downscale it and its boxes, or tile it, before mining"
        ) from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"image {path} is above E2X's limit of {MAX_IMAGE_PIXELS:,} pixels ({exc}); "
            "downscale it and its boxes, or tile it, before mining"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"image {path} cannot be decoded ({exc}); it is corrupt or not an image. Re-export "
            "it, or set mining.on_bad_record=skip to leave it out"
        ) from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


class _TooLarge(Exception):
    def __init__(self, width: int, height: int) -> None:
        super().__init__(f"{width}x{height}")
        self.width, self.height = width, height
