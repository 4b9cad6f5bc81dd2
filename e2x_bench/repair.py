"""``e2x bench repair``: does the E2X repair set fix the failures better than other selections?

For each budget (a share of the pool) and each strategy -- E2X's repair set (with the configured
and with the diminishing-returns allocation), random, least confidence, whole-image similarity,
patch similarity, the k-center core-set and, on the benchmark only, the oracle upper bound
(:mod:`selection`) -- the detector is fine-tuned
with the same recipe (``retrain.*``) on train plus the selected pool images, labels revealed,
once per seed, and evaluated on ``retrain.eval_split``:

* planted-cause FNs recovered = objects of the FN causes (occluder, camouflage) detected after
  minus before, at the operating threshold;
* distractor FPs removed = distractors fired on before minus after;
* mAP@0.5 over all test images;
* labels-to-fix per planted cause and the areas under the recovery curves
  (:func:`labels_to_fix`), with the issue's targets (:func:`labels_to_fix_targets`).

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
from e2x_pipeline.mining.candidates import BOX_COLS, GT_COLS

from .selection import STRATEGIES, UPPER_BOUNDS, SelectionInputs

FN_CAUSES = ("occluder", "camouflage")
CAUSES = (*FN_CAUSES, "distractor")


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
        "recall_clean": ev.get("recall_clean"),
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
    cfg: E2XConfig,
    det: Detector,
    pool: Any,
    train: Any,
    layout: SplitLayout,
    carriers: dict[int, set[str]],
) -> SelectionInputs:
    """The strategies' inputs: the repair stage's tables and the explained failures' images."""
    cands = pd.read_parquet(layout.candidates)
    expl = pd.read_parquet(layout.explanations)
    explained = cands.set_index("candidate_id").loc[sorted(expl["candidate_id"].unique())]
    failure_images = sorted(set(explained["image_path"]))
    # the failure's box: the missed object's GT box for an FN, the detection's box otherwise
    fn = (explained["outcome"] == "fn").to_numpy()[:, None]
    boxes = np.where(fn, explained[GT_COLS].to_numpy(), explained[BOX_COLS].to_numpy())
    keep = np.isfinite(boxes).all(1)
    failure_boxes = [
        (str(p), [float(v) for v in b])
        for p, b in zip(explained["image_path"][keep], boxes[keep], strict=True)
    ]
    return SelectionInputs(
        det,
        pool,
        failure_images,
        pd.read_parquet(layout.repair_scores),
        pd.read_parquet(layout.failure_modes),
        cfg.repair.allocation,
        failure_boxes,
        [str(train.image_path(i)) for i in train.image_ids],
        {pool.images[i]["file_name"]: causes for i, causes in carriers.items()},
    )


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (budget share, strategy): means (and sd) over the seeds."""
    table = table.copy()
    per_cause = {f"recall_{c}": (f"recall_{c}", "mean") for c in FN_CAUSES}
    for c in FN_CAUSES:
        table[f"recall_{c}"] = [r.get(c, np.nan) for r in table["recall_by_cause"]]
    picked = {f"selected_{c}": (f"selected_{c}", "mean") for c in CAUSES}
    for c in CAUSES:
        table[f"selected_{c}"] = [r.get(c, 0) for r in table["selected_by_cause"]]
    return (
        table.groupby(["budget_share", "strategy"])
        .agg(
            budget=("budget", "first"),
            fn_recovered=("fn_recovered", "mean"),
            fn_recovered_std=("fn_recovered", "std"),
            planted_recall=("planted_recall", "mean"),
            planted_recall_std=("planted_recall", "std"),
            recall_clean=("recall_clean", "mean"),
            **per_cause,
            distractor_fps_removed=("distractor_fps_removed", "mean"),
            distractor_fp_rate=("distractor_fp_rate", "mean"),
            map50=("map50", "mean"),
            selected_with_cause=("selected_with_cause", "mean"),
            **picked,
        )
        .reset_index()
    )


FIXED_RECALL_SHARE = 0.8  # an FN cause is fixed at 0.8 of the clean objects' recall
FIXED_FP_SHARE = 0.5  # an FP cause is fixed when its FP rate has halved


def first_crossing(xs: list[float], ys: list[float], target: float, rising: bool) -> float | None:
    """The smallest ``x`` where the piecewise-linear curve through ``(xs, ys)`` reaches ``target``.

    ``rising``: reaches means ``y >= target`` (else ``y <= target``). Between two points the
    crossing is linearly interpolated; ``None`` when the curve never gets there (``> max``).
    """
    sign = 1.0 if rising else -1.0
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y is None or not np.isfinite(y) or sign * (y - target) < 0:
            continue
        if k == 0:
            return float(x)
        x0, y0 = xs[k - 1], ys[k - 1]
        if y0 is None or not np.isfinite(y0) or y == y0:
            return float(x)
        return float(x0 + (target - y0) * (x - x0) / (y - y0))
    return None


def _curves(summary: pd.DataFrame, before: dict, strategy: str) -> dict[str, list[float]]:
    """Budget (images, from 0 = before) against each cause's fix measure, for one strategy."""
    s = summary[summary["strategy"] == strategy].sort_values("budget")
    clean = [before.get("recall_clean") or np.nan, *s["recall_clean"]]
    out: dict[str, list[float]] = {"budget": [0.0, *s["budget"].astype(float)]}
    for c in FN_CAUSES:
        recall = [before["recall_by_cause"].get(c, np.nan), *s[f"recall_{c}"]]
        out[c] = [r / k if k else np.nan for r, k in zip(recall, clean, strict=True)]
    out["distractor"] = [before.get("distractor_fp_rate", np.nan), *s["distractor_fp_rate"]]
    out["planted_recall"] = [before["planted_recall"], *s["planted_recall"]]
    return out


