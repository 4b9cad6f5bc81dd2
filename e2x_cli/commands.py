"""The handlers of the ``e2x`` subcommands: ``args`` in, an exit code out.

Each reads its config (:func:`e2x_cli.flags.config`), checks the tables it needs before any
training (``layout.require``, whose :class:`~e2x_pipeline.layout.StageOutputMissing` names the
command to run first), holds the output folder's lock while it writes, and prints what it wrote.
The heavy imports sit inside the handlers, so ``e2x --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from e2x_pipeline.config import E2XConfig
from e2x_pipeline.locking import run_lock

from .flags import config, dask_options, flow_parameters


def _split(cfg: E2XConfig, args: argparse.Namespace) -> str:
    return args.split or cfg.data.eval_split


def _detector(cfg: E2XConfig, progress: bool):
    """The configured detector: ``model.checkpoint``, else the (cached) trained one."""
    from e2x_pipeline.stages import detector_for, resolve_checkpoint

    return detector_for(cfg, resolve_checkpoint(cfg, progress))


def cmd_make_benchmark(args: argparse.Namespace) -> int:
    from e2x_pipeline.data.benchmark import SUMMARY_FILE
    from e2x_pipeline.stages import ensure_benchmark

    root = ensure_benchmark(config(args))
    print(json.dumps(json.loads((root / SUMMARY_FILE).read_text()), indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from e2x_pipeline.stages import train_stage

    path, meta = train_stage(config(args), progress=not args.no_progress, force=args.force)
    print(f"checkpoint: {path}\n" + json.dumps(meta, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from e2x_pipeline.evaluation import format_evaluation
    from e2x_pipeline.stages import evaluate_stage

    cfg = config(args)
    det = _detector(cfg, not args.no_progress)
    results = [evaluate_stage(cfg, det, s, progress=not args.no_progress) for s in args.splits]
    print(format_evaluation(results))
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    cfg = config(args)
    split = _split(cfg, args)
    with run_lock(cfg.output_dir):  # one run per output folder, from training to publishing
        from e2x_pipeline.mining import (
            format_metrics,
        )  # the heavy imports after the lock: fail fast
        from e2x_pipeline.stages import (
            detector_for,
            mine_stage,
            publish_stage,
            resolve_checkpoint,
        )

        layout = cfg.split_layout(split)  # a split name leading out of output_dir fails here
        checkpoint = resolve_checkpoint(cfg, not args.no_progress)
        result = mine_stage(cfg, detector_for(cfg, checkpoint), split)
        print(format_metrics(result.metrics))
        print(f"tables written to {layout.root}")
        if not args.no_fiftyone:
            name = publish_stage(cfg, split, checkpoint=checkpoint)
            print(
                f"FiftyOne dataset '{name}', saved view 'e2x-failures', evaluation run of this "
                "checkpoint in the App's Model Evaluation panel"
            )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import pandas as pd

    from e2x_pipeline.stages import explain_stage, overlay_stage

    cfg = config(args)
    split = _split(cfg, args)
    layout = cfg.split_layout(split)
    layout.require("candidates")  # fail before any training when mining has not run
    with run_lock(cfg.output_dir):
        if args.task_runner == "dask":  # chunks of images on Dask workers (flows/dask_explain.py)
            from flows.dask_explain import explain_with_dask

            result = explain_with_dask(cfg, split, dask_options(args), not args.no_progress)
            table = pd.read_parquet(layout.explanations)
            overlays = result["overlays"]
        else:
            det = _detector(cfg, not args.no_progress)
            table = explain_stage(cfg, det, split, not args.no_progress)
            overlays = overlay_stage(cfg, split)
    print(table.groupby(["method", "valid"]).size().to_string())
    print(f"explanations: {layout.explanations}; {len(overlays)} overlays in {layout.overlays}")
    return 0


def cmd_evaluate_explanations(args: argparse.Namespace) -> int:
    from e2x_pipeline.metrics.stage import evaluate_explanations_stage, format_summary

    cfg = config(args)
    split = _split(cfg, args)
    layout = cfg.split_layout(split)
    layout.require("explanations")  # fail before any training
    det = None if args.no_model else _detector(cfg, not args.no_progress)
    _, summary = evaluate_explanations_stage(cfg, det, split, not args.no_progress)
    print(format_summary(summary))
    print(f"metrics written to {layout.explanation_metrics} and {layout.explanation_summary}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from e2x_pipeline.cluster import format_modes
    from e2x_pipeline.stages import cluster_stage, publish_failures_stage

    cfg = config(args)
    split = _split(cfg, args)
    layout = cfg.split_layout(split)
    layout.require("candidates")  # fail before any training when mining has not run
    with run_lock(cfg.output_dir):
        result = cluster_stage(
            cfg, _detector(cfg, not args.no_progress), split, not args.no_progress
        )
        print(format_modes(result.modes, result.metrics))
        print(f"tables: {layout.features}, {layout.failure_modes}; crops in {layout.modes}")
        if not args.no_fiftyone:
            name = publish_failures_stage(cfg, split)
            print(f"FiftyOne dataset '{name}': views 'e2x-failures' and 'e2x-mode-<k>'")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from e2x_pipeline.repair import format_repair
    from e2x_pipeline.stages import publish_repair_stage, repair_stage

    cfg = config(args)
    split = _split(cfg, args)
    layout = cfg.split_layout(split)
    layout.require("failure_modes")  # fail before any training when clustering has not run
    with run_lock(cfg.output_dir):
        result = repair_stage(
            cfg, _detector(cfg, not args.no_progress), split, not args.no_progress
        )
        print(format_repair(result.metrics))
        print(f"repair set: {layout.repair_set}")
        if not args.no_fiftyone:
            name = publish_repair_stage(cfg, split)
            print(f"FiftyOne dataset '{name}', saved view 'e2x-repair'")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from e2x_pipeline.retrain import format_retrain
    from e2x_pipeline.stages import resolve_checkpoint, retrain_stage

    cfg = config(args)
    split = _split(cfg, args)
    with run_lock(cfg.output_dir):
        ckpt = resolve_checkpoint(cfg, progress=not args.no_progress)
        result = retrain_stage(cfg, ckpt, split, not args.no_progress, force=args.force)
    print(format_retrain(result))
    print(f"before/after written to {cfg.layout.retrain_summary}")
    return 0


def cmd_config_init(args: argparse.Namespace) -> int:
    """Write the packaged default config to ``args.path``.

    It is not loaded back here: validating imports every explainer (torch, seconds), and the
    tests keep the shipped file valid and equal to the defaults (tests/test_packaging.py).
    """
    from e2x_pipeline import default_config_text
    from e2x_pipeline.io_utils import write_text

    path: Path = args.path
    if path.exists() and not args.force:  # a user's edited config is never overwritten silently
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    write_text(path, default_config_text())
    print(f"wrote the default config to {path}; edit it and pass --config {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from e2x_pipeline.fiftyone_io import EXPORT_LAYOUTS, check_export_format
    from e2x_pipeline.stages import export_stage

    # checked here, not by argparse choices, so a wrong format is one line, not usage + error
    fmt = check_export_format(args.format)
    cfg = config(args)
    with run_lock(cfg.output_dir):
        out, n = export_stage(cfg, _split(cfg, args), args.name, fmt)
    shown = "COCO" if fmt == "coco" else fmt
    print(f"exported {n} repair-set images as {shown} to {out} ({EXPORT_LAYOUTS[fmt]})")
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.stages import fiftyone_names, open_split

    if not args.load:  # a backend without credentials fails before the database is touched
        fiftyone_io.check_annotation_backend(args.backend)
    cfg = config(args)
    split = _split(cfg, args)
    name = fiftyone_names(cfg, split)["pool"]
    with fiftyone_io.publishing(name, str(cfg.output_dir), f"'e2x annotate --split {split}'"):
        if args.load:
            key, n = fiftyone_io.load_repair_annotations(name, args.anno_key, args.label_field)
            print(f"loaded annotation run {key!r}: {n} boxes in {args.label_field} of {name!r}")
            return 0
        classes = sorted(open_split(cfg, cfg.repair.pool_split).categories.values())
        key, n = fiftyone_io.annotate_repair(
            name,
            args.backend,
            args.anno_key,
            args.label_field,
            classes,
            launch_editor=args.launch_editor,
        )
    print(
        f"sent {n} repair-set images of {name!r} for labelling as annotation run {key!r} "
        f"(field {args.label_field}); load them back with: e2x annotate --load --anno-key {key}"
    )
    return 0


# the repository's FiftyOne plugin folder (an editable install runs from the repository)
PLUGIN_SOURCE = Path(__file__).resolve().parents[1] / "plugins" / "e2x"


def cmd_app(args: argparse.Namespace) -> int:
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.stages import fiftyone_names

    if args.install_plugin:
        path = fiftyone_io.install_plugin(PLUGIN_SOURCE)
        print(
            f"installed the E2X plugin: {path} -> {PLUGIN_SOURCE}\n"
            f"in the App: select failures, press ` (backtick) and run {fiftyone_io.OPERATOR_URI}"
            " ('E2X: explain selected samples')"
        )
        return 0
    cfg = config(args)
    names = fiftyone_names(cfg, _split(cfg, args))
    dataset = app_dataset(names, args.view, args.dataset)
    fiftyone_io.launch_app(dataset, args.view, args.address, args.port, wait=True)
    return 0


APP_DATASETS = ("mining", "failures", "pool")


def app_dataset(names: dict[str, str], view: str, which: str | None) -> str:
    """The FiftyOne dataset ``e2x app`` opens: ``mining`` (the split with every prediction and
    the evaluation runs), ``failures`` (one sample per explained failure) or ``pool``; by
    default the pool for ``e2x-repair`` and the failures otherwise."""
    if which is None:
        which = "pool" if view == "e2x-repair" else "failures"
    if which not in APP_DATASETS:
        raise ValueError(f"unknown --dataset {which!r}; choose one of {', '.join(APP_DATASETS)}")
    return names["split" if which == "mining" else which]


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    cfg = config(args)
    return run_demo(cfg, progress=not args.no_progress, fiftyone=not args.no_fiftyone)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import e2x_pipeline

    from .demo import print_run

    cfg = config(args)
    if args.stage:
        return _run_stage(cfg, args)
    print_run(e2x_pipeline(**flow_parameters(cfg, args)))
    return 0


def _run_stage(cfg: E2XConfig, args: argparse.Namespace) -> int:
    """``e2x run --stage S``: that stage's flow (flows/stage_flows.py) on ``data.eval_split``;
    explain with ``--task-runner dask`` runs the Dask explain flow."""
    from flows.stage_flows import STAGE_FLOWS, check_inputs

    split, progress, dask = cfg.data.eval_split, not args.no_progress, dask_options(args)
    check_inputs(cfg, args.stage, split)  # one line, before any training or flow run
    if args.stage == "explain" and dask:
        from flows.dask_explain import explain_with_dask

        result = explain_with_dask(cfg, split, dask, progress)
    elif args.stage == "evaluate":
        result = STAGE_FLOWS["evaluate"](cfg.model_dump(mode="json"), progress=progress)
    else:
        result = STAGE_FLOWS[args.stage](cfg.model_dump(mode="json"), split, progress)
    print(format_stage(args.stage, result))
    return 0


def format_stage(stage: str, result) -> str:
    """What ``e2x run --stage`` prints: the stage's own table."""
    if stage == "evaluate":
        from e2x_pipeline.evaluation import format_evaluation

        return format_evaluation(result)
    if stage == "mine":
        from e2x_pipeline.mining import format_metrics

        return format_metrics(result)
    if stage == "explain":
        return f"{result['explanations']} explanations ({result['valid']} valid)"
    if stage == "retrain":
        from e2x_pipeline.retrain import format_retrain

        return format_retrain(result)
    return result["table"]  # cluster, repair


