"""The benchmark's sanity check (Adebayo et al. 2018): the maps of the trained detector against
those of the same detector randomised layer by layer from the top (cascading), for the gradient
methods, and fully randomised only, for the others listed in the size."""

from __future__ import annotations

from typing import Any

import pandas as pd
from torch import Tensor

from e2x_pipeline.detectors.base import Detector, Target
from e2x_pipeline.metrics.sanity import cascading_randomization, layer_groups, map_similarity

from .fidelity import BenchContext, Measurements, image_targets
from .settings import Setting
from .timing import run_setting


def run_sanity(
    ctx: BenchContext,
    m: Measurements,
    images: list[tuple[Any, pd.DataFrame]],
    settings: list[Setting],
) -> pd.DataFrame:
    """One row per (cascade step, setting, detection): Pearson and Spearman-of-|maps| between
    the trained detector's map and the randomised one's (``full`` on the last step)."""
    by_label = {s.label: s for s in settings}
    cascade = [by_label[x] for x in ctx.size.cascade_methods]
    full_only = [by_label[x] for x in ctx.size.full_random_methods]
    n_layers = len(layer_groups(ctx.det.model))
    rows: list[dict[str, Any]] = []
    for step, (layer, rdet) in enumerate(cascading_randomization(ctx.det, ctx.cfg.seed)):
        last = step == n_layers - 1
        todo = cascade + (full_only if last else [])
        for image_id, group in images:
            image, targets = image_targets(group)
            for s in todo:
                sims = _similarities(ctx, m, s, rdet, image, targets, group, int(image_id))
                rows += [
                    {
                        "setting": label,
                        "randomized_through": layer,
                        "step": step + 1,
                        "full": last,
                        "candidate_id": cid,
                        "rho": sim["pearson"],
                        "spearman_abs": sim["spearman_abs"],
                    }
                    for label, cid, sim in sims
                ]
    return pd.DataFrame(rows)


def _similarities(
    ctx: BenchContext,
    m: Measurements,
    s: Setting,
    rdet: Detector,
    image: Tensor,
    targets: list[Target],
    group: pd.DataFrame,
    image_id: int,
) -> list[tuple[str, str, dict[str, float]]]:
    """(label, candidate id, similarity) of setting ``s`` re-run on the randomised ``rdet``.

    IG also gets a diagnostic row: the same IG, painted on the M=200 superpixels."""
    seg = m.segs[image_id]
    run = run_setting(s, rdet, ctx.base, image, targets, seg, ctx.mean, ctx.cfg.seed)
    out = []
    for e, cid in zip(run.exps, group["candidate_id"], strict=True):
        pairs = [(s.label, m.maps[(s.label, str(cid))], e.pixel_map)]
        if s.method == "ig":  # diagnostic: the same IG, painted on superpixels
            painted = m.values[(s.label, str(cid))][seg]
            pairs.append((f"{s.label} on superpixels", painted, e.values[seg]))
        out += [(label, str(cid), map_similarity(a, b)) for label, a, b in pairs]
    return out
