"""The run history: failure modes matched across checkpoints, stable ids, and --watch.

Ground truth: hand-built modes whose members we choose (matching, statuses, shares), real SQLite
files (one record per run, reruns replace), and real checkpoint files with known modification
times (--watch).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from e2x_pipeline.history import (
    HistoryError,
    HistoryStore,
    ModeRecord,
    RunRecord,
    compare_runs,
    comparison_markdown,
    failing_set,
    format_history,
    member_key,
    mode_similarity,
    share_failing,
    shared_members,
    trend_table,
    watch_decision,
)


def _mode(mode_id, kind, members, centroid=(0.0, 0.0), spread=1.0, cause=None, cls="disk"):
    return ModeRecord(
        mode_id=mode_id,
        kind=kind,
        size=3 * len(members),
        classes={cls: len(members)},
        cause=cause,
        members=list(members),
        centroid=list(centroid),
        spread=spread,
    )


def _run(ckpt_hash, modes, failing, mtime=1.0, split_hash="s1"):
    return RunRecord(
        split="val",
        split_hash=split_hash,
        config_hash="c1",
        checkpoint=f"/ckpt/{ckpt_hash}.pt",
        checkpoint_hash=ckpt_hash,
        checkpoint_mtime=mtime,
        parent=None,
        metrics={"map50": 0.9},
        failing=failing,
        modes=modes,
    )


GT_A = [f"gt:{i}" for i in range(10)]  # camouflage-like misses
GT_B = [f"gt:{i}" for i in range(10, 20)]  # occluder-like misses
FP_C = [f"fp:{i}:1:10.0,10.0,30.0,30.0" for i in range(5)]  # distractor false alarms


def _base_run():
    return _run(
        "aaaa",
        [
            _mode(0, "fn", GT_A, (0.0, 0.0), cause="camouflage"),
            _mode(1, "fn", GT_B, (5.0, 0.0), cause="occluder"),
            _mode(2, "fp", FP_C, (0.0, 5.0), cause="distractor"),
        ],
        GT_A + GT_B + FP_C,
    )


def _retrained_run():
    # camouflage: 2 of 10 still missed (no longer a mode); occluder: 9 of 10 still missed, and
    # its mode was cut in two by the clustering; distractors: boxes moved a little, 1 of 5
    # still fires; plus a genuinely new fp mode on other images.
    fp_moved = ["fp:0:1:11.0,10.0,31.0,30.0"]
    new_fp = [f"fp:{i}:2:50.0,50.0,70.0,70.0" for i in range(100, 106)]
    occl = GT_B[:9]
    return _run(
        "bbbb",
        [
            _mode(0, "fn", occl[:6], (5.1, 0.0), cause="occluder"),
            _mode(1, "fn", occl[6:], (5.3, 0.2), cause="occluder"),
            _mode(2, "fp", new_fp, (-9.0, -9.0), cls="square"),
        ],
        GT_A[:2] + occl + fp_moved + new_fp,
        mtime=2.0,
    )


def test_members_and_shares():
    row = {"outcome": "fn", "gt_id": 7}
    assert member_key(row) == "gt:7"
    fp = {"outcome": "fp", "image_id": 3, "label": 2, "box_x1": 1, "box_y1": 2, "box_x2": 11.04}
    fp["box_y2"] = 12.0
    assert member_key(fp) == "fp:3:2:1.0,2.0,11.0,12.0"
    # another checkpoint's box on the same object: the same failure (IoU >= 0.5), not elsewhere
    assert shared_members(FP_C[:1], ["fp:0:1:12.0,11.0,31.0,30.0"]) == 1
    assert shared_members(FP_C[:1], ["fp:0:1:25.0,25.0,45.0,45.0"]) == 0
    assert shared_members(FP_C[:1], ["fp:0:2:10.0,10.0,30.0,30.0"]) == 0  # another label
    assert share_failing(GT_A, GT_A[:3] + GT_B) == pytest.approx(0.3)
    cands = pd.DataFrame(
        {
            "outcome": ["tp", "fn", "fp"],
            "gt_id": [1, 2, -1],
            "image_id": [5, 5, 6],
            "label": [1, 1, 2],
            **{f"box_{k}": [0.0, np.nan, 4.0] for k in ("x1", "y1", "x2", "y2")},
        }
    )
    assert failing_set(cands) == ["fp:6:2:4.0,4.0,4.0,4.0", "gt:2"]


def test_similarity_is_members_and_pixel_overlap():
    a = _mode(0, "fn", GT_A, (0.0, 0.0), spread=1.0)
    assert mode_similarity(a, a) == pytest.approx(1.0)
    half = _mode(1, "fn", GT_A[:5], (0.0, 0.0), spread=1.0)
    assert mode_similarity(a, half) == pytest.approx(0.5 * 0.5 + 0.5)
    far = _mode(2, "fn", GT_B, (3.0, 4.0), spread=1.0)  # d^2 = 25, v_A + v_B = 2
    assert mode_similarity(a, far) == pytest.approx(0.5 * np.exp(-12.5))
    assert mode_similarity(a, _mode(3, "fp", GT_A)) == 0.0  # kinds never match


def test_compare_runs_statuses_ids_and_shares():
    first = compare_runs(None, _base_run().modes, _base_run().failing, set())
    assert [m.stable_id for m in first.modes] == [
        "fn-camouflage-like-1",
        "fn-occluder-like-1",
        "fp-distractor-like-1",
    ]
    assert {m.status for m in first.modes} == {"new"} and first.closed == []
    after = _retrained_run()
    second = compare_runs(first.modes, after.modes, after.failing, {"fn-camouflage-like-1"})
    by_id = {m.stable_id: m for m in second.modes}
    assert by_id["fn-occluder-like-1"].status == "persisting"
    assert by_id["fn-occluder-like-1"].share_failing == pytest.approx(0.9)
    # the other half of the occluder mode is a split of it, not a new mode
    assert by_id["fn-occluder-like-1.2"].status == "split"
    # the new fp mode has none of the old members and other pixels: new, with a fresh id
    assert by_id["fp-square-1"].status == "new"
    closed = {c["stable_id"]: c["share_failing"] for c in second.closed}
    assert closed == {"fn-camouflage-like-1": pytest.approx(0.2), "fp-distractor-like-1": 0.2}
    text = comparison_markdown(second, 1)
    assert "**closed:** `fn-camouflage-like-1` (20% still failing)" in text
    assert "dissolved" not in text
    # a mode no longer matched whose members still fail (they joined other modes) is not closed
    still = compare_runs(first.modes, after.modes, after.failing + GT_A[2:9], set())
    assert {c["stable_id"]: c["share_failing"] for c in still.closed}["fn-camouflage-like-1"] == (
        pytest.approx(0.9)
    )
    text = comparison_markdown(still, 1)
    assert "**closed:** `fp-distractor-like-1` (20% still failing)" in text
    assert "**dissolved** (no longer a mode of its own" in text
    assert "`fn-camouflage-like-1` (90% still failing)" in text


def test_store_appends_once_per_run_and_ids_are_stable(tmp_path: Path):
    store = HistoryStore(tmp_path / "history.sqlite")
    with pytest.raises(HistoryError, match="no run history"):
        store.runs()
    for _ in range(2):  # the same two runs, recorded twice: two rows, the same ids
        store.record(_base_run())
        store.record(_retrained_run())
        runs = store.runs()
        assert runs["seq"].tolist() == [1, 2] and runs["checkpoint_hash"].tolist() == [
            "aaaa",
            "bbbb",
        ]
        ids = store.modes()[["seq", "stable_id", "status"]].values.tolist()
        assert ids == [
            [1, "fn-camouflage-like-1", "new"],
            [1, "fn-occluder-like-1", "new"],
            [1, "fp-distractor-like-1", "new"],
            [2, "fn-occluder-like-1", "persisting"],
            [2, "fn-occluder-like-1.2", "split"],
            [2, "fp-square-1", "new"],
        ]
    assert runs["previous_key"].iloc[1] == runs["run_key"].iloc[0]
    assert store.record(_retrained_run()).previous["seq"] == 1  # what the flow reports
    fresh = HistoryStore(tmp_path / "fresh.sqlite")
    fresh.record(_base_run())
    fresh.record(_retrained_run())
    assert fresh.modes()["stable_id"].tolist() == store.modes()["stable_id"].tolist()
    trend = trend_table(store)
    camo = trend[trend["stable_id"] == "fn-camouflage-like-1"]
    assert camo[["seq", "status"]].values.tolist() == [[1, "new"], [2, "closed"]]
    text = format_history(store)
    assert "closed 0.20" in text and "kept 0.90" in text and "new 10" in text
    # a run on another split's content compares with nothing
    other = _run("cccc", [_mode(0, "fn", GT_A)], GT_A, split_hash="s2")
    assert store.previous_run(other) is None
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2


def test_watch_picks_the_newest_checkpoint_and_skips_when_nothing_is_newer(tmp_path: Path):
    watch = tmp_path / "ckpts"
    watch.mkdir()
    store = HistoryStore(tmp_path / "history.sqlite")
    assert watch_decision(watch, store)[0] is None  # empty folder
    a = watch / "a.pt"
    a.write_bytes(b"checkpoint a")
    os.utime(a, (100, 100))
    (watch / "notes.txt").write_text("not a checkpoint")
    assert watch_decision(watch, store)[0] == a  # first run of the history
    from e2x_pipeline.io_utils import file_hash

    record = _base_run()
    record.checkpoint_hash, record.checkpoint_mtime = file_hash(a)[:16], 100.0
    store.record(record)
    picked, reason = watch_decision(watch, store)
    assert picked is None and "last run" in reason
    b = watch / "b.pt"
    b.write_bytes(b"checkpoint b")
    os.utime(b, (50, 50))  # a different file, but older than the last run's
    assert watch_decision(watch, store)[0] is None
    os.utime(b, (200, 200))
    assert watch_decision(watch, store)[0] == b
    with pytest.raises(HistoryError, match="not a folder"):
        watch_decision(tmp_path / "missing", store)


def test_trend_chart_is_a_picture_of_the_history(tmp_path: Path):
    from PIL import Image

    from e2x_pipeline.report.plots import history_trend_chart

    store = HistoryStore(tmp_path / "history.sqlite")
    store.record(_base_run())
    store.record(_retrained_run())
    trend = trend_table(store)
    # one line per mode: new modes start at 1.0; the camouflage mode ends closed at 0.2
    camo = trend[trend["stable_id"] == "fn-camouflage-like-1"]["share_failing"].tolist()
    assert camo == [1.0, pytest.approx(0.2)]
    history_trend_chart(trend, tmp_path / "trend.png")
    with Image.open(tmp_path / "trend.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
