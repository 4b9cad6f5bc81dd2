"""The run report: one self-contained HTML page per run, ``<reports_dir>/<run_id>/index.html``.

It reads a run's tables (``<output_dir>/<split>/*.parquet``, the JSON summaries beside them) and
writes every picture it shows as a PNG under ``<reports_dir>/<run_id>/img/``, so the folder can
be copied or served anywhere and viewed without network. Sections, each shown when its table
exists:

* summary metrics (evaluation per split, mining outcomes, failure modes, repair precision);
* a TIDE-style error breakdown (cls / loc / both / dupe / bkg / missed, and per planted cause);
* a gallery of explained failures: the image with its GT (green) and detection (orange) boxes,
  the candidate (red), the E2X heatmap overlay (red +, blue -), box-coordinate maps when computed
  and the other methods side by side when computed;
* failure-mode galleries (the representative crops of each mode);
* the repair set, each pool image with its matching region (yellow);
* before/after tables and a plot when ``retrain.json`` exists;
* method comparison plots from the benchmarks (``reports/bench/*.png``) when present.

A small inline script counts the images that loaded (``#e2x-image-check``), which the browser test
reads back from headless Chromium.
"""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import E2XConfig
from ..io_utils import safe_join, write_text
from . import plots

BOX_OUTPUTS = ("x1", "y1", "x2", "y2")


def default_run_id(cfg: E2XConfig) -> str:
    """``<output_dir name>-<YYYYmmdd-HHMMSS>``, e.g. ``demo-20250101-020000``."""
    return f"{Path(cfg.output_dir).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_table(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3f}"
    if isinstance(v, (list, tuple, np.ndarray)):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def _table(rows: list[dict], columns: list[str] | None = None, cls: str = "") -> str:
    if not rows:
        return "<p class='muted'>(empty)</p>"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(src: str, alt: str, caption: str = "", width: int | None = None) -> str:
    w = f" width='{width}'" if width else ""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure><img src='{html.escape(src)}' alt='{html.escape(alt)}'{w}>{cap}</figure>"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))


def _box(row: pd.Series, prefix: str) -> list[float] | None:
    vals = [row.get(f"{prefix}_{k}") if prefix else row.get(k) for k in BOX_OUTPUTS]
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in vals):
        return None
    return [float(v) for v in vals]


class _Images:
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


