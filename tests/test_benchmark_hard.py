"""The hard variant of the planted-failure benchmark: cause instances vary, train stays clean,
the default variant is unchanged byte for byte, and the config names the variant."""

import colorsys
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from e2x_pipeline.config import ConfigError, load_config
from e2x_pipeline.data.benchmark import (
    CAUSES,
    DISTRACTOR_FAMILIES,
    OCCLUDER_TEXTURES,
    SUMMARY_FILE,
    load_causes,
    make_benchmark,
)
from e2x_pipeline.data.coco import load_coco

ROOT = Path(__file__).parent.parent
REFERENCE_SIZES = {"train": 20, "val": 20, "test": 10, "pool": 20}
# The digest of make_benchmark(seed=0, image_size=128, sizes=REFERENCE_SIZES), computed with the
# generator as it was before the variants existed (commit de72bab). The default variant must keep
# producing exactly these files: cached benchmarks and the committed checkpoint depend on it.
DEFAULT_REFERENCE_DIGEST = "c9e09366c921b34a8211f9dc42c46f3d5ba7940897da3886c768f29b88405876"


def _digest(root: Path) -> str:
    """Every file's relative path and content; PNGs by their decoded pixels (independent of the
    PNG encoder's version), the JSON files and the marker by their bytes."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        if p.suffix == ".png":
            a = np.asarray(Image.open(p))
            h.update(str(a.shape).encode() + a.tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-hard")
    make_benchmark(
        root, seed=2, sizes={"train": 30, "val": 60, "test": 0, "pool": 30}, variant="hard"
    )
    return root


def _image(root: Path, split: str, image_id: int) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / split / f"{split}_{image_id:05d}.png")) / 255


def _crop(img: np.ndarray, bbox: list[float]) -> np.ndarray:
    x, y, w, h = (int(v) for v in bbox)
    return img[y : y + h, x : x + w]


def test_default_variant_is_unchanged(tmp_path):
    summary = make_benchmark(tmp_path / "a", seed=0, sizes=REFERENCE_SIZES)
    assert "variant" not in summary
    assert "variant" not in json.loads((tmp_path / "a" / SUMMARY_FILE).read_text())
    assert all("variant" not in c for c in load_causes(tmp_path / "a"))
    assert _digest(tmp_path / "a") == DEFAULT_REFERENCE_DIGEST
    make_benchmark(tmp_path / "b", seed=0, sizes=REFERENCE_SIZES, variant="default")
    assert _digest(tmp_path / "b") == DEFAULT_REFERENCE_DIGEST


def test_hard_is_deterministic_and_differs_from_default(tmp_path):
    sizes = {"train": 4, "val": 8, "test": 0, "pool": 4}
    for name in ("a", "b"):
        make_benchmark(tmp_path / name, seed=3, image_size=64, sizes=sizes, variant="hard")
    make_benchmark(tmp_path / "c", seed=3, image_size=64, sizes=sizes)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmark variant 'bogus'"):
        make_benchmark(tmp_path, sizes=REFERENCE_SIZES, variant="bogus")


def test_hard_summary_and_train_stay_clean(hard):
    summary = json.loads((hard / SUMMARY_FILE).read_text())
    assert summary["variant"] == "hard"
    assert summary["splits"]["train"]["causes"] == {c: 0 for c in CAUSES}
    assert load_causes(hard, "train") == []
    train = load_coco(hard / "annotations/train.json", hard / "images/train")
    assert all(a["cause"] is None for anns in train.annotations.values() for a in anns)
    assert json.loads((hard / "annotations/val.json").read_text())["info"]["variant"] == "hard"
    assert {c["cause"] for c in load_causes(hard, "val")} == set(CAUSES)


def test_hard_cause_regions_are_recorded_as_in_the_default(hard):
    val = load_coco(hard / "annotations/val.json", hard / "images/val")
    ann_by_id = {a["id"]: a for anns in val.annotations.values() for a in anns}
    for c in load_causes(hard, "val"):
        assert "variant" in c
        x, y, w, h = c["region_bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
        if c["cause"] == "distractor":
            assert c["annotation_id"] is None
            continue
        ann = ann_by_id[c["annotation_id"]]
        assert ann["cause"] == c["cause"] and ann["image_id"] == c["image_id"]
        ax, ay, aw, ah = ann["bbox"]
        assert x < ax + aw and ax < x + w and y < ay + ah and ay < y + h
        if c["cause"] == "camouflage":
            assert val.categories[ann["category_id"]] == "disk"
            assert x <= ax and y <= ay and ax + aw <= x + w and ay + ah <= y + h  # disk on patch
        else:  # the band lies on the object, within the default's 2 px margin
            assert ax - 2 <= x and ay - 2 <= y and x + w <= ax + aw + 2 and y + h <= ay + ah + 2


def test_occluder_instances_vary(hard):
    occ = [c for c in load_causes(hard, "val") if c["cause"] == "occluder"]
    assert len(occ) >= 8
    v = [c["variant"] for c in occ]
    assert {p["texture"] for p in v} <= set(OCCLUDER_TEXTURES)
    assert len({p["texture"] for p in v}) >= 3
    angles = np.array([p["angle_deg"] for p in v])
    assert np.ptp(angles) > 120 and np.any(angles % 90 > 5)  # not only axis-aligned sides
    cover = np.array([p["coverage"] for p in v])
    assert cover.min() >= 0.2 and cover.max() <= 0.8 and np.ptp(cover) > 0.15
    assert {p["through"] for p in v} == {True, False}
    # the pixels: dark bands (hard version 3) whose hue differs from band to band
    colours = np.array([p["colour"] for p in v])
    assert colours.max(1).max() <= 0.4 + 1e-6  # value <= 0.4: every channel dark
    hues = np.array([colorsys.rgb_to_hsv(*c)[0] for c in colours if np.ptp(c) > 0.02])
    assert len(hues) >= 4 and np.ptp(hues) > 0.3
    for c in occ:  # the band's pixels are darker than the object it covers
        region = _crop(_image(hard, "val", c["image_id"]), c["region_bbox"])
        assert region.mean() < 0.6


def test_camouflage_bricks_vary_in_hue(hard):
    cam = [c for c in load_causes(hard) if c["cause"] == "camouflage"]
    assert len(cam) >= 6
    v = [c["variant"] for c in cam]
    assert {p["near"] for p in v} == {True, False}
    offsets = np.abs([p["hue_offset_deg"] for p in v])
    assert offsets.min() <= 25 and offsets.max() >= 43
    assert np.ptp([p["contrast"] for p in v]) > 0.2
    disks = np.array([p["disk_colour"] for p in v])
    assert np.ptp(disks, axis=0).max() > 0.1
    # the patch pixels follow the recorded brick colour (mortar and the disk pull the mean)
    for c in cam:
        patch = _crop(_image(hard, c["split"], c["image_id"]), c["region_bbox"])
        bricks = np.array(c["variant"]["brick_colour"])
        assert np.abs(np.median(patch.reshape(-1, 3), 0) - bricks).max() < 0.15


def test_distractor_shape_families_vary(hard):
    dis = [c for c in load_causes(hard) if c["cause"] == "distractor"]
    families = Counter(c["variant"]["family"] for c in dis)
    assert set(families) <= set(DISTRACTOR_FAMILIES)
    assert len(families) >= 4, families
    # disk-coloured but not a disk: the box's centre is not painted for the ring families
    ringed = ("ring", "thick_ring", "thin_ring", "double_ring", "arc", "gap_ring")
    disk = np.array([0.86, 0.30, 0.20])
    for c in dis:
        img = _image(hard, c["split"], c["image_id"])
        x, y, w, h = c["region_bbox"]
        cx, cy = int(x + w / 2), int(y + h / 2)
        if c["variant"]["family"] in ringed:
            assert np.abs(img[cy, cx] - disk).max() > 0.1
        assert np.abs(np.array(c["variant"]["colour"]) - disk).max() <= 0.06 + 1e-3


def test_config_variant(tmp_path):
    assert load_config().benchmark.variant == "default"
    p = tmp_path / "c.yaml"
    p.write_text("benchmark:\n  variant: bogus\n")
    with pytest.raises(ConfigError, match=r"'benchmark.variant'.*'default' or 'hard'"):
        load_config(p)
    hard_cfg = load_config(ROOT / "configs" / "hard.yaml")
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert hard_cfg.benchmark.variant == "hard"
    assert hard_cfg.data.root != demo.data.root and hard_cfg.output_dir != demo.output_dir
    assert hard_cfg.model == demo.model and hard_cfg.train == demo.train


def test_ensure_benchmark_regenerates_when_the_variant_changes(tmp_path):
    from e2x_pipeline.stages import ensure_benchmark

    sizes = {f"benchmark.n_{s}": 10 for s in ("train", "val", "test", "pool")}
    base = {**sizes, "benchmark.image_size": 64, "data.root": str(tmp_path / "b")}
    stamp = tmp_path / "b" / SUMMARY_FILE
    ensure_benchmark(load_config(None, base))
    assert "variant" not in json.loads(stamp.read_text())
    first = stamp.stat().st_mtime_ns
    ensure_benchmark(load_config(None, {**base, "benchmark.variant": "default"}))
    assert stamp.stat().st_mtime_ns == first  # the same benchmark: not regenerated
    ensure_benchmark(load_config(None, {**base, "benchmark.variant": "hard"}))
    assert json.loads(stamp.read_text())["variant"] == "hard"
    hard_stamp = stamp.stat().st_mtime_ns
    ensure_benchmark(load_config(None, {**base, "benchmark.variant": "hard"}))
    assert stamp.stat().st_mtime_ns == hard_stamp
    ensure_benchmark(load_config(None, base))
    assert "variant" not in json.loads(stamp.read_text())
