"""The ``e2x`` command. Every subcommand takes ``--config FILE`` and ``--set section.key=value``.

Flags override the config file; the merged config is validated before anything runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from e2x_pipeline.config import ConfigError, E2XConfig, load_config
from e2x_pipeline.env import set_offline_defaults
from e2x_pipeline.locking import run_lock


def _common(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _config(args: argparse.Namespace) -> E2XConfig:
    overrides = list(args.overrides)
    for key, flag in (
        ("device", args.device),
        ("output_dir", args.output_dir),
        ("seed", args.seed),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    return load_config(args.config, overrides)


def cmd_make_benchmark(args: argparse.Namespace) -> int:
    from e2x_pipeline.stages import ensure_benchmark

    cfg = _config(args)
    root = ensure_benchmark(cfg)
    print(json.dumps(json.loads((root / "benchmark.json").read_text()), indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from e2x_pipeline.stages import train_stage

    cfg = _config(args)
    path, meta = train_stage(cfg, progress=not args.no_progress, force=args.force)
    print(f"checkpoint: {path}\n" + json.dumps(meta, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from e2x_pipeline.stages import detector_for, evaluate_stage, format_evaluation, train_stage

    cfg = _config(args)
    ckpt = cfg.model.checkpoint or train_stage(cfg, progress=not args.no_progress)[0]
    det = detector_for(cfg, ckpt)
    results = [evaluate_stage(cfg, det, s, progress=not args.no_progress) for s in args.splits]
    print(format_evaluation(results))
    return 0


def _detector(cfg: E2XConfig, progress: bool):
    from e2x_pipeline.stages import detector_for, train_stage

    ckpt = cfg.model.checkpoint or train_stage(cfg, progress=progress)[0]
    return detector_for(cfg, ckpt)


def cmd_mine(args: argparse.Namespace) -> int:
    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    with run_lock(cfg.output_dir):  # one run per output folder, from training to publishing
        from e2x_pipeline.mining import format_metrics  # the heavy imports after the lock: fail fast
        from e2x_pipeline.stages import mine_stage, publish_stage, split_dir

        split_dir(cfg, split)  # a split name leading out of output_dir fails before any work
        result = mine_stage(cfg, _detector(cfg, not args.no_progress), split)
        print(format_metrics(result.metrics))
        print(f"tables written to {split_dir(cfg, split)}")
        if not args.no_fiftyone:
            name = publish_stage(cfg, split)
            print(f"FiftyOne dataset '{name}', saved view 'e2x-failures'")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from e2x_pipeline.stages import candidates_table, explain_stage, overlay_stage, split_dir

    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    candidates_table(cfg, split)  # fail before any training when mining has not run
    with run_lock(cfg.output_dir):
        if args.task_runner == "dask":  # chunks of images on Dask workers (flows/dask_explain.py)
            import pandas as pd

            from flows.dask_explain import explain_with_dask

            result = explain_with_dask(cfg, split, _dask_options(args), not args.no_progress)
            table = pd.read_parquet(split_dir(cfg, split) / "explanations.parquet")
            overlays = result["overlays"]
        else:
            det = _detector(cfg, not args.no_progress)
            table = explain_stage(cfg, det, split, not args.no_progress)
            overlays = overlay_stage(cfg, split)
    print(table.groupby(["method", "valid"]).size().to_string())
    print(
        f"explanations: {split_dir(cfg, split) / 'explanations.parquet'}; "
        f"{len(overlays)} overlays in {split_dir(cfg, split) / 'overlays'}"
    )
    return 0


def cmd_evaluate_explanations(args: argparse.Namespace) -> int:
    from e2x_pipeline.metrics.stage import SUMMARY, TABLE, evaluate_explanations_stage, format_summary
    from e2x_pipeline.stages import split_dir

    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    d = split_dir(cfg, split)
    if not (d / "explanations.parquet").is_file():  # fail before any training
        raise FileNotFoundError(
            f"no explanations table at {d / 'explanations.parquet'}; run 'e2x explain --split "
            f"{split}' with the same output_dir first"
        )
    det = None if args.no_model else _detector(cfg, not args.no_progress)
    _, summary = evaluate_explanations_stage(cfg, det, split, not args.no_progress)
    print(format_summary(summary))
    print(f"metrics written to {d / TABLE} and {d / SUMMARY}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from e2x_pipeline.cluster import format_modes
    from e2x_pipeline.stages import candidates_table, cluster_stage, publish_failures_stage, split_dir

    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    candidates_table(cfg, split)  # fail before any training when mining has not run
    with run_lock(cfg.output_dir):
        result = cluster_stage(
            cfg, _detector(cfg, not args.no_progress), split, not args.no_progress
        )
        print(format_modes(result.modes, result.metrics))
        d = split_dir(cfg, split)
        print(
            f"tables: {d / 'features.parquet'}, {d / 'failure_modes.parquet'}; "
            f"crops in {d / 'modes'}"
        )
        if not args.no_fiftyone:
            name = publish_failures_stage(cfg, split)
            print(f"FiftyOne dataset '{name}': views 'e2x-failures' and 'e2x-mode-<k>'")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from e2x_pipeline.repair import format_repair
    from e2x_pipeline.stages import publish_repair_stage, repair_stage, split_dir

    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    if not (split_dir(cfg, split) / "failure_modes.parquet").is_file():
        raise FileNotFoundError(
            f"no failure modes in {split_dir(cfg, split)}; run 'e2x cluster --split {split}' first"
        )
    with run_lock(cfg.output_dir):
        result = repair_stage(
            cfg, _detector(cfg, not args.no_progress), split, not args.no_progress
        )
        print(format_repair(result.metrics))
        print(f"repair set: {split_dir(cfg, split) / 'repair_set.parquet'}")
        if not args.no_fiftyone:
            name = publish_repair_stage(cfg, split)
            print(f"FiftyOne dataset '{name}', saved view 'e2x-repair'")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from e2x_pipeline.stages import format_retrain, retrain_stage, train_stage

    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    with run_lock(cfg.output_dir):
        ckpt = cfg.model.checkpoint or train_stage(cfg, progress=not args.no_progress)[0]
        result = retrain_stage(cfg, ckpt, split, not args.no_progress, force=args.force)
    print(format_retrain(result))
    print(f"before/after written to {cfg.output_dir / 'retrain.json'}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from e2x_pipeline.stages import export_stage

    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    with run_lock(cfg.output_dir):
        out, n = export_stage(cfg, split, args.name)
    print(f"exported {n} repair-set images as COCO to {out} (labels.json + data/)")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.stages import fiftyone_names

    cfg = _config(args)
    names = fiftyone_names(cfg, args.split or cfg.data.eval_split)
    dataset = names["pool"] if args.view == "e2x-repair" else names["failures"]
    fiftyone_io.launch_app(dataset, args.view, args.address, args.port, wait=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    cfg = _config(args)
    return run_demo(cfg, progress=not args.no_progress, fiftyone=not args.no_fiftyone)


def _run_flow_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``e2x run`` and ``e2x serve``."""
    p.add_argument("--no-fiftyone", action="store_true", help="do not write to FiftyOne")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report")
    p.add_argument(
        "--reports-dir",
        type=Path,
        default=Path("reports"),
        help="where the HTML report goes: <reports-dir>/<run-id>/index.html (default: reports)",
    )
    p.add_argument(
        "--no-benchmark",
        action="store_true",
        help="do not generate the planted-failure benchmark (your own data in the config)",
    )
    p.add_argument(
        "--no-retrain",
        action="store_true",
        help="do not retrain with the repair set (it needs the pool's labels)",
    )
    _dask_args(p)