class ReportBuilder:
    """Collects the sections of one run's report; :meth:`write` renders the page."""

    def __init__(
        self,
        cfg: E2XConfig,
        split: str,
        out_dir: Path,
        *,
        bench_dir: Path | None = None,
        max_failures: int = 48,
        max_repair: int = 60,
        fiftyone: dict[str, str] | None = None,
    ):
        from ..stages import split_dir

        self.cfg = cfg
        self.split = split
        self.out = out_dir
        self.img_dir = out_dir / "img"
        self.d = split_dir(cfg, split)
        self.bench_dir = bench_dir
        self.max_failures = max_failures
        self.max_repair = max_repair
        self.fiftyone = fiftyone
        self.sections: list[tuple[str, str, str]] = []  # (anchor, title, html)
        self.n_images = 0

    # -- helpers ---------------------------------------------------------------------------
    def _rel(self, name: str) -> tuple[Path, str]:
        path = safe_join(self.img_dir, name)
        self.n_images += 1
        return path, f"img/{name}"

    def add(self, anchor: str, title: str, body: str) -> None:
        self.sections.append((anchor, title, body))

    # -- sections --------------------------------------------------------------------------
    def summary(self, cands: pd.DataFrame) -> None:
        out = self.cfg.output_dir
        parts = []
        evals = [
            e
            for p in sorted(out.glob("evaluation-*.json"))
            if isinstance(e := _read_json(p), dict) and "split" in e
        ]
        if evals:
            rows = [
                {"metric": "images", **{e["split"]: e.get("images") for e in evals}},
                {"metric": "mAP@0.5 (all)", **{e["split"]: e.get("map50") for e in evals}},
                {
                    "metric": "mAP@0.5 (clean images)",
                    **{e["split"]: e.get("map50_clean") for e in evals},
                },
                {
                    "metric": "recall, clean objects",
                    **{e["split"]: e.get("recall_clean") for e in evals},
                },
            ]
            causes = sorted({c for e in evals for c in e.get("recall_by_cause", {})})
            rows += [
                {
                    "metric": f"recall, cause {c}",
                    **{e["split"]: e.get("recall_by_cause", {}).get(c) for e in evals},
                }
                for c in causes
            ]
            rows.append(
                {
                    "metric": "FP rate on distractors",
                    **{e["split"]: e.get("distractor_fp_rate") for e in evals},
                }
            )
            parts.append("<h3>Detector</h3>" + _table(rows))
        outcomes = cands["outcome"].value_counts()
        mining = _read_json(self.d / "metrics.json") or {}
        row = {
            "images": mining.get("images", int(cands["image_id"].nunique())),
            **{o: int(outcomes.get(o, 0)) for o in ("tp", "fp", "fn")},
            "precision": mining.get("precision"),
            "recall": mining.get("recall"),
            "mAP@0.5": mining.get("map50"),
        }
        parts.append(f"<h3>Mining ({html.escape(self.split)})</h3>" + _table([row]))
        cluster = _read_json(self.d / "cluster.json")
        if cluster:
            keys = (
                "explained_failures",
                "failing_features",
                "failure_modes",
                "features_on_a_cause",
                "adjusted_rand_index",
            )
            row = {k: cluster.get(k) for k in keys if k in cluster}
            parts.append("<h3>Failure modes</h3>" + _table([row]))
        repair = _read_json(self.d / "repair.json")
        if repair:
            prec = repair.get("precision", {})
            per_cause = prec.get("per_cause", {})
            rows = [{"cause": c, **v} for c, v in per_cause.items() if isinstance(v, dict)]
            if "any_cause" in prec:
                rows.append({"cause": "any cause", **prec["any_cause"]})
            parts.append(
                f"<h3>Repair set</h3><p>{repair.get('selected', '?')} of "
                f"{repair.get('pool_images', '?')} pool images selected "
                f"(budget {repair.get('budget', '?')}); precision: share of selected images that "
                "carry the cause, against the pool's base rate.</p>" + _table(rows)
            )
        run = _read_json(out / "summary.json") or {}
        if run.get("seconds") is not None:
            parts.append(f"<p class='muted'>Pipeline wall time: {run['seconds']} s.</p>")
        self.add("summary", "Summary metrics", "".join(parts))

    def errors(self, cands: pd.DataFrame) -> None:
        path, rel = self._rel("error-breakdown.png")
        counts = plots.error_breakdown_chart(cands, path)
        failing = cands[cands["outcome"].isin(["fp", "fn"])]
        kinds = []
        if "fn_kind" in failing.columns:
            kinds = [
                {"fn kind": k, "count": int(n)}
                for k, n in failing["fn_kind"].dropna().value_counts().items()
            ]
        body = (
            "<p>Every false positive has a TIDE error type (cls: right box, wrong class; loc: "
            "right class, poor box; both; dupe: a second detection of a matched object; bkg: "
            "background); every missed object is <em>missed</em>.</p>"
            + _img(rel, "error breakdown chart")
            + _table([{"error type": t, "count": n} for t, n in counts.items()], cls="inline")
            + (_table(kinds, cls="inline") if kinds else "")
        )
        self.add("errors", "Error breakdown (TIDE)", body)

    def gallery(self, cands: pd.DataFrame, images: _Images) -> None:
        expl = _read_table(self.d / "explanations.parquet")
        if expl is None or not len(expl):
            self.add("gallery", "Failure gallery", "<p class='muted'>No explanations yet.</p>")
            return
        methods = list(dict.fromkeys(expl["method"]))
        primary = "e2x" if "e2x" in methods else methods[0]
        valid = expl[expl["valid"].astype(bool)]
        prim = valid[(valid["method"] == primary) & (valid["output"] == "score")]
        c = cands.set_index("candidate_id", drop=False)
        prim = prim[prim["candidate_id"].isin(c.index)]
        # round-robin over error types, so every type shows in a limited gallery
        types = c.loc[prim["candidate_id"], "error_type"].fillna("missed").to_numpy()
        prim = prim.assign(_type=types, _k=prim.groupby(types).cumcount().to_numpy())
        chosen = prim.sort_values(["_k", "_type", "candidate_id"], kind="stable")
        chosen = chosen.head(self.max_failures)
        modes = {}
        feats = _read_table(self.d / "features.parquet")
        if feats is not None and "mode_id" in feats:
            for cid, m in feats[feats["mode_id"] >= 0].groupby("candidate_id")["mode_id"]:
                modes[cid] = sorted({int(x) for x in m})
        by_image = cands.groupby("image_id")
        thr = self.cfg.mining.operating_threshold
        maps_cache: dict[str, Any] = {}

        def pixel_map(r: pd.Series) -> np.ndarray | None:
            if not isinstance(r.get("map_file"), str):
                return None
            f = r["map_file"]
            if f not in maps_cache:
                p = safe_join(self.d, f)
                maps_cache.clear()  # one image's maps at a time
                maps_cache[f] = np.load(p, allow_pickle=False) if p.is_file() else None
            z = maps_cache[f]
            return None if z is None or r["map_key"] not in z.files else z[r["map_key"]]

        cards = []
        rows_by_cand = {k: g for k, g in valid.groupby("candidate_id")}
        for r in chosen.sort_values(["image_id", "candidate_id"]).itertuples(index=False):
            cand = c.loc[r.candidate_id]
            image = images.open(cand)
            if image is None:
                continue
            name = _safe_name(r.candidate_id)
            img_rows = by_image.get_group(cand["image_id"])
            gts = [
                b
                for _, g in img_rows.drop_duplicates("gt_id").iterrows()
                if g.get("gt_id", -1) >= 0 and (b := _box(g, "gt")) is not None
            ]
            dets = [
                b
                for _, g in img_rows.iterrows()
                if g["outcome"] in ("tp", "fp")
                and g.get("score", 0) >= thr
                and g["candidate_id"] != r.candidate_id
                and (b := _box(g, "box")) is not None
            ]
            box = _box(cand, "box")
            gt = _box(cand, "gt")
            figs = []
            path, rel = self._rel(f"fail-{name}-boxes.png")
            plots.boxes_panel(image, path, gts=gts, detections=dets, candidate=box, candidate_gt=gt)
            figs.append(_img(rel, f"{r.candidate_id} boxes", "GT / detections"))
            own = rows_by_cand.get(r.candidate_id, valid.iloc[:0])
            panels = [(primary, "score")]
            panels += [(m, "score") for m in methods if m != primary]
            panels += [(primary, o) for o in BOX_OUTPUTS]
            panels += [(m, o) for m in methods if m != primary for o in BOX_OUTPUTS]
            for method, output in panels:
                hit = own[(own["method"] == method) & (own["output"] == output)]
                if not len(hit):
                    continue
                m = pixel_map(hit.iloc[0])
                if m is None or m.shape != (image.height, image.width):
                    continue
                path, rel = self._rel(f"fail-{name}-{_safe_name(method)}-{output}.png")
                plots.overlay_panel(image, m, path, box=box)
                label = method.upper() if output == "score" else f"{method.upper()} d{output}"
                figs.append(_img(rel, f"{r.candidate_id} {method} {output}", label))
            err = cand.get("error_type")
            kind = cand.get("fn_kind") if cand["outcome"] == "fn" else None
            info = [
                f"<b>{html.escape(str(r.candidate_id))}</b>",
                f"{cand['outcome']} · {err if isinstance(err, str) else '–'}"
                + (f" ({kind})" if isinstance(kind, str) else ""),
                f"class {html.escape(str(cand.get('category', cand.get('label'))))}, "
                f"score {_fmt(cand.get('score'))}",
            ]
            if isinstance(cand.get("cause"), str) and cand["cause"]:
                info.append(f"planted cause: {html.escape(cand['cause'])}")
            if r.candidate_id in modes:
                info.append("failure mode " + ", ".join(map(str, modes[r.candidate_id])))
            cards.append(
                "<div class='card'><div class='meta'>"
                + "<br>".join(info)
                + "</div><div class='row'>"
                + "".join(figs)
                + "</div></div>"
            )
        n_fail = int(cands["outcome"].isin(["fp", "fn"]).sum())
        methods_note = ", ".join(methods)
        body = (
            f"<p>{len(prim)} of {n_fail} failures have a valid {primary.upper()} explanation "
            f"(methods in this run: {html.escape(methods_note)}); {len(cards)} shown, every "
            "error type in turn. Boxes: <span style='color:#28dc28'>GT</span>, "
            "<span style='color:#ffaa00'>detections at the operating threshold</span>, "
            "<span style='color:#ff2828'>the candidate</span>. Heatmaps: red = positive "
            "attribution, blue = negative, scaled by the largest |value|.</p>" + "".join(cards)
        )
        self.add("gallery", "Failure gallery", body)

    def modes(self) -> None:
        modes = _read_table(self.d / "failure_modes.parquet")
        if modes is None:
            return
        cols = [
            c
            for c in (
                "mode_id",
                "kind",
                "size",
                "n_candidates",
                "n_images",
                "classes",
                "error_types",
                "cause",
                "cause_share",
            )
            if c in modes.columns
        ]
        parts = [_table(modes[cols].to_dict("records"))]
        for m in modes.itertuples(index=False):
            crop = getattr(m, "crops", None)
            title = (
                f"Mode {m.mode_id}: {m.kind}, {m.size} failing features of "
                f"{getattr(m, 'n_candidates', '?')} failures; planted cause "
                f"{getattr(m, 'cause', '–')} ({_fmt(getattr(m, 'cause_share', None))})"
            )
            fig = ""
            if isinstance(crop, str) and crop:
                src = safe_join(self.d, crop)
                path, rel = self._rel(f"mode-{int(m.mode_id)}.png")
                if src.is_file() and plots.copy_png(src, path):
                    fig = _img(rel, f"mode {m.mode_id} representatives")
                else:
                    self.n_images -= 1
            parts.append(f"<h3>{html.escape(title)}</h3>{fig}")
        self.add("modes", "Failure modes", "".join(parts))

    def repair(self, images: _Images) -> None:
        rs = _read_table(self.d / "repair_set.parquet")
        if rs is None:
            return
        parts = [
            f"<p>{len(rs)} pool images selected; the yellow box is the region that matched the "
            "failure mode.</p>"
        ]
        for mode_id, group in rs.sort_values(["mode_id", "rank"]).groupby("mode_id"):
            figs = []
            for _, r in group.head(self.max_repair).iterrows():
                image = images.open(r)
                box = _box(r, "")
                if image is None or box is None:
                    continue
                path, rel = self._rel(f"repair-{int(mode_id)}-{_safe_name(r['file_name'])}.png")
                plots.region_panel(image, box, path)
                cap = f"#{int(r['rank'])} {html.escape(str(r['file_name']))} ({_fmt(r['score'])})"
                figs.append(_img(rel, f"repair {r['file_name']}", cap))
            parts.append(
                f"<h3>Mode {int(mode_id)}: {len(group)} images</h3><div class='row'>"
                + "".join(figs)
                + "</div>"
            )
        self.add("repair", "Repair set", "".join(parts))

    def retrain(self) -> None:
        data = None
        for p in (self.cfg.output_dir / "retrain.json", self.d / "retrain.json"):
            if (data := _read_json(p)) is not None:
                break
        if data is None:
            return
        parts = []
        before, after = data.get("before"), data.get("after")
        if isinstance(before, dict) and isinstance(after, dict):
            fb, fa = _flatten(before), _flatten(after)
            rows = [
                {"metric": k, "before": fb[k], "after": fa[k], "change": fa[k] - fb[k]}
                for k in fb
                if k in fa
            ]
            parts.append(_table(rows))
            if rows:
                path, rel = self._rel("before-after.png")
                plots.before_after_chart(rows[:16], path)
                parts.append(_img(rel, "before/after chart"))
        for key, value in data.items():
            if key in ("before", "after"):
                continue
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                parts.append(f"<h3>{html.escape(key)}</h3>" + _table(value))
            elif (
                isinstance(value, dict)
                and value
                and all(isinstance(v, dict) for v in value.values())
            ):
                rows = [{key: k, **v} for k, v in value.items()]
                parts.append(f"<h3>{html.escape(key)}</h3>" + _table(rows))
        if not parts:
            parts.append(f"<pre>{html.escape(json.dumps(data, indent=2, default=str))}</pre>")
        self.add("retrain", "Before / after retraining", "".join(parts))

    def bench(self) -> None:
        if self.bench_dir is None or not Path(self.bench_dir).is_dir():
            return
        parts = []
        for png in sorted(Path(self.bench_dir).glob("*.png")):
            path, rel = self._rel(f"bench-{_safe_name(png.stem)}.png")
            if plots.copy_png(png, path):
                parts.append(_img(rel, f"benchmark {png.stem}", html.escape(png.name)))
            else:
                self.n_images -= 1
        for md in sorted(Path(self.bench_dir).glob("*.md")):
            parts.append(
                f"<details><summary>{html.escape(md.name)}</summary>"
                f"<pre>{html.escape(md.read_text())}</pre></details>"
            )
        if parts:
            self.add(
                "bench",
                "Method comparison and benchmarks",
                f"<p class='muted'>From {html.escape(str(self.bench_dir))}.</p>" + "".join(parts),
            )

    def links(self) -> None:
        if not self.fiftyone:
            return
        f = self.fiftyone
        items = [
            f"<li><code>{html.escape(f['split'])}</code>: view <code>e2x-failures</code></li>",
            f"<li><code>{html.escape(f['failures'])}</code>: views <code>e2x-failures</code>, "
            "<code>e2x-mode-&lt;k&gt;</code>, with <code>fo.Heatmap</code> fields</li>",
            f"<li><code>{html.escape(f['pool'])}</code>: saved view <code>e2x-repair</code></li>",
        ]
        self.add(
            "fiftyone",
            "FiftyOne views",
            "<ul>" + "".join(items) + "</ul><p>Open with <code>e2x app --view e2x-repair</code> "
            "(or <code>--view e2x-mode-0</code>).</p>",
        )

    # -- page ------------------------------------------------------------------------------
    def write(self, run_id: str) -> Path:
        nav = " · ".join(f"<a href='#{a}'>{html.escape(t)}</a>" for a, t, _ in self.sections)
        body = "".join(
            f"<section id='{a}'><h2>{html.escape(t)}</h2>{b}</section>" for a, t, b in self.sections
        )
        cfg = self.cfg
        page = PAGE.format(
            title=html.escape(f"E2X report: {run_id}"),
            run_id=html.escape(run_id),
            meta=html.escape(
                f"output {cfg.output_dir} · split {self.split} · model {cfg.model.arch} · "
                f"methods {', '.join(cfg.explain.methods)} · written "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
            ),
            nav=nav,
            body=body,
            n_images=self.n_images,
        )
        index = self.out / "index.html"
        write_text(index, page)
        return index


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def build_report(
    cfg: E2XConfig,
    split: str | None = None,
    reports_dir: str | Path = "reports",
    run_id: str | None = None,
    *,
    bench_dir: str | Path | None = "reports/bench",
    max_failures: int = 48,
    fiftyone: bool = True,
) -> Path:
    """Write ``<reports_dir>/<run_id>/index.html`` for the run in ``cfg.output_dir``.

    Needs the split's candidates table (``e2x mine``); every later table is optional. Returns
    the path of ``index.html``.
    """
    from ..stages import candidates_table, fiftyone_names

    split = split or cfg.data.eval_split
    cands = pd.read_parquet(candidates_table(cfg, split))
    run_id = run_id or default_run_id(cfg)
    out = safe_join(Path(reports_dir), run_id)
    out.mkdir(parents=True, exist_ok=True)
    rb = ReportBuilder(
        cfg,
        split,
        out,
        bench_dir=Path(bench_dir) if bench_dir else None,
        max_failures=max_failures,
        fiftyone=fiftyone_names(cfg, split) if fiftyone else None,
    )
    try:
        images_dir = cfg.data.split(split).images
    except (KeyError, ValueError, AttributeError):
        images_dir = None
    try:
        pool_dir = cfg.data.split(cfg.repair.pool_split).images
    except (KeyError, ValueError, AttributeError):
        pool_dir = None
    rb.summary(cands)
    rb.errors(cands)
    rb.gallery(cands, _Images(images_dir))
    rb.modes()
    rb.repair(_Images(pool_dir))
    rb.retrain()
    rb.bench()
    rb.links()
    return rb.write(run_id)


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