def _mean_over_budget(xs: list[float], ys: list[float]) -> float | None:
    return float(np.trapezoid(ys, xs) / max(xs)) if max(xs) > 0 else None


def labels_to_fix(summary: pd.DataFrame, before: dict) -> dict[str, dict]:
    """Per strategy: labels-to-fix per planted cause and the areas under the curves.

    * FN cause ``c``: the smallest budget ``n`` (pool images labelled) at which
      ``recall_c(n) >= FIXED_RECALL_SHARE * recall_clean(n)``, interpolated between budgets
      (:func:`first_crossing`); ``None`` = not reached at the largest budget.
    * FP cause (distractor): the smallest ``n`` with ``fp_rate(n) <= FIXED_FP_SHARE * fp_rate(0)``.
    * ``auc_planted_recall``: ``(1 / n_max) * integral_0^n_max recall(n) dn`` (trapezoids) of
      the recall on planted-cause objects, the mean recall over the budget range; higher is
      better. ``auc_distractor_fp_rate`` likewise for the distractor FP rate; lower is better.
    """
    out: dict[str, dict] = {}
    for strategy in sorted(summary["strategy"].unique()):
        cv = _curves(summary, before, strategy)
        xs, n_max = cv["budget"], max(cv["budget"])
        row: dict = {
            c: first_crossing(xs, cv[c], FIXED_RECALL_SHARE, rising=True) for c in FN_CAUSES
        }
        row["distractor"] = first_crossing(
            xs, cv["distractor"], FIXED_FP_SHARE * cv["distractor"][0], rising=False
        )
        row["auc_planted_recall"] = _mean_over_budget(xs, cv["planted_recall"])
        row["auc_distractor_fp_rate"] = _mean_over_budget(xs, cv["distractor"])
        row["budget_max"] = n_max
        out[strategy] = row
    return out


def _ltf_ratio(ltf: dict, other: str, cause: str, need: float) -> dict:
    """labels-to-fix of ``other`` over E2X's for one cause, with the target met or not."""
    mine, base = ltf["e2x"].get(cause), ltf[other].get(cause)
    if mine is None:  # E2X never fixed it: missed, whatever the other did
        return {"e2x": None, other: base, "met": False}
    if base is None:  # only E2X fixed it: at least max/mine
        bound = ltf[other]["budget_max"] / mine if mine else float("inf")
        return {"e2x": mine, other: None, "ratio_at_least": bound, "met": bound >= need}
    ratio = base / mine if mine else float("inf")
    return {"e2x": mine, other: base, "ratio": ratio, "met": ratio >= need}


