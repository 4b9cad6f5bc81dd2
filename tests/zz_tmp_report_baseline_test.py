# TEMPORARY (helper's regression check; deleted afterwards)
import shutil
from pathlib import Path

import pandas as pd
from test_orchestration import _explained, _synthetic_later_stages, mined_run  # noqa: F401

KEEP = Path("/tmp/e2x_report_fixture")


def test_dump(mined_run, tiny_benchmark):  # noqa: F811
    cfg = _explained(mined_run)
    _synthetic_later_stages(cfg)
    d = cfg.output_dir / "val"
    ex = pd.read_parquet(d / "explanations.parquet")
    cids = sorted(set(ex["candidate_id"]))[:3]
    pd.DataFrame(
        {"candidate_id": [cids[0], cids[0], cids[1], cids[2]], "mode_id": [0, 1, 0, -1]}
    ).to_parquet(d / "features.parquet")
    (cfg.output_dir / "evaluation-val.json").write_text(
        '{"split": "val", "images": 40, "map50": 0.5, "recall_by_cause": {"blur": 0.25}}'
    )
    (d / "cluster.json").write_text('{"explained_failures": 9, "failure_modes": 2}')
    (d / "repair.json").write_text(
        '{"selected": 3, "pool_images": 40, "budget": 3, "precision": {"per_cause": '
        '{"camouflage": {"selected": 2, "precision": 0.66, "base_rate": 0.2}}, '
        '"any_cause": {"selected": 3, "precision": 1.0, "base_rate": 0.5}}}'
    )
    (cfg.output_dir / "summary.json").write_text('{"seconds": 12.5}')
    shutil.rmtree(KEEP, ignore_errors=True)
    shutil.copytree(cfg.output_dir, KEEP / "run")
    shutil.copytree(tiny_benchmark, KEEP / "bench")
