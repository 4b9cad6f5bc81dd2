"""Bad inputs, faults and unsafe files (issue 9): clear errors, nothing lost, nothing half-written.

Every case below is generated here (PIL / numpy / json / torch), no binary blobs are committed.
Each asserts the exact behaviour: an error of a named type whose message names the file or record
and says what to do, or a documented skip recorded in the ``rejected`` table -- never a traceback
from inside a library, never a partial output (old tables stay byte-identical).

Behaviours chosen where users could expect something else (documented in the modules named):

* wrong file extension: images are decoded by content; the extension is ignored (data/coco.py);
* EXIF orientation is applied, since labelling tools store boxes for the displayed image; an image
  whose decoded size differs from its record's width/height is a bad image (inference.py);
* alpha is dropped (not composited); 16-bit images are divided by 65535 whatever their maximum;
* images above ``MAX_IMAGE_PIXELS`` (8192^2) are refused, not downscaled; 1x1 images are fine;
* boxes outside the image (beyond 1 px), of zero/negative size or not 4 finite numbers are bad
  records, never clipped; with ``mining.on_bad_record=skip`` the record goes to ``rejected`` and
  its image is left out whole; a broken file (bad JSON, missing keys, duplicate image/category
  ids, bad image/category records) is always an error;
* ``iscrowd`` objects are ignored for matching, as pycocotools does (no fn, detections on them
  ``ignored``); a dataset without images is an error, one without annotations is mined;
* a run holds an exclusive ``flock`` on ``<output_dir>/.e2x.lock``; a second run fails at once
  (no waiting); SIGKILL releases it (locking.py);
* a SIGKILLed writer's temp file is removed by the next write of the same target (io_utils.py).

Already covered elsewhere, not repeated: unknown config keys / wrong types / bad YAML
(test_config.py), unknown category in mining and corrupt/missing images in mining
(test_mining.py), checkpoint for another class count (test_adapters.py), NaN model outputs for
every explainer (test_explain.py), FiftyOne GT field of another type and an unreachable database
at the library level (test_fiftyone_io.py).
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FIXTURE_CHECKPOINT
from PIL import Image
from synthetic_detector import SmoothConvDetector
from torch import nn

from e2x_cli.main import main
from e2x_pipeline.config import ConfigError, ExplainConfig, MiningConfig, ModelConfig, load_config
from e2x_pipeline.data.coco import MAX_IMAGE_PIXELS, DatasetError, load_coco, load_image
from e2x_pipeline.detectors import CheckpointError, load_detector, save_checkpoint
from e2x_pipeline.detectors.base import DenseOutput, Detections, Detector, Target
from e2x_pipeline.explain import get_explainer, slic_segments
from e2x_pipeline.io_utils import atomic_write, safe_join, write_json, write_table
from e2x_pipeline.locking import LOCK_NAME, OutputLockedError, run_lock
from e2x_pipeline.mining import REJECTED_COLUMNS, mine, run_mining_stage

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["__background__", "disk", "square", "triangle"]
CATEGORIES = [{"id": i, "name": n} for i, n in enumerate(CLASSES) if i]
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
TABLES = ("candidates.parquet", "predictions.parquet", "rejected.parquet")


# ---- helpers ------------------------------------------------------------------------------------


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


class QuietDetector(Detector):
    """Never detects anything (every score 1e-3 < the low threshold); four quadrant anchors."""

    family = "quiet"

    def __init__(self) -> None:
        super().__init__(nn.Identity(), CLASSES)

    def dense(self, images: torch.Tensor) -> DenseOutput:
        images = self._batch(images)
        b, _, h, w = images.shape
        quads = [
            [0, 0, w / 2, h / 2],
            [w / 2, 0, w, h / 2],
            [0, h / 2, w / 2, h],
            [w / 2, h / 2, w, h],
        ]
        boxes = torch.tensor(quads, dtype=torch.float32).expand(b, 4, 4)
        scores = torch.full((b, 4, len(CLASSES)), 1e-3)
        return DenseOutput(boxes=boxes, scores=scores, probs=scores)

    def detect(self, images: torch.Tensor, score_threshold: float) -> list[Detections]:
        n = self._batch(images).shape[0]
        empty = Detections(
            torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.long),
        )  # fmt: skip
        return [empty] * n


def write_dataset(root: Path, n_images: int = 3, size: int = 32) -> tuple[Path, Path, dict]:
    """``n_images`` flat PNGs and a COCO JSON with one 'disk' box per image (id 10 + image id)."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n_images + 1):
        Image.new("RGB", (size, size), (i * 40, 90, 120)).save(img_dir / f"{i:03d}.png")
        images.append({"id": i, "file_name": f"{i:03d}.png", "width": size, "height": size})
        anns.append(
            {"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [4, 4, 10, 10], "iscrowd": 0}
        )
    coco = {"images": images, "annotations": anns, "categories": CATEGORIES}
    path = root / "ann.json"
    path.write_text(json.dumps(coco))
    return path, img_dir, coco


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """A small planted-failure benchmark (val split only) for the real fixture detector."""
    from e2x_pipeline.data.benchmark import make_benchmark

    root = tmp_path_factory.mktemp("bad-inputs-bench")
    make_benchmark(root, seed=1, sizes={"train": 0, "val": 40, "test": 0, "pool": 0})
    return root


# ---- images: every file a labelling tool or a download can produce -------------------------------


def _img(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


def _pil(name: str, img: Image.Image, **kw) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        img.save(tmp / name, **kw)
        return tmp / name

    return make


def _dir(tmp: Path) -> Path:
    (tmp / "folder.png").mkdir()
    return tmp / "folder.png"


_png, _jpg = png_bytes(Image.fromarray(RGB)), jpeg_bytes(Image.fromarray(RGB))
_exif = Image.Exif()
_exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
_palette = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
_palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
_bilevel = Image.new("1", (3, 2))
_bilevel.putpixel((1, 0), 1)
_rgba = np.dstack([RGB, RNG.integers(0, 256, (12, 16), dtype=np.uint8)])
_gray = RGB[..., 0]
_u16 = np.array([[0, 1000], [65535, 300]], np.uint16)
_u16_dark = np.array([[0, 100], [200, 255]], np.uint16)


def _expect(arr: np.ndarray) -> Callable[[torch.Tensor, Path], None]:
    """The tensor must equal ``arr`` ([H, W, 3] in [0, 1])."""

    def check(t: torch.Tensor, path: Path) -> None:
        assert t.dtype == torch.float32 and t.shape == (3, *arr.shape[:2])
        np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), arr, atol=1e-6)

    return check


