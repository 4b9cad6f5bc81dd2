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
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from e2x_pipeline.config import E2XConfig

FN_CAUSES = ("occluder", "camouflage")
STRATEGIES = ("e2x", "random", "least_confidence", "similarity")


def _prepare(cfg: E2XConfig, progress: bool):
    """Make (or reuse) the run's tables up to the repair scores; return the detector and paths."""
    from e2x_pipeline import stages

    stages.ensure_benchmark(cfg)
    ckpt = cfg.model.checkpoint or stages.train_stage(cfg, progress=progress)[0]
    det = stages.detector_for(cfg, ckpt)
    split = cfg.data.eval_split
    d = stages.split_dir(cfg, split)
    if not (d / "candidates.parquet").is_file():
        stages.mine_stage(cfg, det, split)
    stages.explain_stage(cfg, det, split, progress)
    stages.cluster_stage(cfg, det, split, progress)
    stages.repair_stage(cfg, det, split, progress)
    return det, Path(ckpt), d


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


def bench_repair(
    cfg: E2XConfig,
    out_dir: Path,
    progress: bool = True,
    budgets: tuple[float, ...] = (0.02, 0.05, 0.10),
    seeds: tuple[int, ...] = (0, 1, 2),
) -> dict:
    from e2x_pipeline import stages
    from e2x_pipeline.data.benchmark import load_causes
    from e2x_pipeline.evaluation import evaluate_detector_outputs
    from e2x_pipeline.inference import detect_dataset
    from e2x_pipeline.retrain import retrain_detector, reveal_labels
    from .selection import (
        select_e2x,
        select_least_confidence,
        select_random,
        select_similar_images,
    )

    t_start = time.perf_counter()
    det, ckpt, d = _prepare(cfg, progress)
    pool = stages.open_split(cfg, cfg.repair.pool_split)
    labels = stages.pool_labels(cfg)
    if labels is None:
        raise FileNotFoundError("bench repair needs the pool's labels (repair.pool_labels)")
    train = stages.open_split(cfg, "train")
    test_name = cfg.retrain.eval_split
    test = stages.open_split(cfg, test_name)
    causes = load_causes(cfg.data.root, test_name)
    pool_causes = load_causes(cfg.data.root, cfg.repair.pool_split)
    carriers = {int(c["image_id"]) for c in pool_causes}
    name_to_id = {pool.images[i]["file_name"]: i for i in pool.image_ids}

    def evaluate(detector) -> dict:
        dets = detect_dataset(detector, test, cfg.mining.low_threshold, progress=False)
        return evaluate_detector_outputs(
            test, dets, detector.classes, causes, cfg.mining.operating_threshold, cfg.mining.iou
        )

    before = evaluate(det)
    scores = pd.read_parquet(d / "repair_scores.parquet")
    modes = pd.read_parquet(d / "failure_modes.parquet")
    cands = pd.read_parquet(d / "candidates.parquet")
    expl = pd.read_parquet(d / "explanations.parquet")
    failure_images = sorted(
        set(cands.set_index("candidate_id").loc[expl["candidate_id"].unique(), "image_path"])
    )
    t_sel = time.perf_counter()
    uncertainty_order = select_least_confidence(det, pool, len(pool.images))
    similarity_order = select_similar_images(det, pool, failure_images, len(pool.images))
    selection_seconds = time.perf_counter() - t_sel

    runs = []
    plan = [(b, s, seed) for b in budgets for s in STRATEGIES for seed in seeds]
    for budget_share, strategy, seed in tqdm(plan, desc="bench repair", disable=not progress):
        n = max(1, round(budget_share * len(pool.images)))
        if strategy == "e2x":
            files = select_e2x(scores, modes, pool, n, cfg.repair.allocation)
        elif strategy == "random":
            files = select_random(pool, n, seed)
        elif strategy == "least_confidence":
            files = uncertainty_order[:n]
        else:
            files = similarity_order[:n]
        t0 = time.perf_counter()
        after, _ = retrain_detector(
            det, train, reveal_labels(labels, files), cfg.retrain, cfg.train, seed, False
        )
        runs.append(
            {
                "budget_share": budget_share,
                "budget": n,
                "strategy": strategy,
                "seed": seed,
                "selected": len(files),
                "selected_with_cause": sum(name_to_id[f] in carriers for f in files),
                "retrain_seconds": round(time.perf_counter() - t0, 1),
                **_outcome(evaluate(after), before),
            }
        )
    table = pd.DataFrame(runs)
    summary = (
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
    targets = targets_at(summary, 0.05)
    result = {
        "pool_images": len(pool.images),
        "budgets": list(budgets),
        "seeds": list(seeds),
        "retrain": cfg.retrain.model_dump(mode="json"),
        "before": _outcome(before, before),
        "runs": runs,
        "summary": summary.to_dict("records"),
        "targets_at_5_percent": targets,
        "selection_seconds_uncertainty_and_similarity": round(selection_seconds, 1),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    _plot(summary, before, out_dir / "repair.png")
    from .common import write_bench

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
