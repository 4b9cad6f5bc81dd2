"""The mining stage's metrics (``metrics.json``) and their terminal table.

AP@0.5 per class comes from pycocotools ``COCOeval`` on the low-threshold detections. The counts
are taken from the candidates table at the operating threshold: precision ``tp / (tp + fp)``,
recall ``tp / (tp + fn)``, and each TIDE error type's share of the errors, ``count / (fp + fn)``.
TIDE's own measure, ``tide_dap``, is per type the AP@0.5 gained by fixing that type with its oracle
(:mod:`.tide`, on every low-threshold detection, checked against tidecv); ``tide_dap_special`` holds
its ``fp`` (perfect precision) and ``fn`` (perfect recall) dAP. On the benchmark, recall per planted
object cause, and per distractor cause the share of its regions that drew an fp.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..config import MiningConfig
from ..data.coco import CocoDataset
from ..detectors.base import Detections
from ..evaluation import average_precision, coco_eval
from ..vocab import ERROR_TYPES, FN_KINDS, FP_ERROR_TYPES, OUTCOMES
from .tide import tide_dap


def coco_ap50(
    dataset: CocoDataset,
    image_ids: list[int],
    detections: dict[int, Detections],
    label_cat: dict[int, int],
) -> dict[int, float | None]:
    """AP at IoU 0.5 per category id from pycocotools ``COCOeval`` (101-point interpolated
    precision, COCO's definition) on the same low-threshold detections. None: no GT of it."""
    _, per_cat = average_precision(coco_eval(dataset, detections, label_cat, list(image_ids)))
    return {c: (None if np.isnan(v) else v) for c, v in per_cat.items()}


def compute_metrics(
    candidates: pd.DataFrame,
    dataset: CocoDataset,
    image_ids: list[int],
    detections: dict[int, Detections],
    label_cat: dict[int, int],
    cfg: MiningConfig,
    causes: list[dict] | None = None,
) -> dict[str, Any]:
    """AP@0.5 per class, counts per outcome / error type / FN kind, TIDE shares of the errors and
    TIDE dAP per error type (:func:`.tide.tide_dap`), and recall per planted cause."""
    c = candidates
    ap = coco_ap50(dataset, image_ids, detections, label_cat)
    ap_named = {dataset.categories[k]: v for k, v in ap.items()}
    valid = [v for v in ap.values() if v is not None]
    outcome = {o: int((c["outcome"] == o).sum()) for o in OUTCOMES}
    errors = {e: int((c["error_type"] == e).sum()) for e in ERROR_TYPES}
    fn = c[c["outcome"] == "fn"]
    fn_kind = {k: int((fn["fn_kind"] == k).sum()) for k in FN_KINDS}
    fn_kind["none"] = int(fn["fn_kind"].isna().sum())
    n_err = outcome["fp"] + outcome["fn"]
    tp, fp, nfn = outcome["tp"], outcome["fp"], outcome["fn"]
    tide = tide_dap(dataset, image_ids, detections, label_cat, cfg)
    return {
        "thresholds": cfg.model_dump(),
        "ap50": ap_named,
        "map50": float(np.mean(valid)) if valid else None,
        "outcomes": outcome,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + nfn) if tp + nfn else None,
        "error_types": errors,
        "fn_kinds": fn_kind,
        # each type's share of the errors at the operating point, and TIDE's dAP per type
        "tide_share": {e: (errors[e] / n_err if n_err else 0.0) for e in ERROR_TYPES},
        "tide_dap": tide["dap"],
        "tide_dap_special": tide["special"],
        "per_class": _per_class(c, dataset, label_cat, ap_named),
        "causes": {**_object_causes(c), **_region_causes(c, causes, image_ids)},
    }


def _per_class(
    c: pd.DataFrame,
    dataset: CocoDataset,
    label_cat: dict[int, int],
    ap_named: dict[str, float | None],
) -> dict[str, dict[str, Any]]:
    """Per category (by COCO id): AP@0.5, tp / fn of its GT, fp of its label, recall."""
    per_class: dict[str, dict[str, Any]] = {}
    for lab, cid in sorted(label_cat.items(), key=lambda kv: kv[1]):
        name = dataset.categories[cid]
        gt_rows = c[(c["gt_category_id"] == cid) & c["outcome"].isin(["tp", "fn"])]
        ctp = int((gt_rows["outcome"] == "tp").sum())
        cfn = int((gt_rows["outcome"] == "fn").sum())
        per_class[name] = {
            "ap50": ap_named[name],
            "tp": ctp,
            "fn": cfn,
            "fp": int(((c["outcome"] == "fp") & (c["label"] == lab)).sum()),
            "recall": ctp / (ctp + cfn) if ctp + cfn else None,
        }
    return per_class


