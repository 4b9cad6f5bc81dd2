"""``e2x run --stage NAME``: one stage's Prefect flow (flows/stage_flows.py) through the CLI, on
the session Prefect harness, with the committed compact SSD and the tiny benchmark."""

from __future__ import annotations

import pandas as pd
from conftest import FIXTURE_CHECKPOINT

from e2x_cli.main import main


def _args(bench, out) -> list[str]:
    return [
        "--no-progress",
        "--output-dir",
        str(out),
        "--device",
        "cpu",
        f"--set=data.root={bench}",
        f"--set=model.checkpoint={FIXTURE_CHECKPOINT}",
    ]


def test_stage_choices_are_the_stage_flows():
    from e2x_cli.flags import STAGES
    from flows.stage_flows import STAGE_FLOWS, STAGE_INPUTS

    assert set(STAGES) == set(STAGE_FLOWS) == set(STAGE_INPUTS)


def test_run_one_stage_flow_then_its_cache(tiny_benchmark, tmp_path, prefect_harness, capsys):
    out = tmp_path / "run"
    # explain before mine: one line naming the command to run, nothing trained or run
    assert main(["run", "--stage", "explain", *_args(tiny_benchmark, out)]) == 1
    err = capsys.readouterr().err
    assert "run 'e2x mine --split val'" in err and len(err.strip().splitlines()) == 1
    assert not (out / "checkpoints").exists()

    assert main(["run", "--stage", "mine", *_args(tiny_benchmark, out)]) == 0
    printed = capsys.readouterr().out
    table = out / "val" / "candidates.parquet"
    cands = pd.read_parquet(table)
    assert len(cands) > 0 and "FN candidates:" in printed
    stamp = table.stat().st_mtime_ns

    # a rerun with nothing changed is served from the mine task's cache: the table is not rewritten
    assert main(["run", "--stage", "mine", *_args(tiny_benchmark, out)]) == 0
    assert capsys.readouterr().out == printed
    assert table.stat().st_mtime_ns == stamp
