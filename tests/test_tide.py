"""TIDE dAP per error type: a hand-computed case, and tidecv 1.0.1 as the oracle.

tidecv's own ``TIDERun`` (its matching, error typing, oracles and AP) runs on the same GT and
detections as :func:`e2x_pipeline.mining.tide.tide_dap`: a planted set with every error type
(including a GT that both a ``loc`` and a ``cls`` error point at, where tidecv fixes only the
higher-scored one) and random boxes. tidecv is not a runtime dependency: its wheel requires
opencv-python, which would clobber the opencv-python-headless that FiftyOne uses, so it is
installed without its dependencies (``pip install --no-deps tidecv==1.0.1``) and the two modules
it imports only for plotting and downloads (seaborn, appdirs) are stubbed while it is imported.
It needs no patch for numpy 2. On the benchmark's val split (the committed SSD) the two agree to
1e-12 (README, "TIDE").
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from e2x_pipeline.config import MiningConfig
from e2x_pipeline.data.coco import CocoDataset
from e2x_pipeline.detectors.base import Detections
from e2x_pipeline.mining import tide_dap
from e2x_pipeline.vocab import ERROR_TYPES

TIDECV_NAMES = {
    "Cls": "cls",
    "Loc": "loc",
    "Both": "both",
    "Dupe": "dupe",
    "Bkg": "bkg",
    "Miss": "missed",
    "FalsePos": "fp",
    "FalseNeg": "fn",
}
TOL = 0.005  # 0.5 AP points; with untied scores the two agree to rounding
SIZE = 128

Det = tuple[int, float, list[float]]  # category, score, xyxy
Gt = tuple[int, list[float]]  # category, xyxy


@pytest.fixture(scope="module")
def tidecv_run():
    """tidecv's ``TIDERun`` class; skips when tidecv is not installed (see module docstring)."""
    stubs = {}
    for name in ("seaborn", "appdirs"):
        try:
            __import__(name)
        except ImportError:
            stubs[name] = types.ModuleType(name)
    if "appdirs" in stubs:
        stubs["appdirs"].user_data_dir = lambda *a, **k: str(Path.home())
    sys.modules.update(stubs)
    try:
        quantify = pytest.importorskip(
            "tidecv.quantify", reason="pip install --no-deps tidecv==1.0.1 (the TIDE oracle)"
        )
    finally:
        for name in stubs:  # tidecv keeps its references; nothing else sees the stubs
            sys.modules.pop(name, None)
    return quantify


def _case(gts: dict[int, list[Gt]], dets: dict[int, list[Det]]):
    """An in-memory two-category dataset and detections (model label = category id)."""
    ids = sorted(set(gts) | set(dets))
    anns = {
        i: [
            {"id": 1000 * i + k, "image_id": i, "category_id": c,
             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "iscrowd": 0}
            for k, (c, b) in enumerate(gts.get(i, []))
        ]
        for i in ids
    }  # fmt: skip
    ds = CocoDataset(
        path=Path("synthetic.json"),
        image_dir=Path("."),
        images={i: {"id": i, "file_name": f"{i}.png", "width": SIZE, "height": SIZE} for i in ids},
        annotations=anns,
        categories={1: "disk", 2: "square"},
    )
    detections = {}
    for i in ids:
        rows = dets.get(i, [])
        detections[i] = Detections(
            torch.tensor([r[2] for r in rows], dtype=torch.float32).reshape(-1, 4),
            torch.tensor([r[1] for r in rows], dtype=torch.float32),
            torch.tensor([r[0] for r in rows], dtype=torch.int64),
            torch.arange(len(rows)),
        )
    return ds, ids, detections


def _ours(ds, ids, detections) -> dict[str, float]:
    out = tide_dap(ds, ids, detections, {1: 1, 2: 2}, MiningConfig())
    return {"ap50": out["ap50"], **out["dap"], **out["special"]}


