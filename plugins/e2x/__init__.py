"""FiftyOne plugin ``@e2x/explain``: the operator "E2X: explain selected samples".

Select samples of an E2X failures dataset (``e2x-<split>-failures``, one sample per explained
failure, published by ``e2x cluster`` / ``e2x demo``) in the App, open the operator browser
(the backtick key, or the ``+`` / operator button) and pick "E2X: explain selected samples". The
form asks for the method(s), which samples (the selection or the view's first N), the output
(the class score, or a box coordinate for methods with box maps) and the methods' sample count.
The operator explains those candidates with the run recorded in the dataset's ``info``, writes
``<method>_heatmap`` (``fo.Heatmap``; ``<method>_<output>_heatmap`` for a box coordinate) and
reloads the App, where the heatmap toggles over the image in the sidebar.

This file stays thin: the work is :func:`e2x_pipeline.on_demand.explain_on_demand` (library,
no FiftyOne) and :mod:`e2x_pipeline.fiftyone_io.on_demand` (reads the record, writes heatmaps).
FiftyOne loads it by path, so it imports e2x_pipeline from the environment the App runs in (the
venv that has E2X installed); the heavy imports sit in the methods, so the App starts fast.

It allows delegated execution: with a delegated executor running (``fiftyone delegated
launch``) the user can schedule a long explanation and keep working in the App.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

LABEL = "E2X: explain selected samples"


def _record_or_error(ctx: Any) -> tuple[dict[str, Any] | None, str | None]:
    """The dataset's run record, or the one-line reason there is none."""
    from e2x_pipeline import fiftyone_io
    from e2x_pipeline.run_record import RunRecordError

    if ctx.dataset is None:
        return None, "open an E2X failures dataset ('e2x-<split>-failures') first"
    try:
        return fiftyone_io.run_record_of(ctx.dataset), None
    except RunRecordError as exc:
        return None, str(exc)


def _sample_help(methods: list[str], explain: dict[str, Any]) -> str:
    """What the samples knob sets for each chosen method, with the run's value."""
    from e2x_pipeline.on_demand import sample_setting

    parts = []
    for m in methods:
        where = sample_setting(m)
        if where is None:
            parts.append(f"{m}: none")
            continue
        if where.startswith("options."):
            run_value = explain.get("options", {}).get(m, {}).get("n_samples", "default")
        else:
            run_value = explain.get(where)
        parts.append(f"{m}: {where.split('.')[-1]} (run: {run_value})")
    return "; ".join(parts) + ". Empty: the run's settings."


class ExplainSelected(foo.Operator):
    """Explain the selected failures with chosen methods and write their heatmaps."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name="explain_selected",
            label=LABEL,
            description="Explain the selected E2X failures with chosen methods; writes "
            "<method>_heatmap fields",
            dynamic=True,  # the form changes with the selection, methods and output
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=False,
        )

    def resolve_input(self, ctx: Any) -> types.Property:
        from e2x_pipeline.on_demand import (
            MAX_CANDIDATES,
            MAX_SAMPLES,
            OUTPUT_CHOICES,
            box_methods,
            check_request,
        )
        from e2x_pipeline.registry import EXPLAINERS

        inputs = types.Object()
        form = types.View(label=LABEL)
        record, problem = _record_or_error(ctx)
        if record is None:
            inputs.view("no_run", types.Error(label="No E2X run recorded", description=problem))
            return types.Property(inputs, view=form)
        cfg = record["config"]
        inputs.view(
            "run",
            types.Notice(
                label=f"Run {cfg['output_dir']} (split {record['split']}, model "
                f"{cfg['model']['arch']})"
            ),
        )

        methods_view = types.DropdownView(label="Methods", description="explanation method(s)")
        for m in EXPLAINERS.names():
            box = " (score and box coordinates)" if EXPLAINERS.get(m).supports_box_maps else ""
            methods_view.add_choice(m, label=f"{m}{box}")
        inputs.list("methods", types.String(), default=["e2x"], required=True, view=methods_view)

        n_selected = len(ctx.selected)
        which = types.RadioGroup(orientation="horizontal")
        which.add_choice("selected", label=f"Selected samples ({n_selected})")
        which.add_choice("view", label="First N samples of the current view")
        default_which = "selected" if n_selected else "view"
        inputs.enum("which", which.values(), default=default_which, label="Samples", view=which)
        if ctx.params.get("which", default_which) == "view":
            inputs.int("count", default=5, min=1, max=MAX_CANDIDATES, label="Number of samples (N)")
        elif not n_selected:
            inputs.view(
                "no_selection",
                types.Warning(
                    label="No samples selected",
                    description="select samples in the grid, or choose the view's first N",
                ),
            )

        methods = ctx.params.get("methods") or ["e2x"]
        output = ctx.params.get("output", "score")
        error = None
        try:
            check_request(methods, output)
        except ValueError as exc:
            error = str(exc)
        outputs_view = types.DropdownView(label="Output")
        for o in OUTPUT_CHOICES:
            outputs_view.add_choice(
                o, label="class score" if o == "score" else f"box {o} (methods: {box_methods()})"
            )
        inputs.enum(
            "output",
            list(OUTPUT_CHOICES),
            default="score",
            view=outputs_view,
            invalid=error is not None,
            error_message=error,
        )
        inputs.int(
            "samples",
            min=1,
            max=MAX_SAMPLES,
            required=False,
            label="Samples per explanation",
            description=_sample_help(methods, cfg["explain"]),
        )
        return types.Property(inputs, view=form)

    def execute(self, ctx: Any) -> dict[str, Any]:
        from e2x_pipeline import fiftyone_io
        from e2x_pipeline.on_demand import OnDemandError, explain_on_demand

        record, problem = _record_or_error(ctx)
        if record is None:
            raise OnDemandError(problem)
        which = ctx.params.get("which", "selected")
        if which == "selected":
            if not ctx.selected:
                raise OnDemandError(
                    "no samples selected: select samples in the grid first, or choose the "
                    "view's first N samples"
                )
            cids = fiftyone_io.candidate_ids(ctx.view, ctx.selected)
        else:
            cids = fiftyone_io.candidate_ids(ctx.view, None, int(ctx.params.get("count") or 5))

        def progress(fraction: float, label: str) -> None:
            if ctx.delegated:  # in the App itself the call returns before anyone reads it
                ctx.set_progress(progress=fraction, label=label)

        samples = ctx.params.get("samples")
        methods = ctx.params.get("methods")
        result = explain_on_demand(
            record,
            cids,
            ["e2x"] if methods is None else methods,  # an emptied list is an error, not e2x
            ctx.params.get("output", "score"),
            int(samples) if samples not in (None, "") else None,
            progress=progress,
        )
        fields = fiftyone_io.write_heatmaps(ctx.dataset, result.explanations)
        if not ctx.delegated:
            ctx.trigger("reload_dataset")  # the new heatmap fields show in the sidebar
        return {
            "explained": len(result.explanations),
            "fields": fields,
            "skipped": [f"{c} ({m}): {why}" for c, m, why in result.skipped],
        }

    def resolve_output(self, ctx: Any) -> types.Property:
        outputs = types.Object()
        outputs.int("explained", label="Explanations written")
        outputs.list("fields", types.String(), label="Heatmap fields (toggle them in the sidebar)")
        if ctx.results.get("skipped"):
            outputs.list("skipped", types.String(), label="Skipped")
        return types.Property(outputs, view=types.View(label=LABEL))


def register(p: Any) -> None:
    """FiftyOne's plugin entry point."""
    p.register(ExplainSelected)
