"""The only package that talks to FiftyOne: where a person looks at and curates the failures.

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
* :func:`publish_mining` with a checkpoint key also stores the predictions as that checkpoint's
  FiftyOne evaluation run ``e2x_<key>``; :func:`publish_checkpoint_evaluation` adds a further
  checkpoint's run (the retrained one) beside it, so the App's Model Evaluation panel compares
  them.
* :func:`save_failures_view` saves the view ``e2x-failures``: samples with an fp or an fn.
* :func:`publish_failures`, :func:`publish_repair`, :func:`export_repair` and
  :func:`launch_app`: the explained failures with heatmaps and failure modes, the repair set,
  its export (FiftyOne's COCO, YOLOv5, VOC or CVAT exporter, :data:`EXPORT_FORMATS`) and the App;
  :func:`annotate_repair` / :func:`load_repair_annotations` send the repair view to a labelling
  backend with FiftyOne's ``annotate()`` and load the labels back into ``e2x_annotations``.
* :class:`PoolRegions`, :func:`region_query`, :func:`failure_queries` (:mod:`.similarity`): with
  the repair set, :func:`publish_repair` registers the pool's regions (``e2x_regions``) as a
  FiftyOne Brain similarity index under the same key, with the failing features as queries.
* :func:`run_record_of`, :func:`candidate_ids`, :func:`write_heatmaps` and
  :func:`install_plugin` (:mod:`.on_demand`): what the App's "E2X: explain selected samples"
  operator (``plugins/e2x``) needs around :func:`e2x_pipeline.on_demand.explain_on_demand`.

Each write REPLACES the field's labels on every sample it touches (``set_values`` keyed by
filepath), so a rerun never duplicates samples, fields or labels.

Modules: :mod:`.convert` holds the pure conversions (table rows and COCO annotations to label
values, relative boxes, heatmap ranges, field, view and dataset names) and imports neither
fiftyone nor a database; :mod:`.db` (connection, schema, the split's dataset) and
:mod:`.curation` (failures, repair set, export, App) do the writes.

Every publish and export holds the dataset's write lock (:mod:`.lock`: a lock document with a
lease in FiftyOne's database), so two runs writing one dataset queue instead of interleaving.

FiftyOne needs a MongoDB server; when it cannot be reached :class:`FiftyOneUnavailable` says how
to start one.
"""

from .convert import (
    FAILURES_VIEW,
    GT_FIELD,
    HEATMAP_COLORSCALE,
    HEATMAP_FIELD,
    MODE_VIEW,
    PRED_FIELD,
    REPAIR_FIELD,
    REPAIR_VIEW,
    dataset_names,
)
from .curation import (
    ANNO_KEY_PREFIX,
    ANNOTATION_FIELD,
    EXPORT_FORMATS,
    EXPORT_LAYOUTS,
    annotate_repair,
    check_annotation_backend,
    check_export_format,
    default_anno_key,
    export_repair,
    launch_app,
    load_repair_annotations,
    publish_failures,
    publish_repair,
)
from .db import (
    FiftyOneSchemaError,
    FiftyOneUnavailable,
    delete_dataset,
    evaluate_with_fiftyone,
    open_coco_dataset,
    publish_checkpoint_evaluation,
    publish_mining,
    save_failures_view,
    write_ground_truth,
    write_predictions,
)
from .lock import DatasetLockTimeout, dataset_lock, lock_holder, publishing
from .on_demand import (
    OPERATOR_URI,
    PLUGIN_NAME,
    candidate_ids,
    install_plugin,
    run_record_of,
    write_heatmaps,
)
from .similarity import (
    FAILURE_QUERIES_RUN,
    REGIONS_BRAIN_KEY,
    REGIONS_FIELD,
    PoolRegions,
    failure_queries,
    region_query,
)

__all__ = [
    "ANNOTATION_FIELD",
    "ANNO_KEY_PREFIX",
    "EXPORT_FORMATS",
    "FAILURE_QUERIES_RUN",
    "EXPORT_LAYOUTS",
    "FAILURES_VIEW",
    "GT_FIELD",
    "HEATMAP_COLORSCALE",
    "HEATMAP_FIELD",
    "MODE_VIEW",
    "OPERATOR_URI",
    "PLUGIN_NAME",
    "PRED_FIELD",
    "REGIONS_BRAIN_KEY",
    "REGIONS_FIELD",
    "REPAIR_FIELD",
    "REPAIR_VIEW",
    "DatasetLockTimeout",
    "FiftyOneSchemaError",
    "FiftyOneUnavailable",
    "PoolRegions",
    "annotate_repair",
    "candidate_ids",
    "check_annotation_backend",
    "check_export_format",
    "dataset_lock",
    "dataset_names",
    "default_anno_key",
    "delete_dataset",
    "evaluate_with_fiftyone",
    "failure_queries",
    "export_repair",
    "publish_checkpoint_evaluation",
    "install_plugin",
    "launch_app",
    "load_repair_annotations",
    "lock_holder",
    "open_coco_dataset",
    "publish_failures",
    "publish_mining",
    "publish_repair",
    "publishing",
    "region_query",
    "run_record_of",
    "save_failures_view",
    "write_ground_truth",
    "write_heatmaps",
    "write_predictions",
]
