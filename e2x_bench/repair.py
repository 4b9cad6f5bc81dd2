"""``e2x bench repair``: does the E2X repair set fix the failures better than other selections?

For each budget (a share of the pool) and each strategy -- E2X's repair set, random, least
confidence, whole-image similarity (:mod:`selection`) -- the detector is fine-tuned with the same
recipe (``retrain.*``) on train plus the selected pool images, labels revealed, once per seed, and
evaluated on ``retrain.eval_split``:

* planted-cause FNs recovered = objects of the FN causes (occluder, camouflage) detected after
  minus before, at the operating threshold;
* distractor FPs removed = distractors fired on before minus after;
* mAP@0.5 over all test images.

The E2X selection at each budget re-uses the eval split's failure modes and match scores (the
demo's run, made first when missing). Results: ``reports/bench/repair.{json,md,png}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from e2x_pipeline.config import E2XConfig
from e2x_pipeline.detectors.base import Detector
from e2x_pipeline.layout import SplitLayout

from .selection import STRATEGIES, SelectionInputs

FN_CAUSES = ("occluder", "camouflage")


def _prepare(cfg: E2XConfig, progress: bool) -> tuple[Detector, Path, SplitLayout]:
    """Make (or reuse) the run's tables up to the repair scores; return the detector, its
    checkpoint and the eval split's layout."""
    from e2x_pipeline import stages

    stages.ensure_benchmark(cfg)
    ckpt = stages.resolve_checkpoint(cfg, progress)
    det = stages.detector_for(cfg, ckpt)
    split = cfg.data.eval_split
    layout = cfg.split_layout(split)
    if not layout.candidates.is_file():
        stages.mine_stage(cfg, det, split)
    stages.explain_stage(cfg, det, split, progress)
    stages.cluster_stage(cfg, det, split, progress)
    stages.repair_stage(cfg, det, split, progress)
    return det, Path(ckpt), layout


def _outcome(ev: dict, before: dict) -> dict:
    det_after = sum(ev["detected_by_cause"].get(c, 0) for c in FN_CAUSES)
    det_before = sum(before["detected_by_cause"].get(c, 0) for c in FN_CAUSES)
    objects = sum(ev["objects_by_cause"].get(c, 0) for c in FN_CAUSES)
    n_distr = ev.get("distractors", 0)
    return {
        "map50": ev["map50"],
        "fn_recovered": det_after - det_before,
        "planted_recall": det_after / objects if objects else None,
        "recall_by_cause": ev["recall_by_cause"],
        "distractor_fp_rate": ev.get("distractor_fp_rate"),
        "distractor_fps_removed": round(
            (before.get("distractor_fp_rate", 0) - ev.get("distractor_fp_rate", 0)) * n_distr
        ),
    }


def _evaluator(cfg: E2XConfig) -> Callable[[Detector], dict]:
    """``evaluate(detector)``: its evaluation on ``retrain.eval_split`` (planted causes too)."""
    from e2x_pipeline import stages
    from e2x_pipeline.data.benchmark import load_causes
    from e2x_pipeline.evaluation import evaluate_detector_outputs
    from e2x_pipeline.inference import detect_dataset

    test_name = cfg.retrain.eval_split
    test = stages.open_split(cfg, test_name)
    causes = load_causes(cfg.data.root, test_name)

    def evaluate(detector: Detector) -> dict:
        dets = detect_dataset(detector, test, cfg.mining.low_threshold, progress=False)
        return evaluate_detector_outputs(
            test, dets, detector.classes, causes, cfg.mining.operating_threshold, cfg.mining.iou
        )

    return evaluate


