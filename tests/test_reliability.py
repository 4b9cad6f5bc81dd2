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
        "--set=explain.max_candidates=8",
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
    name = Path(files[0]).stem  # written before the kill, in the unfinished generation
    assert (layout.root / Path(files[0]).name).is_file()
    assert not (out / files[-1]).exists()
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


# ---- FiftyOne: two writers of one dataset, a database that goes away -----------------------

_HOLD = (
    "import sys, time, pathlib\n"
    "from e2x_pipeline.fiftyone_io import dataset_lock\n"
    "with dataset_lock(sys.argv[1], 'run-A', lease_seconds=float(sys.argv[4])):\n"
    "    pathlib.Path(sys.argv[2]).touch(); time.sleep(float(sys.argv[3]))\n"
    "    pathlib.Path(sys.argv[2]).write_text(repr(time.time()))\n"
)


def _holder(name: str, tmp: Path, hold: float, lease: float = 60.0) -> subprocess.Popen:
    marker = tmp / f"holding-{name}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, name, str(marker), str(hold), str(lease)], env=env
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, f"holder exited early with {proc.returncode}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def test_two_writers_of_one_fiftyone_dataset_queue_on_its_lock(
    fo_db, reference: Path, tiny_benchmark: Path, tmp_path: Path, caplog
) -> None:
    """A real process holds the pool dataset's lock; our publish of the repair set waits for it
    (a warning names the holder), then writes once: no duplicate samples."""
    import fiftyone as fo

    from e2x_pipeline import fiftyone_io, stages
    from e2x_pipeline.config import load_config

    cfg = load_config(None, {"data.root": str(tiny_benchmark), "output_dir": str(reference)})
    name = stages.fiftyone_names(cfg, "val")["pool"]
    holder = _holder(name, tmp_path, hold=3.0)
    with caplog.at_level(logging.WARNING):
        assert stages.publish_repair_stage(cfg, "val") == name
    assert holder.wait(30) == 0
    released = float((tmp_path / f"holding-{name}").read_text())
    assert time.time() > released  # we wrote after the holder let go, not alongside it
    assert f"FiftyOne dataset '{name}' is being written by run run-A" in caplog.text
    assert fiftyone_io.lock_holder(name) is None  # released
    stages.publish_repair_stage(cfg, "val")  # a rerun: the same samples, once
    ds = fo.load_dataset(name)
    assert len(ds) == 40 and len(set(ds.values("filepath"))) == 40
    chosen = pd.read_parquet(reference / "val/repair_set.parquet")
    assert len(ds.load_saved_view("e2x-repair")) == len(chosen)
    fo.delete_dataset(name)


def test_a_killed_holder_does_not_block_the_next_writer(fo_db, tmp_path: Path) -> None:
    """SIGKILL the holder: the next writer takes the lock over at once (same machine, dead
    pid); a holder elsewhere would lose it when its 60 s lease ran out."""
    from e2x_pipeline.fiftyone_io import dataset_lock, lock_holder

    holder = _holder("e2x-test-lock", tmp_path, hold=300)
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert lock_holder("e2x-test-lock")["run"] == "run-A"  # nobody released it
    t0 = time.monotonic()
    with dataset_lock("e2x-test-lock", "run-B", wait_seconds=20) as lease:
        assert lock_holder("e2x-test-lock")["token"] == lease["token"]
    assert time.monotonic() - t0 < 10 and lock_holder("e2x-test-lock") is None


def _private_mongod(tmp: Path) -> tuple[subprocess.Popen, int, list[str]]:
    import socket

    from conftest import _mongod_binary

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp / "db").mkdir(exist_ok=True)
    cmd = [_mongod_binary(), "--dbpath", str(tmp / "db"), "--port", str(port)]
    cmd += ["--bind_ip", "127.0.0.1", "--logpath", str(tmp / "mongod.log")]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port, cmd
        assert time.monotonic() < deadline, "the private mongod did not start"
        time.sleep(0.1)


# the first of publish_repair's four set_values calls is written; the database dies before the
# second: the dataset holds half a repair set
_PUBLISH_THEN_WAIT = (
    "import sys, time, pathlib\n"
    "import fiftyone.core.dataset as fod\n"
    "from e2x_cli.main import main\n"
    "real = fod.Dataset.set_values\n"
    "def set_values(self, field, *a, **k):\n"
    "    out = real(self, field, *a, **k)\n"
    "    if field == 'e2x_failure_mode':\n"
    "        pathlib.Path(sys.argv[1]).touch()\n"
    "        while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\n"
    "    return out\n"
    "fod.Dataset.set_values = set_values\n"
    "sys.exit(main(sys.argv[3:]))\n"
)