def _tidecv(quantify, ds, ids, detections) -> dict[str, float]:
    """tidecv's AP and dAPs (as fractions) on the same boxes and (float32) scores."""
    gt = quantify.Data("gt", max_dets=10**6)  # we keep every detection; tidecv's default is 100
    pred = quantify.Data("pred", max_dets=10**6)
    for i in ids:
        gt.add_image(i, str(i))  # an image without GT is still evaluated
        for a in ds.annotations[i]:
            gt.add_ground_truth(i, a["category_id"], box=[float(v) for v in a["bbox"]])
        d = detections[i]
        for (x1, y1, x2, y2), s, c in zip(d.boxes.tolist(), d.scores.tolist(), d.labels.tolist()):
            pred.add_detection(i, c, s, box=[x1, y1, x2 - x1, y2 - y1])
    run = quantify.TIDERun(gt, pred, 0.5, 0.1, quantify.TIDE.BOX, gt.max_dets)
    errors = {**run.fix_main_errors(), **run.fix_special_errors()}
    return {
        "ap50": run.ap / 100,
        **{TIDECV_NAMES[e.short_name]: v / 100 for e, v in errors.items()},
    }


def _assert_close(ours: dict[str, float], oracle: dict[str, float], tol: float = TOL) -> None:
    bad = {k: (ours[k], oracle[k]) for k in oracle if abs(ours[k] - oracle[k]) > tol}
    assert not bad, f"(ours, tidecv) differ by more than {tol}: {bad}"


def test_hand_computed_dap() -> None:
    # one class, GT g1 and g2: tp on g1 (0.9), its duplicate (0.8), a loc error on g2 (0.7).
    # AP: precision 1 up to recall 1/2 -> 51/101. Fixing loc adds a tp at 0.7: precision 2/3 on
    # (1/2, 1] -> + 50 * 2/3 / 101. Fixing dupe alone adds no recall (0). g2 is fixable, so it is
    # not "missed" (0). Perfect recall without g2 -> 1, + 50/101; perfect precision changes no
    # rank above the last tp (0).
    g1, g2 = [10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 90.0, 90.0]
    ds, ids, dets = _case(
        {1: [(1, g1), (1, g2)]},
        {1: [(1, 0.9, g1), (1, 0.8, [11.0, 11.0, 41.0, 41.0]), (1, 0.7, [70, 70, 100, 100])]},
    )
    got = _ours(ds, ids, dets)
    want = {"ap50": 51 / 101, "loc": 50 * 2 / 3 / 101, "fn": 50 / 101}
    for k in ("cls", "both", "dupe", "bkg", "missed", "fp"):
        want[k] = 0.0
    assert got == pytest.approx(want, abs=1e-9)


def _planted():
    """Every error type above a true positive of its class, so that each oracle moves AP."""
    A, B = 1, 2
    return _case(
        {
            1: [(A, [10, 10, 40, 40]), (B, [60, 10, 90, 40])],
            2: [(A, [10, 60, 40, 90]), (A, [70, 70, 100, 100])],  # the second is missed
            3: [(B, [10, 10, 40, 40])],
            4: [(B, [60, 60, 100, 100])],  # a loc (0.83) and a cls (0.7) error point at it
            6: [(A, [30, 30, 60, 60])],
            7: [(B, [0, 0, 30, 30])],  # no detection: missed
            8: [(A, [10, 10, 40, 40]), (A, [60, 60, 90, 90])],
        },
        {
            1: [
                (A, 0.95, [10, 10, 40, 40]),  # tp
                (A, 0.9, [11, 11, 41, 41]),  # dupe
                (A, 0.85, [60, 10, 90, 40]),  # cls: the B GT is unmatched, so fixable
            ],
            2: [(A, 0.8, [20, 68, 50, 98]), (B, 0.88, [100, 0, 120, 20])],  # loc (IoU .32), bkg
            3: [(A, 0.87, [20, 18, 50, 48]), (B, 0.6, [10, 10, 40, 40])],  # both (IoU .35), tp
            4: [(B, 0.83, [72, 72, 112, 112]), (A, 0.7, [61, 61, 101, 101])],  # loc, cls
            5: [(A, 0.5, [0, 0, 20, 20])],  # bkg on an image without GT
            6: [(A, 0.55, [30, 30, 60, 60])],  # tp
            8: [(A, 0.58, [10, 10, 40, 40]), (A, 0.57, [60, 60, 90, 90])],  # tp
        },
    )


def test_dap_equals_tidecv_on_planted_errors(tidecv_run) -> None:
    ds, ids, dets = _planted()
    oracle = _tidecv(tidecv_run, ds, ids, dets)
    # the case must exercise every oracle, or agreeing on 0 would prove nothing; without tied
    # scores both compute the same points, so they agree to rounding
    assert all(oracle[e] > 0.005 for e in ERROR_TYPES), oracle
    _assert_close(_ours(ds, ids, dets), oracle, tol=1e-9)


