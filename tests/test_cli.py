"""The e2x command: --help everywhere, config errors that name the key."""

import pytest

from e2x_cli.main import build_parser, main


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_help_on_every_command(capsys):
    commands = list(_subcommands(build_parser()))
    assert ("demo",) in commands and ("data", "make-benchmark") in commands
    assert ("bench", "train") in commands
    for cmd in [(), *commands]:
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: e2x" in capsys.readouterr().out


def test_unknown_config_key_exits_2_and_names_it(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mining:\n  treshold: 0.3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown key 'mining.treshold'" in capsys.readouterr().err


def test_make_benchmark_command(tmp_path, capsys):
    root = tmp_path / "b"
    sizes = [f"--set=benchmark.n_{s}=10" for s in ("train", "val", "test", "pool")]
    assert main(["data", "make-benchmark", f"--set=data.root={root}", *sizes]) == 0
    assert (root / "annotations" / "val.json").is_file()
    assert '"images": 10' in capsys.readouterr().out


def test_explain_before_mine_says_what_to_run(tmp_path, capsys):
    assert main(["explain", "--output-dir", str(tmp_path / "run")]) == 1
    assert "run 'e2x mine --split val'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained on the way


def test_app_opens_the_mining_failures_or_pool_dataset():
    from e2x_cli.commands import app_dataset

    names = {"split": "e2x-val", "failures": "e2x-val-failures", "pool": "e2x-pool"}
    assert app_dataset(names, "e2x-failures", None) == "e2x-val-failures"
    assert app_dataset(names, "e2x-repair", None) == "e2x-pool"
    assert app_dataset(names, "e2x-failures", "mining") == "e2x-val"
    with pytest.raises(ValueError, match="choose one of mining, failures, pool"):
        app_dataset(names, "e2x-failures", "preds")
