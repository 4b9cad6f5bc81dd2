"""Reliability of the writing stages: SIGKILL mid-stage, corrupt earlier outputs, a full disk.

One module fixture runs mine -> explain -> cluster -> repair -> retrain through the CLI, in this
process, on the tiny benchmark with the committed compact SSD: the uninterrupted reference. Each
kill test copies that output folder, deletes one stage's outputs, runs the stage's command in a
real subprocess that is SIGKILLed after the stage's first file is written (os.replace is patched
to stop there), and checks that

* the stage's manifest says ``writing`` and a reader refuses the half-written generation with a
  message naming the command to rerun;
* a rerun of the same command gives the reference's tables, no temp files, a complete manifest.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURE_CHECKPOINT

from e2x_cli.main import main
from e2x_pipeline import generation
from e2x_pipeline.generation import IncompleteGeneration
from e2x_pipeline.layout import SplitLayout

REPO = Path(__file__).resolve().parents[1]


def _args(bench: Path, out: Path) -> list[str]:
    return [
        "--no-progress",
        f"--set=data.root={bench}",
        f"--set=model.checkpoint={FIXTURE_CHECKPOINT}",
        "--set=explain.methods=[e2x]",
        "--set=explain.max_candidates=12",
        "--set=retrain.epochs=1",
        "--set=device=cpu",
        f"--output-dir={out}",
    ]


STAGE_ARGS = {
    "mine": ["--no-fiftyone"],
    "explain": [],
    "cluster": ["--no-fiftyone"],
    "repair": ["--no-fiftyone"],
    "retrain": [],
}


@pytest.fixture(scope="module")
def reference(tiny_benchmark: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "run"
    for stage, extra in STAGE_ARGS.items():
        assert main([stage, *_args(tiny_benchmark, out), *extra]) == 0, stage
    return out


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# The files each stage writes, in order, and the one after which the killed run stops.
STAGE_FILES = {
    "cluster": (["val/features.parquet", "val/failure_modes.parquet", "val/cluster.json"], 1),
    "repair": (["val/repair_scores.parquet", "val/repair_set.parquet", "val/repair.json"], 0),
}

_HANG = (
    "import os, sys, time, pathlib\n"
    "from e2x_cli.main import main\n"
    "real = os.replace\n"
    "def replace(src, dst, *a, **k):\n"
    "    real(src, dst, *a, **k)\n"
    "    if pathlib.Path(dst).name == sys.argv[1]:\n"
    "        pathlib.Path(sys.argv[2]).touch(); time.sleep(300)\n"
    "os.replace = replace\n"
    "sys.exit(main(sys.argv[3:]))\n"
)


def _kill_after(file_name: str, args: list[str], tmp: Path) -> None:
    """Run ``e2x ARGS`` in a subprocess; SIGKILL it once ``file_name`` has been renamed into
    place (the stage's next writes never happen)."""
    marker = tmp / "hanging"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANG, file_name, str(marker), *args], env=env, cwd=tmp
    )
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        assert time.monotonic() < deadline, f"never wrote {file_name}"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL


def _copy_without(reference: Path, tmp: Path, files: list[str]) -> Path:
    out = tmp / "run"
    shutil.copytree(reference, out)
    for f in files:
        (out / f).unlink()
    return out


@pytest.mark.parametrize("stage", sorted(STAGE_FILES))
def test_sigkill_mid_stage_then_rerun_equals_an_uninterrupted_run(
    stage: str, reference: Path, tiny_benchmark: Path, tmp_path: Path
) -> None:
    files, stop_after = STAGE_FILES[stage]
    out = _copy_without(reference, tmp_path, files)
    args = [stage, *_args(tiny_benchmark, out), *STAGE_ARGS[stage]]
    _kill_after(Path(files[stop_after]).name, args, tmp_path)

    layout = SplitLayout(out / "val", "val")
    assert generation.read_manifest(layout.root, stage)["status"] == "writing"
    written = Path(files[stop_after]).stem
    name = {"cluster": "features", "repair": "repair_scores"}[stage]
    assert written == name or written.startswith(name)
    with pytest.raises(IncompleteGeneration, match=rf"rerun 'e2x {stage} --split val'"):
        layout.require(name)
    from e2x_pipeline.config import load_config
    from flows.caching import refresh_needed

    cfg = load_config(None, {"data.root": str(tiny_benchmark), "output_dir": str(out)})
    assert refresh_needed(stage, cfg, "val")  # the flow recomputes it, whatever its cache says

    assert main(args) == 0
    for f in files:
        if f.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(out / f), pd.read_parquet(reference / f))
        else:
            got, want = json.loads((out / f).read_text()), json.loads((reference / f).read_text())
            assert got == want
    assert generation.problem(layout.root, stage, require_manifest=True) is None
    assert _litter(out) == []


