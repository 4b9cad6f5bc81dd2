"""The run summary as Prefect artifacts take it: markdown text and table rows (no Prefect here)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..config import E2XConfig

MODE_COLUMNS = ("mode_id", "kind", "size", "n_candidates", "cause", "cause_share")
REPAIR_COLUMNS = ("mode_id", "rank", "file_name", "score", "support", "x1", "y1", "x2", "y2")


def _num(v):
    return round(float(v), 4) if isinstance(v, float) else v


def mode_rows(modes: list[dict]) -> list[dict]:
    return [{k: _num(m.get(k)) for k in MODE_COLUMNS} for m in modes]


def repair_rows(cfg: E2XConfig, split: str) -> list[dict]:
    """The selected pool images, one row each, as the repair-set table artifact shows them."""
    from ..stages import split_dir

    path = split_dir(cfg, split) / "repair_set.parquet"
    if not path.is_file():
        return []
    table = pd.read_parquet(path).sort_values(["mode_id", "rank"])
    cols = [c for c in REPAIR_COLUMNS if c in table.columns]
    return [{k: _num(v) for k, v in r.items()} for r in table[cols].to_dict("records")]


def retrain_result(cfg: E2XConfig) -> dict | None:
    p = Path(cfg.output_dir) / "retrain.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def run_markdown(
    cfg: E2XConfig,
    split: str,
    summary: dict,
    *,
    report: Path | None = None,
    evaluation_text: str = "",
) -> str:
    """The markdown summary of a run: outcomes and error types, failure modes with their sizes,
    the repair set, before/after when retrained, the report link and the FiftyOne views."""
    mining = summary.get("mining") or {}
    outcomes = mining.get("outcomes", {})
    errors = mining.get("error_types", {})
    lines = ["# E2X run", ""]
    if report is not None:
        lines += [f"**HTML report:** [{report}]({Path(report).resolve().as_uri()})", ""]
    if evaluation_text:
        lines += ["## Detector", "", "```", evaluation_text, "```", ""]
    lines += [
        f"## Mining ({split})",
        "",
        "| outcome | count |",
        "|---|---|",
        *[f"| {k} | {outcomes.get(k, 0)} |" for k in ("tp", "fp", "fn")],
        "",
        "| error type | count |",
        "|---|---|",
        *[f"| {k} | {errors.get(k, 0)} |" for k in ("cls", "loc", "both", "dupe", "bkg", "missed")],
        "",
    ]
    ex = summary.get("explain") or {}
    if ex:
        lines += [
            "## Explanations",
            "",
            f"{ex.get('explanations', 0)} explanations ({ex.get('valid', 0)} valid).",
            "",
        ]
    modes = (summary.get("failure_modes") or {}).get("modes") or []
    if modes:
        lines += [
            "## Failure modes",
            "",
            "| mode | kind | size | failures | cause | cause share |",
            "|---|---|---|---|---|---|",
            *[
                f"| {m['mode_id']} | {m['kind']} | {m['size']} | {m['n_candidates']} | "
                f"{m.get('cause')} | {float(m.get('cause_share') or 0):.2f} |"
                for m in modes
            ],
            "",
        ]
    repair = summary.get("repair") or {}
    if repair:
        per_cause = repair.get("precision", {}).get("per_cause", {})
        lines += [
            "## Repair set",
            "",
            f"{repair.get('selected', 0)} of {repair.get('pool_images', '?')} pool images.",
            "",
            "| cause | selected | precision | base rate |",
            "|---|---|---|---|",
            *[
                f"| {c} | {v.get('selected')} | {float(v.get('precision') or 0):.2f} | "
                f"{float(v.get('base_rate') or 0):.2f} |"
                for c, v in per_cause.items()
            ],
            "",
        ]
    retrain = summary.get("retrain") or retrain_result(cfg)
    if retrain:
        before, after = retrain.get("before"), retrain.get("after")
        lines += ["## Before / after retraining", ""]
        if isinstance(before, dict) and isinstance(after, dict):
            keys = [
                k
                for k in before
                if isinstance(before[k], (int, float)) and isinstance(after.get(k), (int, float))
            ]
            lines += ["| metric | before | after |", "|---|---|---|"]
            lines += [f"| {k} | {before[k]:.3f} | {after[k]:.3f} |" for k in keys]
        else:
            lines += ["```", json.dumps(retrain, indent=2, default=str)[:3000], "```"]
        lines.append("")
    names = summary.get("fiftyone_datasets") or {}
    if summary.get("fiftyone_dataset") or names:
        lines += ["## FiftyOne", ""]
        if summary.get("fiftyone_dataset"):
            lines.append(f"- `{summary['fiftyone_dataset']}`: saved view `e2x-failures`")
        if names.get("failures"):
            lines.append(f"- `{names['failures']}`: views `e2x-failures`, `e2x-mode-<k>`")
        if names.get("pool"):
            lines.append(f"- `{names['pool']}`: view `e2x-repair`")
        lines.append("")
    return "\n".join(lines)