def labels_to_fix_targets(ltf: dict) -> dict:
    """The issue's labels-to-fix targets: per FN cause >= 3x fewer than random, >= 2x fewer
    than least confidence and patch similarity; on the FP cause at least as good as all."""
    targets: dict = {}
    if "e2x" not in ltf:
        return targets
    for cause in FN_CAUSES:
        for other, need in (("random", 3.0), ("least_confidence", 2.0), ("patch_similarity", 2.0)):
            if other in ltf:
                key = f"labels-to-fix {cause}: {other} / e2x (>= {need:g})"
                targets[key] = _ltf_ratio(ltf, other, cause, need)
    others = [s for s in ltf if not s.startswith("e2x") and s not in UPPER_BOUNDS]
    mine = ltf["e2x"]["distractor"]
    best = [ltf[s]["distractor"] for s in others if ltf[s]["distractor"] is not None]
    targets["labels-to-fix distractor: e2x <= every baseline"] = {
        "e2x": mine,
        "best baseline": min(best) if best else None,
        "met": mine is not None and all(mine <= b for b in best),
    }
    return targets


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
    carriers: dict[int, set[str]]  # pool image -> the planted causes it carries


def _bench(cfg: E2XConfig, det: Detector) -> _Bench:
    from e2x_pipeline import stages
    from e2x_pipeline.data.benchmark import load_causes

    pool = stages.open_split(cfg, cfg.repair.pool_split)
    labels = stages.pool_labels(cfg)
    if labels is None:
        raise FileNotFoundError("bench repair needs the pool's labels (repair.pool_labels)")
    train = stages.open_split(cfg, "train")
    evaluate = _evaluator(cfg)
    carriers: dict[int, set[str]] = {}
    for c in load_causes(cfg.data.root, cfg.repair.pool_split):
        carriers.setdefault(int(c["image_id"]), set()).add(c["cause"])
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
        "selected_by_cause": {
            c: sum(c in b.carriers.get(name_to_id[f], ()) for f in files) for c in CAUSES
        },
        "retrain_seconds": round(time.perf_counter() - t0, 1),
        **_outcome(b.evaluate(after), b.before),
    }


