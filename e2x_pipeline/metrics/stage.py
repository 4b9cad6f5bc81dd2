"""``e2x evaluate-explanations``: the fidelity metrics of a run's explanations, as tables.

Reads what ``e2x explain`` wrote under ``<output_dir>/<split>/`` (``explanations.parquet``,
``maps/<image_id>.npz``) and what ``e2x mine`` wrote (``candidates.parquet``), and writes

* ``explanation_metrics.parquet``: one row per candidate x method (the class-score map; when a
  method was run with several settings, the most recently written one), with the columns of
  :data:`METRIC_COLUMNS` plus ``rho_vs_<method>`` for every other method in the table;
* ``explanation_metrics.json``: their means per method, overall and per outcome,

both atomically. Per row:

* ``pointing_hit`` / ``energy`` against the candidate's region (:func:`.pointing.candidate_region`:
  the planted cause's region on the benchmark, the GT box on any other dataset, the candidate's box
  for a background FP), most negative superpixel for a FN, most positive otherwise;
* ``deletion_auc`` / ``insertion_auc`` (:mod:`.perturbation`, through the run's detector);
* ``rho_vs_<m>``: Pearson's rho with method m's map of the same candidate;
* with ``metrics.sanity``: ``sanity_rho`` against the map of a fully randomised detector, for rows
  whose settings equal the current ``explain`` config (others get NaN and a reason).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import E2XConfig, ExplainConfig, MetricsConfig
from ..data.coco import load_image
from ..detectors.base import Detector, Target
from ..explain.base import params_hash
from ..explain.registry import get_explainer
from ..io_utils import safe_join, write_json, write_table
from .correlation import pearson_rho
from .perturbation import deletion_insertion
from .pointing import box_mask, candidate_region, energy_in_region, pointing_hit, pointing_sign
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
    "valid",
    "reason",
)
TABLE = "explanation_metrics.parquet"
SUMMARY = "explanation_metrics.json"


def _latest_score_rows(explanations: pd.DataFrame) -> pd.DataFrame:
    rows = explanations[explanations["output"] == "score"]
    return rows.drop_duplicates(["candidate_id", "method"], keep="last")


def _target(c: pd.Series) -> Target:
    box = (float(c["box_x1"]), float(c["box_y1"]), float(c["box_x2"]), float(c["box_y2"]))
    return Target(int(c["anchor"]), int(c["label"]), box)


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
    progress: bool = True,
) -> pd.DataFrame:
    """The metrics table for ``explanations`` (see the module docstring).

    ``detector`` is needed for deletion / insertion and the sanity check (without it those
    columns are NaN). ``causes`` are the ``causes.json`` records; without them (any dataset that
    is not the benchmark) the regions are GT boxes. ``explain_cfg``, ``mean`` and ``seed`` are the
    settings the explanations were made with (for the sanity re-explanation).
    """
    run_dir = Path(run_dir)
    rows = _latest_score_rows(explanations)
    cands = candidates.drop_duplicates("candidate_id").set_index("candidate_id", drop=False)
    missing = sorted(set(rows["candidate_id"]) - set(cands.index))
    if missing:
        raise ValueError(
            f"{len(missing)} explained candidates are not in the candidates table "
            f"(e.g. {missing[:3]}); mine and explain the same split with the same output_dir"
        )
    by_cause = {str(r["cause_id"]): r for r in (causes or [])}
    methods = sorted(rows["method"].unique())
    randomized = None
    if cfg.sanity and detector is not None:
        randomized = fully_randomized(detector, seed)
    explain_cfg = explain_cfg or ExplainConfig()
    out: list[dict[str, Any]] = []
    groups = list(rows.groupby("image_id", sort=True))
    for image_id, group in tqdm(groups, desc="metrics", unit="img", disable=not progress):
        maps: dict[str, np.ndarray] = {}
        segments: dict[str, np.ndarray] = {}
        for map_file, g in group.groupby("map_file", dropna=True):
            with np.load(safe_join(run_dir, str(map_file)), allow_pickle=False) as z:
                for r in g.itertuples():
                    maps[f"{r.candidate_id}|{r.method}"] = z[r.map_key].astype(np.float32)
                    if r.segments_key not in segments:
                        segments[r.segments_key] = z[r.segments_key]
        first = cands.loc[group["candidate_id"].iloc[0]]
        image = load_image(first["image_path"])
        hw = (int(image.shape[1]), int(image.shape[2]))
        recs: dict[tuple[str, str], dict[str, Any]] = {}
        for r in group.itertuples():
            c = cands.loc[r.candidate_id]
            region = candidate_region(c.to_dict(), by_cause)
            mask = box_mask(region.box, hw)
            sign = pointing_sign(str(c["outcome"]))
            rec: dict[str, Any] = {
                "candidate_id": r.candidate_id,
                "image_id": int(image_id),
                "method": r.method,
                "params_hash": r.params_hash,
                "outcome": c["outcome"],
                "error_type": c.get("error_type"),
                "cause": c.get("cause"),
                "region_source": region.source,
                "region_fraction": float(mask.mean()),
                "sign": sign,
                "pointing_hit": np.nan,
                "energy": np.nan,
                "deletion_auc": np.nan,
                "insertion_auc": np.nan,
                "sanity_rho": np.nan,
                "sanity_spearman_abs": np.nan,
                "valid": bool(r.valid),
                "reason": r.reason or "",
            }
            key = f"{r.candidate_id}|{r.method}"
            if r.valid and key in maps:
                values = np.asarray(r.values, dtype=np.float64)
                seg = segments[r.segments_key]
                rec["pointing_hit"] = float(
                    pointing_hit(values, seg, mask, sign, min_overlap=cfg.min_overlap)
                )
                rec["energy"] = energy_in_region(maps[key], mask, sign)
            elif r.valid:
                rec["valid"], rec["reason"] = False, "no pixel map stored for this explanation"
            recs[(r.candidate_id, r.method)] = rec
        for (cid, method), rec in recs.items():
            for other in methods:
                if other == method:
                    continue
                a, b = maps.get(f"{cid}|{method}"), maps.get(f"{cid}|{other}")
                ok = rec["valid"] and a is not None and b is not None
                rec[f"rho_vs_{other}"] = pearson_rho(a, b) if ok else np.nan
        if detector is not None:
            for method in methods:
                keys = [k for k in recs if k[1] == method and recs[k]["valid"]]
                if not keys:
                    continue
                targets = [_target(cands.loc[cid]) for cid, _ in keys]
                stack = np.stack([maps[f"{cid}|{method}"] for cid, _ in keys])
                curves = deletion_insertion(
                    detector,
                    image,
                    stack,
                    targets,
                    steps=cfg.steps,
                    batch_size=cfg.batch_size,
                    deletion_baseline=cfg.deletion_baseline,
                    insertion_baseline=cfg.insertion_baseline,
                    class_vector=cfg.class_vector,
                    mean=mean,
                )
                for k, d, i in zip(keys, curves.deletion_auc, curves.insertion_auc, strict=True):
                    recs[k]["deletion_auc"], recs[k]["insertion_auc"] = float(d), float(i)
        if randomized is not None:
            _sanity(randomized, image, group, recs, maps, segments, cands, explain_cfg, mean, seed)
        out.extend(recs.values())
    rho_cols = [f"rho_vs_{m}" for m in methods]
    table = pd.DataFrame(out, columns=[*METRIC_COLUMNS, *rho_cols])
    return table.astype({"image_id": "int64", "valid": "bool", "sign": "int64"})


def _sanity(
    randomized: Detector,
    image: torch.Tensor,
    group: pd.DataFrame,
    recs: dict[tuple[str, str], dict[str, Any]],
    maps: dict[str, np.ndarray],
    segments: dict[str, np.ndarray],
    cands: pd.DataFrame,
    explain_cfg: ExplainConfig,
    mean: torch.Tensor | None,
    seed: int,
) -> None:
    """Re-explain the image's valid rows with the randomised detector; fill ``sanity_*``."""
    for method, g in group.groupby("method"):
        explainer = get_explainer(str(method), randomized, explain_cfg, seed, mean=mean)
        current = params_hash(str(method), explainer.params(), seed)
        todo = []
        for r in g.itertuples():
            rec = recs[(r.candidate_id, method)]
            if not rec["valid"]:
                continue
            if r.params_hash != current:
                rec["reason"] = "sanity skipped: made with other settings than the explain config"
                continue
            if int(cands.loc[r.candidate_id]["anchor"]) < 0 and method != "drise":
                continue
            todo.append(r)
        if not todo:
            continue
        targets = [_target(cands.loc[r.candidate_id]) for r in todo]
        exps = explainer.explain(image, targets, segments=segments[todo[0].segments_key])
        for r, exp in zip(todo, exps, strict=True):
            sim = map_similarity(maps[f"{r.candidate_id}|{method}"], exp.pixel_map)
            rec = recs[(r.candidate_id, method)]
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
        failure = df["outcome"].isin(["fp", "fn"])
        cause = df[df["valid"] & (df["region_source"] == "cause") & failure]
        hits = cause["pointing_hit"].dropna()
        entry["planted_cause_hit_rate"] = (
            {"mean": float(hits.mean()), "n": int(len(hits))} if len(hits) else None
        )
        out[str(method)] = entry
    return out


