"""Detector evaluation with pycocotools: mAP@0.5, recall per planted cause, distractor FP rate.

Matching is COCOeval's (greedy by score, one detection per GT, crowd GT ignored); nothing here
re-implements it. Recall on a set of objects is read from COCOeval's per-image ``gtMatches`` after
keeping only detections at or above the operating threshold.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from .data.coco import CocoDataset
from .detectors.base import Detections


def label_to_category(classes: list[str], dataset: CocoDataset) -> dict[int, int]:
    """Model label index -> COCO category id, matched by name (``classes[0]`` is background).

    The model may know more classes than the dataset (COCO-pretrained weights on a dataset of
    person and car): labels whose class is not a category are left out of the map, and their
    detections are not scored. Every category must be a model class.
    """
    by_name = {name: cid for cid, name in dataset.categories.items()}
    known = set(classes[1:])
    missing = sorted(n for n in by_name if n not in known)
    if missing:
        raise ValueError(
            f"categories {missing} of {dataset.path} are not among the detector's classes "
            f"{classes[1:]!r:.200}; use a model trained on this dataset's categories, or list "
            "its class names in model.classes"
        )
    return {i: by_name[c] for i, c in enumerate(classes) if i > 0 and c in by_name}


def classes_for(dataset: CocoDataset) -> list[str]:
    """The class list a detector trained on ``dataset`` uses: background, then categories by id."""
    return ["__background__"] + [dataset.categories[c] for c in dataset.category_ids]


def _coco_gt(dataset: CocoDataset, image_ids: list[int]) -> COCO:
    gt = COCO()
    anns = []
    for i in image_ids:
        for a in dataset.annotations[i]:
            x, y, w, h = a["bbox"]
            anns.append(
                {**a, "area": float(a.get("area") or w * h), "iscrowd": int(a.get("iscrowd", 0))}
            )
    gt.dataset = {
        "images": [dataset.images[i] for i in image_ids],
        "annotations": anns,
        "categories": [{"id": c, "name": n} for c, n in dataset.categories.items()],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _coco_dets(
    detections: dict[int, Detections], image_ids: list[int], l2c: dict[int, int], min_score: float
) -> list[dict]:
    out = []
    for i in image_ids:
        d = detections.get(i)
        if d is None:
            continue
        for box, score, label in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
            if score < min_score or label not in l2c:  # not one of the dataset's classes
                continue
            x1, y1, x2, y2 = box
            out.append(
                {
                    "image_id": i,
                    "category_id": l2c[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    return out


def coco_eval(
    dataset: CocoDataset,
    detections: dict[int, Detections],
    label_cat: dict[int, int],
    image_ids: list[int] | None = None,
    iou: float = 0.5,
    min_score: float = 0.0,
) -> COCOeval:
    """Run COCOeval (bbox, one IoU threshold, all areas) and return it.

    ``label_cat`` maps model labels to category ids (:func:`label_to_category`). Every detection
    counts (maxDets is raised above COCO's 100 when an image has more), so AP is that of the whole
    low-threshold output.
    """
    ids = image_ids if image_ids is not None else dataset.image_ids
    l2c = label_cat
    gt = _coco_gt(dataset, ids)
    dets = _coco_dets(detections, ids, l2c, min_score)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets) if dets else COCO()
        if not dets:
            dt.dataset = {
                "images": gt.dataset["images"],
                "annotations": [],
                "categories": gt.dataset["categories"],
            }
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = ids
        ev.params.iouThrs = np.array([iou])
        ev.params.areaRng = [ev.params.areaRng[0]]
        ev.params.areaRngLbl = ["all"]
        per_image = [len(detections[i]) for i in ids if i in detections]
        ev.params.maxDets = [max([100, *per_image])]
        ev.evaluate()
        ev.accumulate()
    return ev


def average_precision(ev: COCOeval) -> tuple[float, dict[int, float]]:
    """mAP and AP per category id from an accumulated COCOeval (101-point interpolation)."""
    prec = ev.eval["precision"][0, :, :, 0, 0]  # [recall thresholds, categories]
    per_cat = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, k]
        per_cat[cid] = float(np.mean(p[p > -1])) if np.any(p > -1) else float("nan")
    vals = [v for v in per_cat.values() if not np.isnan(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per_cat


def matched_gt_ids(ev: COCOeval) -> set[int]:
    """GT annotation ids matched by some detection in an evaluated COCOeval."""
    matched: set[int] = set()
    for e in ev.evalImgs:
        if e is None:
            continue
        for gid, m in zip(e["gtIds"], e["gtMatches"][0]):
            if m > 0:
                matched.add(int(gid))
    return matched


def evaluate_detector_outputs(
    dataset: CocoDataset,
    detections: dict[int, Detections],
    classes: list[str],
    causes: list[dict] | None = None,
    operating_threshold: float = 0.5,
    iou: float = 0.5,
) -> dict:
    """The benchmark's headline numbers.

    * ``map50``: mAP@``iou`` over all images (all detections, COCO style).
    * ``map50_clean``: the same over images that hold no planted cause.
    * ``recall_clean``: recall at the operating threshold on objects without a cause.
    * ``recall_by_cause``: recall at the operating threshold on each cause's objects.
    * ``distractor_fp_rate``: the fraction of distractors that a detection at the operating
      threshold overlaps with IoU >= ``iou``.
    """
    causes = causes or []
    cause_images = {c["image_id"] for c in causes}
    clean_ids = [i for i in dataset.image_ids if i not in cause_images]
    l2c = label_to_category(classes, dataset)
    map_all, ap_per_cat = average_precision(coco_eval(dataset, detections, l2c, iou=iou))
    result: dict = {
        "images": len(dataset.images),
        "map50": map_all,
        "ap50_per_class": {dataset.categories[c]: v for c, v in ap_per_cat.items()},
    }
    if causes:
        map_clean, _ = average_precision(coco_eval(dataset, detections, l2c, clean_ids, iou))
        result["map50_clean"] = map_clean
        result["clean_images"] = len(clean_ids)
    matched = matched_gt_ids(
        coco_eval(dataset, detections, l2c, iou=iou, min_score=operating_threshold)
    )
    cause_of_ann = {c["annotation_id"]: c["cause"] for c in causes if c["annotation_id"]}
    hits: dict[str, list[bool]] = defaultdict(list)
    for anns in dataset.annotations.values():
        for a in anns:
            if a.get("iscrowd", 0):
                continue
            hits[cause_of_ann.get(a["id"], "clean")].append(a["id"] in matched)
    result["recall_clean"] = float(np.mean(hits["clean"])) if hits["clean"] else float("nan")
    result["recall_by_cause"] = {k: float(np.mean(v)) for k, v in hits.items() if k != "clean"}
    result["objects_by_cause"] = {k: len(v) for k, v in hits.items()}
    result["detected_by_cause"] = {k: int(sum(v)) for k, v in hits.items()}
    distractors = [c for c in causes if c["cause"] == "distractor"]
    if distractors:
        fired = 0
        for c in distractors:
            d = detections.get(c["image_id"])
            if d is None or len(d) == 0:
                continue
            x, y, w, h = c["region_bbox"]
            keep = d.scores >= operating_threshold
            if keep.any():
                region = torch.tensor([[x, y, x + w, y + h]], dtype=d.boxes.dtype)
                fired += int((box_iou(d.boxes[keep], region) >= iou).any())
        result["distractor_fp_rate"] = fired / len(distractors)
        result["distractors"] = len(distractors)
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
        lines.append(f"{title:<32}" + "".join(cell(r.get(key)) for r in results))
    for c in causes:
        lines.append(
            f"{'recall, cause ' + c:<32}"
            + "".join(cell(r.get("recall_by_cause", {}).get(c)) for r in results)
        )
    lines.append(
        f"{'FP rate on distractors':<32}"
        + "".join(cell(r.get("distractor_fp_rate")) for r in results)
    )
    return "\n".join(lines)


def cell(v: object) -> str:
    """One right-aligned 10-character column of the plain-text tables: ``-`` for no value."""
    if v is None:
        return f"{'-':>10}"
    if isinstance(v, float):
        return f"{v:>10.3f}"
    return f"{v!s:>10}"
