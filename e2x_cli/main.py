"""The ``e2x`` command. Every subcommand takes ``--config FILE`` and ``--set section.key=value``.

Flags override the config file; the merged config is validated before anything runs. The
commands are one table, :data:`COMMANDS`: name, help, description, flag helpers
(e2x_cli/flags.py) and handler (e2x_cli/commands.py); :func:`build_parser` turns it into argparse
subparsers. ``e2x bench NAME`` lists the benchmarks registered in ``e2x_bench.BENCHES``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from e2x_bench import BENCHES
from e2x_pipeline import __version__
from e2x_pipeline.config import ConfigError
from e2x_pipeline.env import set_offline_defaults

from . import commands as cmd
from . import flags
from .flags import Flags, common, flag, force, no_fiftyone, split


@dataclass(frozen=True)
class Command:
    """One subcommand: ``common`` flags, then ``flags`` in order, run by ``handler``; or, with
    ``subcommands``, a group of them (``e2x data ...``, ``e2x bench ...``)."""

    name: str
    help: str
    description: str | None = None
    handler: Callable[[argparse.Namespace], int] | None = None
    flags: tuple[Flags, ...] = ()
    subcommands: Subcommands | None = None
    # False where --config/--set/... mean nothing (``e2x config init`` writes the defaults)
    common: bool = True


@dataclass(frozen=True)
class Subcommands:
    dest: str
    metavar: str
    commands: tuple[Command, ...]


BENCH_HELP = {
    "explain": "explanation speed and fidelity of E2X against LIME, PDA, IG, D-RISE, ODAM and "
    "ODSmoothGrad, as the E2X paper's Fig. 2 (rho vs speed), with deletion/insertion, cause hit "
    "rate, sanity rho and the counterfactual success rate",
    "realsize": "seconds to explain one detection of Faster R-CNN MobileNetV3-FPN (91 COCO "
    "classes) at its own 800 px input size, per method",
    "mine": "mining cost against plain batched inference on the same images (target <= 1.1x)",
    "repair": "retrain with the E2X repair set against random, least-confidence, whole-image "
    "similarity, patch-similarity and core-set selection at budgets of 1, 2, 5, 10 and 20%% of "
    "the pool (--budgets), 3 seeds each (--seeds); labels-to-fix per planted cause",
    "reference": "E2X with each explain.reference (mean, zeros, blur) on the eval split's "
    "failures: failing features on each planted cause, pointing hit, counterfactual success, "
    "ARI and precision@10 of the failure modes; the first reference twice (determinism)",
    "targets": "the performance targets (a)-(f), (h) in one table, collated from the explain, "
    "mine, scale and realsize results in --out (runs nothing)",
    "scale": "explain-stage wall time on 1 against 2 Dask workers (LocalCluster, one thread "
    "each) in one run (target speedup >= 1.7x)",
    "similarity": "query time of the repair stage's NearestNeighbors against the FiftyOne Brain "
    "similarity index e2x_regions on a finished run's pool (same failing-feature queries, k = "
    "repair.neighbours)",
    "train": "train the detector from scratch and check the foundation's targets "
    "(clean mAP@0.5 >= 0.8, planted-cause recall <= 0.5, training <= 5 min)",
}
BENCH_FLAGS: dict[str, tuple[Flags, ...]] = {
    "repair": (
        flag(
            "--budgets",
            type=float,
            nargs="+",
            metavar="SHARE",
            help="budgets as shares of the pool (default: 0.01 0.02 0.05 0.1 0.2); each adds one "
            "fine-tuning per strategy and seed (10-20 s each on 2 CPU cores)",
        ),
        flag("--seeds", type=int, nargs="+", metavar="N", help="seeds (default: 0 1 2)"),
        flag(
            "--strategies",
            nargs="+",
            metavar="NAME",
            help="only these selection strategies (default: all of e2x_bench/selection.py)",
        ),
    ),
    "realsize": (
        flag("--arch", help="torchvision detector (default: fasterrcnn_mobilenet_v3_large_fpn)"),
        flag("--min-size", type=int, metavar="PX", help="the model's input size (default: 800)"),
        flag(
            "--batch-sizes",
            type=int,
            nargs="+",
            metavar="B",
            help="batch sizes to sweep (default: 1 2 4 8); the fastest per input is used",
        ),
        flag("--amp", action="store_true", default=None, help="bfloat16 autocast (checked)"),
        flag(
            "--channels-last",
            action="store_true",
            default=None,
            help="convert the model to torch.channels_last",
        ),
        flag("--tiny", action="store_true", help="CI smoke size: 128 px, one image, K=2 and 4"),
    ),
    "explain": (
        flag(
            "--full",
            action="store_true",
            help="the paper's size: 36 detections on 18 images, paper-setting references "
            "for all (hours on 2 CPU cores; use a GPU)",
        ),
    ),
}


def _bench(name: str) -> Command:
    text = BENCH_HELP.get(name, f"the {name} benchmark ({BENCHES[name]})")
    return Command(name, text, text, cmd.cmd_bench, (flags.bench_out, *BENCH_FLAGS.get(name, ())))


COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        help="run the whole pipeline on the planted-failure benchmark",
        description="Make the benchmark, train (or reuse) the compact SSD, evaluate, "
        "and run every stage that exists, as one Prefect flow.",
        handler=cmd.cmd_demo,
        flags=(no_fiftyone,),
    ),
    Command(
        "run",
        help="run the end-to-end pipeline as a Prefect flow",
        description="Run the e2x-pipeline Prefect flow on the configured data and model: "
        "(benchmark,) train or model.checkpoint, evaluate, mine, explain, cluster, repair, "
        "publish to FiftyOne and write the HTML report. Stage results are cached on the content "
        "hashes of the data, the checkpoint and the config sections each stage uses, so a rerun "
        "with nothing changed is cheap. Without PREFECT_API_URL a temporary local Prefect server "
        "is started; with it (e.g. http://127.0.0.1:4200/api) runs show in the UI.",
        handler=cmd.cmd_run,
        flags=(flags.run_flow, flags.stage),
    ),
    Command(
        "serve",
        help="run the pipeline on a schedule (Prefect flow.serve)",
        description="Serve the e2x-pipeline flow as a Prefect deployment that runs on a cron "
        "schedule or an interval, against the configured checkpoint (model.checkpoint). When the "
        "checkpoint or data changed the run does the work; otherwise the task cache makes it "
        "cheap. With --watch DIR each run takes the newest checkpoint in DIR and is skipped when "
        "it is not newer than the last recorded run's. Needs a Prefect server: start one with "
        "'prefect server start --host 127.0.0.1 "
        "--port 4200' and export PREFECT_API_URL=http://127.0.0.1:4200/api (UI at "
        "http://127.0.0.1:4200). Runs until Ctrl-C.",
        handler=cmd.cmd_serve,
        flags=(flags.run_flow, flags.schedule),
    ),
    Command(
        "history",
        help="failure modes across runs: what each run closed, kept and opened",
        description="Print the run history of output_dir (history.sqlite, one record per "
        "'e2x run' / 'e2x demo' / scheduled run): each run's checkpoint, its hash and parent, "
        "mAP@0.5, then per failure mode (a stable id across checkpoints) its status run by run: "
        "new, kept (persisting) or closed, with the share of the previous run's members still "
        "failing. Modes are matched by their member failures and a pixel-only embedding "
        "(e2x_pipeline/history.py). --json prints the same as JSON.",
        handler=cmd.cmd_history,
        flags=(flag("--json", action="store_true", help="print the runs and modes as JSON"),),
    ),
    Command(
        "report",
        help="write the self-contained HTML report of a run",
        description="Write <reports-dir>/<run-id>/index.html from the run's tables in "
        "output_dir: summary metrics, TIDE-style error breakdown, a gallery of explained "
        "failures (GT and detection boxes, E2X heatmap red + / blue -, box-coordinate maps and "
        "other methods when computed), failure-mode galleries, the repair set with its matching "
        "regions, before/after tables when retrain.json exists, and benchmark plots from "
        "--bench-dir. Every image is a PNG beside the HTML: no network is needed to view it.",
        handler=cmd.cmd_report,
        flags=(
            split("split whose tables to report (default: data.eval_split)"),
            flag(
                "--reports-dir",
                type=Path,
                default=Path("reports"),
                help="parent folder (default: reports)",
            ),
            flag(
                "--run-id", help="report folder name (default: <output_dir name>-<YYYYmmdd-HHMMSS>)"
            ),
            flag(
                "--bench-dir",
                type=Path,
                default=Path("reports/bench"),
                help="benchmark results whose *.png plots and *.md tables to include",
            ),
            flag(
                "--max-failures", type=int, default=48, help="failures in the gallery (default: 48)"
            ),
            flag(
                "--no-fiftyone",
                action="store_true",
                help="leave out the FiftyOne dataset/view names",
            ),
            flag(
                "--check",
                action="store_true",
                help="load the report in headless Chromium and fail unless every image loaded",
            ),
            flag(
                "--screenshot",
                type=Path,
                metavar="PNG",
                help="also save a Chromium screenshot here",
            ),
        ),
    ),
    Command(
        "data",
        help="dataset commands",
        subcommands=Subcommands(
            "data_command",
            "DATA_COMMAND",
            (
                Command(
                    "make-benchmark",
                    help="generate the planted-failure benchmark",
                    description="Generate the benchmark under data.root (deterministic in "
                    "benchmark.seed); skipped when an identical one exists.",
                    handler=cmd.cmd_make_benchmark,
                ),
            ),
        ),
    ),
    Command(
        "train",
        help="train the detector on the train split (cached)",
        description="Train model.arch on the train split. Cached by data hash and "
        "config: an unchanged rerun reuses the checkpoint.",
        handler=cmd.cmd_train,
        flags=(force("retrain even when a cached checkpoint fits"),),
    ),
    Command(
        "evaluate",
        help="mAP and recall per planted cause",
        description="Evaluate the detector (model.checkpoint, or the cached trained "
        "one) with pycocotools: mAP@0.5 and recall per planted cause.",
        handler=cmd.cmd_evaluate,
        flags=(flag("--splits", nargs="+", default=["val", "test"], help="splits to evaluate"),),
    ),
    Command(
        "mine",
        help="mine FP/FN candidates at a lowered threshold",
        description="Run the detector at mining.low_threshold, match against ground "
        "truth, type every FP (TIDE) and give every FN a candidate. Writes "
        "<output_dir>/<split>/candidates.parquet and metrics.json, and the FiftyOne "
        "view 'e2x-failures'.",
        handler=cmd.cmd_mine,
        flags=(split("split to mine (default: data.eval_split)"), no_fiftyone),
    ),
    Command(
        "explain",
        help="explain mined failures (E2X and baselines)",
        description="Explain every mined fp/fn with explain.methods. Writes "
        "<output_dir>/<split>/explanations.parquet, maps/*.npz and overlays/*.png. "
        "Reruns skip finished candidates.",
        handler=cmd.cmd_explain,
        flags=(
            split("split whose candidates to explain (default: data.eval_split)"),
            flags.dask,
        ),
    ),
    Command(
        "evaluate-explanations",
        help="fidelity metrics of a run's explanations",
        description="Pointing game and energy against the planted cause (GT box when there is "
        "none), deletion/insertion AUC with the D-RISE score, rho between methods and, with "
        "metrics.sanity, rho after randomising the detector. Writes "
        "<output_dir>/<split>/explanation_metrics.parquet and explanation_metrics.json.",
        handler=cmd.cmd_evaluate_explanations,
        flags=(
            split("split whose explanations to measure (default: eval_split)"),
            flag(
                "--no-model",
                action="store_true",
                help="skip the metrics that run the detector (deletion/insertion, sanity)",
            ),
        ),
    ),
    Command(
        "cluster",
        help="cluster failing features into failure modes",
        description="Take the failing superpixels of every explained failure (FN: strongest "
        "negative attribution; FP: strongest positive), embed them with the detector's backbone "
        "and cluster them into failure modes. Writes features.parquet, failure_modes.parquet, "
        "cluster.json and modes/*.png, and the FiftyOne dataset <name>-failures with fo.Heatmap "
        "fields and the views 'e2x-failures' and 'e2x-mode-<k>'.",
        handler=cmd.cmd_cluster,
        flags=(
            split("split whose explanations to cluster (default: data.eval_split)"),
            no_fiftyone,
        ),
    ),
    Command(
        "repair",
        help="select pool images that carry the failure modes (the repair set)",
        description="Embed every superpixel of the pool images like the failing features, index "
        "them (scikit-learn nearest neighbours), rank pool images per failure mode and select "
        "repair.budget of them. Writes repair_set.parquet and repair.json, and the FiftyOne view "
        "'e2x-repair' on the pool's dataset.",
        handler=cmd.cmd_repair,
        flags=(
            split("split whose failure modes to repair (default: data.eval_split)"),
            no_fiftyone,
        ),
    ),
    Command(
        "retrain",
        help="retrain with the repair set and show whether the failure modes close",
        description="Reveal the repair set's labels (repair.pool_labels, default: the "
        "benchmark's pool_labels.json), fine-tune the detector on train + those images "
        "(retrain.*), save the new checkpoint with its lineage, and evaluate before/after: "
        "mAP@0.5, recall per planted cause, distractor FP rate on retrain.eval_split, and the "
        "share of each failure mode's failures closed. Writes <output_dir>/retrain.json.",
        handler=cmd.cmd_retrain,
        flags=(
            split("split whose repair set to use (default: data.eval_split)"),
            force("retrain even when a cached one fits"),
        ),
    ),
    Command(
        "export",
        help="export the repair set as a COCO, YOLOv5, VOC or CVAT dataset",
        description="Export the FiftyOne view 'e2x-repair' with FiftyOne's exporter for "
        "--format to <output_dir>/export/<name>, in that format's layout (coco: labels.json + "
        "data/; yolov5: dataset.yaml + images/train/ + labels/train/; voc: data/ + labels/*.xml; "
        "cvat: labels.xml + data/). Labels are filled from repair.pool_labels (default: the "
        "benchmark's pool_labels.json) where the pool has them; COCO and YOLOv5 get the pool's "
        "whole class list (sorted), so category ids and class indices are stable.",
        handler=cmd.cmd_export,
        flags=(
            split("split whose repair set to export (default: data.eval_split)"),
            flag(
                "--name",
                default="repair-set",
                help="export folder name under <output_dir>/export (may not lead outside it)",
            ),
            flag(
                "--format",
                default="coco",
                metavar="FORMAT",
                help="coco (default), yolov5, voc or cvat",
            ),
        ),
    ),
    Command(
        "annotate",
        help="send the repair set to CVAT, Label Studio or Labelbox; --load brings labels back",
        description="Send the FiftyOne view 'e2x-repair' to a labelling backend with FiftyOne's "
        "own view.annotate() (label type detections, the pool's classes, label field "
        "--label-field), as the annotation run --anno-key. The backend's URL and credentials "
        "come from FiftyOne's annotation config (fo.annotation_config.backends: "
        "FIFTYONE_CVAT_URL / FIFTYONE_CVAT_USERNAME / FIFTYONE_CVAT_PASSWORD, "
        "FIFTYONE_LABELSTUDIO_URL / FIFTYONE_LABELSTUDIO_API_KEY, FIFTYONE_LABELBOX_API_KEY, or "
        "~/.fiftyone/annotation_config.json). With --load, download the run's labels with "
        "ds.load_annotations() into --label-field (an e2x_ field, never the ground truth).",
        handler=cmd.cmd_annotate,
        flags=(
            split("split whose repair set to annotate (default: data.eval_split)"),
            flag(
                "--backend",
                help="a backend of fo.annotation_config.backends: cvat, labelstudio, labelbox "
                "or one you registered (default: FiftyOne's annotation default_backend)",
            ),
            flag(
                "--anno-key",
                help="annotation run key (default: e2x_repair_<date>_<time>; with --load: the "
                "newest e2x_repair_* run)",
            ),
            flag(
                "--label-field",
                default="e2x_annotations",
                help="the e2x_ field annotated and loaded into (default: e2x_annotations)",
            ),
            flag(
                "--launch-editor",
                action="store_true",
                help="open the backend's editor in a browser after the upload",
            ),
            flag(
                "--load",
                action="store_true",
                help="load the annotation run's labels back into --label-field instead",
            ),
        ),
    ),
    Command(
        "app",
        help="open the FiftyOne App on a saved view",
        description="Launch the FiftyOne App on 127.0.0.1 (unless --address says otherwise) "
        "showing a saved view: e2x-failures, e2x-mode-<k> or e2x-repair. Stop with Ctrl-C. "
        "With --install-plugin, install the E2X plugin instead (its operator explains the "
        "selected failures on demand and writes <method>_heatmap fields).",
        handler=cmd.cmd_app,
        flags=(
            split("split (default: data.eval_split)"),
            flag("--view", default="e2x-failures", help="saved view to open"),
            flag(
                "--dataset",
                help="which E2X dataset: mining (the split, every prediction and the "
                "per-checkpoint evaluation runs), failures or pool (default: pool for "
                "e2x-repair, else failures)",
            ),
            flag("--address", default="127.0.0.1", help="address to bind the App to"),
            flag("--port", type=int, default=5151, help="port of the App"),
            flag(
                "--install-plugin",
                action="store_true",
                help="link the E2X plugin (operator 'E2X: explain selected samples') into "
                "FiftyOne's plugins folder (fo.config.plugins_dir) and exit",
            ),
        ),
    ),
    Command(
        "config",
        help="config file commands",
        subcommands=Subcommands(
            "config_command",
            "CONFIG_COMMAND",
            (
                Command(
                    "init",
                    help="write the default config file (every key with its default)",
                    description="Write the default config (the package's copy of "
                    "configs/demo.yaml: every key with its default, commented) to PATH "
                    "(default: e2x.yaml); an existing file only with --force. Edit it and "
                    "pass --config PATH to any command.",
                    handler=cmd.cmd_config_init,
                    common=False,
                    flags=(
                        flag(
                            "path",
                            nargs="?",
                            type=Path,
                            default=Path("e2x.yaml"),
                            metavar="PATH",
                            help="file to write (default: e2x.yaml)",
                        ),
                        force("overwrite PATH when it exists"),
                    ),
                ),
            ),
        ),
    ),
    Command(
        "bench",
        help="measured benchmarks, written to reports/bench/",
        subcommands=Subcommands("bench_name", "BENCHMARK", tuple(map(_bench, sorted(BENCHES)))),
    ),
)


def _add_subcommands(parser: argparse.ArgumentParser, group: Subcommands) -> None:
    sub = parser.add_subparsers(dest=group.dest, metavar=group.metavar, required=True)
    for c in group.commands:
        texts = (
            {"help": c.help}
            if c.description is None
            else {"help": c.help, "description": c.description}
        )
        p = sub.add_parser(c.name, **texts)
        if c.subcommands is not None:
            _add_subcommands(p, c.subcommands)
            continue
        if c.common:
            common(p)
        for add_flags in c.flags:
            add_flags(p)
        p.set_defaults(func=c.handler)


def build_parser() -> argparse.ArgumentParser:
    """The ``e2x`` parser, built from :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="e2x",
        description="E2X (Explain to Fix): mine, explain, cluster and repair detector failures.",
    )
    # the installed distribution's version (importlib.metadata), so it cannot drift from pyproject
    parser.add_argument("--version", action="version", version=f"e2x {__version__}")
    _add_subcommands(parser, Subcommands("command", "COMMAND", COMMANDS))
    return parser


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
        # OSError: unreadable/unwritable paths, a locked output folder, FiftyOne's database;
        # FileNotFoundError includes StageOutputMissing ("run 'e2x X' first"): one line each
        print(f"e2x: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
