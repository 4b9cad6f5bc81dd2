"""The run summary as Prefect artifacts take it: markdown text and table rows (no Prefect here)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..config import E2XConfig
from ..fiftyone_io.convert import FAILURES_VIEW, MODE_VIEW, REPAIR_VIEW
from ..vocab import ERROR_TYPES, OUTCOMES

MODE_COLUMNS = ("mode_id", "kind", "size", "n_candidates", "cause", "cause_share")
REPAIR_COLUMNS = ("mode_id", "rank", "file_name", "score", "support", "x1", "y1", "x2", "y2")


def _num(v):
    return round(float(v), 4) if isinstance(v, float) else v


def mode_rows(modes: list[dict]) -> list[dict]:
    return [{k: _num(m.get(k)) for k in MODE_COLUMNS} for m in modes]


def repair_rows(cfg: E2XConfig, split: str) -> list[dict]:
    """The selected pool images, one row each, as the repair-set table artifact shows them."""
    path = cfg.split_layout(split).repair_set
    if not path.is_file():
        return []
    table = pd.read_parquet(path).sort_values(["mode_id", "rank"])
    cols = [c for c in REPAIR_COLUMNS if c in table.columns]
    return [{k: _num(v) for k, v in r.items()} for r in table[cols].to_dict("records")]


def retrain_result(cfg: E2XConfig) -> dict | None:
    try:
        return json.loads(cfg.layout.retrain_summary.read_text())
    except (OSError, ValueError):
        return None


def _dap(values: dict, key: str) -> str:
    v = values.get(key)
    return f"{v:.3f}" if isinstance(v, (int, float)) else "–"


def _mining_md(split: str, mining: dict) -> list[str]:
    outcomes = mining.get("outcomes", {})
    errors = mining.get("error_types", {})
    dap = mining.get("tide_dap") or {}  # TIDE's dAP per type; absent in runs mined before it
    special = mining.get("tide_dap_special") or {}
    special_md = [
        f"Special dAP: perfect precision {_dap(special, 'fp')}, perfect recall "
        f"{_dap(special, 'fn')}.",
        "",
    ]
    return [
        f"## Mining ({split})",
        "",
        "| outcome | count |",
        "|---|---|",
        *[f"| {k} | {outcomes.get(k, 0)} |" for k in OUTCOMES],
        "",
        "| error type | count | dAP |",
        "|---|---|---|",
        *[f"| {k} | {errors.get(k, 0)} | {_dap(dap, k)} |" for k in ERROR_TYPES],
        "",
        "dAP (TIDE): the AP@0.5 gained by fixing that error type alone with its oracle.",
        "",
        *(special_md if special else []),
    ]


def _modes_md(modes: list[dict]) -> list[str]:
    if not modes:
        return []
    return [
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


def _repair_md(repair: dict) -> list[str]:
    if not repair:
        return []
    per_cause = repair.get("precision", {}).get("per_cause", {})
    return [
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


def _retrain_md(retrain: dict | None) -> list[str]:
    if not retrain:
        return []
    before, after = retrain.get("before"), retrain.get("after")
    lines = ["## Before / after retraining", ""]
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
    return [*lines, ""]


def _fiftyone_md(summary: dict) -> list[str]:
    names = summary.get("fiftyone_datasets") or {}
    if not (summary.get("fiftyone_dataset") or names):
        return []
    lines = ["## FiftyOne", ""]
    if summary.get("fiftyone_dataset"):
        lines.append(f"- `{summary['fiftyone_dataset']}`: saved view `{FAILURES_VIEW}`")
    if names.get("failures"):
        modes = MODE_VIEW.format(mode="<k>")
        lines.append(f"- `{names['failures']}`: views `{FAILURES_VIEW}`, `{modes}`")
    if names.get("pool"):
        lines.append(f"- `{names['pool']}`: view `{REPAIR_VIEW}`")
    return [*lines, ""]


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
    lines = ["# E2X run", ""]
    if report is not None:
        lines += [f"**HTML report:** [{report}]({Path(report).resolve().as_uri()})", ""]
    if evaluation_text:
        lines += ["## Detector", "", "```", evaluation_text, "```", ""]
    lines += _mining_md(split, summary.get("mining") or {})
    ex = summary.get("explain") or {}
    if ex:
        lines += [
            "## Explanations",
            "",
            f"{ex.get('explanations', 0)} explanations ({ex.get('valid', 0)} valid).",
            "",
        ]
    lines += _modes_md((summary.get("failure_modes") or {}).get("modes") or [])
    lines += _repair_md(summary.get("repair") or {})
    lines += _retrain_md(summary.get("retrain") or retrain_result(cfg))
    lines += _fiftyone_md(summary)
    return "\n".join(lines)
