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

Each section is a Jinja2 template under ``templates/`` (rendered by :mod:`.render`, with
autoescaping): the builder below only collects values, never markup. A small inline script in
``page.html.j2`` counts the images that loaded (``#e2x-image-check``), which the browser test
reads back from headless Chromium.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from ..config import E2XConfig
from ..fiftyone_io.convert import FAILURES_VIEW, MODE_VIEW, REPAIR_VIEW, dataset_names, mode_view
from ..io_utils import safe_join, write_text
from ..vocab import FAILURES, OUTCOMES
from . import gallery, plots
from .markup import Images, box, fmt, img, read_json, read_table, safe_name, table
from .render import Markup, render

# the detector rows of the summary: (row name, the evaluation's key)
EVALUATION_ROWS = (
    ("images", "images"),
    ("mAP@0.5 (all)", "map50"),
    ("mAP@0.5 (clean images)", "map50_clean"),
    ("recall, clean objects", "recall_clean"),
)
CLUSTER_KEYS = (
    "explained_failures",
    "failing_features",
    "failure_modes",
    "features_on_a_cause",
    "adjusted_rand_index",
)
MODE_COLUMNS = (
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


def default_run_id(cfg: E2XConfig) -> str:
    """``<output_dir name>-<YYYYmmdd-HHMMSS>``, e.g. ``demo-20250101-020000``."""
    return f"{Path(cfg.output_dir).resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"


def evaluation_rows(evals: list[dict]) -> list[dict]:
    """One row per detector metric, one column per evaluated split: mAP, recall on clean
    objects and per planted cause, FP rate on distractors."""
    rows = [
        {"metric": name, **{e["split"]: e.get(key) for e in evals}} for name, key in EVALUATION_ROWS
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
    return rows


def repair_part(repair: dict) -> dict[str, Any]:
    """The repair set's size and its precision per planted cause, against the base rate."""
    prec = repair.get("precision", {})
    per_cause = prec.get("per_cause", {})
    rows = [{"cause": c, **v} for c, v in per_cause.items() if isinstance(v, dict)]
    if "any_cause" in prec:
        rows.append({"cause": "any cause", **prec["any_cause"]})
    return {
        "selected": repair.get("selected", "?"),
        "pool_images": repair.get("pool_images", "?"),
        "budget": repair.get("budget", "?"),
        "table": table(rows),
    }


class Section(NamedTuple):
    """One rendered section of the page: its anchor, its title and its (escaped) HTML."""

    anchor: str
    title: str
    body: Markup


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
        self.cfg = cfg
        self.split = split
        self.out = out_dir
        self.img_dir = out_dir / "img"
        self.layout = cfg.split_layout(split)
        self.bench_dir = bench_dir
        self.max_failures = max_failures
        self.max_repair = max_repair
        self.fiftyone = fiftyone
        self.sections: list[Section] = []
        self.n_images = 0

    # -- helpers ---------------------------------------------------------------------------
    def _rel(self, name: str) -> tuple[Path, str]:
        path = safe_join(self.img_dir, name)
        self.n_images += 1
        return path, f"img/{name}"

    def add(self, anchor: str, title: str, **context: Any) -> None:
        """Render section ``anchor`` from ``templates/<anchor>.html.j2`` with ``context``."""
        self.sections.append(Section(anchor, title, render(f"{anchor}.html.j2", **context)))

    # -- sections --------------------------------------------------------------------------
    def summary(self, cands: pd.DataFrame) -> None:
        """Detector evaluation per split, mining outcomes, failure modes, repair precision."""
        evals = [
            e
            for p in self.cfg.layout.evaluations()
            if isinstance(e := read_json(p), dict) and "split" in e
        ]
        cluster = read_json(self.layout.cluster_summary)
        repair = read_json(self.layout.repair_summary)
        run = read_json(self.cfg.layout.run_summary) or {}
        self.add(
            "summary",
            "Summary metrics",
            evaluation=table(evaluation_rows(evals)) if evals else None,
            split=self.split,
            mining=table([self._mining(cands)]),
            cluster=(
                table([{k: cluster.get(k) for k in CLUSTER_KEYS if k in cluster}])
                if cluster
                else None
            ),
            repair=repair_part(repair) if repair else None,
            seconds=run.get("seconds"),
        )

    def _mining(self, cands: pd.DataFrame) -> dict:
        outcomes = cands["outcome"].value_counts()
        mining = read_json(self.layout.mining_metrics) or {}
        return {
            "images": mining.get("images", int(cands["image_id"].nunique())),
            **{o: int(outcomes.get(o, 0)) for o in OUTCOMES},
            "precision": mining.get("precision"),
            "recall": mining.get("recall"),
            "mAP@0.5": mining.get("map50"),
        }

    def errors(self, cands: pd.DataFrame) -> None:
        path, rel = self._rel("error-breakdown.png")
        counts = plots.error_breakdown_chart(cands, path)
        failing = cands[cands["outcome"].isin(FAILURES)]
        kinds = []
        if "fn_kind" in failing.columns:
            kinds = [
                {"fn kind": k, "count": int(n)}
                for k, n in failing["fn_kind"].dropna().value_counts().items()
            ]
        # TIDE's dAP per type (mining metrics); a run mined before it existed shows "–"
        mining = read_json(self.layout.mining_metrics) or {}
        dap = mining.get("tide_dap") or {}
        rows = [{"error type": t, "count": n, "dAP": dap.get(t)} for t, n in counts.items()]
        self.add(
            "errors",
            "Error breakdown (TIDE)",
            chart=img(rel, "error breakdown chart"),
            counts=table(rows, cls="inline"),
            kinds=table(kinds, cls="inline") if kinds else None,
            special=mining.get("tide_dap_special") or None,
        )

    def gallery(self, cands: pd.DataFrame, images: Images) -> None:
        """The explained failures (:mod:`.gallery`), at most ``max_failures`` of them."""
        expl = read_table(self.layout.explanations)
        if expl is None or not len(expl):
            self.add("gallery", "Failure gallery", cards=None)
            return
        context = gallery.gallery_context(
            self._rel,
            cands,
            expl,
            read_table(self.layout.features),
            images,
            self.layout.root,
            self.cfg.mining.operating_threshold,
            self.max_failures,
        )
        self.add("gallery", "Failure gallery", **context)

    def modes(self) -> None:
        modes = read_table(self.layout.failure_modes)
        if modes is None:
            return
        cols = [c for c in MODE_COLUMNS if c in modes.columns]
        shown = []
        for m in modes.itertuples(index=False):
            crop = getattr(m, "crops", None)
            title = (
                f"Mode {m.mode_id}: {m.kind}, {m.size} failing features of "
                f"{getattr(m, 'n_candidates', '?')} failures; planted cause "
                f"{getattr(m, 'cause', '–')} ({fmt(getattr(m, 'cause_share', None))})"
            )
            fig = None
            if isinstance(crop, str) and crop:
                src = safe_join(self.layout.root, crop)
                path, rel = self._rel(f"mode-{int(m.mode_id)}.png")
                if src.is_file() and plots.copy_png(src, path):
                    fig = img(rel, f"mode {m.mode_id} representatives")
                else:
                    self.n_images -= 1
            shown.append({"title": title, "figure": fig})
        self.add(
            "modes", "Failure modes", overview=table(modes[cols].to_dict("records")), modes=shown
        )

    def repair(self, images: Images) -> None:
        rs = read_table(self.layout.repair_set)
        if rs is None:
            return
        groups = []
        for mode_id, group in rs.sort_values(["mode_id", "rank"]).groupby("mode_id"):
            figs = []
            for _, r in group.head(self.max_repair).iterrows():
                image = images.open(r)
                region = box(r, "")
                if image is None or region is None:
                    continue
                path, rel = self._rel(f"repair-{int(mode_id)}-{safe_name(r['file_name'])}.png")
                plots.region_panel(image, region, path)
                cap = f"#{int(r['rank'])} {r['file_name']} ({fmt(r['score'])})"
                figs.append(img(rel, f"repair {r['file_name']}", cap))
            groups.append({"mode_id": int(mode_id), "n_images": len(group), "figures": figs})
        self.add("repair", "Repair set", n_selected=len(rs), groups=groups)

    def retrain(self) -> None:
        """Before / after metrics of ``e2x retrain`` (table and chart), then its other tables."""
        data = read_json(self.cfg.layout.retrain_summary)
        if data is None:
            return
        before_after, chart, tables = None, None, []
        before, after = data.get("before"), data.get("after")
        if isinstance(before, dict) and isinstance(after, dict):
            fb, fa = _flatten(before), _flatten(after)
            rows = [
                {"metric": k, "before": fb[k], "after": fa[k], "change": fa[k] - fb[k]}
                for k in fb
                if k in fa
            ]
            before_after = table(rows)
            if rows:
                path, rel = self._rel("before-after.png")
                plots.before_after_chart(rows[:16], path)
                chart = img(rel, "before/after chart")
        for key, value in data.items():
            if key in ("before", "after"):
                continue
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                tables.append((key, table(value)))
            elif (
                isinstance(value, dict)
                and value
                and all(isinstance(v, dict) for v in value.values())
            ):
                tables.append((key, table([{key: k, **v} for k, v in value.items()])))
        # nothing tabular: show the JSON itself rather than an empty section
        raw = None
        if before_after is None and not tables:
            raw = json.dumps(data, indent=2, default=str)
        self.add(
            "retrain",
            "Before / after retraining",
            before_after=before_after,
            chart=chart,
            tables=tables,
            raw=raw,
        )

    def history(self) -> None:
        """The run history: per failure mode, its status and share still failing, run by run."""
        from ..history import HistoryStore, trend_table

        store = HistoryStore(self.cfg.history_path)
        if not store.exists():
            return
        trend = trend_table(store)
        if not len(trend):
            return
        chart = None
        if trend["seq"].nunique() > 1:
            path, rel = self._rel("history-trend.png")
            plots.history_trend_chart(trend, path)
            chart = img(rel, "share of each failure mode's members still failing, run by run")
        rows = trend.to_dict("records")
        self.add(
            "history",
            "Failure modes across runs",
            store=store.path.name,
            chart=chart,
            rows=table(rows),
        )

    def bench(self) -> None:
        if self.bench_dir is None or not Path(self.bench_dir).is_dir():
            return
        figures = []
        for png in sorted(Path(self.bench_dir).glob("*.png")):
            path, rel = self._rel(f"bench-{safe_name(png.stem)}.png")
            if plots.copy_png(png, path):
                figures.append(img(rel, f"benchmark {png.stem}", png.name))
            else:
                self.n_images -= 1
        notes = [(md.name, md.read_text()) for md in sorted(Path(self.bench_dir).glob("*.md"))]
        if figures or notes:
            self.add(
                "bench",
                "Method comparison and benchmarks",
                source=str(self.bench_dir),
                figures=figures,
                notes=notes,
            )

    def links(self) -> None:
        if not self.fiftyone:
            return
        self.add(
            "fiftyone",
            "FiftyOne views",
            names=self.fiftyone,
            failures_view=FAILURES_VIEW,
            mode_views=MODE_VIEW.format(mode="<k>"),
            repair_view=REPAIR_VIEW,
            mode_view_0=mode_view(0),
        )

    # -- page ------------------------------------------------------------------------------
    def write(self, run_id: str) -> Path:
        cfg = self.cfg
        page = render(
            "page.html.j2",
            run_id=run_id,
            meta=(
                f"output {cfg.output_dir} · split {self.split} · model {cfg.model.arch} · "
                f"methods {', '.join(cfg.explain.methods)} · written "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
            ),
            sections=self.sections,
            n_images=self.n_images,
        )
        index = self.out / "index.html"
        write_text(index, str(page))
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


def _images_dir(cfg: E2XConfig, split: str) -> Path | None:
    """The split's image folder, None when the config does not name one."""
    try:
        return cfg.data.split(split).images
    except (KeyError, ValueError, AttributeError):
        return None


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
    split = split or cfg.data.eval_split
    cands = pd.read_parquet(cfg.split_layout(split).require("candidates"))
    run_id = run_id or default_run_id(cfg)
    out = safe_join(Path(reports_dir), run_id)
    out.mkdir(parents=True, exist_ok=True)
    rb = ReportBuilder(
        cfg,
        split,
        out,
        bench_dir=Path(bench_dir) if bench_dir else None,
        max_failures=max_failures,
        fiftyone=dataset_names(cfg, split) if fiftyone else None,
    )
    rb.summary(cands)
    rb.errors(cands)
    rb.gallery(cands, Images(_images_dir(cfg, split)))
    rb.modes()
    rb.repair(Images(_images_dir(cfg, cfg.repair.pool_split)))
    rb.retrain()
    rb.history()
    rb.bench()
    rb.links()
    return rb.write(run_id)
