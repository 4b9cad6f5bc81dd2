"""The report's pieces as data: value formatting, tables, figures, table and image readers.

Nothing here writes HTML. :func:`table` and :func:`img` return plain values that the Jinja2
templates (``templates/*.html.j2``, rendered by :mod:`.render` with autoescaping) turn into
markup, so every text that comes from a run (a category, a file name, a cause) is escaped by the
template engine and no section builds HTML by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

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


class Table(NamedTuple):
    """A table as the ``table`` macro renders it: header cells, body cells (text), CSS class."""

    columns: list[str]
    rows: list[list[str]]
    cls: str = ""


class Figure(NamedTuple):
    """An image as the ``figure`` macro renders it: ``src`` relative to ``index.html``."""

    src: str
    alt: str
    caption: str = ""
    width: int | None = None


def table(rows: list[dict], columns: list[str] | None = None, cls: str = "") -> Table:
    """``rows`` as a :class:`Table`: the given columns (default: every key, first-seen order),
    each cell formatted by :func:`fmt`; an empty table renders as "(empty)"."""
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    return Table([str(c) for c in columns], [[fmt(r.get(c)) for c in columns] for r in rows], cls)


def img(src: str, alt: str, caption: str = "", width: int | None = None) -> Figure:
    """One figure of the page (the PNG is already written under ``img/``)."""
    return Figure(src, alt, caption, width)


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
