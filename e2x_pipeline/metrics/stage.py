"""``e2x evaluate-explanations``: the fidelity metrics of a run's explanations, as tables.

Reads what ``e2x explain`` wrote into the split's folder (:class:`~e2x_pipeline.layout.SplitLayout`
``explanations`` and the pixel maps under ``maps/``) and what ``e2x mine`` wrote
(``candidates``), and writes

* ``explanation_metrics``: one row per candidate x method (the class-score map; when a
  method was run with several settings, the most recently written one), with the columns of
  :data:`METRIC_COLUMNS` plus ``rho_vs_<method>`` for every other method in the table;
* ``explanation_summary``: their means per method, overall and per outcome,

both atomically. Per row (:mod:`.rows`, shared with ``e2x bench explain``):

* ``pointing_hit`` / ``energy`` against the candidate's region (:func:`.pointing.candidate_region`:
  the planted cause's region on the benchmark, the GT box on any other dataset, the candidate's box
  for a background FP), most negative superpixel for a FN, most positive otherwise;
* ``deletion_auc`` / ``insertion_auc`` (:mod:`.perturbation`, through the run's detector);
* ``counterfactual_n`` / ``counterfactual_success`` (:mod:`.counterfactual`, with
  ``metrics.counterfactual``): for an FN or FP, the smallest n of ``metrics.counterfactual_ns``
  for which replacing the n most blamed superpixels fixes the detection at the operating
  threshold;
* ``rho_vs_<m>``: Pearson's rho with method m's map of the same candidate;
* with ``metrics.sanity``: ``sanity_rho`` against the map of a fully randomised detector, for rows
  whose settings equal the current ``explain`` config (others get NaN and a reason). Rows without
  a candidate (uncovered FNs) are re-explained only by methods that do not need one
  (``needs_candidate = False``, D-RISE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import E2XConfig, ExplainConfig, MetricsConfig
from ..data.coco import load_image
from ..detectors.base import Detector, Target, model_fingerprint
from ..explain.base import params_hash
from ..explain.registry import explainer_class, get_explainer
from ..explain.superpixels import make_reference
from ..io_utils import safe_join, write_json, write_table
from ..layout import SplitLayout
from ..vocab import FAILURES
from .correlation import pearson_rho
from .counterfactual import counterfactual_check, counterfactual_rates
from .rows import perturbation_aucs, row_metrics
from .sanity import fully_randomized, map_similarity

METRIC_COLUMNS = (
    "candidate_id",
    "image_id",
    "method",
    "params_hash",
    "outcome",
    "error_type",
    "cause",
    "region_source",
    "region_fraction",
    "sign",
    "pointing_hit",
    "energy",
    "deletion_auc",
    "insertion_auc",
    "sanity_rho",
    "sanity_spearman_abs",
    "counterfactual_n",
    "counterfactual_success",
    "valid",
    "reason",
)
# the file names, from the run layout (the CLI prints them)
TABLE = SplitLayout.explanation_metrics.file_name
SUMMARY = SplitLayout.explanation_summary.file_name


def _latest_score_rows(explanations: pd.DataFrame) -> pd.DataFrame:
    rows = explanations[explanations["output"] == "score"]
    return rows.drop_duplicates(["candidate_id", "method"], keep="last")


@dataclass
class _Image:
    """One image's explained rows, its stored maps and the records being filled."""

    image_id: int
    image: torch.Tensor
    group: pd.DataFrame  # its rows of the explanations table
    maps: dict[str, np.ndarray]  # "<candidate_id>|<method>" -> [H, W] pixel map
    segments: dict[str, np.ndarray]  # segments_key -> [H, W] SLIC labels
    recs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[2])


def _load_image(run_dir: Path, image_id: int, group: pd.DataFrame, cands: pd.DataFrame) -> _Image:
    """The image and the pixel maps / segmentations its rows point to in ``maps/*.npz``."""
    maps: dict[str, np.ndarray] = {}
    segments: dict[str, np.ndarray] = {}
    for map_file, g in group.groupby("map_file", dropna=True):
        with np.load(safe_join(run_dir, str(map_file)), allow_pickle=False) as z:
            for r in g.itertuples():
                maps[f"{r.candidate_id}|{r.method}"] = z[r.map_key].astype(np.float32)
                if r.segments_key not in segments:
                    segments[r.segments_key] = z[r.segments_key]
    image = load_image(cands.loc[group["candidate_id"].iloc[0]]["image_path"])
    return _Image(int(image_id), image, group, maps, segments)


