"""Batched inference of a Detector over a COCO split."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .data.coco import CocoDataset, DatasetError, load_image
from .detectors.base import Detections, Detector


def iter_image_batches(
    dataset: CocoDataset,
    batch_size: int,
    image_ids: list[int] | None = None,
    on_error: Callable[[int, DatasetError], None] | None = None,
):
    """Yield ``(image_ids, [images])`` in batches of equal-size images.

    A bad image raises its :class:`DatasetError`, unless ``on_error`` is given: then it is
    handed the record (to write to a ``rejected`` table) and the image is left out. An image whose
    decoded (EXIF-rotated) size differs from its record's ``width``/``height`` is a bad image:
    its boxes would not fit it.
    """
    ids = image_ids if image_ids is not None else dataset.image_ids
    batch_ids: list[int] = []
    batch: list[torch.Tensor] = []
    for image_id in ids:
        try:
            img = load_image(dataset.image_path(image_id))
            rec = dataset.images[image_id]
            want = (rec.get("width"), rec.get("height"))
            if all(isinstance(v, int) for v in want) and want != (img.shape[2], img.shape[1]):
                raise DatasetError(
                    f"image {dataset.image_path(image_id)} is {img.shape[2]}x{img.shape[1]} "
                    f"(width x height, after EXIF rotation) but {dataset.path} says "
                    f"{want[0]}x{want[1]}; its boxes would not fit. Re-export the annotations "
                    "for the displayed orientation, or fix the record"
                )
        except DatasetError as err:
            if on_error is None:
                raise
            on_error(image_id, err)
            continue
        if batch and img.shape != batch[0].shape:
            yield batch_ids, batch
            batch_ids, batch = [], []
        batch_ids.append(image_id)
        batch.append(img)
        if len(batch) == batch_size:
            yield batch_ids, batch
            batch_ids, batch = [], []
    if batch:
        yield batch_ids, batch


def detect_dataset(
    detector: Detector,
    dataset: CocoDataset,
    score_threshold: float,
    batch_size: int = 64,
    image_ids: list[int] | None = None,
    progress: bool = True,
    on_error: Callable[[int, DatasetError], None] | None = None,
) -> dict[int, Detections]:
    """Detections (on the CPU) for every image of ``dataset``, batched on the detector's device."""
    out: dict[int, Detections] = {}
    n = len(image_ids) if image_ids is not None else len(dataset.images)
    with tqdm(total=n, desc="detect", unit="img", disable=not progress) as bar:
        for ids, images in iter_image_batches(dataset, batch_size, image_ids, on_error):
            dets = detector.detect(torch.stack(images), score_threshold)
            for image_id, d in zip(ids, dets):
                out[image_id] = d.to("cpu")
            bar.update(len(ids))
    return out
