"""``e2x bench reference``: which E2X reference sees the planted causes, and is the clustering
deterministic?

E2X's attribution of superpixel i integrates the gradient from a reference image x' to the image
x (Gudovskiy et al. 2018, Eq. 6), so what the reference looks like decides what can be blamed: a
dark occluder band is barely different from the dataset mean, and so gets little attribution
against it. For each of ``explain.reference``'s kinds (``mean``, ``zeros``, ``blur``) this bench
explains the eval split's mined failures with E2X from scratch, in a folder of its own under
``<output_dir>/bench-reference/``, then runs the explanation metrics and the cluster stage, and
reports per planted cause (benchmark only):

* **feature hit**: the share of the cause's explained failures with at least one failing
  feature (:func:`e2x_pipeline.features.failing_superpixels`) on the cause's region, the input
  the failure modes and the repair set are built from;
* the pointing-game hit rate on the cause region (``planted_cause_hit_rate``);
* the counterfactual success rate per outcome (:mod:`e2x_pipeline.metrics.counterfactual`),
  every reference with the same fill, a blurred copy of the image, so that the rates compare;
* the failure modes' adjusted Rand index against the causes and precision@10 per cause.

**Determinism.** The first reference is run twice, in two fresh folders, from the same
candidates table and checkpoint: the bench reports whether the features, the mode of every
failing feature and the ARI are identical.

Results: ``reports/bench/reference.{json,md}``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from e2x_pipeline.config import E2XConfig

from .repair import FN_CAUSES

REFERENCES = ("mean", "zeros", "blur")
FP_CAUSES = ("distractor",)


def feature_hit(features: pd.DataFrame, explained: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per planted cause c: of the explained failures whose planted cause is c, the share with a
    failing feature on c's region (``on_cause == c``); ``n`` is their count."""
    out: dict[str, dict[str, Any]] = {}
    for cause in (*FN_CAUSES, *FP_CAUSES):
        ids = set(explained.loc[explained["cause"] == cause, "candidate_id"])
        if not ids:
            continue
        on = features[(features["on_cause"] == cause) & features["candidate_id"].isin(ids)]
        hit = on["candidate_id"].nunique()
        out[cause] = {"hit_rate": round(hit / len(ids), 3), "hits": int(hit), "n": len(ids)}
    return out


def _one_reference(cfg: E2XConfig, split: str, det: Any, kind: str, folder: Path) -> dict:
    """Explain, measure and cluster the split's failures with reference ``kind`` in ``folder``."""
    from e2x_pipeline import stages
    from e2x_pipeline.metrics.stage import evaluate_explanations_stage

    source = cfg.split_layout(split).candidates
    run_cfg = cfg.model_copy(
        update={
            "output_dir": folder,
            "explain": cfg.explain.model_copy(update={"reference": kind, "methods": ["e2x"]}),
            "metrics": cfg.metrics.model_copy(
                update={"sanity": False, "counterfactual": True, "counterfactual_fill": "blur"}
            ),
            "cluster": cfg.cluster.model_copy(update={"explain_method": "e2x"}),
        }
    )
    if folder.exists():
        shutil.rmtree(folder)  # from scratch: a rerun must not reuse the last one's tables
    layout = run_cfg.split_layout(split)
    layout.root.mkdir(parents=True)
    shutil.copy(source, layout.candidates)
    t0 = time.perf_counter()
    stages.explain_stage(run_cfg, det, split, progress=False)
    explain_s = time.perf_counter() - t0
    _, summary = evaluate_explanations_stage(run_cfg, det, split, progress=False)
    result = stages.cluster_stage(run_cfg, det, split, progress=False)
    e2x = summary["methods"].get("e2x", {})
    cands = pd.read_parquet(layout.candidates)
    expl = pd.read_parquet(layout.explanations)
    explained = cands[cands["candidate_id"].isin(expl.loc[expl["valid"], "candidate_id"])]
    hit = e2x.get("planted_cause_hit_rate") or {}
    return {
        "reference": kind,
        "explain_seconds": round(explain_s, 1),
        "explained_failures": int(len(explained)),
        "feature_hit": feature_hit(result.features, explained),
        "pointing_hit_rate": hit.get("mean"),
        "counterfactual": {
            o: {"rate": round(v["rate"], 3), "n": v["n"]}
            for o, v in (e2x.get("counterfactual") or {}).items()
        },
        "adjusted_rand_index": result.metrics["adjusted_rand_index"],
        "precision_at_10": result.metrics["precision_at_10"],
        "failure_modes": result.metrics["failure_modes"],
        "_features": result.features,
    }