def cmd_history(args: argparse.Namespace) -> int:
    from e2x_pipeline.history import HistoryStore, format_history, trend_table

    store = HistoryStore(config(args).history_path)
    if args.json:
        runs = store.runs()
        out = {
            "runs": json.loads(runs.to_json(orient="records")),
            "modes": json.loads(trend_table(store).to_json(orient="records")),
        }
        print(json.dumps(out, indent=2))
    else:
        print(format_history(store))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from flows.pipeline import e2x_pipeline

    cfg = config(args)
    if args.watch is not None and not args.watch.is_dir():
        raise FileNotFoundError(f"--watch {args.watch} is not a folder")
    if (
        args.watch is None
        and cfg.model.checkpoint is not None
        and not Path(cfg.model.checkpoint).is_file()
    ):
        raise FileNotFoundError(f"model.checkpoint {cfg.model.checkpoint} does not exist")
    schedule = {"cron": args.cron} if args.cron else {"interval": args.interval}
    print(
        f"serving deployment 'e2x-pipeline/{args.name}' ({schedule}); Ctrl-C stops it. "
        "Runs show in the Prefect UI of PREFECT_API_URL."
    )
    e2x_pipeline.serve(
        name=args.name,
        parameters=flow_parameters(cfg, args),
        limit=1,
        print_starting_message=False,
        **schedule,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from e2x_pipeline.report import build_report, check_in_browser, screenshot

    cfg = config(args)
    index = build_report(
        cfg,
        _split(cfg, args),
        args.reports_dir,
        args.run_id,
        bench_dir=args.bench_dir,
        max_failures=args.max_failures,
        fiftyone=not args.no_fiftyone,
    )
    print(f"report: {index}")
    if args.check:
        result = check_in_browser(index)
        print(f"chromium: {result['text']}")
        if result["broken"] != 0 or result["loaded"] != result["images"]:
            return 1
    if args.screenshot:
        print(f"screenshot: {screenshot(index, args.screenshot)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from e2x_bench import get_bench

    cfg = config(args)
    fn = get_bench(args.bench_name)
    extra: dict = {"full": True} if getattr(args, "full", False) else {}
    for key in ("budgets", "seeds", "batch_sizes", "strategies"):
        if getattr(args, key, None):
            extra[key] = tuple(getattr(args, key))
    for key in ("arch", "min_size", "amp", "channels_last"):
        if getattr(args, key, None) is not None:
            extra[key] = getattr(args, key)
    if getattr(args, "tiny", False):
        extra["tiny"] = True
    result = fn(cfg, args.out, progress=not args.no_progress, **extra)
    print(json.dumps({k: v for k, v in result.items() if k != "evaluation"}, indent=2, default=str))
    print(f"results written to {args.out}/{args.bench_name}.json and .md")
    return 0