def test_sigkill_in_retrain_keeps_the_checkpoint_and_the_rerun_finishes(
    reference: Path, tiny_benchmark: Path, tmp_path: Path
) -> None:
    """Killed after the retrained checkpoint is written, before retrain.json: the rerun reuses
    the checkpoint (not retrained: same bytes) and writes the reference's before/after."""
    out = _copy_without(reference, tmp_path, ["retrain.json"])
    ckpts = sorted((out / "checkpoints").glob("retrained-*.pt"))
    for c in ckpts:
        c.unlink()
    args = ["retrain", *_args(tiny_benchmark, out)]
    _kill_after(ckpts[0].name, args, tmp_path)
    assert not (out / "retrain.json").exists() and ckpts[0].is_file()
    assert generation.read_manifest(out, "retrain")["status"] != "complete"
    written = ckpts[0].read_bytes()

    assert main(args) == 0
    assert ckpts[0].read_bytes() == written
    got, want = (json.loads((d / "retrain.json").read_text()) for d in (out, reference))
    assert got["before"] == want["before"] and got["added_images"] == want["added_images"]
    assert generation.problem(out, "retrain", require_manifest=True) is None
    manifest = generation.read_manifest(out, "retrain")
    assert f"checkpoints/{ckpts[0].name}" in manifest["files"]
    assert _litter(out) == []


def test_truncated_table_is_named_and_recomputed(
    reference: Path, tiny_benchmark: Path, tmp_path: Path, capsys
) -> None:
    """A truncated candidates.parquet: a later stage names the file and the command; the flow
    sees it; ``e2x mine`` recomputes it."""
    out = _copy_without(reference, tmp_path, [])
    table = out / "val/candidates.parquet"
    data = table.read_bytes()
    table.write_bytes(data[: len(data) // 2])
    assert main(["cluster", *_args(tiny_benchmark, out), "--no-fiftyone"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"e2x: error: cannot use {table}: {table} was truncated or changed after the mine stage "
        "wrote it; rerun 'e2x mine --split val' with the same output_dir (it recomputes the "
        "stage)"
    ]
    assert main(["mine", *_args(tiny_benchmark, out), "--no-fiftyone"]) == 0
    assert table.read_bytes() == (reference / "val/candidates.parquet").read_bytes()
    assert main(["cluster", *_args(tiny_benchmark, out), "--no-fiftyone"]) == 0


def test_unreadable_maps_are_named_and_explained_again(
    reference: Path, tiny_benchmark: Path, tmp_path: Path, caplog
) -> None:
    """A ``maps/*.npz`` that does not load: the explain rerun warns with its path, explains
    that image's candidates again and writes the reference's table and a loadable file."""
    out = _copy_without(reference, tmp_path, [])
    table = pd.read_parquet(out / "val/explanations.parquet")
    map_file = out / "val" / table["map_file"].dropna().iloc[0]
    map_file.write_bytes(b"PK\x03\x04 not a zip any more")
    with caplog.at_level(logging.WARNING):
        assert main(["explain", *_args(tiny_benchmark, out)]) == 0
    assert f"{map_file} does not load" in caplog.text
    assert "explaining them again" in caplog.text
    with np.load(map_file, allow_pickle=False) as z:
        assert z.files
    got = pd.read_parquet(out / "val/explanations.parquet")
    want = pd.read_parquet(reference / "val/explanations.parquet")
    key = ["candidate_id", "method", "output"]
    cols = ["candidate_id", "method", "output", "valid", "map_file", "n_segments"]
    pd.testing.assert_frame_equal(
        got.sort_values(key)[cols].reset_index(drop=True),
        want.sort_values(key)[cols].reset_index(drop=True),
    )
    for g, w in zip(got.sort_values(key)["values"], want.sort_values(key)["values"], strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)
    assert generation.problem(out / "val", "explain", require_manifest=True) is None


def test_disk_full_keeps_the_previous_files_and_says_so_in_one_line(
    reference: Path, tiny_benchmark: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """ENOSPC while writing the repair set: every earlier file stays as it was, no temp file is
    left, and the command prints one line naming the file."""
    out = _copy_without(reference, tmp_path, [])
    tables = ["repair_scores.parquet", "repair_set.parquet", "repair.json"]
    before = {t: (out / "val" / t).read_bytes() for t in tables}
    import e2x_pipeline.io_utils as io_utils

    real_fsync = io_utils.os.fsync

    def full(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(".repair_set.parquet"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(io_utils.os, "fsync", full)
    assert main(["repair", *_args(tiny_benchmark, out), "--no-fiftyone"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    target = out / "val/repair_set.parquet"
    assert err == [
        f"e2x: error: no space left on device while writing {target}; the previous file is "
        f"kept. Free space on the disk of {target.parent} and rerun the command"
    ]
    assert {t: (out / "val" / t).read_bytes() for t in tables} == before
    assert _litter(out) == []
