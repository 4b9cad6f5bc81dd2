"""The report's HTML pieces: value formatting, tables, figures, table and image readers, page.

Everything the page shows is escaped here (:func:`table`, :func:`img`); the sections only join
these pieces.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import plots

BOX_OUTPUTS = ("x1", "y1", "x2", "y2")


def read_json(path: Path) -> dict | None:
    """The JSON at ``path``; None when it is missing or unreadable (the section is left out)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_table(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def fmt(v: Any) -> str:
    """A cell's text: ``–`` for missing, yes / no, floats to 3 decimals, lists and dicts joined."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3f}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
    return str(v)


def table(rows: list[dict], columns: list[str] | None = None, cls: str = "") -> str:
    if not rows:
        return "<p class='muted'>(empty)</p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def img(src: str, alt: str, caption: str = "", width: int | None = None) -> str:
    w = f" width='{width}'" if width else ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img src='{html.escape(src)}' alt='{html.escape(alt)}'{w}>{cap}</figure>"


def safe_name(text: str) -> str:
    """``text`` with every character but letters, digits, ``-`` and ``_`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))


def box(row: pd.Series, prefix: str) -> list[float] | None:
    """The row's ``<prefix>_x1 .. <prefix>_y2`` (``x1 .. y2`` without a prefix); None if any is
    missing."""
    vals = [row.get(f"{prefix}_{k}") if prefix else row.get(k) for k in BOX_OUTPUTS]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return [float(v) for v in vals]


class Images:
    """Resolves an image file from a table row: its ``image_path``, else ``<images>/<file>``."""

    def __init__(self, images_dir: Path | None):
        self.images_dir = images_dir
        self._cache: dict[str, Any] = {}

    def open(self, row: pd.Series):
        path = Path(str(row.get("image_path", "")))
        if not path.is_file() and self.images_dir is not None and row.get("file_name"):
            path = self.images_dir / str(row["file_name"])
        if not path.is_file():
            return None
        key = str(path)
        if key not in self._cache:
            self._cache[key] = plots.open_rgb(path)
        return self._cache[key]


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
  max-width: 1280px; padding: 0 24px 48px; color: #222; background: #fafafa; }}
header {{ border-bottom: 2px solid #3182bd; padding: 16px 0 8px; }}
h1 {{ margin: 0 0 4px; font-size: 26px; }}
h2 {{ border-bottom: 1px solid #ddd; padding-top: 12px; }}
h3 {{ font-size: 16px; margin: 18px 0 6px; }}
nav {{ margin: 8px 0; font-size: 14px; }} nav a {{ color: #3182bd; text-decoration: none; }}
.muted {{ color: #777; font-size: 13px; }}
table {{ border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; background: #fff; }}
table.inline {{ display: inline-table; margin-right: 16px; vertical-align: top; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: left; }}
th {{ background: #eef3f8; }}
figure {{ display: inline-block; margin: 4px; text-align: center; vertical-align: top; }}
figure img {{ display: block; max-width: 100%; image-rendering: pixelated;
  border: 1px solid #ccc; }}
figcaption {{ font-size: 11px; color: #555; margin-top: 2px; }}
.card {{ display: flex; gap: 12px; background: #fff; border: 1px solid #e3e3e3;
  border-radius: 6px; padding: 8px; margin: 8px 0; align-items: flex-start; }}
.card .meta {{ width: 210px; flex: none; font-size: 12px; line-height: 1.5; }}
.row {{ display: flex; flex-wrap: wrap; gap: 2px; }}
pre {{ background: #fff; border: 1px solid #ddd; padding: 8px; font-size: 12px; overflow-x: auto; }}
#e2x-image-check {{ font-size: 11px; color: #999; }}
</style></head>
<body>
<header><h1>E2X report: {run_id}</h1><div class="muted">{meta}</div>
<nav>{nav}</nav>
<p id="e2x-image-check" data-expected="{n_images}">{n_images} images</p></header>
{body}
<script>
window.addEventListener("load", function () {{
  var ok = 0, bad = [];
  for (var i = 0; i < document.images.length; i++) {{
    var im = document.images[i];
    if (im.complete && im.naturalWidth > 0) ok++; else bad.push(im.getAttribute("src"));
  }}
  var el = document.getElementById("e2x-image-check");
  el.setAttribute("data-loaded", ok);
  el.setAttribute("data-broken", bad.length);
  el.textContent = ok + " of " + document.images.length + " images loaded" +
    (bad.length ? "; broken: " + bad.join(", ") : "");
}});
</script>
</body></html>
"""