def _record(
    img: _Image, r: Any, c: pd.Series, by_cause: dict[str, dict], cfg: MetricsConfig
) -> dict[str, Any]:
    """One row's record: its identity, region, pointing hit and energy (:func:`.row_metrics`);
    the deletion / insertion and sanity columns are NaN until filled."""
    key = f"{r.candidate_id}|{r.method}"
    stored = bool(r.valid) and key in img.maps
    m = row_metrics(
        c.to_dict(),
        img.hw,
        by_cause,
        np.asarray(r.values, dtype=np.float64) if stored else None,
        img.segments[r.segments_key] if stored else None,
        img.maps[key] if stored else None,
        min_overlap=cfg.min_overlap,
    )
    rec: dict[str, Any] = {
        "candidate_id": r.candidate_id,
        "image_id": img.image_id,
        "method": r.method,
        "params_hash": r.params_hash,
        "outcome": c["outcome"],
        "error_type": c.get("error_type"),
        "cause": c.get("cause"),
        **m,
        "deletion_auc": np.nan,
        "insertion_auc": np.nan,
        "sanity_rho": np.nan,
        "sanity_spearman_abs": np.nan,
        "counterfactual_n": np.nan,
        "counterfactual_success": np.nan,
        "valid": bool(r.valid),
        "reason": r.reason or "",
    }
    if r.valid and not stored:
        rec["valid"], rec["reason"] = False, "no pixel map stored for this explanation"
    return rec


def _add_rho(img: _Image, methods: list[str]) -> None:
    """``rho_vs_<m>``: Pearson's rho with method m's map of the same candidate."""
    for (cid, method), rec in img.recs.items():
        for other in methods:
            if other == method:
                continue
            a, b = img.maps.get(f"{cid}|{method}"), img.maps.get(f"{cid}|{other}")
            ok = rec["valid"] and a is not None and b is not None
            rec[f"rho_vs_{other}"] = pearson_rho(a, b) if ok else np.nan


def _add_perturbation(
    img: _Image,
    detector: Detector,
    cands: pd.DataFrame,
    methods: list[str],
    cfg: MetricsConfig,
    mean: torch.Tensor | None,
) -> None:
    """Deletion / insertion AUC of the image's valid rows, one batched call per method."""
    for method in methods:
        keys = [k for k in img.recs if k[1] == method and img.recs[k]["valid"]]
        if not keys:
            continue
        targets = [Target.from_row(cands.loc[cid]) for cid, _ in keys]
        stack = np.stack([img.maps[f"{cid}|{method}"] for cid, _ in keys])
        aucs = perturbation_aucs(detector, img.image, stack, targets, cfg, mean=mean)
        for k, a in zip(keys, aucs, strict=True):
            img.recs[k].update(a)


def _add_counterfactual(
    img: _Image,
    detector: Detector,
    cands: pd.DataFrame,
    cfg: MetricsConfig,
    fill: torch.Tensor,
    threshold: float,
) -> None:
    """The counterfactual check of the image's valid failure rows, one batched call."""
    keys = [k for k, rec in img.recs.items() if rec["valid"] and rec["outcome"] in FAILURES]
    if not keys:
        return
    rows = {(r.candidate_id, r.method): r for r in img.group.itertuples()}
    res = counterfactual_check(
        detector,
        img.image,
        [np.asarray(rows[k].values, dtype=np.float64) for k in keys],
        [img.segments[rows[k].segments_key] for k in keys],
        [Target.from_row(cands.loc[cid]) for cid, _ in keys],
        [img.recs[k]["outcome"] for k in keys],
        fill,
        threshold=threshold,
        ns=cfg.counterfactual_ns,
        min_iou=cfg.counterfactual_iou,
        batch_size=cfg.batch_size,
    )
    for k, r in zip(keys, res, strict=True):
        img.recs[k].update(r)


def counterfactual_fill(
    image: torch.Tensor, cfg: MetricsConfig, explain_cfg: ExplainConfig, mean: torch.Tensor | None
) -> torch.Tensor:
    """What the counterfactual check fills blamed superpixels with: the explain reference, or a
    blurred copy (``metrics.counterfactual_fill``)."""
    kind = explain_cfg.reference if cfg.counterfactual_fill == "reference" else "blur"
    return make_reference(image, kind, mean)[0]


def _check_explained(rows: pd.DataFrame, cands: pd.DataFrame) -> None:
    missing = sorted(set(rows["candidate_id"]) - set(cands.index))
    if missing:
        raise ValueError(
            f"{len(missing)} explained candidates are not in the candidates table "
            f"(e.g. {missing[:3]}); mine and explain the same split with the same output_dir"
        )


