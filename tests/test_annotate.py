"""``e2x annotate``: the repair view to a labelling backend through FiftyOne's annotate().

Offline only: a backend without credentials fails with one line naming what to set, and a
labelling backend registered in FiftyOne's annotation config (tests/fake_annotation_backend.py)
receives what ``e2x annotate`` sends and returns "drawn" boxes that ``--load`` puts into
``e2x_annotations``, never into the ground truth.
"""

from __future__ import annotations

import contextlib
import io

import pandas as pd
import pytest
import yaml

from e2x_cli.main import main
from e2x_pipeline.data.coco import load_coco

NAME = "e2x-test-annotate-pool"
FAKE = "e2xfake"


@pytest.fixture(scope="module")
def published(fo_db, tmp_path_factory):
    """(config file, pool) with a published 3-image repair view on dataset NAME."""
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.data.benchmark import make_benchmark

    root = tmp_path_factory.mktemp("annotate-bench")
    make_benchmark(root, seed=0, sizes={"train": 0, "val": 0, "test": 0, "pool": 6})
    pool = load_coco(root / "annotations/pool.json", root / "images/pool")
    ids = pool.image_ids[:3]
    repair_set = pd.DataFrame(
        {
            "image_id": ids,
            "mode_id": [0, 1, 0],
            "score": [0.9, 0.8, 0.7],
            "rank": [1, 2, 3],
            "segment": [0, 1, 2],
            "x1": 10.0,
            "y1": 10.0,
            "x2": 40.0,
            "y2": 40.0,
        }
    )
    fiftyone_io.delete_dataset(NAME)
    fiftyone_io.publish_repair(NAME, pool, repair_set)
    work = tmp_path_factory.mktemp("annotate-run")
    cfg = {
        "device": "cpu",
        "output_dir": str(work / "out"),
        "data": {"root": str(root)},
        "repair": {"fiftyone_dataset": NAME},
    }
    path = work / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield path, pool
    fiftyone_io.delete_dataset(NAME)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def test_a_backend_without_credentials_fails_with_one_line(monkeypatch, tmp_path):
    import fiftyone as fo

    backends = fo.annotation_config.backends
    monkeypatch.setitem(
        backends, "cvat", {k: v for k, v in backends["cvat"].items() if k in ("config_cls", "url")}
    )
    monkeypatch.setitem(backends, "labelstudio", {**backends["labelstudio"], "api_key": "k"})
    # no database: the check runs before anything connects (the config need not even exist)
    cfg = ["--config", str(tmp_path / "missing.yaml")]
    rc, _, err = _cli("annotate", *cfg, "--backend", "cvat")
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "annotation backend 'cvat' is not configured" in err
    assert "(FIFTYONE_CVAT_USERNAME or FIFTYONE_CVAT_EMAIL) and FIFTYONE_CVAT_PASSWORD" in err
    # Label Studio's default URL is FiftyOne's placeholder (its web site), so it is asked for
    rc, _, err = _cli("annotate", *cfg, "--backend", "labelstudio")
    assert rc == 1 and "set FIFTYONE_LABELSTUDIO_URL," in err and "API_KEY" not in err
    rc, _, err = _cli("annotate", *cfg, "--backend", "nope")
    assert rc == 1 and "unknown annotation backend 'nope'" in err and "cvat" in err


def test_annotate_sends_the_repair_view_and_load_fills_an_e2x_field(published, monkeypatch):
    import fiftyone as fo
    from fake_annotation_backend import SERVER

    from e2x_pipeline.fiftyone_io import REPAIR_VIEW

    path, pool = published
    monkeypatch.setitem(
        fo.annotation_config.backends,
        FAKE,
        {"config_cls": "fake_annotation_backend.FakeBackendConfig", "url": "http://labels.test"},
    )
    cfg = ["--config", str(path), "--no-progress"]
    rc, out, err = _cli("annotate", *cfg, "--backend", FAKE, "--anno-key", "e2x_repair_t1")
    assert rc == 0, err
    assert (
        "sent 3 repair-set images" in out and "e2x annotate --load --anno-key e2x_repair_t1" in out
    )
    ds = fo.load_dataset(NAME)
    view = ds.load_saved_view(REPAIR_VIEW)
    sent = SERVER["e2x_repair_t1"]
    # exactly the repair view, in its order, with the pool's classes, a new detections field
    assert sent["filepaths"] == view.values("filepath")
    assert sent["url"] == "http://labels.test" and sent["launch_editor"] is False
    schema = sent["label_schema"]
    assert list(schema) == ["e2x_annotations"]
    assert schema["e2x_annotations"]["type"] == "detections"
    assert schema["e2x_annotations"]["classes"] == sorted(pool.categories.values())
    assert schema["e2x_annotations"]["existing_field"] is False
    # the same key again is refused; so is a non-e2x_ field
    rc, _, err = _cli("annotate", *cfg, "--backend", FAKE, "--anno-key", "e2x_repair_t1")
    assert rc == 1 and "already has an annotation run 'e2x_repair_t1'" in err
    rc, _, err = _cli("annotate", *cfg, "--backend", FAKE, "--label-field", "ground_truth")
    assert rc == 1 and "does not start with 'e2x_'" in err

    # the annotator draws two boxes on the first image and one on the third
    first, _, third = sent["sample_ids"]
    drawn = {
        first: [("disk", [0.1, 0.1, 0.2, 0.2]), ("square", [0.5, 0.5, 0.3, 0.3])],
        third: [("triangle", [0.2, 0.3, 0.4, 0.1])],
    }
    sent["drawn"] = drawn
    gt_before = ds.values("ground_truth")
    rc, out, err = _cli("annotate", *cfg, "--load")  # the newest e2x_repair_* run
    assert rc == 0, err
    assert "loaded annotation run 'e2x_repair_t1': 3 boxes in e2x_annotations" in out
    ds.reload()
    got = {
        sid: sorted((d.label, [round(v, 6) for v in d.bounding_box]) for d in dets.detections)
        for sid, dets in zip(*ds.values(["id", "e2x_annotations"]), strict=True)
        if dets is not None and dets.detections
    }
    assert got == {sid: sorted(boxes) for sid, boxes in drawn.items()}
    assert ds.values("ground_truth") == gt_before
    rc, _, err = _cli("annotate", *cfg, "--load", "--label-field", "ground_truth")
    assert rc == 1 and "never the dataset's own labels" in err