def _random(rng: np.random.Generator, n_images: int):
    gts: dict[int, list[Gt]] = {}
    dets: dict[int, list[Det]] = {}
    for i in range(1, n_images + 1):
        rows: list[Gt] = []
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(10, 50, 2)
            x, y = rng.uniform(0, SIZE - w), rng.uniform(0, SIZE - h)
            rows.append((int(rng.integers(1, 3)), [x, y, x + w, y + h]))
        d: list[Det] = []
        for _ in range(int(rng.integers(0, 12))):
            if rows and rng.random() < 0.7:  # jittered copies of GT boxes: tp, dupe, loc, cls
                b = np.array(rows[int(rng.integers(len(rows)))][1]) + rng.normal(0, 6, 4)
                box = [
                    float(b[0]),
                    float(b[1]),
                    float(max(b[2], b[0] + 2)),
                    float(max(b[3], b[1] + 2)),
                ]
            else:
                x, y = rng.uniform(0, SIZE - 20, 2)
                box = [x, y, x + rng.uniform(8, 40), y + rng.uniform(8, 40)]
            # untied scores: tidecv and COCO break ties differently
            d.append((int(rng.integers(1, 3)), float(rng.uniform(0.02, 1)), box))
        gts[i], dets[i] = rows, d
    return _case(gts, dets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dap_equals_tidecv_on_random_boxes(tidecv_run, seed: int) -> None:
    ds, ids, dets = _random(np.random.default_rng(seed), 40)
    oracle = _tidecv(tidecv_run, ds, ids, dets)
    assert sum(oracle[e] > 0.005 for e in ERROR_TYPES) >= 4, oracle
    _assert_close(_ours(ds, ids, dets), oracle)


def test_mining_metrics_terminal_report_and_summary_show_dap(tmp_path: Path) -> None:
    """The planted case through ``mine`` (images on disk, a fixed-output detector): the metrics
    carry the same dAP as :func:`tide_dap`, and the terminal table, the HTML report's TIDE table
    and the Prefect markdown show it."""
    from test_mining import FakeDetector, write_coco

    from e2x_pipeline.config import load_config
    from e2x_pipeline.data.coco import load_coco
    from e2x_pipeline.io_utils import write_json
    from e2x_pipeline.mining import format_metrics, mine
    from e2x_pipeline.report.build import ReportBuilder
    from e2x_pipeline.report.summary import _mining_md

    ds, ids, dets = _planted()
    want = _ours(ds, ids, dets)
    anns = {i: [(a["id"], a["category_id"], a["bbox"], 0) for a in ds.annotations[i]] for i in ids}
    fake = {
        i: [(k, c, s, b) for k, (c, s, b) in enumerate(zip(d.labels.tolist(), d.scores.tolist(),
                                                            d.boxes.tolist()))]
        for i, d in dets.items()
    }  # fmt: skip
    path, img_dir = write_coco(tmp_path, anns, max(ids))
    res = mine(FakeDetector(fake), load_coco(path, img_dir), MiningConfig())
    m = res.metrics
    assert m["tide_dap"] == pytest.approx({e: want[e] for e in ERROR_TYPES}, abs=1e-9)
    assert m["tide_dap_special"] == pytest.approx({"fp": want["fp"], "fn": want["fn"]}, abs=1e-9)
    loc = f"{want['loc']:.3f}"
    row = next(r for r in format_metrics(m).splitlines() if r.startswith("loc "))
    assert row.split()[-1] == loc, row
    assert f"| loc | {m['error_types']['loc']} | {loc} |" in _mining_md("val", m)

    cfg = load_config(None, {"output_dir": str(tmp_path / "run"), "data.root": str(tmp_path)})
    layout = cfg.split_layout("val")
    layout.root.mkdir(parents=True)
    write_json(layout.mining_metrics, m)
    rb = ReportBuilder(cfg, "val", tmp_path / "report")
    rb.errors(res.candidates)
    html = str(rb.sections[0].body)
    assert "<th>dAP</th>" in html and f"<td>{loc}</td>" in html, html
    assert f"{want['fn']:.3f}" in html  # the special (perfect recall) dAP
