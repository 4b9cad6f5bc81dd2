"""Flag helpers of the ``e2x`` command: each adds one group of flags to a subcommand's parser.

A command's flags are a tuple of these in ``COMMANDS`` (e2x_cli/main.py); :func:`common` comes
first on every command. The helpers that read flags back (:func:`config`, :func:`dask_options`,
:func:`flow_parameters`) live here too, next to the flags they read.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from e2x_pipeline.config import E2XConfig, load_config

Flags = Callable[[argparse.ArgumentParser], None]
"""A flag helper: adds its flags to one subcommand's parser."""

STAGES = ("evaluate", "mine", "explain", "cluster", "repair", "retrain")
"""The stages ``e2x run --stage`` runs on their own (flows/stage_flows.py: ``STAGE_FLOWS``)."""


def common(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--set``, ``--device``, ``--output-dir``, ``--seed``, ``--no-progress``."""
    p.add_argument("--config", type=Path, help="YAML config file (see configs/demo.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set mining.iou=0.6 (repeatable)",
    )
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (overrides 'device')")
    p.add_argument("--output-dir", type=Path, help="where this run writes (overrides 'output_dir')")
    p.add_argument("--seed", type=int, help="random seed (overrides 'seed')")
    no_progress(p)


def no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def config(args: argparse.Namespace) -> E2XConfig:
    """The config file merged with ``--set`` and the ``--device/--output-dir/--seed`` flags."""
    overrides = list(args.overrides)
    for key, flag_value in (
        ("device", args.device),
        ("output_dir", args.output_dir),
        ("seed", args.seed),
    ):
        if flag_value is not None:
            overrides.append(f"{key}={flag_value}")
    return load_config(args.config, overrides)


def flag(*names: str, **kwargs) -> Flags:
    """One ``add_argument(*names, **kwargs)``, as a flag helper."""

    def add(p: argparse.ArgumentParser) -> None:
        p.add_argument(*names, **kwargs)

    return add


def split(help: str) -> Flags:
    """``--split`` (default: ``data.eval_split``)."""
    return flag("--split", help=help)


def force(help: str) -> Flags:
    return flag("--force", action="store_true", help=help)


no_fiftyone = flag("--no-fiftyone", action="store_true", help="do not write to FiftyOne")


def dask(p: argparse.ArgumentParser) -> None:
    """``--task-runner dask`` and its options (``e2x explain``, ``run``, ``serve``)."""
    p.add_argument(
        "--task-runner",
        choices=["thread", "dask"],
        default="thread",
        help="thread: explain in this process (default); dask: one task per chunk of images on "
        "Dask workers (needs pip install -e '.[dask]'), merged into the same table",
    )
    p.add_argument("--dask-address", help="Dask scheduler tcp://HOST:PORT (default: LocalCluster)")
    p.add_argument(
        "--dask-workers",
        type=int,
        default=2,
        help="LocalCluster worker processes, one thread each (default: 2)",
    )
    p.add_argument(
        "--gpus-per-task",
        type=float,
        default=0,
        help="submit each chunk under dask.annotate(resources={'GPU': N}) (workers started with "
        "--resources GPU=1); default 0",
    )
    p.add_argument("--chunks", type=int, help="chunks of images (default: 4 per worker thread)")


def run_flow(p: argparse.ArgumentParser) -> None:
    """Options shared by ``e2x run`` and ``e2x serve``."""
    no_fiftyone(p)
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument(
        "--reports-dir",
        type=Path,
        default=Path("reports"),
        help="where the HTML report goes: <reports-dir>/<run-id>/index.html (default: reports)",
    )
    p.add_argument(
        "--make-benchmark",
        action="store_true",
        help="first generate the planted-failure benchmark under data.root (an empty folder or "
        "one it made before; never into a folder holding anything else)",
    )
    p.add_argument(  # the default since the benchmark is generated only on request
        "--no-benchmark", action="store_true", help=argparse.SUPPRESS
    )
    p.add_argument(
        "--no-retrain",
        action="store_true",
        help="do not retrain with the repair set (it needs the pool's labels)",
    )
    p.add_argument(
        "--watch",
        type=Path,
        metavar="DIR",
        help="run on the newest checkpoint (*.pt, *.pth) in DIR instead of model.checkpoint, and "
        "skip the run when it is not newer than the last recorded run's (e2x history)",
    )
    dask(p)


stage = flag(
    "--stage",
    choices=STAGES,
    help="run only this stage's Prefect flow (e2x-<stage>) on data.eval_split, cached like the "
    "pipeline's; the tables of the stages before it must exist (default: the whole pipeline)",
)


def schedule(p: argparse.ArgumentParser) -> None:
    """``--cron`` or ``--interval`` (one is required) and ``--name`` of ``e2x serve``."""
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron schedule, e.g. "0 2 * * *" (02:00 every day)')
    when.add_argument("--interval", type=float, help="run every INTERVAL seconds")
    p.add_argument(
        "--name", default="e2x-scheduled", help="deployment name (default: e2x-scheduled)"
    )


bench_out = flag(
    "--out",
    type=Path,
    default=Path("reports/bench"),
    help="folder for <name>.json and <name>.md",
)


def dask_options(args: argparse.Namespace) -> dict | None:
    """The Dask explain options of ``--task-runner dask`` (None under the thread runner)."""
    from flows.runners import dask_options

    if getattr(args, "task_runner", "thread") != "dask":
        return None
    return dask_options(args.dask_address, args.dask_workers, args.gpus_per_task, args.chunks)


def flow_parameters(cfg: E2XConfig, args: argparse.Namespace) -> dict:
    """The ``e2x-pipeline`` flow's parameters from ``e2x run``/``serve`` flags."""
    return {
        "config": cfg.model_dump(mode="json"),
        "progress": not args.no_progress,
        "fiftyone": not args.no_fiftyone,
        "report": not args.no_report,
        "reports_dir": str(args.reports_dir),
        "benchmark": bool(args.make_benchmark),
        "retrain": not args.no_retrain,
        "dask": dask_options(args),
        "watch": str(args.watch.resolve()) if getattr(args, "watch", None) else None,
    }
