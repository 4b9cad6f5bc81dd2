"""The benchmark's report: ``explain.png`` (rho against speed, the paper's Fig. 2) and the
markdown of ``explain.md``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from e2x_pipeline.io_utils import atomic_write

from ..common import environment
from .settings import BenchSize


def plot(summary: list[dict[str, Any]], path: Path, result: dict[str, Any]) -> None:
    """``explain.png``: E[rho] against detections per second (log), per method, against the
    LIME and the PDA reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "E2X": "tab:red",
        "LIME": "tab:blue",
        "PDA": "tab:green",
        "IG": "tab:purple",
        "D-RISE": "tab:orange",
        "ODAM": "tab:brown",
        "ODSmoothGrad": "tab:pink",
    }
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    for ax, col, title in (
        (axes[0], "rho_lime_ref", f"vs LIME reference ({result['references']['lime_ref']})"),
        (axes[1], "rho_pda_ref", f"vs PDA reference ({result['references']['pda_ref']})"),
    ):
        for group in colours:
            pts = [e for e in summary if e["group"] == group and e[col] is not None]
            if not pts:
                continue
            xs = [e["detections_per_s"] for e in pts]
            ys = [e[col] for e in pts]
            ax.plot(xs, ys, "o-", color=colours[group], label=group)
            for e, x, y in zip(pts, xs, ys, strict=True):
                ax.annotate(
                    e["setting"].split(" ", 1)[1],
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xscale("log")
        ax.set_xlabel("detections explained per second (log)")
        ax.set_ylabel("E[rho]")
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    env = environment()
    fig.suptitle(
        f"Explanation quality vs speed (E2X paper Fig. 2): {result['detections']} detections on "
        f"{result['images']} images, {env['device']}, {env['torch_threads']} threads",
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


COLUMNS = [  # (header, summary key) of the settings table
    ("setting", "setting"),
    ("det/s", "detections_per_s"),
    ("passes/det", "passes_per_detection"),
    ("rho LIME ref", "rho_lime_ref"),
    ("rho PDA ref", "rho_pda_ref"),
    ("rho paper LIME (subset)", "rho_paper_lime_ref"),
    ("rho paper PDA (subset)", "rho_paper_pda_ref"),
    ("deletion AUC", "deletion_auc"),
    ("deletion AUC mean fill", "deletion_auc_mean_fill"),
    ("insertion AUC", "insertion_auc"),
    ("cause hit", "cause_hit_rate"),
    ("energy", "energy"),
    ("sanity |rho|", "sanity_abs_rho"),
    ("counterfactual FN", "counterfactual_fn"),
    ("counterfactual FP", "counterfactual_fp"),
]


def _md_header(result: dict[str, Any], size: BenchSize) -> list[str]:
    refs = result["references"]
    load = result["load_average_1_5_15"]
    return [
        f"Size `{size.name}`: {result['detections']} detections on {result['images']} images of "
        f"`{result['split']}` ({_fmt(result['outcomes'])}; groups "
        f"{_fmt(result['detection_groups'])}), detector `{result['checkpoint']}`. "
        f"Total wall time {result['wall_seconds']} s; load average (1, 5, 15 min) "
        f"{_fmt([round(x, 2) for x in load['start']])} at the start "
        f"and {_fmt([round(x, 2) for x in load['end']])} at the end "
        f"on {environment()['cpu_count']} CPU cores (a load above the core count means other "
        "processes shared them, which slows every method alike).",
        "",
        f"References for every detection: LIME `{refs['lime_ref']}` and PDA `{refs['pda_ref']}`."
        f" The paper's references (`{refs['paper_lime_ref']}`, `{refs['paper_pda_ref']}`) on "
        f"the first {refs['paper_subset_detections']} detections; there the smaller references "
        f"agree with them at rho {refs['small_vs_paper_rho']['lime']} (LIME) and "
        f"{refs['small_vs_paper_rho']['pda']} (PDA).",
        "",
    ]


def _md_settings(result: dict[str, Any]) -> list[str]:
    lines = [
        "| " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for e in result["settings"] + result["reference_settings"]:
        lines.append("| " + " | ".join(_fmt(e.get(k)) for _, k in COLUMNS) + " |")
    lines += ["", "![rho vs speed](explain.png)", "", "Targets:", ""]
    for k, v in result["targets_met"].items():
        lines.append(f"- {k}: **{'met' if v else 'MISSED'}** ({result['target_notes'][k]})")
    peer = result.get("peer_drise")
    if peer:
        lines += [
            "",
            f"Microsoft's D-RISE (`{peer['package']}`, its own code through its detector wrapper,"
            f" 16x16 binary masks) against ours at 1000 masks on the same {peer['detections']} "
            f"detections: maps agree at rho {peer['rho_maps_mean']} (min {peer['rho_maps_min']}); "
            f"ours runs {peer['speed_ratio_ours_over_microsoft']}x as many detections per second.",
        ]
    return lines


def _md_sanity(result: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Sanity check, cascading randomisation (top layers first), mean over detections:",
        "",
        "| setting | step | randomised through | rho | abs rho | Spearman abs |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["sanity_cascade"]:
        lines.append(
            f"| {c['setting']} | {c['step']} | {c['randomized_through']} | {_fmt(c['rho'])} | "
            f"{_fmt(c['abs_rho'])} | {_fmt(c['spearman_abs'])} |"
        )
    return lines


def _md_all_causes(ac: dict[str, Any] | None) -> list[str]:
    if not ac:
        return []
    return [
        "",
        f"E2X K=32 on all {ac['failures']} planted-cause failures of the split: hit rate "
        f"**{ac['hit_rate']}** (chance, the regions' mean share of the image: "
        f"{ac['chance']}; with any overlap instead of half the superpixel, a sensitivity "
        f"check only: {ac['hit_rate_any_overlap']}). By cause: "
        + ", ".join(f"{k} {v['hit_rate']} (n={v['n']})" for k, v in ac["by_cause"].items())
        + ". FN by kind: "
        + ", ".join(f"{k} {v['hit_rate']} (n={v['n']})" for k, v in ac["by_fn_kind"].items())
        + ".",
    ]


def _md_definitions(size: BenchSize) -> list[str]:
    return [
        "",
        "Definitions: det/s = detections / wall seconds of the explanation calls (SLIC included "
        "for E2X and LIME; LIME and D-RISE share their samples among an image's targets); rho = "
        "Pearson of pixel maps, mean over detections; deletion/insertion = D-RISE similarity "
        "(IoU x class-probability cosine, max over the dense candidates) after removing "
        f"(zeros; 'mean fill': the dataset mean, E2X's reference) / inserting (into a blurred "
        "copy) pixels in decreasing attribution, "
        f"{size.steps} steps; cause hit = pointing game of the most negative (FN) / most positive "
        "(FP) superpixel on the planted cause's region, over failures with a cause; sanity = "
        "rho between the maps of the trained and the fully randomised detector; counterfactual "
        "FN / FP = share of the FNs (FPs) that replacing the n = 1, 2, 3 or 5 most negative "
        "(positive) superpixels with the explain reference fixes: the FN is then detected "
        "(a candidate at IoU >= 0.5 with the GT box scores >= the operating threshold) / the "
        "FP is gone (no candidate at IoU >= 0.5 with its box does); a map with no superpixel "
        "of that sign fails.",
        "",
        "Run the paper's size (36 detections on 18 images, paper references for all) with "
        "`e2x bench explain --full` (hours on 2 CPU cores; use `--device cuda`). Per-detection "
        "values: `explain-detections.csv`.",
    ]


def markdown(result: dict[str, Any], size: BenchSize) -> str:
    """``explain.md``'s body: the run, the settings table, targets, sanity, definitions."""
    lines = _md_header(result, size) + _md_settings(result) + _md_sanity(result)
    lines += _md_all_causes(result["all_cause_failures_e2x"]) + _md_definitions(size)
    return "\n".join(lines)
