"""``bench_explain``: mine the eval split, pick the fixed set, measure every setting on it, run
the sanity check and the all-cause pointing game, and write ``explain.{json,md,png}`` and
``explain-detections.csv``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from e2x_pipeline.config import E2XConfig, ExplainConfig
from e2x_pipeline.detectors.base import Target
from e2x_pipeline.explain.superpixels import slic_segments
from e2x_pipeline.io_utils import write_text

from ..common import write_bench
from .all_causes import all_cause_hit_rate
from .detections import select_detections
from .fidelity import BenchContext, Measurements, detection_table, measure_image, pair_rho
from .report import markdown, plot
from .sanity import run_sanity
from .settings import (
    FULL,
    QUICK,
    SEGMENTS,
    WARM_UP,
    Setting,
    method_settings,
    paper_refs_are_small_refs,
    reference_settings,
    unique_settings,
)
from .summary import _mean, _r, cascade_table, summarize_settings
from .targets import issue_targets
from .timing import TimedDetector, run_setting


@dataclass
class _Plan:
    """The run's fixed set and what runs on it."""

    split: str
    checkpoint: Path
    candidates: pd.DataFrame  # every mined candidate of the split
    chosen: pd.DataFrame  # the fixed set (:func:`select_detections`)
    images: list[tuple[Any, pd.DataFrame]]  # the fixed set per image, in set order
    paper_ids: set[int]  # images that also get the paper's references
    paper_same: bool  # the all-detection references are the paper's
    settings: list[Setting]
    refs: dict[str, Setting]


def _prepare(cfg: E2XConfig, full: bool, progress: bool) -> tuple[BenchContext, _Plan]:
    """Train (or reuse) the detector, mine the eval split and pick the fixed set."""
    from e2x_pipeline import stages
    from e2x_pipeline.data.benchmark import load_causes
    from e2x_pipeline.mining import mine

    size = FULL if full else QUICK
    stages.ensure_benchmark(cfg)
    ckpt = stages.resolve_checkpoint(cfg, progress)
    det = stages.detector_for(cfg, ckpt)
    split = cfg.data.eval_split
    causes = load_causes(cfg.data.root, split)
    mined = mine(det, stages.open_split(cfg, split), cfg.mining, causes, split)
    chosen = select_detections(mined.candidates, size.images, size.per_image)
    ctx = BenchContext(
        cfg,
        size,
        det,
        TimedDetector(det),
        ExplainConfig(n_segments=SEGMENTS, batch_size=cfg.explain.batch_size),
        stages.reference_image(cfg),
        {str(r["cause_id"]): r for r in causes},
    )
    images = list(chosen.groupby("image_id", sort=False))
    plan = _Plan(
        split,
        Path(ckpt),
        mined.candidates,
        chosen,
        images,
        {int(i) for i, _ in images[: size.paper_images]},
        paper_refs_are_small_refs(size, cfg),
        method_settings(size),
        reference_settings(size, cfg),
    )
    return ctx, plan


def _warm_up(ctx: BenchContext, group: pd.DataFrame) -> None:
    """One small untimed call per method, so no timed call pays for first-use set-up."""
    from e2x_pipeline.data.coco import load_image

    image = load_image(group["image_path"].iloc[0])
    t = [Target.from_row(group.iloc[0])]
    seg = slic_segments(image, SEGMENTS, ctx.base.compactness)
    for s in WARM_UP:
        use = ctx.timed if s.method == "e2x" else ctx.det
        run_setting(s, use, ctx.base, image, t, seg, ctx.mean, 0)
    ctx.timed.clock.reset()


def _measure(ctx: BenchContext, plan: _Plan, progress: bool) -> Measurements:
    """Every setting and the references on every image, methods interleaved per image."""
    from tqdm.auto import tqdm

    m = Measurements({s.label: [0.0, 0.0] for s in plan.settings})
    refs = plan.refs
    for image_id, group in tqdm(
        plan.images, desc="bench explain", unit="img", disable=not progress
    ):
        todo = list(plan.settings) + [refs["lime_ref"], refs["pda_ref"]]
        if int(image_id) in plan.paper_ids and not plan.paper_same:
            todo += [refs["paper_lime_ref"], refs["paper_pda_ref"]]
        measure_image(ctx, m, int(image_id), group, todo)
    if plan.paper_same:  # the all-detection references ARE the paper's
        refs["paper_lime_ref"], refs["paper_pda_ref"] = refs["lime_ref"], refs["pda_ref"]
    return m


