"""An existing FiftyOne dataset as the input: one split (a tag or a saved view) read as COCO.

The user's dataset is only read (``values()`` over the split's view): no field, tag, metadata or
saved view of it is written. Each split becomes an in-memory COCO document, validated by
:func:`~e2x_pipeline.data.coco.parse_coco` like a COCO file, so every stage downstream works on it
unchanged.

How a sample becomes a COCO record (:func:`coco_document`, pure):

* ``file_name`` is the sample's absolute ``filepath`` (``image_dir`` is ``/``);
* ``width``/``height`` come from the image file's header, after its EXIF orientation (what
  :func:`~e2x_pipeline.data.coco.load_image` decodes), not from ``metadata``, which may be unset
  or un-rotated;
* the image id is the ``id_field`` (e.g. FiftyOne's COCO importer's ``<label_field>_coco_id``)
  or, without one, 1.. in filepath order;
* each ``Detection`` of ``gt_field`` becomes an annotation: ``bbox = [x w, y h, bw w, bh h]``
  from the relative ``bounding_box`` (:func:`~.convert.coco_absolute_box`, the exact inverse of
  FiftyOne's COCO importer, which divides by the image size), ``category_id`` from the
  label, ``id`` from the detection's ``coco_id`` attribute (``include_annotation_id=True``)
  or 1.. in sample order;
* categories are ``info["categories"]`` (what FiftyOne's COCO importer stores) when present,
  else the field's class list (``classes[gt_field]`` / ``default_classes``), else the labels in
  sorted order, numbered from 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import FiftyOneSource
from ..data.coco import CocoDataset, DatasetError, parse_coco
from .convert import coco_absolute_box
from .db import _fo

# EXIF orientations that swap width and height (transpose, rotate 90/270, transverse)
_SWAPS = {5, 6, 7, 8}


def displayed_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as :func:`load_image` decodes it (EXIF-rotated), from
    its header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in _SWAPS:
                w, h = h, w
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"image {path} cannot be read ({exc}); fix or remove the sample from the dataset"
        ) from None
    return int(w), int(h)


def coco_document(
    samples: Sequence[Mapping[str, Any]],
    categories: list[dict[str, Any]],
    sizes: Mapping[str, tuple[int, int]],
    where: str,
) -> dict[str, Any]:
    """The COCO document of ``samples`` (dicts with ``filepath``, ``image_id`` (int or None)
    and ``detections``: ``[{label, bounding_box, coco_id}]``; see the module docstring).

    ``sizes`` maps a filepath to its displayed ``(width, height)``; ``where`` names the source
    in errors.
    """
    cat_id = {c["name"]: int(c["id"]) for c in categories}
    order = sorted(samples, key=lambda s: s["filepath"])
    images, anns = [], []
    next_ann = 1
    for n, s in enumerate(order, 1):
        image_id = s["image_id"] if s["image_id"] is not None else n
        w, h = sizes[s["filepath"]]
        images.append({"id": int(image_id), "file_name": s["filepath"], "width": w, "height": h})
        for d in s["detections"]:
            if d["label"] not in cat_id:
                raise DatasetError(
                    f"{where}: sample {s['filepath']} has a ground-truth label {d['label']!r} that "
                    f"is not among the categories {sorted(cat_id)}; add it to the dataset's "
                    "info['categories'] (or its classes), or fix the label"
                )
            ann_id = d.get("coco_id")
            anns.append(
                {
                    "id": int(ann_id) if isinstance(ann_id, int) else next_ann,
                    "image_id": int(image_id),
                    "category_id": cat_id[d["label"]],
                    "bbox": coco_absolute_box(d["bounding_box"], w, h),
                    "iscrowd": int(d.get("iscrowd") or 0),
                }
            )
            next_ann += 1
    return {"images": images, "annotations": anns, "categories": categories}


def _categories(ds: Any, gt_field: str, labels: set[str]) -> list[dict[str, Any]]:
    cats = ds.info.get("categories") if isinstance(ds.info, dict) else None
    if cats and all(isinstance(c, dict) and "id" in c and "name" in c for c in cats):
        return [{"id": int(c["id"]), "name": str(c["name"])} for c in cats]
    names = ds.classes.get(gt_field) or ds.default_classes or sorted(labels)
    return [{"id": i, "name": str(n)} for i, n in enumerate(names, 1)]


def _split_view(ds: Any, src: FiftyOneSource, split: str) -> Any:
    spec = src.splits.get(split)
    if spec is None:
        raise DatasetError(
            f"split {split!r} is not one of data.fiftyone.splits {sorted(src.splits)}; add it "
            f"(e.g. {split}: {{tag: {split}}}) or use one of those"
        )
    if spec.tag is not None:
        if spec.tag not in ds.distinct("tags"):
            raise DatasetError(
                f"FiftyOne dataset {src.dataset!r} has no sample tagged {spec.tag!r} (split "
                f"{split!r}); its tags are {ds.distinct('tags')}"
            )
        return ds.match_tags(spec.tag)
    if spec.view not in ds.list_saved_views():
        raise DatasetError(
            f"FiftyOne dataset {src.dataset!r} has no saved view {spec.view!r} (split {split!r}); "
            f"its saved views are {ds.list_saved_views()}"
        )
    return ds.load_saved_view(spec.view)


def read_split(
    src: FiftyOneSource, split: str, on_bad_record: str = "error", labels: bool = True
) -> CocoDataset:
    """Split ``split`` of the FiftyOne dataset ``src.dataset`` as a validated :class:`CocoDataset`.

    ``labels=False`` leaves the ground truth out (a pool whose labels must not be seen before
    they are "bought"). Nothing is written to the dataset.
    """
    fo = _fo()
    if not fo.dataset_exists(src.dataset):
        raise DatasetError(
            f"FiftyOne dataset {src.dataset!r} (data.fiftyone.dataset) does not exist; the "
            f"datasets are {fo.list_datasets()}"
        )
    ds = fo.load_dataset(src.dataset)
    view = _split_view(ds, src, split)
    schema = ds.get_field_schema()
    if labels and src.gt_field not in schema:
        raise DatasetError(
            f"FiftyOne dataset {src.dataset!r} has no field {src.gt_field!r} "
            f"(data.fiftyone.gt_field); its fields are {sorted(schema)}"
        )
    id_field = src.id_field or ("coco_id" if "coco_id" in schema else None)
    if id_field is not None and id_field not in schema:
        raise DatasetError(
            f"FiftyOne dataset {src.dataset!r} has no field {id_field!r} (data.fiftyone.id_field)"
        )
    paths = view.values("filepath")
    ids = view.values(id_field) if id_field else [None] * len(paths)
    dets: list[Any] = view.values(f"{src.gt_field}.detections") if labels else [None] * len(paths)
    samples = []
    found: set[str] = set()
    for fp, image_id, ds_dets in zip(paths, ids, dets, strict=True):
        records = []
        for d in ds_dets or []:
            attrs = d.to_dict()
            found.add(d.label)
            records.append(
                {
                    "label": d.label,
                    "bounding_box": list(d.bounding_box),
                    "coco_id": attrs.get("coco_id"),
                    "iscrowd": attrs.get("iscrowd"),
                }
            )
        samples.append({"filepath": fp, "image_id": image_id, "detections": records})
    where = f"FiftyOne dataset {src.dataset!r} split {split!r}"
    sizes = {s["filepath"]: displayed_size(s["filepath"]) for s in samples}
    doc = coco_document(samples, _categories(ds, src.gt_field, found), sizes, where)
    dataset = parse_coco(doc, f"fiftyone:{src.dataset}/{split}", "/", on_bad_record)
    dataset.records_hash = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return dataset


__all__ = ["coco_document", "displayed_size", "read_split"]
