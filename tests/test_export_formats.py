"""`e2x export --format coco|yolov5|voc|cvat`: each export reads back with FiftyOne's importer.

One small real run per module (a fresh benchmark, the committed detector, mine, explain,
cluster and repair through the CLI, on the session mongod); then each format is exported through
the CLI and imported again. The same images (by file name), labels and boxes must come back as
the pool's hidden labels hold them.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from e2x_cli.main import main
from e2x_pipeline.data.coco import load_coco

FIXTURE_CHECKPOINT = Path(__file__).parent / "fixtures" / "compact_ssd_benchmark.pt"
FORMATS = ("coco", "yolov5", "voc", "cvat")
# own dataset names, so this module never touches another test's e2x-val / e2x-pool
SPLIT_DS, POOL_DS = "e2x-test-export-val", "e2x-test-export-pool"


@pytest.fixture(scope="module")
def run(fo_db, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(config file, output dir, pool_labels.json) of a run up to the repair set."""
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.data.benchmark import make_benchmark

    root = tmp_path_factory.mktemp("export-bench")
    make_benchmark(root, seed=0, sizes={"train": 10, "val": 30, "test": 0, "pool": 30})
    work = tmp_path_factory.mktemp("export-run")
    cfg = {
        "device": "cpu",
        "output_dir": str(work / "out"),
        "data": {"root": str(root), "fiftyone_dataset": SPLIT_DS},
        "model": {"checkpoint": str(FIXTURE_CHECKPOINT)},
        "explain": {"k": 2, "n_segments": 40, "max_candidates": 8},
        "cluster": {"min_mode_size": 2, "max_modes": 2},
        "repair": {"budget": 6, "neighbours": 10, "fiftyone_dataset": POOL_DS},
    }
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    for name in (SPLIT_DS, f"{SPLIT_DS}-failures", POOL_DS):
        fiftyone_io.delete_dataset(name)
    c = ["--config", str(path), "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        for command in ("mine", "explain", "cluster", "repair"):
            assert main([command, *c]) == 0, command
    yield path, work / "out", root / "annotations" / "pool_labels.json"
    for name in (SPLIT_DS, f"{SPLIT_DS}-failures", POOL_DS):
        fiftyone_io.delete_dataset(name)


def _expected(labels_path: Path, repair_set: pd.DataFrame) -> dict[str, list]:
    """File name -> sorted (label, x, y, w, h) in pixels, from the pool's labels."""
    labels = load_coco(labels_path, labels_path.parent.parent / "images" / "pool")
    by_name = {im["file_name"]: i for i, im in labels.images.items()}
    out = {}
    for name in repair_set["file_name"]:
        i = by_name[Path(name).name]
        out[Path(name).name] = sorted(
            (labels.categories[a["category_id"]], *map(float, a["bbox"]))
            for a in labels.annotations.get(i, [])
        )
    return out


def _imported(fo, export: Path, fmt: str) -> dict[str, list]:
    """File name -> sorted (label, x, y, w, h) in pixels, read back with FiftyOne's importer."""
    kind = {
        "coco": fo.types.COCODetectionDataset,
        "yolov5": fo.types.YOLOv5Dataset,
        "voc": fo.types.VOCDetectionDataset,
        "cvat": fo.types.CVATImageDataset,
    }[fmt]
    extra = {"split": "train"} if fmt == "yolov5" else {}
    ds = fo.Dataset.from_dir(dataset_dir=str(export), dataset_type=kind, **extra)
    try:
        ds.compute_metadata()
        fields = [f for f, t in ds.get_field_schema().items() if "Detections" in str(t)]
        assert len(fields) == 1, fields
        out = {}
        for s in ds:
            w, h = s.metadata.width, s.metadata.height
            dets = s[fields[0]].detections if s[fields[0]] is not None else []
            out[Path(s.filepath).name] = sorted(
                (
                    d.label,
                    d.bounding_box[0] * w,
                    d.bounding_box[1] * h,
                    d.bounding_box[2] * w,
                    d.bounding_box[3] * h,
                    w,
                    h,
                )
                for d in dets
            )
        return out
    finally:
        ds.delete()


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reads_back_with_fiftyones_importer(run, fmt):
    import fiftyone as fo

    cfg_path, out, labels_path = run
    repair_set = pd.read_parquet(out / "val" / "repair_set.parquet")
    assert len(repair_set) == 6
    for _ in range(2):  # a rerun replaces the export, never adds to it
        args = ["export", "--config", str(cfg_path), "--name", f"rs-{fmt}", "--format", fmt]
        assert main(args) == 0
    export = out / "export" / f"rs-{fmt}"
    assert sorted(p.name for p in export.parent.iterdir() if p.name.startswith(".")) == []
    want = _expected(labels_path, repair_set)
    assert sum(map(len, want.values())) > 0  # the check below compares boxes, not only names
    got = _imported(fo, export, fmt)
    assert sorted(got) == sorted(want)  # the same images, once each
    # relative coordinates within 1e-3 of the box; VOC stores integer pixels (1 px)
    for name, boxes in want.items():
        assert len(got[name]) == len(boxes), name
        for (label, *box), (glabel, *gbox, w, h) in zip(boxes, got[name], strict=True):
            assert glabel == label, name
            if fmt == "voc":
                assert all(abs(a - b) <= 1.0 for a, b in zip(box, gbox, strict=True)), name
            else:
                tol = [1e-3 * s for s in (w, h, w, h)]
                assert all(abs(a - b) <= t for a, b, t in zip(box, gbox, tol, strict=True)), name
    classes = sorted(json.loads(labels_path.read_text())["categories"], key=lambda c: c["name"])
    if fmt == "yolov5":  # the pool's whole class list, sorted: stable class indices
        spec = yaml.safe_load((export / "dataset.yaml").read_text())
        assert Path(spec["path"]) == export.resolve()  # not the temp folder it was written in
        names = spec["names"]
        names = [names[i] for i in sorted(names)] if isinstance(names, dict) else names
        assert names == [c["name"] for c in classes]
        assert len(list((export / "images" / "train").iterdir())) == len(repair_set)
    if fmt == "coco":  # the default's layout, as before --format existed
        coco = json.loads((export / "labels.json").read_text())
        assert [c["name"] for c in coco["categories"]] == [c["name"] for c in classes]
        assert len(list((export / "data").iterdir())) == len(repair_set)


def test_default_format_is_coco(run):
    cfg_path, out, _ = run
    assert main(["export", "--config", str(cfg_path), "--name", "rs-default"]) == 0
    assert (out / "export" / "rs-default" / "labels.json").is_file()


def test_unknown_format_is_a_one_line_error(tmp_path, capsys):
    rc = main(["export", "--output-dir", str(tmp_path / "out"), "--format", "tfrecord"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines() == [
        "e2x: error: unknown export format 'tfrecord'; choose one of coco, yolov5, voc, cvat"
    ]
    assert not (tmp_path / "out").exists()  # nothing was written


def test_repair_publishes_the_pool_regions_as_a_brain_index(run):
    """``e2x repair`` (publish_repair_stage) registered the similarity index ``e2x_regions``
    from the run's own regions.parquet and features.parquet (tests/test_similarity.py checks
    its answers against NearestNeighbors)."""
    import fiftyone as fo

    from e2x_pipeline import fiftyone_io

    _, out, _ = run
    ds = fo.load_dataset(POOL_DS)
    assert ds.list_brain_runs() == [fiftyone_io.REGIONS_BRAIN_KEY]
    regions = pd.read_parquet(out / "pool" / "regions.parquet")
    features = pd.read_parquet(out / "val" / "features.parquet")
    indexed = ds.values(f"{fiftyone_io.REGIONS_FIELD}.detections.region_id", unwind=True)
    assert 0 < len(indexed) <= len(regions) and set(indexed) <= set(regions["region_id"])
    index = ds.load_brain_results(fiftyone_io.REGIONS_BRAIN_KEY)
    assert index.total_index_size == len(indexed)
    queries = fiftyone_io.failure_queries(ds)
    assert sorted(queries["feature_id"]) == sorted(features[features["mode_id"] >= 0]["feature_id"])
