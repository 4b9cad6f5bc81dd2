"""``e2x bench targets``: the performance targets (a)-(f) and (h) in one table, collated from the
results the other benchmarks wrote (``explain``, ``mine``, ``scale``, ``realsize``) in ``--out``.

It runs nothing: every ratio comes from ONE run of the benchmark that measured it (E2X and LIME
on the same detections, mining and plain inference interleaved on the same images, ...), and each
row names that run's command and the machine's load. A benchmark that has not been run shows as
"not run", never as met.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2x_pipeline.config import E2XConfig

from .common import write_bench

Row = dict[str, Any]


def _load(out_dir: Path, name: str) -> dict[str, Any] | None:
    path = out_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt_load(load: Any) -> str:
    """Load averages rounded: a list, a list of lists, or ``{start, end}``."""
    if isinstance(load, dict):
        return ", ".join(f"{k} {_fmt_load(v)}" for k, v in load.items())
    if isinstance(load, list | tuple):
        if load and isinstance(load[0], list | tuple):
            return "; ".join(_fmt_load(x) for x in load)
        return "[" + ", ".join(f"{float(x):.2f}" for x in load) + "]"
    return str(load)


def _row(key: str, target: str, source: dict | None, name: str, **kw: Any) -> Row:
    row: Row = {"id": key, "target": target, "bench": name}
    if source is None:
        return row | {"measured": "not run", "met": None, "command": None, "load": None}
    load = source.get("load_average_1_5_15") or source.get("load_average_1_5_15_end")
    return row | {"command": source.get("command"), "load": load} | kw


def _explain_rows(e: dict | None) -> list[Row]:
    if e is None:
        return [
            _row("a", "E2X >= 20x faster than LIME at >= rho (LIME reference)", None, "explain"),
            _row("b", "E2X >= 100x faster than D-RISE N=5000 at <= deletion AUC", None, "explain"),
        ]
    met, notes = e["targets_met"], e["target_notes"]
    a = "E2X >= 20x faster than LIME at >= rho"
    rows = [_row("a", a + " (LIME reference)", e, "explain", measured=notes[a], met=met[a])]
    for p in e.get("ratios", {}).get("e2x_over_lime_matched_rho", []):  # each LIME setting
        if p.get("e2x"):
            rows.append(
                _row(
                    "a",
                    f"... against {p['lime']} alone",
                    e,
                    "explain",
                    measured=f"{p['e2x']} (rho {p['e2x_rho']}) vs {p['lime']} (rho "
                    f"{p['lime_rho']}): {p['speed_ratio']}x",
                    met=p["speed_ratio"] >= 20,
                )
            )
    b = "E2X >= 100x faster than D-RISE N=5000 at <= deletion AUC"
    rows.append(_row("b", b + " (zero fill, RISE's)", e, "explain", measured=notes[b], met=met[b]))
    bm = b + ", mean fill"
    if bm in met:
        rows.append(
            _row(
                "b",
                b + " (mean fill, E2X's reference)",
                e,
                "explain",
                measured=notes[bm],
                met=met[bm],
            )
        )
    peer = e.get("peer_drise")
    if peer:
        rows.append(
            _row(
                "b",
                "Microsoft's D-RISE (vision-explanation-methods) vs ours, same detections",
                e,
                "explain",
                measured=f"map rho {peer['rho_maps_mean']}; ours "
                f"{peer['speed_ratio_ours_over_microsoft']}x as many detections / s",
                met=None,
            )
        )
    return rows


def _mine_rows(m: dict | None) -> list[Row]:
    t = "mining <= 1.1x plain batched inference"
    if m is None:
        return [_row("d", t, None, "mine")]
    rows = m.get("rows") or [{"detector": "run's detector", **m}]
    return [
        _row(
            "d",
            f"{t} ({r['detector']}, {r.get('images', '?')} images)",
            m,
            "mine",
            measured=f"{r['ratio_of_medians']}x",
            met=bool(r["target_met"]),
        )
        for r in rows
    ]


def _scale_rows(s: dict | None) -> list[Row]:
    te = "explain on 2 Dask workers >= 1.7x faster than on 1 (one thread each)"
    tf = "cost linear in candidates x K (3+ sizes, fitted slope)"
    if s is None:
        return [_row("e", te, None, "scale"), _row("f", tf, None, "scale")]
    load = [r.get("load_average_before") for r in s["runs"]]
    rows = [
        _row("e", te, s, "scale", measured=f"{s['speedup']}x", met=bool(s["target_met"]))
        | {"load": load}
    ]
    lc = s.get("linear_cost")
    if lc:
        f = lc["fits"]["a + b n K"]
        rows.append(
            _row(
                "f",
                tf,
                s,
                "scale",
                measured=f"{len(lc['points'])} points: {f['ms_per']['n K']} ms per n K, "
                f"R^2 {f['r2']}",
                met=f["r2"] >= 0.95,
            )
            | {"load": load}
        )
    else:
        rows.append(_row("f", tf, None, "scale"))
    return rows


def _realsize_rows(r: dict | None) -> list[Row]:
    th = "a real-size torchvision detector explained at >= 512 px: s / detection, floor"
    if r is None:
        return [
            _row("h", th, None, "realsize"),
            _row("h", "GPU <= 0.5 s / detection", None, "realsize"),
        ]
    by = {x["setting"]: x for x in r["settings"]}
    parts = [
        f"{k}: {v['seconds_per_detection']} s ({v['ratio_to_floor']}x floor)"
        for k, v in by.items()
        if k.startswith("e2x K=") and "unshared" not in k or k == "odam"
    ]
    rows = [
        _row(
            "h",
            f"{th} ({r['arch']}, {r['min_size']} px, {r['device']}, batch {r['batch_size']})",
            r,
            "realsize",
            measured="; ".join(parts),
            met=None,  # a measurement to report, not a pass-fail target
        )
    ]
    g = r["gpu_target"]
    rows.append(
        _row(
            "h",
            f"GPU: Faster R-CNN R50 at 800 px, E2X K=32 <= {g['target_s']} s / detection",
            r,
            "realsize",
            measured=g["measured_s"] if g["met"] is not None else f"not measured: {g['note']}",
            met=g["met"],
        )
    )
    return rows


def bench_targets(cfg: E2XConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Collate the targets of ``explain``, ``mine``, ``scale`` and ``realsize`` in ``out_dir``;
    write ``targets.{json,md}`` there."""
    out_dir = Path(out_dir)
    rows = (
        _explain_rows(_load(out_dir, "explain"))
        + _mine_rows(_load(out_dir, "mine"))
        + _scale_rows(_load(out_dir, "scale"))
        + _realsize_rows(_load(out_dir, "realsize"))
    )
    lines = [
        "Each row is one run of the named benchmark (its command below the table); ratios are "
        "within that run. met: yes / MISSED / - (not a pass-fail row, or not measured).",
        "",
        "| | target | measured | met | bench |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        flag = "-" if r["met"] is None else ("yes" if r["met"] else "**MISSED**")
        lines.append(f"| ({r['id']}) | {r['target']} | {r['measured']} | {flag} | {r['bench']} |")
    lines += ["", "Commands and load average (1, 5, 15 min) of the runs:", ""]
    seen = set()
    for r in rows:
        if r["command"] and r["bench"] not in seen:
            seen.add(r["bench"])
            lines.append(f"- {r['bench']}: `{r['command']}`; load {_fmt_load(r['load'])}")
    result = {"rows": rows}
    write_bench(out_dir, "targets", result, "\n".join(lines))
    return result
