"""The report's failure gallery: each explained failure as a card with its box and map panels.

A card shows the image with its GT (green), the other detections at the operating threshold
(orange) and the candidate (red), then the primary method's score map (E2X when computed), the
other methods' score maps, and the box-coordinate maps (``x1 .. y2``) when computed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ..io_utils import safe_join
from ..vocab import FAILURES
from . import plots
from .markup import BOX_OUTPUTS, Figure, Images, box, fmt, img, safe_name

# an image's name -> (the PNG file to write, its src on the page); counts the page's images
Rel = Callable[[str], tuple[Path, str]]


class Selection(NamedTuple):
    """Which explanations the gallery shows."""

    methods: list[str]  # every method in the table, in first-seen order
    primary: str  # e2x when computed, else the first method
    valid: pd.DataFrame  # the valid explanation rows
    explained: pd.DataFrame  # valid primary score maps of known candidates
    shown: pd.DataFrame  # the first ``max_failures`` of them, round-robin over error types


def select(expl: pd.DataFrame, cands: pd.DataFrame, max_failures: int) -> Selection:
    """The explanations to show; ``cands`` is the candidates table indexed by candidate_id."""
    methods = list(dict.fromkeys(expl["method"]))
    primary = "e2x" if "e2x" in methods else methods[0]
    valid = expl[expl["valid"].astype(bool)]
    prim = valid[(valid["method"] == primary) & (valid["output"] == "score")]
    prim = prim[prim["candidate_id"].isin(cands.index)]
    # round-robin over error types, so every type shows in a limited gallery
    types = cands.loc[prim["candidate_id"], "error_type"].fillna("missed").to_numpy()
    prim = prim.assign(_type=types, _k=prim.groupby(types).cumcount().to_numpy())
    shown = prim.sort_values(["_k", "_type", "candidate_id"], kind="stable").head(max_failures)
    return Selection(methods, primary, valid, prim, shown)


def modes_by_candidate(features: pd.DataFrame | None) -> dict[str, list[int]]:
    """The failure modes each candidate's assigned failing features fall in."""
    modes: dict[str, list[int]] = {}
    if features is not None and "mode_id" in features:
        for cid, m in features[features["mode_id"] >= 0].groupby("candidate_id")["mode_id"]:
            modes[cid] = sorted({int(x) for x in m})
    return modes


class Card(NamedTuple):
    """One failure as ``gallery.html.j2`` shows it: its id (bold), text lines and panels."""

    candidate_id: str
    lines: list[str]
    figures: list[Figure]


class PixelMaps:
    """A row's pixel map from its ``maps/<image>.npz``, one image's file open at a time."""

    def __init__(self, split_root: Path):
        self.root = split_root
        self._cache: dict[str, Any] = {}

    def get(self, row: pd.Series) -> np.ndarray | None:
        if not isinstance(row.get("map_file"), str):
            return None
        f = row["map_file"]
        if f not in self._cache:
            p = safe_join(self.root, f)
            self._cache.clear()  # one image's maps at a time
            self._cache[f] = np.load(p, allow_pickle=False) if p.is_file() else None
        z = self._cache[f]
        return None if z is None or row["map_key"] not in z.files else z[row["map_key"]]


def context_boxes(
    img_rows: pd.DataFrame, candidate_id: str, threshold: float
) -> tuple[list[list[float]], list[list[float]]]:
    """The image's GT boxes, and its other detections scoring at least ``threshold``."""
    gts = [
        b
        for _, g in img_rows.drop_duplicates("gt_id").iterrows()
        if g.get("gt_id", -1) >= 0 and (b := box(g, "gt")) is not None
    ]
    dets = [
        b
        for _, g in img_rows.iterrows()
        if g["outcome"] in ("tp", "fp")
        and g.get("score", 0) >= threshold
        and g["candidate_id"] != candidate_id
        and (b := box(g, "box")) is not None
    ]
    return gts, dets


def panels(methods: list[str], primary: str) -> list[tuple[str, str]]:
    """``(method, output)`` in card order: score maps (primary first), then box-coordinate maps."""
    out = [(primary, "score")]
    out += [(m, "score") for m in methods if m != primary]
    out += [(primary, o) for o in BOX_OUTPUTS]
    out += [(m, o) for m in methods if m != primary for o in BOX_OUTPUTS]
    return out


