"""The run's inputs, checked before any work: which splits exist, and a clear error when one a
run needs does not.

A split is ``data.splits.<name>`` (explicit annotation file and image folder) or, in the root
layout, ``<data.root>/annotations/<name>.json`` with ``<data.root>/images/<name>/``. Nothing here
writes anything: the planted-failure benchmark is generated only on request (``e2x demo``,
``e2x data make-benchmark``, ``e2x run --make-benchmark``).
"""

from __future__ import annotations

from ..config import E2XConfig
from .coco import DatasetError


def available_splits(cfg: E2XConfig) -> list[str]:
    """The splits whose annotation file exists: explicit ``data.splits`` and the root layout;
    with a FiftyOne input, the splits it names."""
    if cfg.data.fiftyone is not None:
        return sorted(cfg.data.fiftyone.splits)
    names = {n for n, spec in cfg.data.splits.items() if spec.annotations.is_file()}
    ann_dir = cfg.data.root / "annotations"
    if ann_dir.is_dir():
        names |= {p.stem for p in ann_dir.glob("*.json") if p.is_file()}
    return sorted(names)


def check_split(cfg: E2XConfig, split: str) -> None:
    """Raise :class:`DatasetError` when ``split``'s annotation file is missing, listing the
    splits that do exist and how to make the benchmark when there are none."""
    if cfg.data.fiftyone is not None:
        if split in cfg.data.fiftyone.splits:
            return  # whether its tag or view exists is checked when it is read
        raise DatasetError(
            f"split {split!r} is not one of data.fiftyone.splits {available_splits(cfg)}; add it "
            f"(e.g. {split}: {{tag: {split}}}) or set data.eval_split to one of those"
        )
    spec = cfg.data.split(split)
    if spec.annotations.is_file():
        return
    have = available_splits(cfg)
    if have:
        hint = f"the splits that exist are {have}; set data.eval_split or data.splits.{split}"
    else:
        hint = (
            f"no split exists under data.root={cfg.data.root}; point data.root (or data.splits) "
            "at your COCO files, or generate the planted-failure benchmark there with "
            "'e2x data make-benchmark' (or 'e2x run --make-benchmark')"
        )
    raise DatasetError(f"split {split!r} has no annotation file {spec.annotations}; {hint}")


def check_data(cfg: E2XConfig, split: str) -> None:
    """The splits a pipeline run reads: ``split`` and, when no checkpoint is given (it trains),
    ``train``."""
    check_split(cfg, split)
    if cfg.model.checkpoint is None and cfg.model.arch != "custom" and cfg.model.weights is None:
        check_split(cfg, "train")


def split_causes(cfg: E2XConfig, split: str) -> list[dict]:
    """The planted causes of ``split`` when it is the benchmark's, else none.

    ``<data.root>/causes.json`` belongs to the benchmark layout under ``data.root``: a split read
    from explicit ``data.splits`` paths or from FiftyOne is the user's data, and the benchmark's
    causes must never be attached to it.
    """
    from .benchmark import load_causes

    if cfg.data.fiftyone is not None or split in cfg.data.splits:
        return []
    return load_causes(cfg.data.root, split)
