"""Per-setting means of the per-detection table: speed, rho, deletion / insertion, pointing,
sanity; and the cascading-randomisation table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from e2x_pipeline.metrics.counterfactual import counterfactual_rates
from e2x_pipeline.vocab import FAILURES

from .settings import Setting


def _mean(values: list[float] | np.ndarray | pd.Series) -> float:
    """Mean over the finite values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _r(v: float, nd: int = 3) -> float | None:
    """``v`` rounded to ``nd`` places; None for a missing or non-finite value (JSON null)."""
    return None if v is None or not np.isfinite(v) else round(float(v), nd)


def _by_outcome(ok: pd.DataFrame, col: str) -> dict[str, float | None]:
    return {str(o): _r(_mean(d[col]), 4) for o, d in ok.groupby("outcome")}


def _setting_entry(s: Setting, t: pd.DataFrame, full: pd.DataFrame) -> dict[str, Any]:
    """One setting's means over its detections ``t`` and its full-randomisation rows ``full``."""
    ok = t[t["valid"]]
    wall = float(t["seconds"].sum())
    cause = ok[(ok["region_source"] == "cause") & ok["outcome"].isin(list(FAILURES))]
    cf = counterfactual_rates(ok) if "counterfactual_success" in ok else None
    cf = cf or {}
    return {
        "setting": s.label,
        "method": s.method,
        "group": s.group,
        "detections": int(len(t)),
        "valid": int(len(ok)),
        "seconds": round(wall, 2),
        "detections_per_s": _r(len(t) / wall if wall > 0 else float("nan"), 3),
        "passes_per_detection": _r(t["passes"].mean(), 1),
        "rho_lime_ref": _r(_mean(ok["rho_lime_ref"])),
        "rho_pda_ref": _r(_mean(ok["rho_pda_ref"])),
        "rho_paper_lime_ref": _r(_mean(ok["rho_paper_lime_ref"])),
        "rho_paper_pda_ref": _r(_mean(ok["rho_paper_pda_ref"])),
        "deletion_auc": _r(_mean(ok["deletion_auc"]), 4),
        "insertion_auc": _r(_mean(ok["insertion_auc"]), 4),
        "deletion_auc_mean_fill": _r(_mean(ok["deletion_auc_mean_fill"]), 4),
        "deletion_auc_by_outcome": _by_outcome(ok, "deletion_auc"),
        "insertion_auc_by_outcome": _by_outcome(ok, "insertion_auc"),
        "cause_hit_rate": _r(_mean(cause["pointing_hit"])),
        "cause_failures": int(len(cause)),
        "hit_rate_all": _r(_mean(ok["pointing_hit"])),
        "energy": _r(_mean(ok["energy"])),
        "sanity_rho": _r(_mean(full["rho"])) if len(full) else None,
        "sanity_abs_rho": _r(_mean(np.abs(full["rho"]))) if len(full) else None,
        "sanity_spearman_abs": _r(_mean(full["spearman_abs"])) if len(full) else None,
        "counterfactual_fn": _r(cf["fn"]["rate"]) if "fn" in cf else None,
        "counterfactual_fp": _r(cf["fp"]["rate"]) if "fp" in cf else None,
        "counterfactual": cf or None,
    }


def _model_share(entry: dict[str, Any], t: pd.DataFrame, fwd: float, bwd: float) -> None:
    """E2X only: seconds in the detector's forward / backward, and their share of the wall time
    with and without the shared SLIC segmentation."""
    wall = float(t["seconds"].sum())
    entry["model_forward_s"] = round(fwd, 3)
    entry["model_backward_s"] = round(bwd, 3)
    entry["model_fraction"] = _r((fwd + bwd) / wall if wall > 0 else float("nan"))
    no_slic = wall - float(t["slic_seconds"].sum())
    entry["model_fraction_without_slic"] = _r(
        (fwd + bwd) / no_slic if no_slic > 0 else float("nan")
    )


def summarize_settings(
    table: pd.DataFrame,
    sanity: pd.DataFrame,
    settings: list[Setting],
    model_time: dict[str, list[float]],
) -> list[dict[str, Any]]:
    """One entry per setting (:func:`_setting_entry`; E2X's also :func:`_model_share`)."""
    out = []
    for s in settings:
        t = table[table["setting"] == s.label]
        full = sanity[(sanity["setting"] == s.label) & sanity["full"]] if len(sanity) else sanity
        entry = _setting_entry(s, t, full)
        if s.method == "e2x":
            _model_share(entry, t, *model_time[s.label])
        out.append(entry)
    return out


def cascade_table(sanity: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean rho per setting and cascade step (top layers randomised first)."""
    if not len(sanity):
        return []
    g = sanity.groupby(["setting", "step", "randomized_through"], sort=True)
    return [
        {
            "setting": s,
            "step": int(step),
            "randomized_through": layer,
            "rho": _r(_mean(d["rho"])),
            "abs_rho": _r(_mean(np.abs(d["rho"]))),
            "spearman_abs": _r(_mean(d["spearman_abs"])),
        }
        for (s, step, layer), d in g
    ]
