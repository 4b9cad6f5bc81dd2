"""Explain chosen candidates of a finished run again, with chosen methods and settings.

This is the library half of the App's "E2X: explain selected samples" operator
(``plugins/e2x``): the operator reads the run record from the failures dataset
(:mod:`e2x_pipeline.run_record`), maps the selected samples to their candidate ids, calls
:func:`explain_on_demand` and writes the pixel maps back as heatmaps
(:func:`e2x_pipeline.fiftyone_io.write_heatmaps`). Nothing here imports FiftyOne, so it is
tested and used like every other stage.

It uses the explain stage's own pieces: the run's checkpoint (:func:`checkpoint_for`, which never
trains), the train split's mean as the reference (:func:`e2x_pipeline.stages.reference_image`),
one SLIC segmentation per image and :func:`e2x_pipeline.explain.stage.explain_image`, with the
run's seed. So with the run's settings a method gives the map the explain stage would give.
The results are NOT added to ``explanations.parquet``: the stage tables stay what the configured
pipeline made, and on-demand maps live only on the FiftyOne samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import E2XConfig, ExplainConfig, resolve_device
from .registry import EXPLAINERS
from .run_record import config_of

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .detectors.base import Detector
    from .explain.base import Explanation

OUTPUT_CHOICES: tuple[str, ...] = ("score", "x1", "y1", "x2", "y2")
"""What can be explained: the class score, or one coordinate of the box (box maps)."""


class OnDemandError(ValueError):
    """A request that cannot be explained; the one-line message says what to change."""


@dataclass
class OnDemandResult:
    """The explanations made, and the (candidate, method) pairs skipped with their reason."""

    explanations: list[Explanation]
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    """``(candidate_id, method, reason)`` for each pair that gave no valid map."""


def sample_setting(method: str) -> str | None:
    """The setting the "samples" knob sets for ``method`` (its class's ``samples_setting``):
    ``k``, ``lime_samples``, ``drise_masks``, ``options.<method>.n_samples``; None when the
    method has no sample count (ODAM)."""
    where = EXPLAINERS.get(method).samples_setting
    if where is not None and where.startswith("options."):
        return f"options.{method}.{where.removeprefix('options.')}"
    return where


# The App's operator runs in the App's server: a request is bounded, so that a typo (samples
# 1e9, the whole dataset selected) cannot occupy it for hours. Larger jobs are 'e2x explain'.
MAX_CANDIDATES = 200
MAX_SAMPLES = 20_000


def box_methods() -> list[str]:
    """The registered methods that explain box coordinates too (``supports_box_maps``)."""
    return [m for m in EXPLAINERS.names() if EXPLAINERS.get(m).supports_box_maps]


def check_request(methods: Sequence[str], output: str) -> None:
    """:class:`OnDemandError` unless every method is registered and can explain ``output``."""
    if not methods:
        raise OnDemandError("pick at least one explanation method")
    if any(not isinstance(m, str) for m in methods):
        raise OnDemandError(f"method names must be strings; choose from {EXPLAINERS.names()}")
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown:
        raise OnDemandError(
            f"unknown explanation method(s) {unknown}; choose from {EXPLAINERS.names()}"
        )
    if output not in OUTPUT_CHOICES:
        raise OnDemandError(f"output must be one of {list(OUTPUT_CHOICES)}, got {output!r}")
    if output != "score":
        cannot = [m for m in methods if not EXPLAINERS.get(m).supports_box_maps]
        if cannot:
            raise OnDemandError(
                f"{', '.join(cannot)} explain(s) class scores only, not box coordinate {output}; "
                f"pick output 'score', or only methods with box maps: {box_methods()}"
            )


def explain_settings(
    cfg: ExplainConfig, methods: Sequence[str], samples: int | None
) -> ExplainConfig:
    """The run's explain settings with ``methods`` and, when given, their sample count set."""
    tree = cfg.model_dump()
    tree["methods"] = list(methods)
    if samples is not None and not 1 <= int(samples) <= MAX_SAMPLES:
        raise OnDemandError(
            f"samples={samples}: choose 1..{MAX_SAMPLES} per explanation here; for more, set it "
            "in the config and run 'e2x explain'"
        )
    if samples is not None:
        options = {k: dict(v) for k, v in tree["options"].items()}
        for m in methods:
            where = sample_setting(m)
            if where is None:
                continue
            if where.startswith("options."):
                options.setdefault(m, {})[where.rsplit(".", 1)[1]] = int(samples)
            else:
                tree[where] = int(samples)
        tree["options"] = options
    try:
        # validated like the YAML: a count below a setting's minimum is an error naming it
        return ExplainConfig.model_validate(tree)
    except ValueError as exc:
        raise OnDemandError(f"samples={samples}: {str(exc).splitlines()[-1].strip()}") from None


def checkpoint_for(cfg: E2XConfig) -> Path | None:
    """The checkpoint the run explained with: ``model.checkpoint``, else the one ``e2x train``
    cached for this config. Never trains (an App click should not start a training run);
    None for a custom entry point, which loads its own weights."""
    from .detectors import configured_checkpoint

    if cfg.model.arch == "custom":
        return None
    given = configured_checkpoint(cfg.model)  # model.checkpoint, or a model.weights file
    if given is not None:
        if not given.is_file():
            raise OnDemandError(
                f"the run's checkpoint {given} does not exist; restore it, or republish the "
                "failures with 'e2x cluster' from a config whose model.checkpoint exists"
            )
        return given
    from .stages import open_split
    from .training import cached_checkpoint

    path = cached_checkpoint(cfg, open_split(cfg, "train"), cfg.layout.checkpoints)
    if not path.is_file():
        raise OnDemandError(
            f"no trained checkpoint for the run's config at {path}; run 'e2x train' with the "
            "run's config first"
        )
    return path


_CACHE: dict[tuple[str, ...], Any] = {}


def _cached(key: tuple[str, ...], make: Any) -> Any:
    """Keep the last few detectors and references: the App calls the operator again and again
    on one run, and loading a detector or averaging the train images costs seconds."""
    if key not in _CACHE:
        if len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


def _stamp(path: Path | None) -> str:
    """A file's identity for the cache: path and modification time."""
    return f"{path}@{path.stat().st_mtime_ns}" if path is not None and path.exists() else str(path)


def run_detector(cfg: E2XConfig) -> Detector:
    """The run's detector on the config's device (cached per checkpoint file)."""
    from .stages import detector_for

    ckpt = checkpoint_for(cfg)
    key = ("detector", cfg.model.model_dump_json(), _stamp(ckpt), resolve_device(cfg.device))
    return _cached(key, lambda: detector_for(cfg, ckpt))


def run_reference(cfg: E2XConfig) -> torch.Tensor:
    """The explain stage's reference, :func:`e2x_pipeline.stages.reference_image` (the train
    split's mean image), cached per data config and train annotation file."""
    from .stages import reference_image

    key = ("reference", cfg.data.model_dump_json(), _stamp(cfg.data.split("train").annotations))
    return _cached(key, lambda: reference_image(cfg))


def find_candidates(cfg: E2XConfig, split: str, candidate_ids: Sequence[str]) -> pd.DataFrame:
    """The candidates-table rows of ``candidate_ids``, in that order; an error names the
    missing ones."""
    import pandas as pd

    path = cfg.split_layout(split).require("candidates")
    table = pd.read_parquet(path).set_index("candidate_id", drop=False)
    missing = [c for c in candidate_ids if c not in table.index]
    if missing:
        raise OnDemandError(
            f"candidate(s) {missing[:3]} are not in {path}: the dataset was published from "
            "another run; republish it with 'e2x cluster' for this run"
        )
    return table.loc[list(candidate_ids)]


def explain_on_demand(
    record: Mapping[str, Any] | tuple[E2XConfig, str],
    candidate_ids: Sequence[str],
    methods: Sequence[str],
    output: str = "score",
    samples: int | None = None,
    *,
    detector: Detector | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> OnDemandResult:
    """Explain ``output`` of each candidate with each method, as the explain stage would.

    ``record`` is a run record (:func:`e2x_pipeline.run_record.run_record`) or ``(cfg, split)``.
    ``samples`` sets each method's sample count (:func:`sample_setting`); None keeps the run's.
    ``detector`` replaces the run's (tests, or a caller that holds one); ``progress(fraction,
    label)`` is called after each image. Invalid pairs (an uncovered FN for a method that follows
    a candidate index, a non-finite attribution) are returned in ``skipped``, not raised.
    """
    from .data.coco import load_image
    from .detectors.base import Target
    from .explain.registry import get_explainer
    from .explain.stage import explain_image
    from .explain.superpixels import slic_segments

    cfg, split = record if isinstance(record, tuple) else config_of(record)
    check_request(methods, output)
    if not candidate_ids:
        raise OnDemandError("no samples to explain: select samples in the App first")
    if len(set(candidate_ids)) > MAX_CANDIDATES:
        raise OnDemandError(
            f"{len(set(candidate_ids))} samples selected; explain at most {MAX_CANDIDATES} at a "
            "time here, or run 'e2x explain' for a whole split"
        )
    settings = explain_settings(cfg.explain, methods, samples)
    rows = find_candidates(cfg, split, list(dict.fromkeys(candidate_ids)))  # each once
    detector = detector if detector is not None else run_detector(cfg)
    mean = run_reference(cfg)
    # instances, only for their capability flags (ODSmoothGrad sets needs_candidate per instance)
    follows = {
        m: get_explainer(m, detector, settings, cfg.seed, mean=mean).needs_candidate
        for m in methods
    }
    result = OnDemandResult(explanations=[])
    groups = list(rows.groupby("image_id", sort=True))
    for i, (_, group) in enumerate(groups):
        image = load_image(group["image_path"].iloc[0])
        # one SLIC segmentation per image, shared by its targets and methods, as in the stage
        segments = slic_segments(image, settings.n_segments, settings.compactness)
        for method in methods:
            ok = (group["anchor"].astype(int) >= 0) | (not follows[method])
            for cid in group.loc[~ok, "candidate_id"]:
                result.skipped.append(
                    (
                        str(cid),
                        method,
                        "no detector candidate (anchor -1) to follow; only "
                        "methods that match boxes (D-RISE, ODSmoothGrad) explain uncovered GT",
                    )
                )
            todo = group[ok]
            if not len(todo):
                continue
            exps = explain_image(
                detector,
                image,
                [Target.from_row(r) for r in todo.itertuples()],
                [method],
                settings,
                cfg.seed,
                segments=segments,
                mean=mean,
                candidate_ids=[str(c) for c in todo["candidate_id"]],
                outputs=[output],  # type: ignore[list-item]
            )
            for e in exps:
                if e.valid:
                    result.explanations.append(e)
                else:
                    result.skipped.append((str(e.candidate_id), method, e.reason))
        if progress is not None:
            progress((i + 1) / len(groups), f"explained {i + 1}/{len(groups)} images")
    return result
