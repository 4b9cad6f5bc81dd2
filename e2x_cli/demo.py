"""``e2x demo``: the whole product story on the planted-failure benchmark, on embedded defaults."""

from __future__ import annotations

from e2x_pipeline.config import E2XConfig


def print_summary(summary: dict) -> None:
    from e2x_pipeline.evaluation import format_evaluation

    print("\n== 1. Detector on the planted-failure benchmark ==")
    print(f"checkpoint: {summary['checkpoint']} (trained in {summary.get('train_seconds')} s)")
    print(format_evaluation(summary["evaluation"]))
    print("\n== 2. Mined failures, per planted cause ==")
    print(summary["mining_table"])
    if summary.get("fiftyone_dataset"):
        print(f"FiftyOne: dataset '{summary['fiftyone_dataset']}', saved view 'e2x-failures'")
    ex = summary["explain"]
    print("\n== 3. Explanations (E2X) ==")
    print(f"{ex['explanations']} explanations ({ex['valid']} valid), {ex['seconds']:.1f} s of work")
    if ex["overlays"]:
        print(f"overlays (red +, blue -): {ex['overlays'][0]} ... ({len(ex['overlays'])} files)")
    print("\n== 4. Failure modes (clusters of failing features) ==")
    print(summary["failure_modes"]["table"])
    print("\n== 5. Repair set: pool images matched to the failure modes ==")
    print(summary["repair"]["table"])
    names = summary.get("fiftyone_datasets") or {}
    if names:
        print(
            f"FiftyOne: '{names['failures']}' (views e2x-failures, e2x-mode-<k>, fo.Heatmap "
            f"fields), '{names['pool']}' (view e2x-repair). Open: e2x app --view e2x-repair"
        )
    if summary.get("retrain"):
        from e2x_pipeline.retrain import format_retrain

        print("\n== 6. Before/after: retrained with the repair set ==")
        print(format_retrain(summary["retrain"]))
    after = summary.get("after_retrain")
    if after:
        from e2x_pipeline.history import HistoryStore, format_history

        print("\n== 7. The next run, on the retrained checkpoint: what closed, kept and opened ==")
        print(f"checkpoint: {after['checkpoint']} (tables in {after['output_dir']})")
        print(after["mining_table"])
        print(after["history"]["markdown"])
        print("\n== Run history (e2x history) ==")
        print(format_history(HistoryStore(summary["history_store"])))
    elif summary.get("history"):
        print("\n== Run history (e2x history) ==")
        print(summary["history"]["markdown"])
    if summary.get("report"):
        print(f"\nHTML report: {summary['report']}")
    print(f"\ndemo finished in {summary['seconds']} s")


def print_run(summary: dict) -> None:
    """What ``e2x run`` prints: the demo's summary without the benchmark's story headings."""
    from e2x_pipeline.evaluation import format_evaluation

    if summary.get("skipped"):  # --watch found nothing newer
        print(f"run skipped: {summary['reason']}")
        return
    print(f"checkpoint: {summary['checkpoint']}")
    if summary.get("evaluation"):
        print(format_evaluation(summary["evaluation"]))
    print(summary["mining_table"])
    ex = summary["explain"]
    print(f"{ex['explanations']} explanations ({ex['valid']} valid)")
    print(summary["failure_modes"]["table"])
    print(summary["repair"]["table"])
    if summary.get("retrain"):
        from e2x_pipeline.retrain import format_retrain

        print(format_retrain(summary["retrain"]))
    if summary.get("history"):
        print(summary["history"]["markdown"])
    for key, name in (summary.get("fiftyone_datasets") or {}).items():
        print(f"FiftyOne {key}: '{name}'")
    if summary.get("report"):
        print(f"HTML report: {summary['report']}")
    print(f"run finished in {summary['seconds']} s")


def run_demo(cfg: E2XConfig, progress: bool = True, fiftyone: bool = True) -> int:
    """Run the ``e2x-pipeline`` Prefect flow (temporary local server unless PREFECT_API_URL)."""
    from flows.pipeline import e2x_pipeline

    summary = e2x_pipeline(
        cfg.model_dump(mode="json"),
        progress=progress,
        fiftyone=fiftyone,
        benchmark=True,
        rerun_retrained=True,
    )
    print_summary(summary)
    return 0
