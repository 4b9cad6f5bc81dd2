"""The benchmark's measurements: every setting on every image of the fixed set, one row per
(setting, detection), with the per-row metrics of :mod:`e2x_pipeline.metrics.rows` (the same
function ``e2x evaluate-explanations`` uses) and rho against the references.

Per row: wall seconds (the explanation calls, the shared SLIC counted for the superpixel
methods), model passes, pointing hit and energy against the candidate's region, deletion and
insertion AUC (D-RISE similarity, ``size.steps`` steps), the counterfactual check of a failure
(:mod:`e2x_pipeline.metrics.counterfactual`); then ``rho_<ref>`` columns, Pearson's
rho of the pixel maps against each reference's map of the same detection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from e2x_pipeline.config import E2XConfig, ExplainConfig
from e2x_pipeline.data.coco import load_image
from e2x_pipeline.detectors.base import Detector, Target
from e2x_pipeline.explain.superpixels import slic_segments
from e2x_pipeline.metrics.correlation import pearson_rho
from e2x_pipeline.metrics.counterfactual import counterfactual_check
from e2x_pipeline.metrics.rows import perturbation_aucs, row_metrics
from e2x_pipeline.metrics.stage import counterfactual_fill

from .settings import SEGMENTS, BenchSize, Setting
from .timing import Run, TimedDetector, run_setting


@dataclass
class BenchContext:
    """What every measurement of one benchmark run shares."""

    cfg: E2XConfig
    size: BenchSize
    det: Detector
    timed: TimedDetector  # ``det`` with a model clock, used for E2X
    base: ExplainConfig  # M=200 SLIC, the run's batch size; each setting updates it
    mean: Tensor  # the reference image
    by_cause: dict[str, dict]  # cause_id -> causes.json record


@dataclass
class Measurements:
    """What the per-image loop collects."""

    model_time: dict[str, list[float]]  # E2X setting -> [forward s, backward s]
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (setting, detection)
    maps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (label, cid) -> map
    values: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # on the M=200 SLIC
    segs: dict[int, np.ndarray] = field(default_factory=dict)  # image_id -> M=200 SLIC
    slic_total: float = 0.0


def image_targets(group: pd.DataFrame) -> tuple[Tensor, list[Target]]:
    """The image of one image's rows and their targets."""
    image = load_image(group["image_path"].iloc[0])
    return image, [Target.from_row(r) for r in group.itertuples()]


def measure_image(
    ctx: BenchContext, m: Measurements, image_id: int, group: pd.DataFrame, todo: list[Setting]
) -> None:
    """Run every setting of ``todo`` on one image's detections; add their rows to ``m``."""
    image, targets = image_targets(group)
    t0 = time.perf_counter()
    seg = slic_segments(image, SEGMENTS, ctx.base.compactness)
    slic_s = time.perf_counter() - t0
    m.slic_total += slic_s
    m.segs[int(image_id)] = seg
    for s in todo:
        use = ctx.timed if s.method == "e2x" else ctx.det
        ctx.timed.clock.reset()
        run = run_setting(s, use, ctx.base, image, targets, seg, ctx.mean, ctx.cfg.seed)
        if s.method == "e2x":
            m.model_time[s.label][0] += ctx.timed.clock.forward_s
            m.model_time[s.label][1] += ctx.timed.clock.backward_s
        _add_rows(ctx, m, s, run, image, targets, group, slic_s if s.superpixels else 0.0)


def _add_rows(
    ctx: BenchContext,
    m: Measurements,
    s: Setting,
    run: Run,
    image: Tensor,
    targets: list[Target],
    group: pd.DataFrame,
    slic_s: float,
) -> None:
    """One row per detection of ``run`` (setting ``s`` on one image); ``slic_s`` is the shared
    segmentation's time when the setting uses it."""
    seconds = run.seconds + slic_s
    stack = np.stack([e.pixel_map for e in run.exps])
    mcfg = ctx.cfg.metrics
    aucs = perturbation_aucs(
        ctx.det, image, stack, targets, mcfg, mean=ctx.mean, steps=ctx.size.steps
    )
    # the same deletion with removed pixels set to the dataset mean, E2X's default reference
    # (RISE's zeros favour methods whose reference is black: issue 19 (b))
    mean_fill = mcfg.model_copy(update={"deletion_baseline": "mean"})
    aucs_mean = perturbation_aucs(
        ctx.det, image, stack, targets, mean_fill, mean=ctx.mean, steps=ctx.size.steps
    )
    cf = counterfactual_check(
        ctx.det,
        image,
        [e.values if e.valid else None for e in run.exps],
        [run.segments] * len(run.exps),
        targets,
        list(group["outcome"]),
        counterfactual_fill(image, mcfg, ctx.base, ctx.mean),
        threshold=ctx.cfg.mining.operating_threshold,
        ns=mcfg.counterfactual_ns,
        min_iou=mcfg.counterfactual_iou,
        batch_size=mcfg.batch_size,
    )
    hw = (int(image.shape[1]), int(image.shape[2]))
    for i, (e, r) in enumerate(zip(run.exps, group.itertuples(), strict=True)):
        cid, valid = str(r.candidate_id), bool(e.valid)
        pm = row_metrics(
            group.iloc[i].to_dict(),
            hw,
            ctx.by_cause,
            e.values if valid else None,
            run.segments if valid else None,
            e.pixel_map if valid else None,
            min_overlap=mcfg.min_overlap,
        )
        m.maps[(s.label, cid)] = e.pixel_map
        m.values[(s.label, cid)] = e.values
        m.rows.append(
            {
                "setting": s.label,
                "group": s.group,
                "candidate_id": cid,
                "image_id": int(r.image_id),
                "outcome": r.outcome,
                "detection_group": r.group,
                "region_source": pm["region_source"],
                "region_fraction": pm["region_fraction"],
                "seconds": seconds / len(targets),
                "slic_seconds": slic_s / len(targets),
                "passes": float(e.passes),
                "valid": valid,
                "pointing_hit": pm["pointing_hit"],
                "energy": pm["energy"],
                **aucs[i],
                "deletion_auc_mean_fill": aucs_mean[i]["deletion_auc"],
                **cf[i],
            }
        )


REF_COLUMNS = {  # per-detection column -> reference
    "rho_lime_ref": "lime_ref",
    "rho_pda_ref": "pda_ref",
    "rho_paper_lime_ref": "paper_lime_ref",
    "rho_paper_pda_ref": "paper_pda_ref",
}


def detection_table(m: Measurements, refs: dict[str, Setting]) -> pd.DataFrame:
    """The per-detection rows with rho against each reference (NaN where it did not run)."""
    table = pd.DataFrame(m.rows)

    def rho(label: str, ref: Setting, cid: str) -> float:
        a, b = m.maps.get((label, cid)), m.maps.get((ref.label, cid))
        return pearson_rho(a, b) if a is not None and b is not None else float("nan")

    for col, ref in REF_COLUMNS.items():
        table[col] = [rho(s, refs[ref], c) for s, c in zip(table["setting"], table["candidate_id"])]
    return table


def pair_rho(
    maps: dict[tuple[str, str], np.ndarray],
    a: Setting,
    b: Setting,
    chosen: pd.DataFrame,
    ids: set[int],
) -> list[float]:
    """Rho between settings ``a`` and ``b`` on the detections of images ``ids``."""
    cids = chosen.loc[chosen["image_id"].isin(ids), "candidate_id"].astype(str)
    return [
        pearson_rho(maps[(a.label, c)], maps[(b.label, c)])
        for c in cids
        if (a.label, c) in maps and (b.label, c) in maps
    ]
