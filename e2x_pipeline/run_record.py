"""What a published failures dataset remembers about the run that made it.

To explain a failure again later (the App's "E2X: explain selected samples" operator, see
``plugins/e2x``), a process needs the run's whole config: checkpoint, data, explain settings and
output folder. ``e2x cluster`` / ``e2x demo`` store :func:`run_record` in the failures dataset's
``info`` (key :data:`RUN_INFO_KEY`) and the operator reads it back with :func:`config_of`.

The record is the validated config itself, dumped to JSON with every path made absolute, because
the App server usually runs in another working directory than the command that published the
dataset, and ``--set`` overrides exist in no file. Plain data only: no FiftyOne here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .config import ConfigError, E2XConfig

RUN_INFO_KEY = "e2x_run"
"""The key of the record in the failures dataset's ``info``."""
RECORD_VERSION = 1


class RunRecordError(ValueError):
    """A dataset's run record is missing or unusable; the message says what to do."""


def _absolute(value: Any) -> Any:
    """``value`` with every :class:`~pathlib.Path` inside it (models, dicts, lists) resolved."""
    if isinstance(value, Path):
        return value.expanduser().resolve()
    if isinstance(value, BaseModel):
        return value.model_copy(
            update={name: _absolute(getattr(value, name)) for name in type(value).model_fields}
        )
    if isinstance(value, dict):
        return {k: _absolute(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_absolute(v) for v in value]
    return value


def run_record(cfg: E2XConfig, split: str) -> dict[str, Any]:
    """The JSON-able record of ``cfg`` and ``split``, paths absolute (see the module docstring)."""
    cfg = _absolute(cfg)
    weights = cfg.model.weights
    if weights is not None and Path(weights).is_file():
        # a weights FILE is a plain string in the config (it may also be a torchvision name)
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"weights": str(Path(weights).resolve())})}
        )
    return {"version": RECORD_VERSION, "split": split, "config": cfg.model_dump(mode="json")}


def config_of(
    record: Mapping[str, Any] | None, dataset: str = "the dataset"
) -> tuple[E2XConfig, str]:
    """The config and split a record names; :class:`RunRecordError` when there is none."""
    republish = (
        "republish it with 'e2x cluster --split SPLIT' (or 'e2x demo') from this version of E2X"
    )
    if not record:
        raise RunRecordError(f"{dataset} records no E2X run (info[{RUN_INFO_KEY!r}]); {republish}")
    if record.get("version") != RECORD_VERSION or "config" not in record or "split" not in record:
        raise RunRecordError(
            f"{dataset} has a run record of another E2X version ({record.get('version')!r}); "
            + republish
        )
    try:
        cfg = E2XConfig.model_validate(record["config"])
    except (ConfigError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise RunRecordError(
            f"{dataset}'s run record is not a valid config ({first}); {republish}"
        ) from None
    return cfg, str(record["split"])
