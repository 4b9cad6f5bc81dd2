"""The planted-failure benchmark: deterministic, causes recorded, absent from train."""

import json

import numpy as np
import pytest
from PIL import Image

from e2x_pipeline.data.benchmark import CAUSES, load_causes, make_benchmark
from e2x_pipeline.data.coco import load_coco
from e2x_pipeline.io_utils import file_hash

SMALL = {"train": 5, "val": 5, "test": 5, "pool": 5}


def test_layout_and_causes(tiny_benchmark):
    root = tiny_benchmark
    for split in ("train", "val", "test"):
        ds = load_coco(root / "annotations" / f"{split}.json", root / "images" / split)
        assert sorted(ds.categories.values()) == ["disk", "square", "triangle"]
        assert all(ds.image_path(i).is_file() for i in ds.image_ids)
    pool = json.loads((root / "annotations" / "pool.json").read_text())
    pool_labels = json.loads((root / "annotations" / "pool_labels.json").read_text())
    assert pool["annotations"] == [] and len(pool_labels["annotations"]) > 0
    assert load_causes(root, "train") == []
    train = load_coco(root / "annotations/train.json", root / "images/train")
    assert all(a["cause"] is None for anns in train.annotations.values() for a in anns)
    val_causes = load_causes(root, "val")
    assert {c["cause"] for c in val_causes} == set(CAUSES)
    assert {c["cause"] for c in load_causes(root, "pool")} == set(CAUSES)
    val = load_coco(root / "annotations/val.json", root / "images/val")
    ann_by_id = {a["id"]: a for anns in val.annotations.values() for a in anns}
    for c in val_causes:
        if c["cause"] == "distractor":
            assert c["annotation_id"] is None
            continue
        ann = ann_by_id[c["annotation_id"]]
        assert ann["cause"] == c["cause"] and ann["image_id"] == c["image_id"]
        if c["cause"] == "camouflage":
            assert val.categories[ann["category_id"]] == "disk"
        # the cause region touches its object
        x, y, w, h = c["region_bbox"]
        ax, ay, aw, ah = ann["bbox"]
        assert x < ax + aw and ax < x + w and y < ay + ah and ay < y + h


def test_pool_has_clean_majority(tiny_benchmark):
    pool = json.loads((tiny_benchmark / "annotations" / "pool.json").read_text())
    with_cause = {c["image_id"] for c in load_causes(tiny_benchmark, "pool")}
    assert 0 < len(with_cause) < 0.6 * len(pool["images"])


def test_occluder_darkens_the_object(tiny_benchmark):
    root = tiny_benchmark
    for c in load_causes(root, "val"):
        if c["cause"] != "occluder":
            continue
        img = np.asarray(Image.open(root / "images/val" / f"val_{c['image_id']:05d}.png")) / 255
        x, y, w, h = (int(v) for v in c["region_bbox"])
        assert img[y : y + h, x : x + w].mean() < 0.3


def test_deterministic(tmp_path):
    sizes = {"train": 5, "val": 5, "test": 5, "pool": 5}
    make_benchmark(tmp_path / "a", seed=3, sizes=sizes)
    make_benchmark(tmp_path / "b", seed=3, sizes=sizes)
    make_benchmark(tmp_path / "c", seed=4, sizes=sizes)
    a = file_hash(tmp_path / "a/annotations/val.json")
    assert a == file_hash(tmp_path / "b/annotations/val.json")
    assert file_hash(tmp_path / "a/images/val/val_00001.png") == file_hash(
        tmp_path / "b/images/val/val_00001.png"
    )
    assert a != file_hash(tmp_path / "c/annotations/val.json")


def test_the_benchmark_is_never_generated_into_a_users_folder(tmp_path):
    """A folder holding anything the generator did not write is refused, untouched."""
    from e2x_pipeline.data.benchmark import MARKER_FILE, BenchmarkFolderError

    user = tmp_path / "my_coco"
    (user / "annotations").mkdir(parents=True)
    (user / "annotations" / "val.json").write_text('{"images": []}')
    (user / "causes.json").write_text("[]")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    with pytest.raises(BenchmarkFolderError, match=r"refusing to generate.*my_coco"):
        make_benchmark(user, seed=0, image_size=64, sizes=SMALL)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    # an empty (or new) folder becomes the generator's, and a regeneration is allowed
    make_benchmark(tmp_path / "new", seed=0, image_size=64, sizes=SMALL)
    assert (tmp_path / "new" / MARKER_FILE).is_file()
    make_benchmark(tmp_path / "new", seed=1, image_size=64, sizes=SMALL)
