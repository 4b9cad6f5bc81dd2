"""Training: the loss falls, checkpoints round-trip safely, and the cache avoids retraining."""

import pickle

import pytest
import torch

from e2x_pipeline.config import load_config
from e2x_pipeline.data.coco import load_coco
from e2x_pipeline.detectors import CheckpointError, load_checkpoint, load_detector
from e2x_pipeline.training import train_detector


@pytest.fixture(scope="module")
def trained(tiny_benchmark, tmp_path_factory):
    cfg = load_config(
        None,
        {
            "data.root": str(tiny_benchmark),
            "train.epochs": 3,
            "train.batch_size": 16,
            "train.lr": 0.005,
        },
    )
    train = load_coco(tiny_benchmark / "annotations/train.json", tiny_benchmark / "images/train")
    cache = tmp_path_factory.mktemp("ckpt")
    path, meta = train_detector(cfg, train, cache, progress=False)
    return cfg, train, cache, path, meta


def test_loss_decreases_and_meta_is_recorded(trained):
    cfg, train, _, path, meta = trained
    state, saved = load_checkpoint(path)
    assert saved == meta
    assert meta["arch"] == "compact_ssd"
    assert meta["classes"] == ["__background__", "disk", "square", "triangle"]
    assert meta["final_loss"] < 0.8 * meta["train_first_loss"]
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_cache_reuses_checkpoint(trained):
    cfg, train, cache, path, meta = trained
    mtime = path.stat().st_mtime_ns
    again, meta2 = train_detector(cfg, train, cache, progress=False)
    assert again == path and path.stat().st_mtime_ns == mtime and meta2 == meta
    other = cfg.model_copy(update={"seed": 1})
    from e2x_pipeline.training import dataset_hash, training_key

    assert training_key(dataset_hash(train), other.model, other.train, 1) not in path.name


def test_loaded_detector_reproduces_outputs(trained):
    cfg, train, _, path, _ = trained
    a = load_detector(cfg.model.model_copy(update={"checkpoint": path}))
    b = load_detector(cfg.model.model_copy(update={"checkpoint": path}))
    x = torch.rand(2, 3, 128, 128)
    da, db = a.dense(x), b.dense(x)
    assert torch.equal(da.scores, db.scores) and torch.equal(da.boxes, db.boxes)


def test_checkpoint_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this would have run code",))

    p = tmp_path / "evil.pt"
    with open(p, "wb") as fh:
        pickle.dump({"state_dict": {}, "meta": Evil()}, fh)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(p)


def test_wrong_class_count_is_refused(trained, tmp_path):
    cfg, _, _, path, _ = trained
    state, meta = load_checkpoint(path)
    from e2x_pipeline.detectors import save_checkpoint

    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, state, {**meta, "classes": meta["classes"] + ["extra"]})
    with pytest.raises(CheckpointError, match="another architecture or class count"):
        load_detector(cfg.model.model_copy(update={"checkpoint": bad}))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_detector(cfg.model.model_copy(update={"checkpoint": tmp_path / "none.pt"}))