def _as_pil_reads(t: torch.Tensor, path: Path) -> None:
    """Lossy formats: equal to PIL's own RGB decode of the same bytes."""
    ref = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    _expect(ref)(t, path)


ERR_DECODE = r"cannot be decoded .*corrupt or not an image\. Re-export it"
ERR_BIG = r"above E2X's limit of 67,108,864 .*downscale it and its boxes"
IMAGE_CASES: dict[str, tuple[Callable[[Path], Path], str | Callable]] = {
    "corrupt-random-bytes": (_img("a.png", RNG.bytes(3000)), ERR_DECODE),
    "truncated-png": (_img("a.png", _png[: len(_png) // 2]), ERR_DECODE + "|truncated"),
    "truncated-jpeg": (_img("a.jpg", _jpg[: len(_jpg) // 2]), r"truncated.*Re-export it"),
    "png-signature-only": (_img("a.png", _png[:8]), ERR_DECODE),
    "html-error-page-named-jpg": (_img("a.jpg", b"<html>404 Not Found</html>"), ERR_DECODE),
    "zero-byte-file": (_img("a.png", b""), r"is an empty file; re-export it or remove its record"),
    "missing-file": (lambda tmp: tmp / "nope.png", r"does not exist; check the image folder"),
    "a-folder-not-a-file": (_dir, r"does not exist; check the image folder"),
    "huge-over-e2x-limit": (_img("big.png", png_header(10_000, 10_000)), ERR_BIG),
    "huge-pil-decompression-bomb": (_img("bomb.png", png_header(20_000, 20_000)), ERR_BIG),
    # decoded by content: the extension is ignored
    "png-bytes-named-jpg": (_img("a.jpg", _png), _expect(RGB / 255)),
    "jpeg-bytes-named-png": (_img("a.png", _jpg), _as_pil_reads),
    "grayscale-L": (_pil("g.png", Image.fromarray(_gray)), _expect(np.dstack([_gray] * 3) / 255)),
    "grayscale-alpha-LA": (
        _pil("la.png", Image.fromarray(np.dstack([_gray, _gray[::-1]]), mode="LA")),
        _expect(np.dstack([_gray] * 3) / 255),
    ),
    "rgba-alpha-dropped": (_pil("a.png", Image.fromarray(_rgba)), _expect(RGB / 255)),
    "palette-P": (
        _pil("p.png", _palette),
        _expect(np.array([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [0, 1, 0]]], np.float32)),
    ),
    "bilevel-1": (_pil("b.png", _bilevel), _expect(np.dstack([[[0, 1, 0], [0, 0, 0]]] * 3))),
    "16-bit-I;16": (
        _pil("u16.png", Image.fromarray(_u16)),
        _expect(np.dstack([_u16] * 3) / 65535),
    ),
    "16-bit-dark-not-rescaled": (
        _pil("u16d.png", Image.fromarray(_u16_dark)),
        _expect(np.dstack([_u16_dark] * 3) / 65535),
    ),
    "cmyk-jpeg": (_pil("c.jpg", Image.fromarray(RGB).convert("CMYK")), _as_pil_reads),
    "tiny-1x1": (
        _pil("t.png", Image.new("RGB", (1, 1), (255, 0, 51))),
        _expect(np.array([[[1.0, 0.0, 0.2]]])),
    ),
    "exif-rotated-png": (
        _pil("r.png", Image.fromarray(RGB), exif=_exif),
        _expect(np.rot90(RGB, k=-1) / 255),
    ),
    "exif-rotated-jpeg": (
        _pil("r.jpg", Image.fromarray(RGB), exif=_exif, quality=95),
        lambda t, p: _expect(
            np.rot90(np.asarray(Image.open(p).convert("RGB")), k=-1).astype(np.float32) / 255
        )(t, p),
    ),
}


@pytest.mark.parametrize("case", IMAGE_CASES, ids=list(IMAGE_CASES))
def test_image_corpus(case: str, tmp_path: Path) -> None:
    make, expected = IMAGE_CASES[case]
    path = make(tmp_path)
    if isinstance(expected, str):
        with pytest.raises(DatasetError, match=expected) as err:
            load_image(path)
        assert str(path) in str(err.value)  # names the file
        e = err.value  # no library exception chained to it
        assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    else:
        t = load_image(path)
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
        expected(t, path)


def test_image_limit_is_documented() -> None:
    assert MAX_IMAGE_PIXELS == 8192 * 8192
    assert "MAX_IMAGE_PIXELS" in (load_image.__doc__ or "")


def test_bad_images_in_mining_error_or_rejected(tmp_path: Path) -> None:
    """error: the first bad image stops the run and the old tables stay; skip: one rejected row
    per bad image (corrupt, truncated, empty, huge, missing, EXIF size mismatch), the rest mined."""
    path, img_dir, coco = write_dataset(tmp_path / "d", n_images=7, size=16)
    out = tmp_path / "out"
    run_mining_stage(QuietDetector(), load_coco(path, img_dir), MiningConfig(), out)  # baseline
    old = snapshot(out)
    (img_dir / "002.png").write_bytes(RNG.bytes(500))
    good = (img_dir / "003.png").read_bytes()
    (img_dir / "003.png").write_bytes(good[: len(good) // 2])
    (img_dir / "004.png").write_bytes(b"")
    (img_dir / "005.png").write_bytes(png_header(9000, 9000))
    (img_dir / "006.png").unlink()
    # the record says 16x16 in the raw orientation of a 16x8 image stored with EXIF rotation
    Image.new("RGB", (16, 8)).save(img_dir / "007.png", exif=_exif)
    coco["images"][6].update(width=16, height=8)
    coco["annotations"][6]["bbox"] = [1, 1, 4, 4]
    path.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=r"002\.png cannot be decoded"):
        run_mining_stage(QuietDetector(), load_coco(path, img_dir), MiningConfig(), out)
    assert snapshot(out) == old  # nothing half-written

    res = run_mining_stage(
        QuietDetector(), load_coco(path, img_dir), MiningConfig(on_bad_record="skip"), out
    )
    rej = pd.read_parquet(out / "rejected.parquet")
    assert list(rej.columns) == REJECTED_COLUMNS
    rej = rej.set_index("image_id")
    assert sorted(rej.index) == [2, 3, 4, 5, 6, 7] and set(rej["record"]) == {"image"}
    assert "cannot be decoded" in rej.loc[2, "error"] and "truncated" in rej.loc[3, "error"]
    assert "empty file" in rej.loc[4, "error"] and "above E2X's limit" in rej.loc[5, "error"]
    assert "does not exist" in rej.loc[6, "error"]
    assert "is 8x16 (width x height, after EXIF rotation)" in rej.loc[7, "error"]
    assert all(rej.loc[i, "file_name"] == f"{i:03d}.png" for i in rej.index)
    assert res.metrics["images"] == 1 and set(res.candidates["image_id"]) == {1}


def test_exif_rotated_image_with_displayed_size_is_mined(tmp_path: Path) -> None:
    """Boxes stored for the displayed orientation fit the EXIF-rotated image."""
    path, img_dir, coco = write_dataset(tmp_path, n_images=1)
    Image.new("RGB", (40, 20)).save(img_dir / "001.png", exif=_exif)  # displayed 20 x 40
    coco["images"][0].update(width=20, height=40)
    coco["annotations"][0]["bbox"] = [2, 25, 15, 12]  # lower half: only fits the rotated image
    path.write_text(json.dumps(coco))
    res = mine(QuietDetector(), load_coco(path, img_dir), MiningConfig())
    assert res.metrics["images"] == 1 and len(res.rejected) == 0
    assert list(res.candidates["outcome"]) == ["fn"]


# ---- annotation files ---------------------------------------------------------------------------

STRUCTURAL: dict[str, tuple[Callable[[dict], object], str]] = {
    "not-json": (lambda c: b"this is not json {", r"is not valid JSON .*; re-export it"),
    "truncated-json": (lambda c: json.dumps(c)[:60], r"is not valid JSON .*; re-export it"),
    "not-utf8": (lambda c: b'{"images": "\xff\xfe\xfa"}', r"is not valid JSON"),
    "top-level-list": (lambda c: [c], r"the top level must be an object"),
    "no-images-key": (lambda c: _drop(c, "images"), r"missing the 'images' key; a COCO detection"),
    "no-annotations-key": (lambda c: _drop(c, "annotations"), r"missing the 'annotations' key"),
    "no-categories-key": (lambda c: _drop(c, "categories"), r"missing the 'categories' key"),
    "images-not-a-list": (lambda c: {**c, "images": {"1": "a.png"}}, r"'images' must be a list"),
    "duplicate-image-id": (
        lambda c: {**c, "images": c["images"] + [{**c["images"][0], "file_name": "x.png"}]},
        r"duplicate image id 1 \(001\.png and x\.png\); image ids must differ",
    ),
    "duplicate-category-id": (
        lambda c: {**c, "categories": c["categories"] + [{"id": 1, "name": "blob"}]},
        r"duplicate category id 1",
    ),
    "image-without-file-name": (
        lambda c: {**c, "images": [{"id": 1, "file_name": None}] + c["images"][1:]},
        r"image record .* needs an integer 'id' and a 'file_name'",
    ),
    "image-id-not-an-integer": (
        lambda c: {**c, "images": [{**c["images"][0], "id": "one"}] + c["images"][1:]},
        r"image record .* needs an integer 'id'",
    ),
    "category-without-name": (
        lambda c: {**c, "categories": [{"id": 1}] + c["categories"][1:]},
        r"category \{'id': 1\} needs an integer 'id' and a string 'name'",
    ),
}


def _drop(c: dict, key: str) -> dict:
    return {k: v for k, v in c.items() if k != key}


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("case", STRUCTURAL, ids=list(STRUCTURAL))
def test_broken_annotation_file_is_always_an_error(case: str, mode: str, tmp_path: Path) -> None:
    path, img_dir, coco = write_dataset(tmp_path)
    content = STRUCTURAL[case][0](coco)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DatasetError, match=STRUCTURAL[case][1]) as err:
        load_coco(path, img_dir, on_bad_record=mode)
    assert str(path) in str(err.value)


def _set_ann(field: str, value: object, which: int = 12) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        next(a for a in c["annotations"] if a["id"] == which)[field] = value

    return mutate


def _replace_ann(value: object) -> Callable[[dict], None]:
    def mutate(c: dict) -> None:
        c["annotations"][1] = value

    return mutate


def _del_ann_id(c: dict) -> None:
    del c["annotations"][1]["id"]


# case -> (mutation, message, rejected (annotation id, image id) rows, images still mined)
BAD_RECORDS: dict[str, tuple[Callable[[dict], None], str, list[tuple[int, int]], list[int]]] = {
    "box-out-of-range": (
        _set_ann("bbox", [20, 20, 30, 5]),
        r"annotation 12 has a bbox \[20, 20, 30, 5\] that lies outside image 002\.png \(32x32\)",
        [(12, 2)],
        [1, 3],
    ),
    "box-left-of-image": (
        _set_ann("bbox", [-5, 2, 4, 4]),
        r"lies outside image 002\.png",
        [(12, 2)],
        [1, 3],
    ),
    "box-zero-area": (
        _set_ann("bbox", [1, 1, 0, 5]),
        r"annotation 12 has a bbox \[1, 1, 0, 5\] with zero or negative size",
        [(12, 2)],
        [1, 3],
    ),
    "box-negative-size": (
        _set_ann("bbox", [5, 5, -3, 4]),
        r"with zero or negative size",
        [(12, 2)],
        [1, 3],
    ),
    "box-nan": (_set_ann("bbox", [float("nan"), 1, 2, 2]), r"finite numbers", [(12, 2)], [1, 3]),
    "box-strings": (_set_ann("bbox", ["1", "2", "3", "4"]), r"finite numbers", [(12, 2)], [1, 3]),
    "box-three-numbers": (_set_ann("bbox", [1, 2, 3]), r"finite numbers", [(12, 2)], [1, 3]),
    "unknown-category-id": (
        _set_ann("category_id", 42),
        r"annotation 12 refers to unknown category id 42",
        [(12, 2)],
        [1, 3],
    ),
    # the record names no known image: nothing to leave out, image 2 is mined without GT
    "unknown-image-id": (
        _set_ann("image_id", 99),
        r"annotation 12 refers to unknown image id 99",
        [(12, 99)],
        [1, 2, 3],
    ),
    "duplicate-annotation-id": (
        _set_ann("id", 12, which=13),
        r"annotation 12 has a duplicate annotation id \(2 records share it\)",
        [(12, 2), (12, 3)],
        [1],
    ),
    "annotation-not-an-object": (
        _replace_ann(42),
        r"annotation None is not an object but int 42",
        [(-1, -1)],
        [1, 2, 3],
    ),
    "annotation-without-id": (_del_ann_id, r"has no integer 'id'", [(-1, 2)], [1, 3]),
}


@pytest.mark.parametrize("case", BAD_RECORDS, ids=list(BAD_RECORDS))
def test_bad_annotation_error_or_rejected(case: str, tmp_path: Path) -> None:
    mutate, message, rows, mined = BAD_RECORDS[case]
    path, img_dir, coco = write_dataset(tmp_path / "d")
    mutate(coco)
    path.write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match=message) as err:
        load_coco(path, img_dir)
    assert str(path) in str(err.value) and "set mining.on_bad_record=skip" in str(err.value)

    ds = load_coco(path, img_dir, on_bad_record="skip")
    out = tmp_path / "out"
    res = run_mining_stage(QuietDetector(), ds, MiningConfig(on_bad_record="skip"), out)
    rej = pd.read_parquet(out / "rejected.parquet")
    assert list(zip(rej["annotation_id"], rej["image_id"], strict=True)) == rows
    assert set(rej["record"]) == {"annotation"} and rej["error"].str.contains(message).all()
    assert res.metrics["images"] == len(mined) and res.metrics["rejected"] == len(rows)
    assert sorted(ds.image_ids) == mined  # the images of bad records are left out whole
    # every good box of a mined image is a candidate (an fn: the quiet detector finds nothing)
    good = {a["id"] for i in mined for a in ds.annotations[i]}
    assert set(res.candidates["gt_id"]) == good


def test_empty_dataset_is_an_error_and_keeps_old_tables(tmp_path: Path) -> None:
    path, img_dir, coco = write_dataset(tmp_path / "d")
    out = tmp_path / "out"
    run_mining_stage(QuietDetector(), load_coco(path, img_dir), MiningConfig(), out)
    old = snapshot(out)
    path.write_text(json.dumps({**coco, "images": [], "annotations": []}))
    with pytest.raises(DatasetError, match=r"ann\.json lists no images, so there is nothing to"):
        run_mining_stage(QuietDetector(), load_coco(path, img_dir), MiningConfig(), out)
    assert snapshot(out) == old


def _bench_subset(bench: Path, tmp: Path, n: int, edit: Callable[[dict], None]) -> Path:
    coco = json.loads((bench / "annotations/val.json").read_text())
    keep = {im["id"] for im in coco["images"][:n]}
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    edit(coco)
    path = tmp / "val.json"
    path.write_text(json.dumps(coco))
    return path


def test_dataset_without_ground_truth_still_reports_fps(
    bench: Path, benchmark_detector, tmp_path: Path
) -> None:
    """No annotations at all (and a 1x1 image among them): every detection is a bkg fp."""
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(tiny)

    def no_gt(c: dict) -> None:
        c["annotations"] = []
        c["images"].append({"id": 999, "file_name": str(tiny), "width": 1, "height": 1})

    path = _bench_subset(bench, tmp_path, 6, no_gt)
    res = mine(benchmark_detector, load_coco(path, bench / "images/val"), MiningConfig())
    m = res.metrics
    assert m["images"] == 7 and m["rejected"] == 0
    assert m["outcomes"]["fp"] > 0 and m["outcomes"]["tp"] == m["outcomes"]["fn"] == 0
    assert set(res.candidates["error_type"]) == {"bkg"} and set(res.candidates["gt_id"]) == {-1}
    assert m["map50"] is None and m["precision"] == 0.0 and m["recall"] is None


def test_crowd_annotations_are_ignored_for_matching(
    bench: Path, benchmark_detector, tmp_path: Path
) -> None:
    """iscrowd=1 (as pycocotools): no fn for a crowd, a detection on it is neither tp nor fp.
    (test_mining.py checks the crowd rule against pycocotools on random boxes.)"""
    plain = _bench_subset(bench, tmp_path, 8, lambda c: None)

    def crowd(c: dict) -> None:
        for a in c["annotations"]:
            a["iscrowd"] = 1

    (tmp_path / "crowd").mkdir()
    crowded = _bench_subset(bench, tmp_path / "crowd", 8, crowd)
    img_dir = bench / "images/val"
    a = mine(benchmark_detector, load_coco(plain, img_dir), MiningConfig())
    b = mine(benchmark_detector, load_coco(crowded, img_dir), MiningConfig())
    assert a.metrics["outcomes"]["tp"] > 0
    assert b.metrics["outcomes"]["tp"] == b.metrics["outcomes"]["fn"] == 0
    ignored = set(b.predictions.loc[b.predictions["outcome"] == "ignored", "candidate_id"])
    assert set(a.candidates.loc[a.candidates["outcome"] == "tp", "candidate_id"]) <= ignored
    assert set(b.candidates["candidate_id"]).isdisjoint(ignored)


def test_model_without_detections(tmp_path: Path) -> None:
    path, img_dir, _ = write_dataset(tmp_path)
    res = mine(QuietDetector(), load_coco(path, img_dir), MiningConfig())
    c = res.candidates
    assert len(res.predictions) == 0 and set(c["outcome"]) == {"fn"} and len(c) == 3
    assert set(c["fn_kind"]) == {"uncovered"} and c["candidate_id"].is_unique
    assert res.metrics["outcomes"] == {"tp": 0, "fp": 0, "fn": 3}
    assert res.metrics["map50"] == 0.0 and res.metrics["recall"] == 0.0


# ---- models -------------------------------------------------------------------------------------


def _fixture_state() -> tuple[dict, dict]:
    obj = torch.load(FIXTURE_CHECKPOINT, map_location="cpu", weights_only=True)
    return obj["state_dict"], obj["meta"]


def _ckpt_bytes(data: bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        (tmp / "model.pt").write_bytes(data)
        return tmp / "model.pt"

    return make


def _ckpt_meta(**meta) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        state, base = _fixture_state()
        save_checkpoint(tmp / "model.pt", state, {**base, **meta})
        return tmp / "model.pt"

    return make


def _ckpt_obj(obj: object) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        torch.save(obj, tmp / "model.pt")
        return tmp / "model.pt"

    return make


def _ckpt_classifier(tmp: Path) -> Path:
    import torchvision

    torch.save(torchvision.models.resnet18(num_classes=4).state_dict(), tmp / "model.pt")
    return tmp / "model.pt"


_FIX = FIXTURE_CHECKPOINT.read_bytes()
CHECKPOINTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (lambda tmp: tmp / "nope.pt", r"does not exist; train one with 'e2x train'"),
    "empty-file": (_ckpt_bytes(b""), r"cannot be read .*truncated or not a PyTorch file"),
    "garbage-bytes": (_ckpt_bytes(b"hello, not a checkpoint"), r"cannot be read"),
    "truncated": (_ckpt_bytes(_FIX[: len(_FIX) // 2]), r"cannot be read .*Re-download"),
    "a-list-not-weights": (_ckpt_obj([1, 2, 3]), r"holds neither a state_dict"),
    "another-arch-in-meta": (
        _ckpt_meta(arch="retinanet_resnet50_fpn"),
        r"is a retinanet_resnet50_fpn model but model.arch is compact_ssd; set model.arch",
    ),
    "another-arch-bare-state-dict": (
        _ckpt_classifier,
        r"does not fit compact_ssd with 4 classes: missing .*another architecture or class count",
    ),
    "another-class-count-in-meta": (
        _ckpt_meta(classes=[*CLASSES, "star"]),
        r"does not fit compact_ssd with 5 classes .*size mismatch.*class count",
    ),
    # an entry point is configuration, never taken from a data file
    "entrypoint-in-meta-custom-arch": (
        _ckpt_meta(arch="custom", entrypoint="os:system"),
        r"is a custom model but model.arch is compact_ssd",
    ),
}


@pytest.mark.parametrize("case", CHECKPOINTS, ids=list(CHECKPOINTS))
def test_checkpoint_corpus(case: str, tmp_path: Path) -> None:
    make, message = CHECKPOINTS[case]
    path = make(tmp_path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_detector(ModelConfig(checkpoint=path), classes=CLASSES)
    assert str(path) in str(err.value)


def test_entrypoint_in_checkpoint_meta_is_ignored(tmp_path: Path) -> None:
    path = _ckpt_meta(entrypoint="os:system")(tmp_path)
    det = load_detector(ModelConfig(checkpoint=path))
    assert type(det).__name__ == "SSDDetector" and det.classes == CLASSES


class _RunsCode:
    """Unpickling this runs a shell command: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["in-meta", "whole-file"])
def test_pickle_carrying_code_is_refused(where: str, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "code-was-run"
    state, meta = _fixture_state()
    payload = _RunsCode(marker)
    obj = {"state_dict": state, "meta": {**meta, "x": payload}} if where == "in-meta" else payload
    path = tmp_path / "evil.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"was refused: .*could run code") as err:
        load_detector(ModelConfig(checkpoint=path))
    msg = str(err.value)
    assert str(path) in msg and "GLOBAL posix.system" in msg and "weights_only=False" not in msg
    assert "torch.save(model.state_dict(), path)" in msg
    assert not marker.exists()
    # through the command: exit 1, one line, no traceback, nothing run
    out = tmp_path / "run"
    args = ["mine", "--no-fiftyone", f"--set=model.checkpoint={path}", f"--output-dir={out}"]
    assert main(args) == 1
    err_text = capsys.readouterr().err
    assert err_text.startswith("e2x: error: checkpoint") and "Traceback" not in err_text
    assert not marker.exists()
    if where == "whole-file":  # the payload is live: an unsafe load would have run it
        torch.load(path, weights_only=False)
        assert marker.exists()


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


class NaNGradientDetector(SmoothConvDetector):
    """Finite outputs, NaN gradients w.r.t. the input."""

    def dense(self, images: torch.Tensor) -> DenseOutput:
        return super().dense(_NaNGrad.apply(self._batch(images)))


class InfScoreDetector(SmoothConvDetector):
    """Class 1's score is +inf everywhere."""

    def dense(self, images: torch.Tensor) -> DenseOutput:
        d = super().dense(images)
        scores = d.scores.clone()
        scores[..., 1] = float("inf")
        return DenseOutput(d.boxes, scores, d.probs, d.objectness)


_BOXES = torch.tensor([[4, 4, 20, 20], [10, 6, 30, 30]], dtype=torch.float32)


@pytest.mark.parametrize(
    "case",
    [
        ("nan-gradient", NaNGradientDetector, {"e2x": False, "ig": False, "lime": True}),
        ("inf-output", InfScoreDetector, {"e2x": False, "lime": False}),
    ],
    ids=lambda c: c[0],
)
def test_non_finite_outputs_or_gradients_mark_explanations_invalid(case) -> None:
    _, det_cls, valid = case
    det = det_cls(_BOXES, n_classes=3, size=32)
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 32, 32, generator=g)
    segments = slic_segments(image, 12, 10.0)
    cfg = ExplainConfig(n_segments=12, k=4, reference="zeros", lime_samples=24)
    targets = [Target(0, 1, tuple(_BOXES[0].tolist())), Target(1, 2, tuple(_BOXES[1].tolist()))]
    for method, ok in valid.items():
        exps = get_explainer(method, det, cfg).explain(image, targets, segments=segments)
        first, second = exps
        assert first.valid is ok, (method, first.reason)
        if not ok:
            assert "non-finite" in first.reason and np.isnan(first.values).all()
        # inf touches class 1 only; a NaN gradient touches every target of a gradient method
        assert second.valid is (ok or det_cls is InfScoreDetector), method


# ---- config and paths -----------------------------------------------------------------------


def test_nested_unknown_key_and_wrong_types_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'data.splits.val.annotaions'"):
        load_config(None, ["data.splits.val.annotaions=a.json", "data.splits.val.images=x"])
    with pytest.raises(ConfigError, match=r"'data.splits.val.images': Field required"):
        load_config(None, ["data.splits.val.annotations=a.json"])
    with pytest.raises(ConfigError, match=r"'mining.on_bad_record': Input should be 'error'"):
        load_config(None, ["mining.on_bad_record=maybe"])
    with pytest.raises(ConfigError, match=r"'data.splits'"):
        load_config(None, ["data.splits=[1, 2]"])


def _cli_mine(bench: Path, out: Path, *extra: str, fiftyone: bool = False) -> int:
    return main(
        [
            "mine",
            *([] if fiftyone else ["--no-fiftyone"]),
            "--no-progress",
            f"--set=data.root={bench}",
            f"--set=model.checkpoint={FIXTURE_CHECKPOINT}",
            f"--output-dir={out}",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    "case",
    [
        (
            "split-annotations-missing",
            [
                "--set=data.splits.val.annotations=/nonexistent/val.json",
                "--set=data.splits.val.images=/x",
            ],
            r"e2x: error: split 'val' has no annotation file /nonexistent/val.json; the splits "
            r"that exist are \[.*'test', 'train'.*\]",
        ),
        (
            "checkpoint-missing",
            ["--set=model.checkpoint=/nonexistent/model.pt"],
            r"e2x: error: checkpoint /nonexistent/model.pt does not exist; train one",
        ),
        (
            "split-name-leaves-output-dir",
            ["--split=../../escaped"],
            r"e2x: error: path .*escaped leaves the output folder .*no '\.\.', absolute paths",
        ),
        (
            "split-name-absolute",
            ["--split=/tmp/e2x-escaped"],
            r"e2x: error: path /tmp/e2x-escaped leaves the output folder",
        ),
    ],
    ids=lambda c: c[0],
)
def test_cli_bad_paths_exit_1_with_one_line(case, bench: Path, tmp_path: Path, capsys) -> None:
    _, extra, message = case
    out = tmp_path / "run"
    assert _cli_mine(bench, out, *extra) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not list(out.rglob("*.parquet")) and not (tmp_path.parent / "escaped").exists()


def test_output_dir_that_is_a_file(bench: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.write_text("precious")
    assert _cli_mine(bench, out) == 1
    assert f"output_dir {out} exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "precious"


@pytest.mark.parametrize(
    "parts,ok",
    [
        (("val",), True),
        (("val", "maps", "3.npz"), True),
        (("val", "overlays", "val_1_a3_c1-e2x.png"), True),
        (("",), True),
        (("..", "x"), False),
        (("val", "..", "..", "x"), False),
        (("/etc/passwd",), False),
        (("link", "f.npz"), False),  # a symlink leading out of the folder
    ],
)
def test_safe_join(parts, ok: bool, tmp_path: Path) -> None:
    base = tmp_path / "out"
    base.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (base / "link").symlink_to(tmp_path / "elsewhere")
    if ok:
        assert safe_join(base, *parts) == base.joinpath(*parts)
    else:
        with pytest.raises(ValueError, match=r"leaves the output folder") as err:
            safe_join(base, *parts)
        assert str(base.joinpath(*parts)) in str(err.value)


def test_overlay_refuses_a_map_file_outside_the_output_folder(tmp_path: Path) -> None:
    from e2x_pipeline.stages import overlay_stage

    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}"])
    d = tmp_path / "out" / "val"
    np.savez(tmp_path / "secret.npz", k=np.zeros((2, 2)))
    row = {"candidate_id": "val/1/a0/c1", "method": "e2x", "output": "score", "valid": True}
    write_table(
        d / "explanations.parquet",
        pd.DataFrame([{**row, "map_file": "../../secret.npz", "map_key": "k"}]),
    )
    write_table(d / "candidates.parquet", pd.DataFrame([{"candidate_id": "val/1/a0/c1"}]))
    with pytest.raises(ValueError, match=r"secret.npz leaves the output folder"):
        overlay_stage(cfg, "val")
    assert not (d / "overlays").exists()


# ---- FiftyOne -----------------------------------------------------------------------------------


def test_fiftyone_dataset_of_another_tool_is_refused(
    fo_db, bench: Path, tmp_path: Path, capsys
) -> None:
    import fiftyone as fo

    from e2x_pipeline import fiftyone_io

    name = "e2x-test-bad-inputs-foreign"
    fiftyone_io.delete_dataset(name)
    ds = fo.Dataset(name)
    ds.persistent = True
    ds.add_sample(fo.Sample(filepath="/data/x.png", image_id="x-17"))  # a string image_id
    try:
        opt = f"--set=data.fiftyone_dataset={name}"
        assert _cli_mine(bench, tmp_path / "run", opt, fiftyone=True) == 1
        err = capsys.readouterr().err
        assert f"e2x: error: FiftyOne dataset '{name}' has an 'image_id' field of type" in err
        assert "Set data.fiftyone_dataset to another name, or delete the dataset" in err
        assert "Traceback" not in err
        assert len(fo.load_dataset(name)) == 1  # untouched
    finally:
        fiftyone_io.delete_dataset(name)


# ---- faults: atomic writes, SIGKILL, two runs at once ------------------------------------------


def test_exception_inside_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    old = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_write(target, "w") as fh:
        fh.write('{"new": ')
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == old and litter(tmp_path) == []
    table = tmp_path / "candidates.parquet"
    write_table(table, pd.DataFrame({"a": [1, 2]}))
    old = table.read_bytes()
    with pytest.raises(Exception, match="object"):  # pyarrow cannot store this column
        write_table(table, pd.DataFrame({"a": [1, object()]}))
    assert table.read_bytes() == old and litter(tmp_path) == []


def test_sigkill_inside_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target, marker = tmp_path / "table.parquet", tmp_path / "writing"
    target.write_bytes(b"old complete table")
    code = (
        "import sys, time, pathlib\n"
        "from e2x_pipeline.io_utils import atomic_write\n"
        "with atomic_write(sys.argv[1]) as fh:\n"
        "    fh.write(b'new half-written table' * 1000); fh.flush()\n"
        "    pathlib.Path(sys.argv[2]).touch(); time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(target), str(marker)], cwd=tmp_path)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert target.read_bytes() == b"old complete table"
    assert litter(tmp_path) == [n for n in litter(tmp_path) if f".{proc.pid}." in n]
    assert len(litter(tmp_path)) == 1  # a killed process cannot clean up ...
    write_json(target, {"new": True})  # ... the next write of the target does
    assert litter(tmp_path) == [] and json.loads(target.read_text()) == {"new": True}


def _wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "the subprocess never reached the marker"
        time.sleep(0.05)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def _mine_args(bench: Path, out: Path) -> list[str]:
    return [
        "mine",
        "--no-progress",
        f"--set=data.root={bench}",
        f"--set=model.checkpoint={FIXTURE_CHECKPOINT}",
        f"--output-dir={out}",
    ]


@pytest.fixture(scope="module")
def reference_run(bench: Path, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted ``e2x mine`` whose FiftyOne database cannot be reached: the tables are
    written, then publishing fails with a one-line message (exit 1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    tmp = tmp_path_factory.mktemp("reference")
    env = _env(
        FIFTYONE_DATABASE_URI=f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=300",
        FIFTYONE_DATABASE_DIR=str(tmp / "fo"),
    )
    out = tmp / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "e2x_cli.main", *_mine_args(bench, out)],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out, proc


def test_unreachable_fiftyone_database_from_the_command(reference_run) -> None:
    out, proc = reference_run
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("e2x: error: cannot reach FiftyOne's MongoDB at mongodb://127.0.0.1:")
    assert "mongod --dbpath" in proc.stderr and "unset FIFTYONE_DATABASE_URI" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert all((out / "val" / t).is_file() for t in TABLES)  # mining finished before publishing


def test_sigkill_during_mining_then_rerun_equals_an_uninterrupted_run(
    reference_run, bench: Path, tmp_path: Path
) -> None:
    """SIGKILL while predictions.parquet is half-written (after candidates.parquet): the old
    predictions table stays whole; a rerun gives the uninterrupted run's tables, no duplicates,
    no temp files."""
    ref, _ = reference_run
    out, marker = tmp_path / "run", tmp_path / "writing"
    old = pd.read_parquet(ref / "val/predictions.parquet").head(3)
    write_table(out / "val/predictions.parquet", old)  # an earlier run's table
    old_bytes = (out / "val/predictions.parquet").read_bytes()
    code = (
        "import io, sys, time, pathlib\n"
        "import e2x_pipeline.mining.stage as m\n"
        "from e2x_pipeline.io_utils import atomic_write\n"
        "from e2x_cli.main import main\n"
        "orig = m.write_table\n"
        "def write_table(path, df):\n"
        "    if pathlib.Path(path).name != 'predictions.parquet':\n"
        "        return orig(path, df)\n"
        "    buf = io.BytesIO(); df.to_parquet(buf, index=False); data = buf.getvalue()\n"
        "    with atomic_write(path) as fh:\n"
        "        fh.write(data[: len(data) // 2]); fh.flush()\n"
        "        pathlib.Path(sys.argv[1]).touch(); time.sleep(120)\n"
        "m.write_table = write_table\n"
        "sys.exit(main(sys.argv[2:]))\n"
    )
    args = [*_mine_args(bench, out), "--no-fiftyone"]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(marker), *args], env=_env(), cwd=tmp_path
    )
    _wait_for(marker, proc, timeout=120)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert (out / "val/predictions.parquet").read_bytes() == old_bytes  # whole, old
    pd.read_parquet(out / "val/candidates.parquet")  # every table present is readable
    assert not (out / "val/metrics.json").exists() and len(litter(out)) == 1

    done = subprocess.run(
        [sys.executable, "-m", "e2x_cli.main", *args],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for t in TABLES:
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / "val" / t), pd.read_parquet(ref / "val" / t)
        )
    for t in ("candidates.parquet", "predictions.parquet"):
        assert pd.read_parquet(out / "val" / t)["candidate_id"].is_unique
    metrics = [json.loads((d / "val/metrics.json").read_text()) for d in (out, ref)]
    for m in metrics:
        m.pop("seconds")
    assert metrics[0] == metrics[1] and litter(out) == []


def test_second_run_on_a_locked_output_folder_fails_fast(bench: Path, tmp_path: Path) -> None:
    """Two real processes: a run holds the folder; ``e2x mine`` on it fails at once, writes
    nothing; once the holder is SIGKILLed the folder is free again (no stale lock)."""
    out, marker = tmp_path / "run", tmp_path / "holding"
    code = (
        "import sys, time, pathlib\n"
        "from e2x_pipeline.locking import run_lock\n"
        "with run_lock(sys.argv[1], run_id='holder-run-1'):\n"
        "    pathlib.Path(sys.argv[2]).touch(); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(out), str(marker)], env=_env())
    try:
        _wait_for(marker, holder)
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "e2x_cli.main", *_mine_args(bench, out), "--no-fiftyone"],
            env=_env(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 1, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(
            f"e2x: error: output folder {out} is locked by run holder-run-1 (pid {holder.pid}, "
            "started "
        )
        assert last.endswith("; wait for it to finish or choose another --output-dir")
        assert time.monotonic() - t0 < 60 and not (out / "val").exists()
        with pytest.raises(OutputLockedError, match="locked by run holder-run-1"), run_lock(out):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    with run_lock(out, run_id="after") as lock:  # the kernel dropped the dead holder's lock
        assert json.loads(lock.read_text())["run_id"] == "after"
        with run_lock(out):  # re-entrant within one process
            pass
    assert (out / LOCK_NAME).read_text() == ""  # released: no holder recorded


# ---- security -----------------------------------------------------------------------------------


def _sources() -> list[Path]:
    return sorted([*REPO.glob("e2x_pipeline/**/*.py"), *REPO.glob("flows/**/*.py")])


def test_no_shell_and_no_unsafe_loading_in_the_code() -> None:
    """No subprocess with shell=True, no os.system/popen, torch.load only with weights_only=True,
    no pickle.load, np.load never with allow_pickle=True (AST scan of e2x_pipeline/ and flows/)."""
    problems = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            kw = {k.arg: k.value for k in node.keywords}
            name = ast.unparse(node.func)
            if "shell" in kw and not (
                isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False
            ):
                problems.append(f"{where} shell=")
            if name in ("os.system", "os.popen", "pickle.load", "pickle.loads"):
                problems.append(f"{where} {name}")
            if (
                name == "torch.load"
                and ast.unparse(kw.get("weights_only", ast.Constant(None))) != "True"
            ):
                problems.append(f"{where} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load") and ast.unparse(
                kw.get("allow_pickle", ast.Constant(False))
            ) not in ("False",):
                problems.append(f"{where} np.load(allow_pickle=...)")
    assert len(_sources()) > 20 and problems == []


def test_servers_bind_to_loopback_by_default(monkeypatch, tmp_path: Path) -> None:
    from e2x_pipeline.env import set_offline_defaults

    for var in ("FIFTYONE_DEFAULT_APP_ADDRESS", "PREFECT_SERVER_API_HOST"):
        monkeypatch.delenv(var, raising=False)
    set_offline_defaults(tmp_path)
    assert os.environ["FIFTYONE_DEFAULT_APP_ADDRESS"] == "127.0.0.1"
    assert os.environ["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    monkeypatch.setenv("FIFTYONE_DEFAULT_APP_ADDRESS", "0.0.0.0")  # the user's explicit choice
    set_offline_defaults(tmp_path)
    assert os.environ["FIFTYONE_DEFAULT_APP_ADDRESS"] == "0.0.0.0"


def test_a_configured_prefect_is_used_as_is(monkeypatch, tmp_path: Path) -> None:
    """PREFECT_API_URL, PREFECT_HOME, PREFECT_PROFILE or a profiles file: E2X sets no Prefect
    location; with nothing configured it keeps Prefect's state in ./.e2x/prefect, and it
    creates nothing on disk until a flow runs."""
    from e2x_pipeline.env import set_offline_defaults

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.prefect/profiles.toml
    for var in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    set_offline_defaults(tmp_path / "e2x")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "e2x" / "prefect")
    assert not (tmp_path / "e2x").exists()
    for var, value in (
        ("PREFECT_API_URL", "http://127.0.0.1:4200/api"),
        ("PREFECT_PROFILE", "team"),
    ):
        monkeypatch.delenv("PREFECT_HOME", raising=False)
        monkeypatch.setenv(var, value)
        set_offline_defaults(tmp_path / "e2x")
        assert "PREFECT_HOME" not in os.environ, var
        monkeypatch.delenv(var)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "mine"))
    set_offline_defaults(tmp_path / "e2x")
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "mine")
    monkeypatch.delenv("PREFECT_HOME")
    profiles = tmp_path / "home" / ".prefect" / "profiles.toml"
    profiles.parent.mkdir(parents=True)
    profiles.write_text('active = "team"\n')
    set_offline_defaults(tmp_path / "e2x")
    assert "PREFECT_HOME" not in os.environ


def test_help_creates_nothing_on_disk(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(tmp_path / "home")
    for args in (["--help"], ["run", "--help"], ["explain", "--help"]):
        r = subprocess.run(
            [sys.executable, "-m", "e2x_cli", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