def bench_repair(
    cfg: E2XConfig,
    out_dir: Path,
    progress: bool = True,
    budgets: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10, 0.20),
    seeds: tuple[int, ...] = (0, 1, 2),
    strategies: tuple[str, ...] | None = None,
) -> dict:
    """Every strategy of :data:`.selection.STRATEGIES` (or those of ``strategies``) at every
    budget and seed (module doc)."""
    from .common import write_bench

    bad = [b for b in budgets if not 0 < b <= 1]
    if bad or not budgets or not seeds:
        raise ValueError(
            f"bench repair: budgets are shares of the pool in (0, 1] and at least one seed is "
            f"needed; got budgets {list(budgets)} (bad: {bad}), seeds {list(seeds)}"
        )
    unknown = sorted(set(strategies or ()) - set(STRATEGIES))
    if unknown:
        raise ValueError(
            f"bench repair: unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}"
        )
    chosen = [s for s in STRATEGIES if strategies is None or s in strategies]
    t_start = time.perf_counter()
    det, _, layout = _prepare(cfg, progress)
    b = _bench(cfg, det)
    if strategies is None and not b.carriers:  # off the benchmark there is no answer to read
        chosen = [s for s in chosen if s not in UPPER_BOUNDS]
    inputs = _selection_inputs(cfg, det, b.pool, b.train, layout, b.carriers)
    t_sel = time.perf_counter()
    inputs.rank()
    selection_seconds = time.perf_counter() - t_sel
    runs = []
    plan = [(share, s, seed) for share in budgets for s in chosen for seed in seeds]
    for budget_share, strategy, seed in tqdm(plan, desc="bench repair", disable=not progress):
        n = max(1, round(budget_share * len(b.pool.images)))
        files = STRATEGIES[strategy](inputs, n, seed)
        head = {"budget_share": budget_share, "budget": n, "strategy": strategy, "seed": seed}
        runs.append({**head, **_run(b, files, seed)})
    summary = _summary(pd.DataFrame(runs))
    ltf = labels_to_fix(summary, _outcome(b.before, b.before))
    result = {
        "pool_images": len(b.pool.images),
        "budgets": list(budgets),
        "seeds": list(seeds),
        "retrain": cfg.retrain.model_dump(mode="json"),
        "before": _outcome(b.before, b.before),
        "runs": runs,
        "summary": summary.to_dict("records"),
        "targets_at_5_percent": targets_at(summary, 0.05),
        "labels_to_fix": ltf,
        "labels_to_fix_targets": labels_to_fix_targets(ltf),
        "map50_never_falls": {
            s: bool((summary[summary["strategy"] == s]["map50"] >= b.before["map50"]).all())
            for s in chosen
        },
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
    if {"e2x", "random", "similarity"} <= set(at5.index):
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
    """Recovery against budget per planted cause, one panel each, every strategy a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from e2x_pipeline.io_utils import atomic_write

    base = _outcome(before, before)
    panels = [
        *((c, f"{c} recall / clean recall", FIXED_RECALL_SHARE) for c in FN_CAUSES),
        ("distractor", "distractor FP rate", FIXED_FP_SHARE * base["distractor_fp_rate"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for strategy in STRATEGIES:
        if strategy not in set(summary["strategy"]):
            continue
        cv = _curves(summary, base, strategy)
        for ax, (key, _, _) in zip(axes, panels, strict=True):
            style = {"color": "black", "ls": ":"} if strategy in UPPER_BOUNDS else {}
            ax.plot(cv["budget"], cv[key], marker="o", label=strategy, **style)
    for ax, (key, label, target) in zip(axes, panels, strict=True):
        ax.axhline(target, color="grey", ls="--", label="fixed")
        ax.set(xlabel="pool images labelled", ylabel=f"{label} (test)", title=key)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "> max"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


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
        "| budget | strategy | selected with a cause | of them " + " / ".join(CAUSES) + " | "
        "FNs recovered (mean ± sd) | planted recall | recall " + " / ".join(FN_CAUSES) + " | "
        "distractor FPs removed | mAP@0.5 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary.itertuples():
        sd = 0.0 if np.isnan(s.fn_recovered_std) else s.fn_recovered_std
        lines.append(
            f"| {s.budget} ({s.budget_share:.0%}) | {s.strategy} | {s.selected_with_cause:.1f} | "
            + " / ".join(f"{getattr(s, f'selected_{c}'):.1f}" for c in CAUSES)
            + f" | {s.fn_recovered:.1f} ± {sd:.1f}"
            + f" | {s.planted_recall:.3f} | "
            + " / ".join(f"{getattr(s, f'recall_{c}'):.3f}" for c in FN_CAUSES)
            + f" | {s.distractor_fps_removed:.1f} | {s.map50:.3f} |"
        )
    lines += ["", "Targets at the 5% budget:", ""]
    if not result["targets_at_5_percent"]:
        lines.append("- (needs the 5% budget and the e2x, random and similarity strategies)")
    for k, v in result["targets_at_5_percent"].items():
        met = {True: " (met)", False: " (MISSED)"}.get(v.get("met"), "")
        shown = ", ".join(
            f"{kk} {vv:.2f}" for kk, vv in v.items() if kk != "met" and isinstance(vv, float)
        )
        lines.append(f"- {k}: {shown}{met}")
    lines += [
        "",
        "Labels-to-fix (pool images labelled; interpolated between budgets; '> max' = not "
        f"reached at the largest budget): an FN cause is fixed at {FIXED_RECALL_SHARE} of the "
        f"clean objects' recall, the distractor when its FP rate has fallen to "
        f"{FIXED_FP_SHARE} of before. AUC = mean over the budget range (0 to the largest).",
        "",
        "| strategy | " + " | ".join(FN_CAUSES) + " | distractor | AUC planted recall | "
        "AUC distractor FP rate | mAP@0.5 never below before |",
        "|---|" + "---|" * (len(FN_CAUSES) + 4),
    ]
    for strategy, row in result["labels_to_fix"].items():
        cells = [_fmt(row[c]) for c in (*FN_CAUSES, "distractor")]
        never = result["map50_never_falls"].get(strategy)
        lines.append(
            f"| {strategy} | " + " | ".join(cells) + f" | {row['auc_planted_recall']:.3f} | "
            f"{row['auc_distractor_fp_rate']:.3f} | {'yes' if never else 'NO'} |"
        )
    lines += ["", "Labels-to-fix targets:", ""]
    for k, v in result["labels_to_fix_targets"].items():
        shown = ", ".join(f"{kk} {_fmt(vv)}" for kk, vv in v.items() if kk != "met")
        lines.append(f"- {k}: {shown} ({'met' if v['met'] else 'MISSED'})")
    lines += ["", f"Wall time {result['wall_seconds'] / 60:.1f} min.", "", "![](repair.png)"]
    return "\n".join(lines)