def _references(plan: _Plan, m: Measurements) -> dict[str, Any]:
    refs = plan.refs
    return {
        "lime_ref": refs["lime_ref"].label,
        "pda_ref": refs["pda_ref"].label,
        "paper_lime_ref": refs["paper_lime_ref"].label,
        "paper_pda_ref": refs["paper_pda_ref"].label,
        "paper_subset_detections": int(plan.chosen["image_id"].isin(plan.paper_ids).sum()),
        "small_vs_paper_rho": {
            kind: _r(
                _mean(
                    pair_rho(
                        m.maps,
                        refs[f"{kind}_ref"],
                        refs[f"paper_{kind}_ref"],
                        plan.chosen,
                        plan.paper_ids,
                    )
                )
            )
            for kind in ("lime", "pda")
        },
    }


def _peer_drise(plan: _Plan, m: Measurements, summary: list[dict[str, Any]]) -> dict | None:
    """Microsoft's D-RISE against ours at the same mask count on the same detections: speed
    ratio and the Pearson rho of the two maps (mean over detections)."""
    by = {s.label: s for s in plan.settings}
    if "msdrise N=1000" not in by:
        return None
    ids = {int(i) for i, _ in plan.images}
    rhos = pair_rho(m.maps, by["msdrise N=1000"], by["drise N=1000"], plan.chosen, ids)
    speed = {e["setting"]: e["detections_per_s"] for e in summary}
    return {
        "ours": "drise N=1000",
        "microsoft": "msdrise N=1000",
        "package": "vision-explanation-methods 0.1.1",
        "rho_maps_mean": _r(_mean(rhos)),
        "rho_maps_min": _r(min(rhos)) if rhos else None,
        "detections": len(rhos),
        "speed_ratio_ours_over_microsoft": _r(speed["drise N=1000"] / speed["msdrise N=1000"], 2),
    }


def bench_explain(
    cfg: E2XConfig, out_dir: Path, progress: bool = True, full: bool = False
) -> dict[str, Any]:
    """Run the explanation benchmark and write ``explain.{json,md,png}`` (+ per-detection CSV)."""
    t_start = time.perf_counter()
    ctx, plan = _prepare(cfg, full, progress)
    load_before = os.getloadavg()
    _warm_up(ctx, plan.images[0][1])
    m = _measure(ctx, plan, progress)
    table = detection_table(m, plan.refs)
    t_sanity = time.perf_counter()
    sanity = run_sanity(ctx, m, plan.images, plan.settings)
    sanity_seconds = time.perf_counter() - t_sanity
    all_cause = None
    if ctx.size.all_cause_failures:  # E2X K=32 on every planted-cause failure of the split
        all_cause = all_cause_hit_rate(ctx, plan.candidates)
    summary = summarize_settings(table, sanity, plan.settings, m.model_time)
    peer = _peer_drise(plan, m, summary)
    ratios, targets_met, reasons = issue_targets(summary, all_cause, sanity)
    result: dict[str, Any] = {
        "size": ctx.size.name,
        "split": plan.split,
        "checkpoint": str(plan.checkpoint),
        "detections": int(len(plan.chosen)),
        "images": len(plan.images),
        "detection_groups": plan.chosen["group"].value_counts().to_dict(),
        "outcomes": plan.chosen["outcome"].value_counts().to_dict(),
        "references": _references(plan, m),
        "reference_settings": summarize_settings(
            table, sanity, unique_settings(plan.refs.values()), {}
        ),
        "metrics_config": {**cfg.metrics.model_dump(mode="json"), "steps": ctx.size.steps},
        "settings": summary,
        "sanity_cascade": cascade_table(sanity),
        "sanity_seconds": round(sanity_seconds, 1),
        "all_cause_failures_e2x": all_cause,
        "slic_seconds_per_image": round(m.slic_total / max(len(plan.images), 1), 4),
        "ratios": ratios,
        "peer_drise": peer,
        "targets_met": targets_met,
        "target_notes": reasons,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "load_average_1_5_15": {"start": load_before, "end": os.getloadavg()},
    }
    out_dir = Path(out_dir)
    write_text(out_dir / "explain-detections.csv", table.to_csv(index=False))
    plot(summary, out_dir / "explain.png", result)
    write_bench(out_dir, "explain", result, markdown(result, ctx.size))
    return result
