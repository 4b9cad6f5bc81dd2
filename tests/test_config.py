from pathlib import Path

import pytest

from e2x_pipeline.config import ConfigError, load_config


def test_defaults_validate():
    cfg = load_config()
    assert cfg.mining.low_threshold == 0.01
    assert cfg.explain.n_segments == 200


def test_demo_config_file_matches_defaults():
    path = Path(__file__).parent.parent / "configs" / "demo.yaml"
    cfg = load_config(path)
    assert cfg == load_config()
    # the file lists every key of every section, as the README promises
    import yaml

    listed = yaml.safe_load(path.read_text())
    for section, values in cfg.model_dump().items():
        if isinstance(values, dict):
            missing = set(values) - set(listed.get(section) or {})
            assert not missing, f"configs/demo.yaml lacks {section}.{sorted(missing)}"


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mining:\n  low_treshold: 0.02\n")
    with pytest.raises(ConfigError, match=r"unknown key 'mining.low_treshold'"):
        load_config(p)


def test_wrong_type_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"'train.epochs'"):
        load_config(p)


def test_overrides_win_and_are_validated(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("mining:\n  iou: 0.6\n")
    assert load_config(p).mining.iou == 0.6
    assert load_config(p, ["mining.iou=0.7"]).mining.iou == 0.7
    with pytest.raises(ConfigError, match=r"'mining.iou'"):
        load_config(p, ["mining.iou=2"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(p, ["nope=1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mining: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_entrypoint_and_device_forms():
    with pytest.raises(ConfigError, match="entrypoint"):
        load_config(None, ["model.entrypoint=not_a_function"])
    with pytest.raises(ConfigError, match="device"):
        load_config(None, ["device=tpu"])
    assert load_config(None, ["device=cuda:1"]).device == "cuda:1"