def _selection_inputs(
    cfg: E2XConfig, det: Detector, pool: Any, layout: SplitLayout
) -> SelectionInputs:
    """The strategies' inputs: the repair stage's tables and the explained failures' images."""
    cands = pd.read_parquet(layout.candidates)
    expl = pd.read_parquet(layout.explanations)
    failure_images = sorted(
        set(cands.set_index("candidate_id").loc[expl["candidate_id"].unique(), "image_path"])
    )
    return SelectionInputs(
        det,
        pool,
        failure_images,
        pd.read_parquet(layout.repair_scores),
        pd.read_parquet(layout.failure_modes),
        cfg.repair.allocation,
    )


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (budget share, strategy): means (and sd) over the seeds."""
    return (
        table.groupby(["budget_share", "strategy"])
        .agg(
            budget=("budget", "first"),
            fn_recovered=("fn_recovered", "mean"),
            fn_recovered_std=("fn_recovered", "std"),
            planted_recall=("planted_recall", "mean"),
            planted_recall_std=("planted_recall", "std"),
            distractor_fps_removed=("distractor_fps_removed", "mean"),
            map50=("map50", "mean"),
            selected_with_cause=("selected_with_cause", "mean"),
        )
        .reset_index()
    )


@dataclass
class _Bench:
    """What every fine-tuning run of the benchmark shares."""

    cfg: E2XConfig
    det: Detector
    pool: Any  # CocoDataset of repair.pool_split
    labels: Any  # the pool's labels, revealed for the selected images
    train: Any  # CocoDataset of the train split
    evaluate: Callable[[Detector], dict]
    before: dict  # evaluate(det)
    carriers: set[int]  # pool images with a planted cause


def _bench(cfg: E2XConfig, det: Detector) -> _Bench:
    from e2x_pipeline import stages
    from e2x_pipeline.data.benchmark import load_causes

    pool = stages.open_split(cfg, cfg.repair.pool_split)
    labels = stages.pool_labels(cfg)
    if labels is None:
        raise FileNotFoundError("bench repair needs the pool's labels (repair.pool_labels)")
    train = stages.open_split(cfg, "train")
    evaluate = _evaluator(cfg)
    carriers = {int(c["image_id"]) for c in load_causes(cfg.data.root, cfg.repair.pool_split)}
    return _Bench(cfg, det, pool, labels, train, evaluate, evaluate(det), carriers)


def _run(b: _Bench, files: list[str], seed: int) -> dict:
    """Fine-tune on train plus ``files`` (labels revealed) and evaluate against ``b.before``."""
    from e2x_pipeline.retrain import retrain_detector, reveal_labels

    cfg = b.cfg
    name_to_id = {b.pool.images[i]["file_name"]: i for i in b.pool.image_ids}
    t0 = time.perf_counter()
    after, _ = retrain_detector(
        b.det, b.train, reveal_labels(b.labels, files), cfg.retrain, cfg.train, seed, False
    )
    return {
        "selected": len(files),
        "selected_with_cause": sum(name_to_id[f] in b.carriers for f in files),
        "retrain_seconds": round(time.perf_counter() - t0, 1),
        **_outcome(b.evaluate(after), b.before),
    }


def bench_repair(
    cfg: E2XConfig,
    out_dir: Path,
    progress: bool = True,
    budgets: tuple[float, ...] = (0.02, 0.05, 0.10),
    seeds: tuple[int, ...] = (0, 1, 2),
) -> dict:
    """Every strategy of :data:`.selection.STRATEGIES` at every budget and seed (module doc)."""
    from .common import write_bench

    t_start = time.perf_counter()
    det, _, layout = _prepare(cfg, progress)
    b = _bench(cfg, det)
    inputs = _selection_inputs(cfg, det, b.pool, layout)
    t_sel = time.perf_counter()
    inputs.rank()
    selection_seconds = time.perf_counter() - t_sel
    runs = []
    plan = [(share, s, seed) for share in budgets for s in STRATEGIES for seed in seeds]
    for budget_share, strategy, seed in tqdm(plan, desc="bench repair", disable=not progress):
        n = max(1, round(budget_share * len(b.pool.images)))
        files = STRATEGIES[strategy](inputs, n, seed)
        head = {"budget_share": budget_share, "budget": n, "strategy": strategy, "seed": seed}
        runs.append({**head, **_run(b, files, seed)})
    summary = _summary(pd.DataFrame(runs))
    result = {
        "pool_images": len(b.pool.images),
        "budgets": list(budgets),
        "seeds": list(seeds),
        "retrain": cfg.retrain.model_dump(mode="json"),
        "before": _outcome(b.before, b.before),
        "runs": runs,
        "summary": summary.to_dict("records"),
        "targets_at_5_percent": targets_at(summary, 0.05),
        "selection_seconds_uncertainty_and_similarity": round(selection_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    _plot(summary, b.before, out_dir / "repair.png")
    write_bench(out_dir, "repair", result, _markdown(result, summary))
    return result


def targets_at(summary: pd.DataFrame, share: float = 0.05) -> dict:
    """The issue's targets at one budget share, from the per-strategy means."""
    at5 = summary[np.isclose(summary["budget_share"], share)].set_index("strategy")
    targets = {}
    if len(at5) == len(STRATEGIES):
        e2x = at5.loc["e2x"]

        def ratio(other: str, key: str = "fn_recovered") -> dict:
            mine, base = float(e2x[key]), float(at5.loc[other, key])
            # a strategy that recovers nothing (or loses objects) is beaten by any gain
            value = mine / base if base > 0 else (float("inf") if mine > 0 else None)
            return {"e2x": mine, other: base, "ratio": value}

        best_map = float(at5["map50"].max())
        vs_random, vs_similarity = ratio("random"), ratio("similarity")
        drop = round(100 * (best_map - float(e2x["map50"])), 2)
        targets = {
            "fn_recovered e2x / random (>= 2)": {
                **vs_random,
                "met": (vs_random["ratio"] or 0) >= 2,
            },
            "fn_recovered e2x / similarity (>= 1.3)": {
                **vs_similarity,
                "met": (vs_similarity["ratio"] or 0) >= 1.3,
            },
            "map50 drop vs best strategy, points (<= 1)": {"value": drop, "met": drop <= 1},
            "distractor FPs removed e2x / random": ratio("random", "distractor_fps_removed"),
        }
    return targets