def same_clustering(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two cluster runs found the same failing features in the same modes (embeddings
    equal to float32 rounding)."""
    cols = [c for c in a.columns if c != "embedding"]
    if len(a) != len(b) or not a[cols].reset_index(drop=True).equals(
        b[cols].reset_index(drop=True)
    ):
        return False
    return all(np.allclose(x, y, atol=1e-6) for x, y in zip(a["embedding"], b["embedding"]))


def bench_reference(
    cfg: E2XConfig,
    out_dir: Path,
    progress: bool = True,
    references: tuple[str, ...] = REFERENCES,
) -> dict:
    """Every reference of :data:`REFERENCES`, the first twice (module doc)."""
    from tqdm.auto import tqdm

    from e2x_pipeline import stages

    from .common import write_bench

    t_start = time.perf_counter()
    stages.ensure_benchmark(cfg)
    det = stages.detector_for(cfg, stages.resolve_checkpoint(cfg, progress))
    split = cfg.data.eval_split
    if not cfg.split_layout(split).candidates.is_file():
        stages.mine_stage(cfg, det, split)
    work = Path(cfg.output_dir) / "bench-reference"
    plan = [(kind, work / kind) for kind in references]
    plan.append((references[0], work / f"{references[0]}-rerun"))
    runs = []
    for kind, folder in tqdm(plan, desc="bench reference", disable=not progress):
        runs.append(_one_reference(cfg, split, det, kind, folder))
    first, rerun = runs[0], runs[-1]
    determinism = {
        "reference": first["reference"],
        "identical_features_and_modes": same_clustering(first["_features"], rerun["_features"]),
        "adjusted_rand_index": [first["adjusted_rand_index"], rerun["adjusted_rand_index"]],
    }
    result = {
        "split": split,
        "references": [{k: v for k, v in r.items() if k != "_features"} for r in runs[:-1]],
        "determinism": determinism,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    write_bench(out_dir, "reference", result, _markdown(result))
    return result


def _cell(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _markdown(result: dict) -> str:
    causes = (*FN_CAUSES, *FP_CAUSES)
    lines = [
        f"E2X on the `{result['split']}` split's mined failures, one fresh folder per "
        "reference; counterfactual fill: blur for all.",
        "",
        "| reference | "
        + " | ".join(f"feature hit {c}" for c in causes)
        + " | pointing hit | counterfactual fn | counterfactual fp | ARI | "
        + " | ".join(f"P@10 {c}" for c in causes)
        + " | modes | explain s |",
        "|---|" + "---|" * (2 * len(causes) + 6),
    ]
    for r in result["references"]:
        hits = [r["feature_hit"].get(c) for c in causes]
        cf = r["counterfactual"]
        lines.append(
            f"| {r['reference']} | "
            + " | ".join(f"{h['hit_rate']:.2f} ({h['hits']}/{h['n']})" if h else "-" for h in hits)
            + f" | {_cell(r['pointing_hit_rate'])}"
            + f" | {_cell(cf.get('fn', {}).get('rate'))} | {_cell(cf.get('fp', {}).get('rate'))}"
            + f" | {_cell(r['adjusted_rand_index'])} | "
            + " | ".join(_cell(r["precision_at_10"].get(c)) for c in causes)
            + f" | {r['failure_modes']} | {r['explain_seconds']} |"
        )
    d = result["determinism"]
    lines += [
        "",
        f"Determinism: reference `{d['reference']}` run twice from scratch: identical features "
        f"and modes: {'yes' if d['identical_features_and_modes'] else 'NO'}; ARI "
        f"{_cell(d['adjusted_rand_index'][0])} and {_cell(d['adjusted_rand_index'][1])}.",
        "",
        f"Wall time {result['wall_seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines)