_COUNT = (
    "import json, sys, fiftyone as fo\n"
    "ds = fo.load_dataset(sys.argv[1])\n"
    # not len(ds): after mongod's unclean shutdown its fast count (estimatedDocumentCount) is stale
    "print(json.dumps([len(ds.values('id')), len(set(ds.values('filepath'))), "
    "len(ds.load_saved_view('e2x-repair'))]))\n"
)


def test_database_gone_mid_publish_keeps_the_tables_and_the_rerun_publishes_once(
    reference: Path, tiny_benchmark: Path, tmp_path: Path
) -> None:
    """A private mongod (the session's is left alone) is stopped while ``e2x repair`` publishes:
    the tables on disk stay complete, the command fails with one line saying what to rerun;
    with the database back, the rerun publishes the repair set once."""
    mongod, port, cmd = _private_mongod(tmp_path)
    uri = f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=1500&connectTimeoutMS=1500"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.update(FIFTYONE_DATABASE_URI=uri, FIFTYONE_DATABASE_DIR=str(tmp_path / "db"))
    out = _copy_without(reference, tmp_path, [])
    args = ["repair", *_args(tiny_benchmark, out), "--set=data.fiftyone_dataset=e2x-down"]
    started, stopped = tmp_path / "publishing", tmp_path / "stopped"
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PUBLISH_THEN_WAIT, str(started), str(stopped), *args],
            env=env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 240
        while not started.exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        mongod.send_signal(signal.SIGKILL)  # the database goes away mid-publish
        mongod.wait(30)
        stopped.touch()
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"e2x: error: lost FiftyOne's MongoDB at {uri} while publishing")
        assert "the tables on disk are complete" in last
        assert "run 'e2x repair --split val' (or the same 'e2x run') to publish them" in last
        assert "Traceback" not in err
        for t in ("repair_set.parquet", "repair_scores.parquet", "repair.json"):
            assert (out / "val" / t).read_bytes() == (reference / "val" / t).read_bytes()
        assert generation.problem(out / "val", "repair", require_manifest=True) is None

        mongod = subprocess.Popen(cmd)  # the database is back
        rerun = subprocess.run(
            [sys.executable, "-m", "e2x_cli.main", *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        names = [ln for ln in rerun.stdout.splitlines() if ln.startswith("FiftyOne dataset")]
        pool = names[0].split("'")[1]
        counted = subprocess.run(
            [sys.executable, "-c", _COUNT, pool],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert counted.returncode == 0, counted.stderr[-3000:]
        n, unique, selected = json.loads(counted.stdout.strip().splitlines()[-1])
        assert n == unique == 40  # the half-done publish and its rerun: each pool image once
        assert selected == len(pd.read_parquet(out / "val/repair_set.parquet"))
    finally:
        mongod.kill()
        mongod.wait(30)


_HANG_BEFORE_SWAP = (
    "import sys, time, pathlib\n"
    "from e2x_cli.main import main\n"
    "real = pathlib.Path.rename\n"
    "def rename(self, target):\n"
    "    if pathlib.Path(target).name == sys.argv[1] and self.name.endswith('.tmp'):\n"
    "        pathlib.Path(sys.argv[2]).touch(); time.sleep(300)\n"
    "    return real(self, target)\n"
    "pathlib.Path.rename = rename\n"
    "sys.exit(main(sys.argv[3:]))\n"
)


def test_sigkill_mid_export_then_rerun_gives_one_whole_export(
    fo_db, reference: Path, tiny_benchmark: Path, tmp_path: Path
) -> None:
    """Killed between moving the old export aside and moving the new one in: no export folder,
    two stray ones. The rerun removes the strays (their pid is dead) and writes the export."""
    import fiftyone as fo

    from e2x_pipeline import stages
    from e2x_pipeline.config import load_config

    out = _copy_without(reference, tmp_path, [])
    cfg = load_config(None, {"data.root": str(tiny_benchmark), "output_dir": str(out)})
    name = stages.publish_repair_stage(cfg, "val")
    args = ["export", *_args(tiny_benchmark, out)]
    assert main(args) == 0
    export = out / "export" / "repair-set"
    want = json.loads((export / "labels.json").read_text())
    marker = tmp_path / "swapping"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HANG_BEFORE_SWAP, export.name, str(marker), *args], env=env
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    strays = sorted(p.name.rsplit(".", 1)[1] for p in export.parent.glob(".repair-set.*"))
    assert strays == ["old", "tmp"] and not export.exists()

    assert main(args) == 0
    got = json.loads((export / "labels.json").read_text())
    assert got["images"] == want["images"] and got["annotations"] == want["annotations"]
    assert sorted(p.name for p in export.parent.iterdir()) == ["repair-set"]
    assert len(list((export / "data").iterdir())) == len(want["images"])
    fo.delete_dataset(name)