def _dask_args(p: argparse.ArgumentParser) -> None:
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


def _dask_options(args: argparse.Namespace) -> dict | None:
    from flows.runners import dask_options

    if getattr(args, "task_runner", "thread") != "dask":
        return None
    return dask_options(args.dask_address, args.dask_workers, args.gpus_per_task, args.chunks)


def _flow_parameters(cfg: E2XConfig, args: argparse.Namespace) -> dict:
    return {
        "config": cfg.model_dump(mode="json"),
        "progress": not args.no_progress,
        "fiftyone": not args.no_fiftyone,
        "report": not args.no_report,
        "reports_dir": str(args.reports_dir),
        "benchmark": not args.no_benchmark,
        "retrain": not args.no_retrain,
        "dask": _dask_options(args),
    }


def _pipeline_flow(args: argparse.Namespace):
    from flows.pipeline import e2x_pipeline

    return e2x_pipeline


def cmd_run(args: argparse.Namespace) -> int:
    from .demo import print_run

    cfg = _config(args)
    summary = _pipeline_flow(args)(**_flow_parameters(cfg, args))
    print_run(summary)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg.model.checkpoint is not None and not Path(cfg.model.checkpoint).is_file():
        raise FileNotFoundError(f"model.checkpoint {cfg.model.checkpoint} does not exist")
    schedule = {"cron": args.cron} if args.cron else {"interval": args.interval}
    print(
        f"serving deployment 'e2x-pipeline/{args.name}' ({schedule}); Ctrl-C stops it. "
        "Runs show in the Prefect UI of PREFECT_API_URL."
    )
    _pipeline_flow(args).serve(
        name=args.name,
        parameters=_flow_parameters(cfg, args),
        limit=1,
        print_starting_message=False,
        **schedule,
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from e2x_pipeline.report import build_report, check_in_browser, screenshot

    cfg = _config(args)
    split = args.split or cfg.data.eval_split
    index = build_report(
        cfg,
        split,
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

    cfg = _config(args)
    fn = get_bench(args.bench_name)
    extra = {"full": True} if getattr(args, "full", False) else {}
    result = fn(cfg, args.out, progress=not args.no_progress, **extra)
    print(json.dumps({k: v for k, v in result.items() if k != "evaluation"}, indent=2, default=str))
    print(f"results written to {args.out}/{args.bench_name}.json and .md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2x",
        description="E2X (Explain to Fix): mine, explain, cluster and repair detector failures.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on the planted-failure benchmark",
        description="Make the benchmark, train (or reuse) the compact SSD, evaluate, "
        "and run every stage that exists, as one Prefect flow.",
    )
    _common(p)
    p.add_argument("--no-fiftyone", action="store_true", help="do not write to FiftyOne")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "run",
        help="run the end-to-end pipeline as a Prefect flow",
        description="Run the e2x-pipeline Prefect flow on the configured data and model: "
        "(benchmark,) train or model.checkpoint, evaluate, mine, explain, cluster, repair, "
        "publish to FiftyOne and write the HTML report. Stage results are cached on the content "
        "hashes of the data, the checkpoint and the config sections each stage uses, so a rerun "
        "with nothing changed is cheap. Without PREFECT_API_URL a temporary local Prefect server "
        "is started; with it (e.g. http://127.0.0.1:4200/api) runs show in the UI.",
    )
    _common(p)
    _run_flow_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "serve",
        help="run the pipeline on a schedule (Prefect flow.serve)",
        description="Serve the e2x-pipeline flow as a Prefect deployment that runs on a cron "
        "schedule or an interval, against the configured checkpoint (model.checkpoint). When the "
        "checkpoint or data changed the run does the work; otherwise the task cache makes it "
        "cheap. Needs a Prefect server: start one with 'prefect server start --host 127.0.0.1 "
        "--port 4200' and export PREFECT_API_URL=http://127.0.0.1:4200/api (UI at "
        "http://127.0.0.1:4200). Runs until Ctrl-C.",
    )
    _common(p)
    _run_flow_args(p)
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron schedule, e.g. "0 2 * * *" (02:00 every day)')
    when.add_argument("--interval", type=float, help="run every INTERVAL seconds")
    p.add_argument(
        "--name", default="e2x-scheduled", help="deployment name (default: e2x-scheduled)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "report",
        help="write the self-contained HTML report of a run",
        description="Write <reports-dir>/<run-id>/index.html from the run's tables in "
        "output_dir: summary metrics, TIDE-style error breakdown, a gallery of explained "
        "failures (GT and detection boxes, E2X heatmap red + / blue -, box-coordinate maps and "
        "other methods when computed), failure-mode galleries, the repair set with its matching "
        "regions, before/after tables when retrain.json exists, and benchmark plots from "
        "--bench-dir. Every image is a PNG beside the HTML: no network is needed to view it.",
    )
    _common(p)
    p.add_argument("--split", help="split whose tables to report (default: data.eval_split)")
    p.add_argument(
        "--reports-dir", type=Path, default=Path("reports"), help="parent folder (default: reports)"
    )
    p.add_argument(
        "--run-id", help="report folder name (default: <output_dir name>-<YYYYmmdd-HHMMSS>)"
    )
    p.add_argument(
        "--bench-dir",
        type=Path,
        default=Path("reports/bench"),
        help="benchmark results whose *.png plots and *.md tables to include",
    )
    p.add_argument(
        "--max-failures", type=int, default=48, help="failures in the gallery (default: 48)"
    )
    p.add_argument(
        "--no-fiftyone", action="store_true", help="leave out the FiftyOne dataset/view names"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="load the report in headless Chromium and fail unless every image loaded",
    )
    p.add_argument(
        "--screenshot", type=Path, metavar="PNG", help="also save a Chromium screenshot here"
    )
    p.set_defaults(func=cmd_report)

    data = sub.add_parser("data", help="dataset commands")
    dsub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = dsub.add_parser(
        "make-benchmark",
        help="generate the planted-failure benchmark",
        description="Generate the benchmark under data.root (deterministic in "
        "benchmark.seed); skipped when an identical one exists.",
    )
    _common(p)
    p.set_defaults(func=cmd_make_benchmark)

    p = sub.add_parser(
        "train",
        help="train the detector on the train split (cached)",
        description="Train model.arch on the train split. Cached by data hash and "
        "config: an unchanged rerun reuses the checkpoint.",
    )
    _common(p)
    p.add_argument(
        "--force", action="store_true", help="retrain even when a cached checkpoint fits"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="mAP and recall per planted cause",
        description="Evaluate the detector (model.checkpoint, or the cached trained "
        "one) with pycocotools: mAP@0.5 and recall per planted cause.",
    )
    _common(p)
    p.add_argument("--splits", nargs="+", default=["val", "test"], help="splits to evaluate")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "mine",
        help="mine FP/FN candidates at a lowered threshold",
        description="Run the detector at mining.low_threshold, match against ground "
        "truth, type every FP (TIDE) and give every FN a candidate. Writes "
        "<output_dir>/<split>/candidates.parquet and metrics.json, and the FiftyOne "
        "view 'e2x-failures'.",
    )
    _common(p)
    p.add_argument("--split", help="split to mine (default: data.eval_split)")
    p.add_argument("--no-fiftyone", action="store_true", help="do not write to FiftyOne")
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser(
        "explain",
        help="explain mined failures (E2X and baselines)",
        description="Explain every mined fp/fn with explain.methods. Writes "
        "<output_dir>/<split>/explanations.parquet, maps/*.npz and overlays/*.png. "
        "Reruns skip finished candidates.",
    )
    _common(p)
    p.add_argument("--split", help="split whose candidates to explain (default: data.eval_split)")
    _dask_args(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "evaluate-explanations",
        help="fidelity metrics of a run's explanations",
        description="Pointing game and energy against the planted cause (GT box when there is "
        "none), deletion/insertion AUC with the D-RISE score, rho between methods and, with "
        "metrics.sanity, rho after randomising the detector. Writes "
        "<output_dir>/<split>/explanation_metrics.parquet and explanation_metrics.json.",
    )
    _common(p)
    p.add_argument("--split", help="split whose explanations to measure (default: eval_split)")
    p.add_argument(
        "--no-model",
        action="store_true",
        help="skip the metrics that run the detector (deletion/insertion, sanity)",
    )
    p.set_defaults(func=cmd_evaluate_explanations)

    p = sub.add_parser(
        "cluster",
        help="cluster failing features into failure modes",
        description="Take the failing superpixels of every explained failure (FN: strongest "
        "negative attribution; FP: strongest positive), embed them with the detector's backbone "
        "and cluster them into failure modes. Writes features.parquet, failure_modes.parquet, "
        "cluster.json and modes/*.png, and the FiftyOne dataset <name>-failures with fo.Heatmap "
        "fields and the views 'e2x-failures' and 'e2x-mode-<k>'.",
    )
    _common(p)
    p.add_argument("--split", help="split whose explanations to cluster (default: data.eval_split)")
    p.add_argument("--no-fiftyone", action="store_true", help="do not write to FiftyOne")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser(
        "repair",
        help="select pool images that carry the failure modes (the repair set)",
        description="Embed every superpixel of the pool images like the failing features, index "
        "them (scikit-learn nearest neighbours), rank pool images per failure mode and select "
        "repair.budget of them. Writes repair_set.parquet and repair.json, and the FiftyOne view "
        "'e2x-repair' on the pool's dataset.",
    )
    _common(p)
    p.add_argument("--split", help="split whose failure modes to repair (default: data.eval_split)")
    p.add_argument("--no-fiftyone", action="store_true", help="do not write to FiftyOne")
    p.set_defaults(func=cmd_repair)

    p = sub.add_parser(
        "retrain",
        help="retrain with the repair set and show whether the failure modes close",
        description="Reveal the repair set's labels (repair.pool_labels, default: the "
        "benchmark's pool_labels.json), fine-tune the detector on train + those images "
        "(retrain.*), save the new checkpoint with its lineage, and evaluate before/after: "
        "mAP@0.5, recall per planted cause, distractor FP rate on retrain.eval_split, and the "
        "share of each failure mode's failures closed. Writes <output_dir>/retrain.json.",
    )
    _common(p)
    p.add_argument("--split", help="split whose repair set to use (default: data.eval_split)")
    p.add_argument("--force", action="store_true", help="retrain even when a cached one fits")
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser(
        "export",
        help="export the repair set as a COCO dataset",
        description="Export the FiftyOne view 'e2x-repair' with FiftyOne's COCO exporter to "
        "<output_dir>/export/<name> (labels.json + data/). Labels are filled from "
        "repair.pool_labels (default: the benchmark's pool_labels.json) where the pool has them.",
    )
    _common(p)
    p.add_argument("--split", help="split whose repair set to export (default: data.eval_split)")
    p.add_argument(
        "--name",
        default="repair-set",
        help="export folder name under <output_dir>/export (may not lead outside it)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "app",
        help="open the FiftyOne App on a saved view",
        description="Launch the FiftyOne App on 127.0.0.1 (unless --address says otherwise) "
        "showing a saved view: e2x-failures, e2x-mode-<k> or e2x-repair. Stop with Ctrl-C.",
    )
    _common(p)
    p.add_argument("--split", help="split (default: data.eval_split)")
    p.add_argument("--view", default="e2x-failures", help="saved view to open")
    p.add_argument("--address", default="127.0.0.1", help="address to bind the App to")
    p.add_argument("--port", type=int, default=5151, help="port of the App")
    p.set_defaults(func=cmd_app)

    bench = sub.add_parser("bench", help="measured benchmarks, written to reports/bench/")
    bsub = bench.add_subparsers(dest="bench_name", metavar="BENCHMARK", required=True)
    for name, text in BENCHMARKS.items():
        p = bsub.add_parser(name, help=text, description=text)
        _common(p)
        p.add_argument(
            "--out",
            type=Path,
            default=Path("reports/bench"),
            help="folder for <name>.json and <name>.md",
        )
        if name == "explain":
            p.add_argument(
                "--full",
                action="store_true",
                help="the paper's size: 36 detections on 18 images, paper-setting references "
                "for all (hours on 2 CPU cores; use a GPU)",
            )
        p.set_defaults(func=cmd_bench)
    return parser


BENCHMARKS = {
    "explain": "explanation speed and fidelity of E2X against LIME, PDA, IG and D-RISE, as the "
    "E2X paper's Fig. 2 (rho vs speed), with deletion/insertion, cause hit rate and sanity rho",
    "mine": "mining cost against plain batched inference on the same images (target <= 1.1x)",
    "repair": "retrain with the E2X repair set against random, least-confidence and whole-image "
    "similarity selection at budgets of 2, 5 and 10%% of the pool, 3 seeds each",
    "scale": "explain-stage wall time on 1 against 2 Dask workers (LocalCluster, one thread "
    "each) in one run (target speedup >= 1.7x)",
    "train": "train the detector from scratch and check the foundation's targets "
    "(clean mAP@0.5 >= 0.8, planted-cause recall <= 0.5, training <= 5 min)",
}


def main(argv: list[str] | None = None) -> int:
    set_offline_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        print(f"e2x: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as err:
        # OSError: unreadable/unwritable paths, a locked output folder, FiftyOne's database
        print(f"e2x: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