def explanation_metrics(
    explanations: pd.DataFrame,
    candidates: pd.DataFrame,
    run_dir: str | Path,
    cfg: MetricsConfig,
    detector: Detector | None = None,
    causes: list[dict] | None = None,
    *,
    explain_cfg: ExplainConfig | None = None,
    mean: torch.Tensor | None = None,
    seed: int = 0,
    threshold: float = 0.5,
    progress: bool = True,
) -> pd.DataFrame:
    """The metrics table for ``explanations`` (see the module docstring).

    ``detector`` is needed for deletion / insertion and the sanity check (without it those
    columns are NaN). ``causes`` are the ``causes.json`` records; without them (any dataset that
    is not the benchmark) the regions are GT boxes. ``explain_cfg``, ``mean`` and ``seed`` are the
    settings the explanations were made with (for the sanity re-explanation and the
    counterfactual fill); ``threshold`` is the operating threshold of the counterfactual check.
    """
    rows = _latest_score_rows(explanations)
    cands = candidates.drop_duplicates("candidate_id").set_index("candidate_id", drop=False)
    _check_explained(rows, cands)
    by_cause = {str(r["cause_id"]): r for r in (causes or [])}
    methods = sorted(rows["method"].unique())
    randomized = None
    if cfg.sanity and detector is not None:
        randomized = fully_randomized(detector, seed)
    explain_cfg = explain_cfg or ExplainConfig()
    out: list[dict[str, Any]] = []
    groups = list(rows.groupby("image_id", sort=True))
    for image_id, group in tqdm(groups, desc="metrics", unit="img", disable=not progress):
        img = _load_image(Path(run_dir), int(image_id), group, cands)
        for r in group.itertuples():
            img.recs[(r.candidate_id, r.method)] = _record(
                img, r, cands.loc[r.candidate_id], by_cause, cfg
            )
        _add_rho(img, methods)
        if detector is not None:
            _add_perturbation(img, detector, cands, methods, cfg, mean)
        if detector is not None and cfg.counterfactual:
            fill = counterfactual_fill(img.image, cfg, explain_cfg, mean)
            _add_counterfactual(img, detector, cands, cfg, fill, threshold)
        if randomized is not None:
            _sanity(randomized, img, cands, explain_cfg, mean, seed, model_fingerprint(detector))
        out.extend(img.recs.values())
    rho_cols = [f"rho_vs_{m}" for m in methods]
    table = pd.DataFrame(out, columns=[*METRIC_COLUMNS, *rho_cols])
    # nullable: TPs and invalid maps are not checked (NA), so that parquet keeps it boolean
    table["counterfactual_success"] = table["counterfactual_success"].astype("boolean")
    return table.astype({"image_id": "int64", "valid": "bool", "sign": "int64"})


def _sanity_rows(
    g: pd.DataFrame, img: _Image, cands: pd.DataFrame, method: str, current: str
) -> list[Any]:
    """The method's rows that the sanity check re-explains: valid, made with the current
    settings, and with a candidate to follow when the method needs one."""
    needs_candidate = explainer_class(method).needs_candidate
    todo = []
    for r in g.itertuples():
        rec = img.recs[(r.candidate_id, method)]
        if not rec["valid"]:
            continue
        if r.params_hash != current:
            rec["reason"] = "sanity skipped: made with other settings than the explain config"
            continue
        if int(cands.loc[r.candidate_id]["anchor"]) < 0 and needs_candidate:
            continue
        todo.append(r)
    return todo


