"""The run layout: where every stage's tables live under the output folder.

This module is the only place that spells a table's file name. A stage asks its
:class:`SplitLayout` for a path (``layout.candidates``) or, when it reads another stage's
output, for a path that must exist (``layout.require("candidates")``), which raises
:class:`StageOutputMissing` naming the command that writes it.

::

    <output_dir>/
      checkpoints/                      train, retrain
      evaluation-<split>.json           evaluate
      retrain.json                      retrain
      summary.json                      demo / run
      history.sqlite                    run, demo: one record per run (e2x history)
      export/<name>/                    export
      <split>/                          one SplitLayout per split (the pool's too)
        candidates.parquet ...          mine
        explanations.parquet, maps/     explain
        features.parquet ...            cluster
        repair_set.parquet ...          repair
        regions.parquet ...             repair, on the pool split

Each stage's folder also holds ``<stage>.manifest.json``, written after the stage's files, which
lists them with their sizes and sha256 (:mod:`e2x_pipeline.generation`).

Every name that comes from data or config (split, image id, export name) is joined with
:func:`io_utils.safe_join`, so no layout path leaves the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from . import generation
from .io_utils import safe_join


class StageOutputMissing(FileNotFoundError):
    """A stage's input table is not there: the message names the command that writes it."""

    def __init__(self, path: Path, command: str, split: str | None = None) -> None:
        where = f" --split {split}" if split and command not in {"demo", "retrain"} else ""
        super().__init__(
            f"no {path.name} at {path}; run 'e2x {command}{where}' with the same output_dir first"
        )
        self.path = path
        self.command = command


class Table:
    """A file of the layout: ``layout.<name>`` is its path; ``command`` is what writes it, in
    the generation (:mod:`e2x_pipeline.generation`) named ``stage`` (default: ``command``)."""

    def __init__(self, file_name: str, command: str, stage: str | None = None) -> None:
        self.file_name = file_name
        self.command = command
        self.stage = stage or command

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type) -> Table: ...
    @overload
    def __get__(self, obj: Any, owner: type) -> Path: ...
    def __get__(self, obj: Any, owner: type) -> Table | Path:
        if obj is None:
            return self
        return obj.root / self.file_name


def _require(layout: Any, name: str, split: str | None) -> Path:
    table = getattr(type(layout), name, None)
    if not isinstance(table, Table):
        raise AttributeError(f"{type(layout).__name__} has no table {name!r}")
    path: Path = getattr(layout, name)
    if not path.is_file():
        raise StageOutputMissing(path, table.command, split)
    where = f" --split {split}" if split and table.command not in {"demo", "retrain"} else ""
    generation.check(layout.root, table.stage, path, table.command + where)
    return path


@dataclass(frozen=True)
class SplitLayout:
    """One split's folder, ``<output_dir>/<split>/``; ``root`` may also be given directly."""

    root: Path
    split: str | None = None

    candidates = Table("candidates.parquet", "mine")
    predictions = Table("predictions.parquet", "mine")
    rejected = Table("rejected.parquet", "mine")
    mining_metrics = Table("metrics.json", "mine")
    explanations = Table("explanations.parquet", "explain")
    explanation_metrics = Table("explanation_metrics.parquet", "evaluate-explanations")
    explanation_summary = Table("explanation_metrics.json", "evaluate-explanations")
    features = Table("features.parquet", "cluster")
    failure_modes = Table("failure_modes.parquet", "cluster")
    cluster_summary = Table("cluster.json", "cluster")
    repair_set = Table("repair_set.parquet", "repair")
    repair_scores = Table("repair_scores.parquet", "repair")
    repair_summary = Table("repair.json", "repair")
    # on the pool split: every pool superpixel, its embedding and the cache key
    regions = Table("regions.parquet", "repair", "pool-regions")
    region_embeddings = Table("region_embeddings.npy", "repair", "pool-regions")
    regions_stamp = Table("regions.json", "repair", "pool-regions")

    def require(self, name: str) -> Path:
        """The table's path; :class:`StageOutputMissing` when its stage has not run,
        :class:`generation.IncompleteGeneration` when its stage was interrupted or the file
        changed since."""
        return _require(self, name, self.split)

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    @staticmethod
    def map_name(image_id: int | str) -> str:
        """``maps/<image_id>.npz`` relative to the split folder (the tables' ``map_file``)."""
        return f"maps/{int(image_id)}.npz"

    def map_file(self, image_id: int | str) -> Path:
        """The image's SLIC segmentation and float16 pixel maps."""
        return safe_join(self.root, self.map_name(image_id))

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    @property
    def parts(self) -> Path:
        return self.root / "parts"

    def part_file(self, first_image: int, last_image: int) -> Path:
        """One Dask chunk's explanations, merged into ``explanations.parquet`` afterwards
        (zero-padded ids, so that name order is id order)."""
        return self.parts / f"explanations-{int(first_image):012d}-{int(last_image):012d}.parquet"

    def part_files(self) -> list[Path]:
        return sorted(self.parts.glob("explanations-*.parquet"))

    @property
    def modes(self) -> Path:
        return self.root / "modes"

    def mode_crop(self, mode: int) -> Path:
        return self.modes / f"mode-{int(mode)}.png"


@dataclass(frozen=True)
class RunLayout:
    """The output folder of a run (``cfg.output_dir``)."""

    output_dir: Path

    def split(self, split: str) -> SplitLayout:
        return SplitLayout(safe_join(self.output_dir, split), split)

    @property
    def checkpoints(self) -> Path:
        return self.output_dir / "checkpoints"

    def evaluation(self, split: str) -> Path:
        return safe_join(self.output_dir, f"evaluation-{split}.json")

    def evaluations(self) -> list[Path]:
        """Every ``evaluation-<split>.json`` written so far, sorted by path."""
        return sorted(self.output_dir.glob("evaluation-*.json"))

    def export(self, name: str) -> Path:
        return safe_join(self.output_dir, "export", name)

    retrain_summary = Table("retrain.json", "retrain")
    run_summary = Table("summary.json", "demo")
    history = Table("history.sqlite", "run")

    @property
    def root(self) -> Path:
        return self.output_dir

    def require(self, name: str) -> Path:
        return _require(self, name, None)
