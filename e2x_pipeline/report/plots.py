"""Pictures for the HTML report: matplotlib charts and annotated image panels, all PNG files.

Every function writes one PNG (atomically) and returns nothing; the report links the files by
relative path, so the report folder is self-contained.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..io_utils import atomic_write
from ..vocab import ERROR_TYPES, FAILURES

ERROR_COLOURS = {
    "cls": "#e6550d",
    "loc": "#fdae6b",
    "both": "#a63603",
    "dupe": "#9e9ac8",
    "bkg": "#de2d26",
    "missed": "#3182bd",
}
GT_COLOUR = (40, 220, 40)
CANDIDATE_COLOUR = (255, 40, 40)
DETECTION_COLOUR = (255, 170, 0)
REGION_COLOUR = (255, 230, 0)

Box = Sequence[float]


def _save_png(image: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=3)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def error_breakdown_chart(candidates: pd.DataFrame, path: Path) -> dict[str, int]:
    """TIDE-style chart: failures per error type (left) and per planted cause (right).

    Returns the counts per error type (all six types, zeros included).
    """
    plt = _pyplot()
    failing = candidates[candidates["outcome"].isin(FAILURES)]
    types = failing["error_type"].fillna("missed").astype(str)
    counts = {t: int((types == t).sum()) for t in ERROR_TYPES}
    has_cause = "cause" in failing.columns and failing["cause"].notna().any()
    fig, axes = plt.subplots(1, 2 if has_cause else 1, figsize=(11 if has_cause else 6, 3.4))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    total = max(sum(counts.values()), 1)
    bars = ax.bar(
        list(counts), list(counts.values()), color=[ERROR_COLOURS[t] for t in counts], width=0.7
    )
    for bar, n in zip(bars, counts.values()):
        ax.annotate(
            f"{n}\n{n / total:.0%}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_title("Failures per error type (TIDE)")
    ax.set_ylabel("failures")
    ax.set_ylim(0, max(counts.values(), default=0) * 1.3 + 1)
    ax.spines[["top", "right"]].set_visible(False)
    if has_cause:
        causes = failing["cause"].fillna("(none)").astype(str)
        table = pd.crosstab(causes, types).reindex(columns=list(ERROR_TYPES), fill_value=0)
        ax2 = axes[1]
        left = np.zeros(len(table))
        for t in ERROR_TYPES:
            vals = table[t].to_numpy()
            if vals.any():
                ax2.barh(table.index, vals, left=left, color=ERROR_COLOURS[t], label=t)
            left += vals
        ax2.set_title("Failures per planted cause, by error type")
        ax2.set_xlabel("failures")
        ax2.legend(fontsize=8, frameon=False, loc="lower right")
        ax2.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save_figure(fig, path)
    return counts


def before_after_chart(rows: list[dict], path: Path) -> None:
    """Grouped bars of ``rows`` (``metric``, ``before``, ``after``) with numeric values."""
    plt = _pyplot()
    names = [r["metric"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 3.4))
    ax.bar(x - 0.2, [r["before"] for r in rows], 0.4, label="before", color="#9ecae1")
    ax.bar(x + 0.2, [r["after"] for r in rows], 0.4, label="after", color="#3182bd")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.legend(frameon=False)
    ax.set_title("Before / after retraining")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save_figure(fig, path)


def open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _scaled(box: Box, s: float) -> list[float]:
    return [float(v) * s for v in box]


def boxes_panel(
    image: Image.Image,
    path: Path,
    *,
    gts: Iterable[Box] = (),
    detections: Iterable[Box] = (),
    candidate: Box | None = None,
    candidate_gt: Box | None = None,
    scale: int = 2,
) -> None:
    """The image with its GT (green, thin), detections (orange), the candidate (red, thick) and
    the candidate's GT (green, thick)."""
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for box in gts:
        draw.rectangle(_scaled(box, scale), outline=GT_COLOUR, width=1)
    for box in detections:
        draw.rectangle(_scaled(box, scale), outline=DETECTION_COLOUR, width=1)
    if candidate_gt is not None:
        draw.rectangle(_scaled(candidate_gt, scale), outline=GT_COLOUR, width=3)
    if candidate is not None:
        draw.rectangle(_scaled(candidate, scale), outline=CANDIDATE_COLOUR, width=3)
    _save_png(big, path)


def overlay_panel(
    image: Image.Image,
    pixel_map: np.ndarray,
    path: Path,
    *,
    box: Box | None = None,
    scale: int = 2,
) -> None:
    """E2X colours (red +, blue -, scaled by max |value|) over the image, with the box."""
    from ..explain.overlay import render_overlay

    rgb = render_overlay(np.asarray(image), np.asarray(pixel_map, dtype=np.float32))
    big = Image.fromarray(rgb).resize((image.width * scale, image.height * scale), Image.NEAREST)
    if box is not None:
        ImageDraw.Draw(big).rectangle(_scaled(box, scale), outline=(255, 255, 255), width=1)
    _save_png(big, path)


def region_panel(image: Image.Image, box: Box, path: Path, *, scale: int = 2) -> None:
    """A pool image with the matching region's box (yellow) drawn on it."""
    big = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    xyxy = _scaled(box, scale)
    draw.rectangle([xyxy[0] - 1, xyxy[1] - 1, xyxy[2] + 1, xyxy[3] + 1], outline=(0, 0, 0), width=1)
    draw.rectangle(xyxy, outline=REGION_COLOUR, width=3)
    _save_png(big, path)


def copy_png(src: Path, dst: Path) -> bool:
    """Copy a PNG (re-encoded, so a broken file is caught here); False when unreadable."""
    try:
        with Image.open(src) as im:
            im.load()
            _save_png(im.convert("RGB") if im.mode not in ("RGB", "RGBA") else im.copy(), dst)
        return True
    except (OSError, ValueError):
        return False


def history_trend_chart(trend: pd.DataFrame, path: Path) -> None:
    """Per failure mode (stable id), the share of its members still failing, run by run
    (``history.trend_table``: 1.0 where the mode is new; a closed mode's last point is the run
    that closed it)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for sid, g in trend.groupby("stable_id", sort=True):
        g = g.sort_values("seq")
        style = "--" if g["kind"].iloc[0] == "fp" else "-"
        ax.plot(g["seq"], g["share_failing"], style, marker="o", label=sid)
    runs = sorted(trend["seq"].unique())
    ax.set_xticks(runs, [f"run {s}" for s in runs])
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share of members still failing")
    ax.set_title("Failure modes across runs (solid: FN, dashed: FP)")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    _save_figure(fig, path)