def _sanity(
    randomized: Detector,
    img: _Image,
    cands: pd.DataFrame,
    explain_cfg: ExplainConfig,
    mean: torch.Tensor | None,
    seed: int,
    weights: str,
) -> None:
    """Re-explain the image's valid rows with the randomised detector; fill ``sanity_*``.
    ``weights`` is the explained detector's fingerprint, which the rows' params hash carries."""
    for method, g in img.group.groupby("method"):
        explainer = get_explainer(str(method), randomized, explain_cfg, seed, mean=mean)
        current = params_hash(str(method), {**explainer.params(), "detector": weights}, seed)
        todo = _sanity_rows(g, img, cands, str(method), current)
        if not todo:
            continue
        targets = [Target.from_row(cands.loc[r.candidate_id]) for r in todo]
        exps = explainer.explain(img.image, targets, segments=img.segments[todo[0].segments_key])
        for r, exp in zip(todo, exps, strict=True):
            sim = map_similarity(img.maps[f"{r.candidate_id}|{method}"], exp.pixel_map)
            rec = img.recs[(r.candidate_id, method)]
            rec["sanity_rho"], rec["sanity_spearman_abs"] = sim["pearson"], sim["spearman_abs"]


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Means per method, overall and per outcome; the planted-cause hit rate over failures
    whose region is a planted cause. Counts say how many rows each mean is over."""
    cols = ["pointing_hit", "energy", "deletion_auc", "insertion_auc", "sanity_rho"]
    cols += [c for c in table.columns if c.startswith("rho_vs_")]

    def means(df: pd.DataFrame) -> dict[str, Any]:
        ok = df[df["valid"]]
        res: dict[str, Any] = {"rows": int(len(df)), "valid": int(len(ok))}
        for c in cols:
            v = ok[c].dropna()
            res[c] = {"mean": float(v.mean()), "n": int(len(v))} if len(v) else None
        return res

    out: dict[str, Any] = {}
    for method, df in table.groupby("method"):
        entry = means(df)
        entry["by_outcome"] = {str(o): means(d) for o, d in df.groupby("outcome")}
        failure = df["outcome"].isin(list(FAILURES))
        cause = df[df["valid"] & (df["region_source"] == "cause") & failure]
        hits = cause["pointing_hit"].dropna()
        entry["planted_cause_hit_rate"] = (
            {"mean": float(hits.mean()), "n": int(len(hits))} if len(hits) else None
        )
        entry["counterfactual"] = (
            counterfactual_rates(df[df["valid"]]) if "counterfactual_success" in df else None
        )
        out[str(method)] = entry
    return out


def evaluate_explanations_stage(
    cfg: E2XConfig, detector: Detector | None, split: str, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Compute the metrics of ``<output_dir>/<split>``'s explanations and write the table and
    summary there (atomically). Returns both."""
    from ..data.inputs import split_causes
    from ..locking import run_lock
    from ..stages import reference_image

    layout = cfg.split_layout(split)
    table_path = layout.require("explanations")
    cand_path = layout.require("candidates")
    baselines = (cfg.metrics.deletion_baseline, cfg.metrics.insertion_baseline)
    # the dataset mean the explain stage used (the sanity re-explanation and the counterfactual
    # fill must use the same)
    uses_mean = cfg.metrics.sanity or "mean" in baselines or cfg.metrics.counterfactual
    mean = reference_image(cfg) if uses_mean else None
    with run_lock(cfg.output_dir):  # no explain run may rewrite the tables meanwhile
        explanations = pd.read_parquet(table_path)
        table = explanation_metrics(
            explanations,
            pd.read_parquet(cand_path),
            layout.root,
            cfg.metrics,
            detector,
            split_causes(cfg, split),
            explain_cfg=cfg.explain,
            mean=mean,
            seed=cfg.seed,
            threshold=cfg.mining.operating_threshold,
            progress=progress,
        )
        summary = {
            "split": split,
            "explanations": str(table_path),
            "rows": int(len(table)),
            "metrics_config": cfg.metrics.model_dump(mode="json"),
            "methods": summarize(table),
        }
        write_table(layout.explanation_metrics, table)
        write_json(layout.explanation_summary, summary)
    return table, summary


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary's per-method means."""
    cols = ["pointing_hit", "energy", "deletion_auc", "insertion_auc", "sanity_rho"]
    head = f"{'method':<13}{'valid':>7}" + "".join(f"{c:>15}" for c in cols)
    lines = [head + f"  {'cause hit':<14}{'cf fn':<14}cf fp"]
    for method, e in summary["methods"].items():
        vals = [e.get(c) for c in cols]
        cells = "".join(f"{v['mean']:>15.3f}" if v else f"{'-':>15}" for v in vals)
        hit = e.get("planted_cause_hit_rate")
        hit_s = f"{hit['mean']:.2f} (n={hit['n']})" if hit else "-"
        cf = e.get("counterfactual") or {}
        cf_s = [f"{cf[o]['rate']:.2f} (n={cf[o]['n']})" if o in cf else "-" for o in FAILURES[::-1]]
        lines.append(f"{method:<13}{e['valid']:>7}{cells}  {hit_s:<14}{cf_s[0]:<14}{cf_s[1]}")
    return "\n".join(lines)


__all__ = [
    "METRIC_COLUMNS",
    "evaluate_explanations_stage",
    "explanation_metrics",
    "format_summary",
    "summarize",
]
