"""A user's own COCO data and a torchvision COCO-format checkpoint, end to end, read-only.

The dataset (tests/user_dataset.py) shares nothing with the benchmark's layout: real image sizes
(640x480, 500x375), category ids 1/3/17 named as COCO classes, subfolders in ``file_name``,
no ``area``, no train split, and a bare 91-class state_dict as ``model.weights``. Every command
runs on it through the CLI, and afterwards every input file is byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from user_dataset import ARCH, IMAGES, make_user_dataset, tree_hashes

from e2x_cli.main import main


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> tuple[Path, dict[str, Path], Path]:
    root = tmp_path_factory.mktemp("user-data")
    paths = make_user_dataset(root)
    work = tmp_path_factory.mktemp("user-run")
    cfg = {
        "device": "cpu",
        "output_dir": str(work / "out"),
        "data": {
            "root": str(root),  # the user's folder: no causes.json, no benchmark layout
            "eval_split": "val",
            "splits": {
                # the val images double as a train split for retraining (the user has none)
                split: {
                    "annotations": str(paths["labels"] / f"instances_{name}.json"),
                    "images": str(paths["photos"]),
                }
                for split, name in (("val", "val"), ("pool", "pool"), ("train", "val"))
            },
        },
        "model": {
            "arch": ARCH,
            "weights": str(paths["weights"]),
            # CI-sized: the architecture's own 800 px works too (see the README's timings)
            "image_size": 256,
        },
        "mining": {"batch_size": 2},
        "explain": {"k": 2, "n_segments": 30, "max_candidates": 3, "batch_size": 4},
        "cluster": {"min_mode_size": 2, "max_modes": 2},
        "repair": {
            "pool_split": "pool",
            "budget": 2,
            "neighbours": 5,
            "batch_size": 2,
            "pool_labels": str(paths["labels"] / "instances_pool.json"),
        },
        "train": {"batch_size": 2},
        "retrain": {"epochs": 1, "repeat": 1, "eval_split": "val"},
        "metrics": {"steps": 4, "counterfactual_ns": [1, 2]},
    }
    path = work / "user.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, paths, path


@pytest.fixture(scope="module")
def coco_run(
    user, fo_db, prefect_harness, tmp_path_factory
) -> tuple[Path, dict[str, str], dict[str, str], str]:
    """Every command on the COCO files, once: (output dir, input hashes before, after, stdout).

    ``e2x demo`` runs with its own data root (a fresh folder it generates the benchmark in).
    """
    import contextlib
    import io
    import os

    root, _, cfg_path = user
    before = tree_hashes(root)
    c = ["--config", str(cfg_path), "--no-progress"]
    scratch = tmp_path_factory.mktemp("user-cwd")
    demo = [
        *(f"--set={k}" for k in ("benchmark.n_train=20", "benchmark.n_val=10")),
        *(f"--set={k}" for k in ("benchmark.n_test=10", "benchmark.n_pool=10")),
        *(f"--set={k}" for k in ("train.epochs=1", "retrain.epochs=1", "cluster.min_mode_size=2")),
        f"--set=data.root={scratch / 'demo-data'}",
        f"--output-dir={scratch / 'demo-out'}",
        "--set=explain.max_candidates=2",
    ]
    out = io.StringIO()
    here = os.getcwd()
    os.chdir(scratch)  # the demo and run write reports/ under the working folder
    try:
        with contextlib.redirect_stdout(out):
            assert main(["evaluate", *c, "--splits", "val"]) == 0
            assert main(["mine", *c]) == 0
            assert main(["explain", *c]) == 0
            assert main(["cluster", *c]) == 0
            assert main(["repair", *c]) == 0
            assert main(["export", "--config", str(cfg_path), "--name", "user-repair"]) == 0
            assert main(["retrain", *c]) == 0
            assert main(["run", *c, "--no-retrain"]) == 0
            assert main(["demo", "--no-progress", "--no-fiftyone", *demo]) == 0
    finally:
        os.chdir(here)
    run = Path(yaml.safe_load(cfg_path.read_text())["output_dir"])
    return run, before, tree_hashes(root), out.getvalue()


def test_every_command_runs_and_never_writes_into_the_inputs(user, coco_run):
    import fiftyone as fo

    _, paths, _ = user
    run, before, after, out = coco_run
    assert after == before, "a command wrote, renamed or deleted under the inputs"
    cands = pd.read_parquet(run / "val" / "candidates.parquet")
    # every GT object has a row; boxes are in each image's own pixels (640x480 or 500x375)
    n_gt = sum(len(b) for _, _, b in IMAGES["val"])
    assert (cands["outcome"] == "fn").sum() + (cands["outcome"] == "tp").sum() >= n_gt
    sizes = {1000 + 7 * i: size for i, (_, size, _) in enumerate(IMAGES["val"])}
    for r in cands.itertuples():
        w, h = sizes[r.image_id]
        assert -1 <= r.box_x1 < r.box_x2 <= w + 1 and -1 <= r.box_y1 < r.box_y2 <= h + 1
    # detections of COCO classes the dataset does not have are out of its label space
    assert set(cands["category_id"]) <= {1, 3, 17}
    expl = pd.read_parquet(run / "val" / "explanations.parquet")
    assert len(expl) >= 1 and expl["valid"].all()
    assert (run / "val" / "failure_modes.parquet").is_file()
    repair = pd.read_parquet(run / "val" / "repair_set.parquet")
    assert 1 <= len(repair) <= 2
    assert set(repair["image_path"]) <= {str(paths["photos"] / f) for f, _, _ in IMAGES["pool"]}
    pool = fo.load_dataset("e2x-pool")
    assert "e2x-repair" in pool.list_saved_views()
    assert len(pool.load_saved_view("e2x-repair")) == len(repair)
    export = run / "export" / "user-repair" / "labels.json"
    assert export.is_file() and "user-repair" in out
    retrain = json.loads((run / "retrain.json").read_text())
    assert retrain["eval_split"] == "val" and "before" in retrain and "after" in retrain
    assert "demo finished" in out and "run finished" in out
    # the demo's second run, on its retrained checkpoint, compares itself with the first
    seventh = out[out.index("== 7. The next run, on the retrained checkpoint") :]
    assert "Since run 1:" in seventh and "demo-out/retrained" in seventh
    runs = seventh[seventh.index("== Run history") :].splitlines()[2:4]
    assert [r.split()[0] for r in runs] == ["1", "2"]


def test_user_mistakes_get_one_line_errors(user, capsys):
    _, _, cfg_path = user
    assert main(["mine", "--config", str(cfg_path), "--set", "data.eval_split=test"]) == 1
    err = capsys.readouterr().err
    assert "split 'test'" in err and "['pool', 'train', 'val']" in err and "Traceback" not in err
    assert main(["mine", "--config", str(cfg_path), "--device", "cuda"]) == 2  # a config error
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # --set key=null sets null: without repair.pool_labels there are no labels to retrain with
    assert main(["retrain", "--config", str(cfg_path), "--set", "repair.pool_labels=null"]) == 1
    err = capsys.readouterr().err
    assert "no labels for the pool" in err and "Traceback" not in err


def test_null_override_and_the_architectures_own_input_size():
    from e2x_pipeline.config import load_config

    cfg = load_config(None, [f"model.arch={ARCH}", "model.image_size=320"])
    assert cfg.model.image_size == 320
    assert (
        load_config(None, [f"model.arch={ARCH}", "model.image_size=null"]).model.image_size == 800
    )
    assert load_config(None, []).model.image_size == 128  # the compact SSD's
    assert load_config(None, ["model.classes=coco"]).model.classes == "coco"


def _fiftyone_user_dataset(paths: dict[str, Path]):
    """The same images and labels, imported the way a user does: FiftyOne's own COCO importer
    (with the COCO image and annotation ids kept), one tag per split."""
    import fiftyone as fo

    if fo.dataset_exists("user-photos"):
        return fo.load_dataset("user-photos")
    ds = fo.Dataset("user-photos")
    for split in IMAGES:
        ds.add_dir(
            dataset_type=fo.types.COCODetectionDataset,
            data_path=str(paths["photos"]),
            labels_path=str(paths["labels"] / f"instances_{split}.json"),
            label_types=["detections"],
            label_field="ground_truth",
            include_id=True,
            include_annotation_id=True,
            tags=[split],
        )
    return ds


def _fiftyone_state(ds) -> tuple:
    """What a run must leave alone: fields, tags, saved views and every GT label."""
    gt = [
        [d.to_dict() for d in (dets.detections if dets else [])]
        for dets in ds.values("ground_truth_detections")
    ]
    return (sorted(ds.get_field_schema()), ds.count_sample_tags(), ds.list_saved_views(), gt)


def test_fiftyone_dataset_as_input_gives_the_coco_candidates(user, coco_run, tmp_path):
    import fiftyone as fo

    root, paths, cfg_path = user
    ds = _fiftyone_user_dataset(paths)
    assert len(ds) == sum(len(v) for v in IMAGES.values())
    base = yaml.safe_load(cfg_path.read_text())
    fo_cfg = {
        **base,
        "output_dir": str(tmp_path / "fo-out"),
        "data": {
            "root": str(tmp_path / "no-data-here"),
            "eval_split": "val",
            "fiftyone": {
                "dataset": "user-photos",
                "gt_field": "ground_truth_detections",
                "id_field": "ground_truth_coco_id",
                "splits": {"val": {"tag": "val"}, "pool": {"tag": "pool"}, "train": {"tag": "val"}},
            },
        },
    }
    fo_path = tmp_path / "fo.yaml"
    fo_path.write_text(yaml.safe_dump(fo_cfg))
    before_files, before_fo = tree_hashes(root), _fiftyone_state(ds)
    c = ["--config", str(fo_path), "--no-progress"]
    assert main(["mine", *c]) == 0
    a = pd.read_parquet(coco_run[0] / "val" / "candidates.parquet")
    b = pd.read_parquet(tmp_path / "fo-out" / "val" / "candidates.parquet")
    assert len(a) > 0 and list(a.columns) == list(b.columns)
    # the same table, up to the image path's spelling (FiftyOne stores absolute paths) and the
    # last bits of the relative -> absolute box conversion
    boxes = [c for c in a.columns if c.startswith(("box_", "gt_"))]
    paths_ = ["image_path", "file_name"]
    other = [c for c in a.columns if c not in boxes and c not in paths_]
    pd.testing.assert_frame_equal(a[other], b[other])
    pd.testing.assert_frame_equal(a[boxes], b[boxes], check_exact=False, atol=1e-6, rtol=0)
    assert [Path(p).resolve() for p in a["image_path"]] == [Path(p) for p in b["image_path"]]
    assert [str(paths["photos"] / f) for f in a["file_name"]] == list(b["file_name"])
    # the rest of the pipeline on the FiftyOne input, to the repair-set view
    assert main(["explain", *c]) == 0
    assert main(["cluster", *c]) == 0
    assert main(["repair", *c]) == 0
    repair = pd.read_parquet(tmp_path / "fo-out" / "val" / "repair_set.parquet")
    assert 1 <= len(repair) <= 2
    assert fo.load_dataset("e2x-pool").load_saved_view("e2x-repair").count() == len(repair)
    # retraining reads the pool view's own labels for the selected images (no pool_labels file)
    fo_cfg["repair"] = {k: v for k, v in fo_cfg["repair"].items() if k != "pool_labels"}
    fo_path.write_text(yaml.safe_dump(fo_cfg))
    assert main(["retrain", *c]) == 0
    retrain = json.loads((tmp_path / "fo-out" / "retrain.json").read_text())
    assert retrain["added_images"] == len(repair)
    assert tree_hashes(root) == before_files
    assert _fiftyone_state(ds) == before_fo, "e2x wrote into the user's FiftyOne dataset"