def _plot(summary: pd.DataFrame, before: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from e2x_pipeline.io_utils import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    base = _outcome(before, before)
    for strategy in STRATEGIES:
        s = summary[summary["strategy"] == strategy]
        axes[0].errorbar(
            100 * s["budget_share"],
            s["planted_recall"],
            yerr=s["planted_recall_std"].fillna(0),
            marker="o",
            capsize=3,
            label=strategy,
        )
        axes[1].plot(100 * s["budget_share"], s["distractor_fps_removed"], marker="o")
    axes[0].axhline(base["planted_recall"], color="grey", ls="--", label="before")
    axes[0].set(
        xlabel="budget (% of pool)",
        ylabel="recall on planted-cause objects (test)",
        title="FNs: occluder + camouflage",
    )
    axes[1].set(
        xlabel="budget (% of pool)", ylabel="distractor FPs removed (test)", title="FPs: distractor"
    )
    axes[0].legend()
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def _markdown(result: dict, summary: pd.DataFrame) -> str:
    b = result["before"]
    r = result["retrain"]
    lines = [
        f"Pool {result['pool_images']} images; budgets {result['budgets']} of the pool; seeds "
        f"{result['seeds']}; fine-tuning {r['epochs']} epochs at lr {r['lr']}, added images "
        f"repeated {r['repeat']}x, on train + selection; evaluated on test.",
        "",
        f"Before: mAP@0.5 {b['map50']:.3f}, recall on planted-cause objects "
        f"{b['planted_recall']:.3f}, distractor FP rate {b['distractor_fp_rate']:.3f}.",
        "",
        "| budget | strategy | selected with a cause | FNs recovered (mean ± sd) | "
        "planted recall | distractor FPs removed | mAP@0.5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary.itertuples():
        sd = 0.0 if np.isnan(s.fn_recovered_std) else s.fn_recovered_std
        lines.append(
            f"| {s.budget} ({s.budget_share:.0%}) | {s.strategy} | {s.selected_with_cause:.1f} | "
            f"{s.fn_recovered:.1f} ± {sd:.1f}"
            f" | {s.planted_recall:.3f} | {s.distractor_fps_removed:.1f} | {s.map50:.3f} |"
        )
    lines += ["", "Targets at the 5% budget:", ""]
    for k, v in result["targets_at_5_percent"].items():
        met = {True: " (met)", False: " (MISSED)"}.get(v.get("met"), "")
        shown = ", ".join(
            f"{kk} {vv:.2f}" for kk, vv in v.items() if kk != "met" and isinstance(vv, float)
        )
        lines.append(f"- {k}: {shown}{met}")
    lines += ["", f"Wall time {result['wall_seconds'] / 60:.1f} min.", "", "![](repair.png)"]
    return "\n".join(lines)