def _object_causes(c: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per planted cause of a GT object: recall and how many of its misses have a candidate;
    ``"(none)"``: the objects without a cause."""
    out: dict[str, dict[str, Any]] = {}
    gt_rows = c[c["outcome"].isin(["tp", "fn"])]
    for cause in sorted(set(gt_rows["cause"].dropna())):
        r = gt_rows[gt_rows["cause"] == cause]
        ctp, cfn = int((r["outcome"] == "tp").sum()), int((r["outcome"] == "fn").sum())
        with_cand = int(((r["outcome"] == "fn") & r["fn_kind"].notna()).sum())
        out[cause] = {
            "objects": ctp + cfn,
            "tp": ctp,
            "fn": cfn,
            "recall": ctp / (ctp + cfn),
            "fn_with_candidate": with_cand,
            "fn_candidate_rate": with_cand / cfn if cfn else None,
        }
    clean = gt_rows[gt_rows["cause"].isna()]
    if len(clean):
        ctp = int((clean["outcome"] == "tp").sum())
        out["(none)"] = {
            "objects": len(clean),
            "tp": ctp,
            "fn": len(clean) - ctp,
            "recall": ctp / len(clean),
        }
    return out


def _region_causes(
    c: pd.DataFrame, causes: list[dict] | None, image_ids: list[int]
) -> dict[str, dict[str, Any]]:
    """Per planted cause without an object (distractor regions) on the mined images: its fps,
    and the share of its regions that drew at least one."""
    out: dict[str, dict[str, Any]] = {}
    kept = set(image_ids)
    region_causes = [
        r for r in causes or [] if r.get("annotation_id") is None and int(r["image_id"]) in kept
    ]
    for cause in sorted({r["cause"] for r in region_causes}):
        ids = {r["cause_id"] for r in region_causes if r["cause"] == cause}
        fps = c[(c["outcome"] == "fp") & (c["cause"] == cause)]
        hit = set(fps["cause_id"]) & ids
        out[cause] = {
            "regions": len(ids),
            "fp": len(fps),
            "regions_with_fp": len(hit),
            "fp_rate": len(hit) / len(ids) if ids else None,
            "fp_error_types": {e: int((fps["error_type"] == e).sum()) for e in FP_ERROR_TYPES},
        }
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def format_metrics(metrics: dict[str, Any]) -> str:
    """A plain-text table of the mining metrics for the terminal and logs."""
    f = _fmt
    lines = [
        f"images {metrics.get('images', '-')}  rejected {metrics.get('rejected', 0)}  "
        f"mAP@0.5 {f(metrics['map50'])}  precision {f(metrics['precision'])}  "
        f"recall {f(metrics['recall'])}",
        "",
        f"{'class':<16}{'AP@0.5':>8}{'tp':>6}{'fp':>6}{'fn':>6}{'recall':>8}",
    ]
    for name, r in metrics["per_class"].items():
        lines.append(
            f"{name:<16}{f(r['ap50']):>8}{r['tp']:>6}{r['fp']:>6}{r['fn']:>6}{f(r['recall']):>8}"
        )
    # metrics.json of runs before dAP existed has no tide_dap: shown as "-"
    dap = metrics.get("tide_dap") or {}
    lines += ["", f"{'error type':<16}{'count':>8}{'share':>8}{'dAP':>8}"]
    for e in ERROR_TYPES:
        lines.append(
            f"{e:<16}{metrics['error_types'][e]:>8}{metrics['tide_share'][e]:>8.3f}"
            f"{f(dap.get(e)):>8}"
        )
    special = metrics.get("tide_dap_special") or {}
    if special:
        lines.append(
            "dAP: AP@0.5 gained by fixing the type alone (TIDE); special: "
            f"fp {f(special.get('fp'))} (perfect precision), "
            f"fn {f(special.get('fn'))} (perfect recall)"
        )
    k = metrics["fn_kinds"]
    lines.append(
        f"FN candidates: near_miss {k['near_miss']}, uncovered {k['uncovered']}, none {k['none']}"
    )
    if metrics["causes"]:
        lines += ["", *_format_causes(metrics["causes"])]
    return "\n".join(lines)


def _format_causes(causes: dict[str, dict[str, Any]]) -> list[str]:
    f = _fmt
    lines = [
        f"{'planted cause':<16}{'objects':>8}{'tp':>6}{'fn':>6}{'recall':>8}"
        f"{'fn+cand':>9}{'regions':>9}{'fp':>6}"
    ]
    for cause, r in causes.items():
        lines.append(
            f"{cause:<16}{r.get('objects', '-'):>8}{r.get('tp', '-'):>6}{r.get('fn', '-'):>6}"
            f"{f(r.get('recall')):>8}{r.get('fn_with_candidate', '-'):>9}"
            f"{r.get('regions', '-'):>9}{r.get('fp', '-'):>6}"
        )
    return lines