def evaluate_explanations_stage(
    cfg: E2XConfig, detector: Detector | None, split: str, progress: bool = True
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Compute the metrics of ``<output_dir>/<split>``'s explanations and write the table and
    summary there (atomically). Returns both."""
    from ..data.benchmark import load_causes
    from ..locking import run_lock
    from ..stages import reference_image, split_dir

    d = split_dir(cfg, split)
    table_path = d / "explanations.parquet"
    if not table_path.is_file():
        raise FileNotFoundError(
            f"no explanations table at {table_path}; run 'e2x explain --split {split}' with the "
            "same output_dir first"
        )
    cand_path = d / "candidates.parquet"
    if not cand_path.is_file():
        raise FileNotFoundError(f"no candidates table at {cand_path}; run 'e2x mine' first")
    baselines = (cfg.metrics.deletion_baseline, cfg.metrics.insertion_baseline)
    # the dataset mean the explain stage used (the sanity re-explanation must use the same)
    mean = reference_image(cfg) if cfg.metrics.sanity or "mean" in baselines else None
    with run_lock(cfg.output_dir):  # no explain run may rewrite the tables meanwhile
        explanations = pd.read_parquet(table_path)
        table = explanation_metrics(
            explanations,
            pd.read_parquet(cand_path),
            d,
            cfg.metrics,
            detector,
            load_causes(cfg.data.root, split),
            explain_cfg=cfg.explain,
            mean=mean,
            seed=cfg.seed,
            progress=progress,
        )
        summary = {
            "split": split,
            "explanations": str(table_path),
            "rows": int(len(table)),
            "metrics_config": cfg.metrics.model_dump(mode="json"),
            "methods": summarize(table),
        }
        write_table(d / TABLE, table)
        write_json(d / SUMMARY, summary)
    return table, summary


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of the summary's per-method means."""
    cols = ["pointing_hit", "energy", "deletion_auc", "insertion_auc", "sanity_rho"]
    lines = [f"{'method':<8}{'valid':>7}" + "".join(f"{c:>15}" for c in cols) + "  cause hit"]
    for method, e in summary["methods"].items():
        vals = [e.get(c) for c in cols]
        cells = "".join(f"{v['mean']:>15.3f}" if v else f"{'-':>15}" for v in vals)
        hit = e.get("planted_cause_hit_rate")
        hit_s = f"{hit['mean']:.2f} (n={hit['n']})" if hit else "-"
        lines.append(f"{method:<8}{e['valid']:>7}{cells}  {hit_s}")
    return "\n".join(lines)


__all__ = [
    "METRIC_COLUMNS",
    "evaluate_explanations_stage",
    "explanation_metrics",
    "format_summary",
    "summarize",
]
