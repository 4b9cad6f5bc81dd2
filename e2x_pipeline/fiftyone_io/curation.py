"""The curation datasets: explained failures with heatmaps and modes, the repair set, export, App.

The label values come from :mod:`.convert`; this module only opens datasets, checks their
schema and writes (``set_values`` keyed by ``candidate_id`` or ``filepath``, so a rerun updates
in place).
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..run_record import RUN_INFO_KEY
from . import convert
from .convert import (
    CANDIDATE_FIELD,
    FAILURE_FIELDS,
    FAILURES_VIEW,
    FEATURES_FIELD,
    GT_FIELD,
    HEATMAP_COLORSCALE,
    MODE_VIEW_PREFIX,
    REPAIR_FIELD,
    REPAIR_VIEW,
)
from .db import _check_field, _fo, _paths, open_coco_dataset, open_or_create
from .similarity import PoolRegions, publish_region_index

if TYPE_CHECKING:
    from ..data.coco import CocoDataset  # only for hints: importing it imports torch


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


def _failure_values(
    fo: Any,
    dataset: CocoDataset,
    cands: pd.DataFrame,
    keys: list[str],
    features: pd.DataFrame | None,
    gt_field: str,
) -> dict[str, dict[str, Any]]:
    """``field -> {candidate_id: value}`` for every field of the failures dataset but heatmaps."""
    mode_of, feats_by_cand = convert.dominant_modes(features)
    # the order FiftyOne adds the fields in on a new dataset
    fields = ("image_id", gt_field, CANDIDATE_FIELD, FEATURES_FIELD, *FAILURE_FIELDS, "tags")
    values: dict[str, dict[str, Any]] = {f: {} for f in fields}
    for k in keys:
        c = cands.loc[k]
        image_id = int(c["image_id"])
        w, h = convert.image_size(dataset.images.get(image_id, {}))
        gts = [
            fo.Detection(
                **convert.coco_detection(a, dataset.categories, w, h, coco_id=int(a["id"]))
            )
            for a in dataset.annotations.get(image_id, [])
        ]
        feats = feats_by_cand.get(k, pd.DataFrame()).itertuples()
        values[gt_field][k] = fo.Detections(detections=gts)
        values[CANDIDATE_FIELD][k] = fo.Detection(**convert.candidate_detection(c, w, h))
        values[FEATURES_FIELD][k] = fo.Detections(
            detections=[fo.Detection(**convert.feature_detection(f, w, h)) for f in feats]
        )
        for field, value in convert.failure_fields(c, mode_of.get(k)).items():
            values[field][k] = value
    return values


def _heatmaps(fo: Any, expl: pd.DataFrame, keys: list[str], split_dir: Path) -> dict[str, dict]:
    """``<method>_heatmap -> {candidate_id: fo.Heatmap}`` from the stored pixel maps."""
    import numpy as np

    from ..io_utils import safe_join

    heatmaps: dict[str, dict[str, Any]] = {}
    for r in expl[expl["candidate_id"].isin(keys)].itertuples():
        with np.load(safe_join(split_dir, r.map_file), allow_pickle=False) as maps:
            m = maps[r.map_key].astype(np.float32)
        heatmap = fo.Heatmap(map=m, range=convert.heatmap_range(m))
        heatmaps.setdefault(convert.heatmap_field(r.method), {})[r.candidate_id] = heatmap
    return heatmaps


def _save_mode_views(
    ds: Any, modes: pd.DataFrame | None, stable_ids: Mapping[int, str] | None = None
) -> None:
    """``e2x-failures`` (all, best score first) and ``e2x-mode-<k>`` per mode, plus
    ``e2x-mode-<stable id>`` for the modes that ``stable_ids`` names; drop stale modes."""
    from fiftyone import ViewField as F

    ds.save_view(FAILURES_VIEW, ds.sort_by("e2x_score", reverse=True), overwrite=True)
    wanted = set()
    if modes is not None:
        for m in modes["mode_id"]:
            view = ds.match(F("e2x_failure_mode") == int(m)).sort_by("e2x_score", reverse=True)
            names = [convert.mode_view(m)]
            if stable_ids and int(m) in stable_ids:
                names.append(convert.stable_mode_view(stable_ids[int(m)]))
            for view_name in names:
                wanted.add(view_name)
                ds.save_view(view_name, view, overwrite=True)
    for v in ds.list_saved_views():
        if v.startswith(MODE_VIEW_PREFIX) and v not in wanted:
            ds.delete_saved_view(v)


def publish_failures(
    name: str,
    dataset: CocoDataset,
    candidates: pd.DataFrame,
    explanations: pd.DataFrame,
    split_dir: Path,
    features: pd.DataFrame | None = None,
    modes: pd.DataFrame | None = None,
    gt_field: str = GT_FIELD,
    run: Mapping[str, Any] | None = None,
    stable_ids: Mapping[int, str] | None = None,
) -> Any:
    """One sample per explained failure in the dataset ``name``, keyed by ``candidate_id``.

    Fields: ``ground_truth``; ``e2x_candidate`` (the failing box: the detection for an fp, the
    missed GT box for an fn); ``<method>_heatmap`` (``fo.Heatmap``, range ``[-a, a]`` with ``a``
    the map's max |value|, one per method that explained it, E2X first); ``e2x_failure_mode``,
    ``e2x_error_type``, ``e2x_outcome``, ``e2x_score``; ``e2x_features`` (the failing
    superpixels' boxes, labelled with their mode). Tags: outcome, error type and ``mode-<k>``.
    Saved views: ``e2x-failures`` (all, by mode then score) and ``e2x-mode-<k>`` per mode; with
    ``stable_ids`` (mode id -> the run history's stable id) also ``e2x-mode-<stable id>``.
    A rerun updates in place; samples of candidates no longer explained are removed.
    ``run`` (:func:`e2x_pipeline.run_record.run_record`) is stored in ``ds.info["e2x_run"]``, so
    that the App's "E2X: explain selected samples" operator can explain samples again.
    """
    fo = _fo()
    expl = explanations[(explanations["output"] == "score") & explanations["valid"].astype(bool)]
    cands = candidates.set_index("candidate_id")
    keys = sorted(set(expl["candidate_id"]) & set(cands.index))
    paths = [str(Path(cands.loc[k, "image_path"]).resolve()) for k in keys]
    ds = open_or_create(name)
    for field, kind in (
        (gt_field, fo.Detections),
        (CANDIDATE_FIELD, fo.Detection),
        (FEATURES_FIELD, fo.Detections),
    ):
        _check_field(ds, field, kind)
    _upsert_keyed(ds, "candidate_id", keys, paths)
    import fiftyone.core.fields as fof

    # declared up front: before `e2x cluster` every mode is None (and a run of misses only has
    # no scores), and FiftyOne cannot infer a field's type from None values alone
    ds.add_sample_field("e2x_failure_mode", fof.IntField)
    ds.add_sample_field("e2x_score", fof.FloatField)
    values = _failure_values(fo, dataset, cands, keys, features, gt_field)
    heatmaps = _heatmaps(fo, expl, keys, split_dir)
    tags = values.pop("tags")
    for field, vals in values.items():
        ds.set_values(field, vals, key_field="candidate_id")
    for field in convert.heatmap_field_order(heatmaps):
        _check_field(ds, field, fo.Heatmap)
        vals = {k: heatmaps[field].get(k) for k in keys}
        ds.set_values(field, vals, key_field="candidate_id")
    ds.set_values("tags", tags, key_field="candidate_id")
    if run is not None:
        ds.info = {**(ds.info or {}), RUN_INFO_KEY: dict(run)}
    _show_heatmaps(ds, sorted(heatmaps), gt_field)  # saves the dataset (and its info)
    _save_mode_views(ds, modes, stable_ids)
    return ds


def _show_heatmaps(ds: Any, heatmap_fields: list[str], gt_field: str) -> None:
    """Make the App open with GT, the candidate and the E2X heatmap on, in red/white/blue."""
    fo = _fo()
    from fiftyone.core.odm.dataset import ActiveFields

    primary = convert.heatmap_field("e2x")
    first = [f for f in heatmap_fields if f == primary] or heatmap_fields[:1]
    ds.app_config.active_fields = ActiveFields(paths=[gt_field, CANDIDATE_FIELD, *first])
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
    regions: PoolRegions | None = None,
) -> Any:
    """Write the repair set onto the pool's dataset and save the view ``e2x-repair``.

    Every pool sample gets ``e2x_failure_mode``, ``e2x_score`` and ``e2x_repair_rank`` (None when
    not selected) and ``e2x_repair_region`` (the matching superpixel's box, labelled
    ``mode-<k>``, confidence = match score, and its ``region_id`` when ``regions`` is given). The
    view holds the selected samples, best match first. With ``regions`` (what the repair stage
    searched) the pool's regions also become the Brain similarity index ``e2x_regions`` with the
    failing features as queries (:mod:`.similarity`). A rerun replaces all of it in place.
    """
    fo = _fo()
    from fiftyone import ViewField as F

    ds = open_coco_dataset(name, pool, gt_field)
    _check_field(ds, REPAIR_FIELD, fo.Detections)
    chosen = {int(r.image_id): r for r in repair_set.itertuples()}
    region_id = (
        {
            (int(i), int(s)): str(r)
            for i, s, r in regions.regions[["image_id", "segment", "region_id"]].itertuples(
                index=False
            )
        }
        if regions is not None
        else {}
    )
    mode, score, rank, region = {}, {}, {}, {}
    paths = _paths(ds, pool)
    for image_id, path in paths.items():
        r = chosen.get(image_id)
        w, h = convert.image_size(pool.images.get(image_id, {}))
        mode[path] = int(r.mode_id) if r is not None else None
        score[path] = float(r.score) if r is not None else None
        rank[path] = int(r.rank) if r is not None else None
        region[path] = None
        if r is not None:
            det = convert.repair_detection(r, w, h)
            rid = region_id.get((image_id, int(r.segment)))
            if rid is not None:  # the same region as in e2x_regions
                det["region_id"] = rid
            region[path] = fo.Detections(detections=[fo.Detection(**det)])
    ds.set_values("e2x_failure_mode", mode, key_field="filepath")
    ds.set_values("e2x_score", score, key_field="filepath")
    ds.set_values("e2x_repair_rank", rank, key_field="filepath")
    ds.set_values(REPAIR_FIELD, region, key_field="filepath")
    # only this pool's images: the dataset may also hold another folder's (an older pool)
    selected = F("filepath").is_in(sorted(paths.values())) & (F("e2x_repair_rank") != None)  # noqa: E711
    view = ds.match(selected).sort_by("e2x_repair_rank")
    ds.save_view(REPAIR_VIEW, view, overwrite=True)
    if regions is not None:
        publish_region_index(ds, pool, regions, paths)
    return ds


def _reveal_labels(fo: Any, ds: Any, labels: CocoDataset, label_field: str) -> None:
    """Fill ``label_field`` of each repair-view sample from ``labels``, matched by file name."""
    view = ds.load_saved_view(REPAIR_VIEW)
    by_name = {im["file_name"]: i for i, im in labels.images.items()}
    values = {}
    for sid, path in zip(view.values("id"), view.values("filepath"), strict=True):
        image_id = by_name.get(Path(path).name)
        dets = []
        if image_id is not None:
            w, h = convert.image_size(labels.images[image_id])
            dets = [
                fo.Detection(
                    **convert.coco_detection(
                        a, labels.categories, w, h, iscrowd=int(a.get("iscrowd", 0))
                    )
                )
                for a in labels.annotations.get(image_id, [])
            ]
        values[sid] = fo.Detections(detections=dets)
    ds.set_values(label_field, values, key_field="id")


# ``e2x export --format``: FiftyOne's own dataset type per format, and the layout it writes
EXPORT_FORMATS: dict[str, str] = {
    "coco": "COCODetectionDataset",
    "yolov5": "YOLOv5Dataset",
    "voc": "VOCDetectionDataset",
    "cvat": "CVATImageDataset",
}
EXPORT_LAYOUTS: dict[str, str] = {
    "coco": "labels.json + data/",
    "yolov5": "dataset.yaml + images/train/ + labels/train/",
    "voc": "data/ + labels/<image>.xml",
    "cvat": "labels.xml + data/",
}
# the repair set is training data, so YOLOv5's dataset.yaml lists it as the train split
YOLO_SPLIT = "train"


def check_export_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`EXPORT_FORMATS`, else a ValueError naming the choices."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(
            f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}"
        )
    return fmt


def _export_options(fmt: str, classes: list[str] | None) -> dict[str, Any]:
    """The exporter's keyword arguments per format.

    Only COCO and YOLOv5 take a class list (VOC and CVAT write label names). Passing the pool's
    whole sorted class list fixes COCO's category ids and YOLO's class indices, so they do not
    depend on which classes the selected images happen to hold.
    """
    if fmt == "coco":
        return {"classes": classes}
    if fmt == "yolov5":
        return {"classes": classes, "split": YOLO_SPLIT}
    return {}


def _point_yaml_at(yaml_path: Path, export_dir: Path) -> None:
    """Set YOLOv5's ``path:`` to the final folder: the exporter wrote the temp folder's name,
    which is gone after the swap, and YOLOv5 resolves the image folders against it."""
    import yaml

    d = yaml.safe_load(yaml_path.read_text())
    d["path"] = str(export_dir.resolve())
    yaml_path.write_text(yaml.safe_dump(d, sort_keys=False))


def _remove_stale_exports(export_dir: Path) -> None:
    """Remove ``.<name>.<pid>.tmp`` / ``.old`` folders of exports killed midway (dead pids)."""
    from ..io_utils import pid_alive

    for d in export_dir.parent.glob(f".{glob.escape(export_dir.name)}.*.*"):
        pid, _, kind = d.name[len(export_dir.name) + 2 :].partition(".")
        if kind in ("tmp", "old") and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _export_atomic(
    fo: Any,
    view: Any,
    export_dir: Path,
    label_field: str,
    classes: list[str] | None,
    fmt: str = "coco",
) -> None:
    """Export ``view`` in ``fmt`` beside ``export_dir``, then swap it in: a crash never leaves
    half an export, and a rerun replaces the folder instead of adding to it (YOLOv5's exporter,
    for one, would merge into an existing dataset.yaml)."""
    export_dir = Path(export_dir)
    _remove_stale_exports(export_dir)
    tmp = export_dir.with_name(f".{export_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    view.export(
        export_dir=str(tmp),
        dataset_type=getattr(fo.types, EXPORT_FORMATS[fmt]),
        label_field=label_field,
        export_media=True,
        progress=False,
        **_export_options(fmt, classes),
    )
    if fmt == "yolov5":
        _point_yaml_at(tmp / "dataset.yaml", export_dir)
    old = export_dir.with_name(f".{export_dir.name}.{os.getpid()}.old")
    if export_dir.exists():
        export_dir.rename(old)
    tmp.rename(export_dir)
    shutil.rmtree(old, ignore_errors=True)


def export_repair(
    name: str,
    export_dir: Path,
    labels: CocoDataset | None = None,
    label_field: str = "e2x_labels",
    fmt: str = "coco",
) -> int:
    """Export the ``e2x-repair`` view with FiftyOne's exporter for ``fmt`` (:data:`EXPORT_FORMATS`).

    With ``labels`` (the pool's labels, e.g. the benchmark's pool_labels.json) each selected
    sample's ``label_field`` is filled from it first; without, the export lists the images with
    no annotations, ready for labelling. Images are copied into the format's own layout
    (:data:`EXPORT_LAYOUTS`; COCO: ``labels.json`` and ``data/``). Returns the number of images
    exported.
    """
    check_export_format(fmt)  # before touching the database
    fo = _fo()
    if not fo.dataset_exists(name) or REPAIR_VIEW not in fo.load_dataset(name).list_saved_views():
        raise FileNotFoundError(
            f"FiftyOne dataset {name!r} has no saved view {REPAIR_VIEW!r}; run 'e2x repair' first"
        )
    ds = fo.load_dataset(name)
    _check_field(ds, label_field, fo.Detections)
    if labels is not None:
        _reveal_labels(fo, ds, labels, label_field)
    else:
        ds.add_sample_field(label_field, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    view = ds.load_saved_view(REPAIR_VIEW)
    classes = sorted(labels.categories.values()) if labels is not None else None
    _export_atomic(fo, view, export_dir, label_field, classes, fmt)
    return len(view)


# ``e2x annotate``: the repair view goes to a labelling backend through FiftyOne's annotate()
ANNOTATION_FIELD = "e2x_annotations"
ANNO_KEY_PREFIX = "e2x_repair_"
# what FiftyOne's built-in backends need before they can log in: groups of alternatives, read
# from fo.annotation_config.backends[<backend>] (env FIFTYONE_<BACKEND>_<PARAM>, or the
# annotation config file); a backend FiftyOne defaults to a placeholder for needs it set
_BACKEND_NEEDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "cvat": (("username", "email"), ("password",)),
    "labelstudio": (("url",), ("api_key",)),
    "labelbox": (("api_key",),),
}
_PLACEHOLDER_URLS = {"labelstudio": "https://labelstud.io"}  # a web site, not a server


def default_anno_key() -> str:
    """``e2x_repair_<YYYYmmdd_HHMMSS>``: one annotation run per ``e2x annotate``."""
    import time

    return ANNO_KEY_PREFIX + time.strftime("%Y%m%d_%H%M%S")


def check_annotation_backend(backend: str | None) -> str:
    """The backend's name (None: FiftyOne's ``annotation_config.default_backend``) when
    FiftyOne's annotation config has what it needs to log in, else a one-line ValueError naming
    the variables to set. Reads only the config: no database, no network."""
    import fiftyone as fo
    import fiftyone.core.config as foc

    conf = fo.annotation_config
    name = backend or conf.default_backend
    if name not in conf.backends:
        raise ValueError(
            f"unknown annotation backend {name!r}; FiftyOne's annotation config "
            f"(fo.annotation_config.backends) has {', '.join(sorted(conf.backends))}"
        )
    params = conf.backends[name]
    missing = []
    for group in _BACKEND_NEEDS.get(name, ()):
        have = [p for p in group if params.get(p) and params.get(p) != _PLACEHOLDER_URLS.get(name)]
        if not have:
            names = [f"FIFTYONE_{name.upper()}_{p.upper()}" for p in group]
            missing.append(names[0] if len(names) == 1 else f"({' or '.join(names)})")
    if missing:
        url = params.get("url")
        asks_url = any("url" in group for group in _BACKEND_NEEDS[name])
        where = f" (FIFTYONE_{name.upper()}_URL is now {url})" if url and not asks_url else ""
        raise ValueError(
            f"annotation backend {name!r} is not configured: set {' and '.join(missing)}{where}, "
            f"or the same keys under backends.{name} in {foc.locate_annotation_config()}"
        )
    return name


def _repair_dataset(fo: Any, name: str) -> Any:
    if not fo.dataset_exists(name) or REPAIR_VIEW not in fo.load_dataset(name).list_saved_views():
        raise FileNotFoundError(
            f"FiftyOne dataset {name!r} has no saved view {REPAIR_VIEW!r}; run 'e2x repair' first"
        )
    return fo.load_dataset(name)


def _check_e2x_field(field: str) -> str:
    if not field.startswith("e2x_"):
        raise ValueError(
            f"label field {field!r} does not start with 'e2x_'; annotations go to an e2x_ field, "
            "never the dataset's own labels"
        )
    return field


def annotate_repair(
    name: str,
    backend: str | None = None,
    anno_key: str | None = None,
    label_field: str = ANNOTATION_FIELD,
    classes: list[str] | None = None,
    launch_editor: bool = False,
    **backend_options: Any,
) -> tuple[str, int]:
    """Send the ``e2x-repair`` view to a labelling backend with FiftyOne's own
    ``view.annotate(anno_key, backend=..., label_field=..., label_type="detections",
    classes=..., launch_editor=...)`` (fiftyone.utils.annotations.annotate); ``backend_options``
    go to the backend's config class. Returns (annotation key, images sent).

    ``label_field`` (an ``e2x_`` field) is where :func:`load_repair_annotations` puts the labels
    back; the boxes it already holds (an earlier run's) are sent for editing.
    """
    backend = check_annotation_backend(backend)  # before touching the database
    _check_e2x_field(label_field)
    fo = _fo()
    ds = _repair_dataset(fo, name)
    anno_key = anno_key or default_anno_key()
    if anno_key in ds.list_annotation_runs():
        raise ValueError(
            f"dataset {name!r} already has an annotation run {anno_key!r}; pass another "
            "--anno-key, or load it back with --load"
        )
    _check_field(ds, label_field, fo.Detections)
    view = ds.load_saved_view(REPAIR_VIEW)
    view.annotate(
        anno_key,
        backend=backend,
        label_field=label_field,
        label_type="detections",
        classes=classes,
        launch_editor=launch_editor,
        **backend_options,
    )
    return anno_key, len(view)


def latest_anno_key(ds: Any) -> str | None:
    """The newest annotation run whose key starts with ``e2x_repair_``."""
    keys = [k for k in ds.list_annotation_runs() if k.startswith(ANNO_KEY_PREFIX)]
    return max(keys, key=lambda k: ds.get_annotation_info(k).timestamp, default=None)


def load_repair_annotations(
    name: str, anno_key: str | None = None, dest_field: str = ANNOTATION_FIELD
) -> tuple[str, int]:
    """Download annotation run ``anno_key`` (default: the newest ``e2x_repair_*``) with
    ``ds.load_annotations(anno_key, dest_field=dest_field, unexpected="ignore")`` into the
    ``e2x_`` field ``dest_field``. Returns (annotation key, labels now in ``dest_field``)."""
    _check_e2x_field(dest_field)
    fo = _fo()
    ds = _repair_dataset(fo, name)
    anno_key = anno_key or latest_anno_key(ds)
    if anno_key is None or anno_key not in ds.list_annotation_runs():
        have = ", ".join(ds.list_annotation_runs()) or "none"
        raise FileNotFoundError(
            f"dataset {name!r} has no annotation run {anno_key or ANNO_KEY_PREFIX + '*'!r} "
            f"(it has: {have}); run 'e2x annotate' first"
        )
    check_annotation_backend(ds.get_annotation_info(anno_key).config.name)
    _check_field(ds, dest_field, fo.Detections)
    ds.load_annotations(anno_key, dest_field=dest_field, unexpected="ignore")
    return anno_key, ds.count(f"{dest_field}.detections")


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
