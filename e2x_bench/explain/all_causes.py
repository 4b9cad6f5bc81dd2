"""E2X K=32's pointing game on every planted-cause failure of the split, not only the fixed
set's: the hit rate (at ``metrics.min_overlap``), the chance rate (the regions' mean share of the
image), a sensitivity check with any overlap, and the rates by cause and by FN kind."""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from e2x_pipeline.data.coco import load_image
from e2x_pipeline.detectors.base import Target
from e2x_pipeline.explain.registry import get_explainer
from e2x_pipeline.metrics.pointing import pointing_hit
from e2x_pipeline.metrics.rows import row_region
from e2x_pipeline.vocab import FAILURES

from .fidelity import BenchContext
from .summary import _r


def _cause_hits(ctx: BenchContext, candidates: pd.DataFrame) -> list[dict[str, Any]]:
    """One record per explainable planted-cause failure: its hit, loose hit and region share."""
    c = candidates[
        candidates["outcome"].isin(list(FAILURES))
        & candidates["cause_id"].isin(list(ctx.by_cause))
        & (candidates["anchor"].astype(int) >= 0)
    ]
    cfg = ctx.base.model_copy(update={"k": 32})
    ex = get_explainer("e2x", ctx.det, cfg, ctx.cfg.seed, mean=ctx.mean)
    min_overlap = ctx.cfg.metrics.min_overlap
    hits: list[dict[str, Any]] = []
    for _, g in c.groupby("image_id", sort=True):
        image = load_image(g["image_path"].iloc[0])
        exps = ex.explain(image, [Target.from_row(r) for r in g.itertuples()])
        hw = (int(image.shape[1]), int(image.shape[2]))
        for e, (_, r) in zip(exps, g.iterrows(), strict=True):
            reg = row_region(r.to_dict(), hw, ctx.by_cause)
            hit = pointing_hit(e.values, e.segments, reg.mask, reg.sign, min_overlap=min_overlap)
            # sensitivity only (the target uses min_overlap): any pixel of it on the region
            loose = pointing_hit(e.values, e.segments, reg.mask, reg.sign, min_overlap=1e-9)
            hits.append(
                {
                    "cause": r["cause"],
                    "outcome": r["outcome"],
                    "fn_kind": r.get("fn_kind") if r["outcome"] == "fn" else "-",
                    "hit": hit,
                    "hit_any_overlap": loose,
                    "region_fraction": reg.fraction,
                }
            )
    return hits


def _rates(h: pd.DataFrame, keys: str | list[str]) -> dict[str, Any]:
    """Hit rate and count per group of ``keys`` (a pair of keys is joined "a:b")."""
    if not len(h):
        return {}
    return {
        (":".join(str(x) for x in k) if isinstance(k, tuple) else str(k)): {
            "n": int(len(d)),
            "hit_rate": _r(d["hit"].mean()),
        }
        for k, d in h.groupby(keys)
    }


def all_cause_hit_rate(ctx: BenchContext, candidates: pd.DataFrame) -> dict[str, Any]:
    """The summary of :func:`_cause_hits` over the split's mined ``candidates``."""
    t0 = time.perf_counter()
    h = pd.DataFrame(_cause_hits(ctx, candidates))
    some = bool(len(h))
    return {
        "setting": "e2x K=32",
        "failures": int(len(h)),
        "hit_rate": _r(h["hit"].mean()) if some else None,
        "chance": _r(h["region_fraction"].mean()) if some else None,
        "hit_rate_any_overlap": _r(h["hit_any_overlap"].mean()) if some else None,
        "by_cause": _rates(h, ["outcome", "cause"]),
        "by_fn_kind": _rates(h[h["outcome"] == "fn"], "fn_kind") if some else {},
        "seconds": round(time.perf_counter() - t0, 1),
    }
