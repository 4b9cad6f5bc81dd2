"""The FiftyOne side of explaining on demand: the run record, selected samples, heatmaps, plugin.

The App's operator (``plugins/e2x``) calls, in order: :func:`run_record_of` (the run that made
the failures dataset), :func:`candidate_ids` (selected samples to candidates),
:func:`e2x_pipeline.on_demand.explain_on_demand` (the library, no FiftyOne) and
:func:`write_heatmaps`. Writes touch only e2x's own failures dataset (one with a run record)
and only its ``<method>_heatmap`` fields, never GT or images.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..run_record import RUN_INFO_KEY, RunRecordError
from . import convert
from .convert import HEATMAP_COLORSCALE
from .db import _check_field, _fo

if TYPE_CHECKING:
    from ..explain.base import Explanation

PLUGIN_NAME = "@e2x/explain"
"""The plugin's name in ``plugins/e2x/fiftyone.yml``."""
OPERATOR_URI = f"{PLUGIN_NAME}/explain_selected"
"""The operator "E2X: explain selected samples"."""


def _dataset(ds_or_name: Any) -> Any:
    fo = _fo()
    if isinstance(ds_or_name, str):
        if not fo.dataset_exists(ds_or_name):
            raise FileNotFoundError(
                f"FiftyOne dataset {ds_or_name!r} does not exist; run 'e2x cluster' first"
            )
        return fo.load_dataset(ds_or_name)
    return ds_or_name


def run_record_of(ds_or_name: Any) -> dict[str, Any]:
    """The run record ``e2x cluster`` / ``e2x demo`` stored in the dataset's ``info``.

    :class:`~e2x_pipeline.run_record.RunRecordError` when there is none: the dataset is not a
    failures dataset of this E2X version, so the operator neither explains nor writes."""
    ds = _dataset(ds_or_name)
    record = (ds.info or {}).get(RUN_INFO_KEY)
    if not record:
        raise RunRecordError(
            f"dataset {ds.name!r} records no E2X run (info[{RUN_INFO_KEY!r}]): open a failures "
            "dataset ('e2x-<split>-failures') made by 'e2x cluster' or 'e2x demo' of this E2X "
            "version, or republish it with 'e2x cluster --split SPLIT'"
        )
    return dict(record)


def candidate_ids(view: Any, sample_ids: Sequence[str] | None = None, limit: int | None = None):
    """The ``candidate_id`` of the samples ``sample_ids`` (in the view's order), or of the
    view's first ``limit`` samples when no ids are given."""
    if "candidate_id" not in view.get_field_schema():
        raise ValueError(
            f"dataset {view._root_dataset.name!r} has no 'candidate_id' field: open the failures "
            "dataset ('e2x-<split>-failures') that 'e2x cluster' publishes"
        )
    if sample_ids:
        view = view.select(list(sample_ids), ordered=True)
    elif limit is not None:
        view = view.limit(int(limit))
    return [str(c) for c in view.values("candidate_id") if c is not None]


def write_heatmaps(ds_or_name: Any, explanations: Iterable[Explanation]) -> list[str]:
    """Write each explanation's pixel map as ``fo.Heatmap`` on its candidate's sample.

    Field ``<method>_heatmap`` for the score (``<method>_<output>_heatmap`` for a box
    coordinate), range ``[-a, a]`` with ``a`` the max |value|: the names and range that
    :func:`~e2x_pipeline.fiftyone_io.publish_failures` uses. Only samples of the given candidates
    change. The new fields get the red/white/blue colorscale. Returns the fields written.
    """
    fo = _fo()
    ds = _dataset(ds_or_name)
    run_record_of(ds)  # only e2x's own failures datasets are written to
    import numpy as np

    values: dict[str, dict[str, Any]] = {}
    for e in explanations:
        m = np.asarray(e.pixel_map, dtype=np.float32)
        heatmap = fo.Heatmap(map=m, range=convert.heatmap_range(m))
        values.setdefault(convert.heatmap_field(e.method, e.output), {})[str(e.candidate_id)] = (
            heatmap
        )
    fields = convert.heatmap_field_order(values)
    for field in fields:
        _check_field(ds, field, fo.Heatmap)
        ds.set_values(field, values[field], key_field="candidate_id")
    _add_colorscales(fo, ds, fields)
    return fields


def _add_colorscales(fo: Any, ds: Any, fields: list[str]) -> None:
    """Give new heatmap fields the red (+) / white / blue (-) scale the published ones have."""
    scheme = ds.app_config.color_scheme
    if scheme is None:
        scheme = fo.ColorScheme(color_by="value", opacity=0.6)
    have = {c.get("path") for c in (scheme.colorscales or [])}
    new = [{"path": f, "list": HEATMAP_COLORSCALE} for f in fields if f not in have]
    if new or ds.app_config.color_scheme is None:
        scheme.colorscales = [*(scheme.colorscales or []), *new]
        ds.app_config.color_scheme = scheme
        ds.save()


def install_plugin(source: Path, plugins_dir: str | Path | None = None, copy: bool = False) -> Path:
    """Link (or with ``copy``, copy) the plugin folder ``source`` into FiftyOne's plugins folder.

    ``plugins_dir`` defaults to ``fo.config.plugins_dir`` (``$FIFTYONE_PLUGINS_DIR``, else
    ``~/fiftyone/__plugins__``). A link follows the repository, so an update of E2X updates the
    plugin; an earlier install of the same name is replaced. Returns the installed path.
    """
    source = Path(source).resolve()
    if not (source / "fiftyone.yml").is_file():
        raise FileNotFoundError(
            f"no FiftyOne plugin at {source} (fiftyone.yml missing); install E2X from its "
            "repository (pip install -e .) so that plugins/e2x is there"
        )
    if plugins_dir is None:
        import fiftyone as fo  # no database needed: only the config

        plugins_dir = fo.config.plugins_dir
    if not plugins_dir:
        raise ValueError("FiftyOne has no plugins folder: set FIFTYONE_PLUGINS_DIR")
    target = Path(plugins_dir).expanduser() / "e2x"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        yml = target / "fiftyone.yml"
        if not yml.is_file() or PLUGIN_NAME not in yml.read_text(errors="replace"):
            raise FileExistsError(
                f"{target} exists and is not the E2X plugin; move it away, or pass another "
                "plugins folder (FIFTYONE_PLUGINS_DIR)"
            )
        shutil.rmtree(target)  # an earlier copy of this plugin
    if copy:
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        target.symlink_to(source, target_is_directory=True)
    return target