def _figures(
    rel: Rel,
    image: Any,
    cand: pd.Series,
    own: pd.DataFrame,
    sel: Selection,
    maps: PixelMaps,
    boxes: tuple[list, list],
) -> list[Figure]:
    """The card's panels: the boxes, then each map that matches the image's size."""
    cid = cand["candidate_id"]
    name = safe_name(cid)
    cand_box = box(cand, "box")
    path, src = rel(f"fail-{name}-boxes.png")
    gts, dets = boxes
    gt = box(cand, "gt")
    plots.boxes_panel(image, path, gts=gts, detections=dets, candidate=cand_box, candidate_gt=gt)
    figs = [img(src, f"{cid} boxes", "GT / detections")]
    for method, output in panels(sel.methods, sel.primary):
        hit = own[(own["method"] == method) & (own["output"] == output)]
        if not len(hit):
            continue
        m = maps.get(hit.iloc[0])
        if m is None or m.shape != (image.height, image.width):
            continue
        path, src = rel(f"fail-{name}-{safe_name(method)}-{output}.png")
        plots.overlay_panel(image, m, path, box=cand_box)
        label = method.upper() if output == "score" else f"{method.upper()} d{output}"
        figs.append(img(src, f"{cid} {method} {output}", label))
    return figs


def _info(cand: pd.Series, modes: dict[str, list[int]]) -> list[str]:
    """The card's text lines under its id: outcome and error type (FN kind), class and score,
    cause, modes (plain text: the template escapes them)."""
    cid = cand["candidate_id"]
    err = cand.get("error_type")
    kind = cand.get("fn_kind") if cand["outcome"] == "fn" else None
    info = [
        f"{cand['outcome']} · {err if isinstance(err, str) else '–'}"
        + (f" ({kind})" if isinstance(kind, str) else ""),
        f"class {cand.get('category', cand.get('label'))}, score {fmt(cand.get('score'))}",
    ]
    if isinstance(cand.get("cause"), str) and cand["cause"]:
        info.append(f"planted cause: {cand['cause']}")
    if cid in modes:
        info.append("failure mode " + ", ".join(map(str, modes[cid])))
    return info


def cards(
    rel: Rel,
    sel: Selection,
    cands: pd.DataFrame,
    images: Images,
    maps: PixelMaps,
    modes: dict[str, list[int]],
    threshold: float,
) -> list[Card]:
    """One card per shown failure whose image can be opened, by image then candidate."""
    by_image = cands.groupby("image_id")
    rows_by_cand = {k: g for k, g in sel.valid.groupby("candidate_id")}
    out = []
    for r in sel.shown.sort_values(["image_id", "candidate_id"]).itertuples(index=False):
        cand = cands.loc[r.candidate_id]
        image = images.open(cand)
        if image is None:
            continue
        boxes = context_boxes(by_image.get_group(cand["image_id"]), r.candidate_id, threshold)
        own = rows_by_cand.get(r.candidate_id, sel.valid.iloc[:0])
        figs = _figures(rel, image, cand, own, sel, maps, boxes)
        out.append(Card(str(r.candidate_id), _info(cand, modes), figs))
    return out


def gallery_context(
    rel: Rel,
    candidates: pd.DataFrame,
    explanations: pd.DataFrame,
    features: pd.DataFrame | None,
    images: Images,
    split_root: Path,
    threshold: float,
    max_failures: int,
) -> dict[str, Any]:
    """What ``gallery.html.j2`` shows: how many failures are explained, the methods, the cards."""
    c = candidates.set_index("candidate_id", drop=False)
    sel = select(explanations, c, max_failures)
    modes = modes_by_candidate(features)
    return {
        "n_explained": len(sel.explained),
        "n_fail": int(candidates["outcome"].isin(FAILURES).sum()),
        "primary": sel.primary,
        "methods": sel.methods,
        "cards": cards(rel, sel, c, images, PixelMaps(split_root), modes, threshold),
    }
