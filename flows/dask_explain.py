"""The explain stage on Dask: one Prefect task per chunk of images, then a deterministic merge.

``e2x explain --task-runner dask`` and ``e2x run --task-runner dask`` run :func:`dask_explain_flow`
under a ``DaskTaskRunner`` (flows/runners.py): a LocalCluster of ``--dask-workers``
single-threaded worker processes, or the scheduler at ``--dask-address tcp://HOST:PORT``.
Each task explains one chunk of images (:func:`e2x_pipeline.explain.parts.explain_chunk`) on a
worker; the flow holds the output folder's lock, plans the chunks, and merges the parts into
``explanations.parquet`` (:func:`~e2x_pipeline.explain.parts.merge_parts`): the same table as a
local run. With ``gpus_per_task`` the tasks are submitted under
``dask.annotate(resources={"GPU": n})``, so each runs on a worker started with
``--resources GPU=1`` (one per GPU).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from e2x_pipeline.config import E2XConfig

from .runners import dask_options, dask_task_runner, shared_prefect_api

CHUNKS_PER_SLOT = 4
"""Chunks per worker thread by default: enough for load balancing, few enough that the per-task
cost (a Prefect task run, reading the candidates table) stays small."""


@functools.lru_cache(maxsize=2)
def _detector(model_json: str, checkpoint: str, stamp: tuple, device: str):
    """The detector, loaded once per worker process (and checkpoint file version)."""
    from e2x_pipeline.config import ModelConfig
    from e2x_pipeline.detectors import load_detector

    model = ModelConfig.model_validate_json(model_json)
    return load_detector(model.model_copy(update={"checkpoint": Path(checkpoint)}), device)


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


@task(name="explain-chunk", cache_policy=NO_CACHE)
def explain_chunk_task(
    config: dict,
    checkpoint: str,
    split: str,
    image_ids: list[int],
    reference: Any = None,
    torch_threads: int | None = 1,
    base_dir: str | None = None,
) -> dict:
    """Explain one chunk of images on a worker; writes its part table and the images' maps.

    ``config`` and ``checkpoint`` name absolute paths; relative image paths in the candidates
    table are taken from ``base_dir`` (the submitting process's working folder)."""
    import pandas as pd
    import torch
    from prefect.settings import PREFECT_API_URL

    from e2x_pipeline import stages
    from e2x_pipeline.config import resolve_device
    from e2x_pipeline.explain.parts import explain_chunk

    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    t0 = time.perf_counter()
    cfg = E2XConfig.model_validate(config)
    device = str(resolve_device(cfg.device))
    det = _detector(cfg.model.model_dump_json(), checkpoint, _stamp(checkpoint), device)
    layout = cfg.split_layout(split)
    cands = pd.read_parquet(layout.require("candidates"))
    cands = stages.failures(cands, cfg.explain.max_candidates)
    if base_dir:  # a worker may run in another folder (or on another host)
        cands = cands.assign(image_path=[str(Path(base_dir, p)) for p in cands["image_path"]])
    ref = torch.as_tensor(reference) if reference is not None else None
    table = explain_chunk(det, cands, cfg.explain, layout.root, image_ids, ref, cfg.seed)
    return {
        "images": len(image_ids),
        "rows": int(len(table)),
        "seconds": round(time.perf_counter() - t0, 3),
        "pid": os.getpid(),
        "api_url": PREFECT_API_URL.value(),
    }


def _worker_slots() -> int:
    """Worker threads of the flow's Dask cluster (1 under another task runner)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    if runner is None or not hasattr(runner, "client"):
        return 1
    return max(1, sum(runner.client.nthreads().values()))


def explain_in_chunks(
    cfg: E2XConfig,
    checkpoint: str | Path,
    split: str,
    chunks: int | None = None,
    gpus_per_task: float = 0,
    torch_threads: int | None = 1,
) -> dict:
    """Inside a flow: submit one :func:`explain_chunk_task` per chunk, wait, merge the parts and
    write the overlays; returns what ``explain_task`` returns, plus the chunks' reports."""
    import dask
    import pandas as pd
    from prefect.futures import wait

    from e2x_pipeline import stages
    from e2x_pipeline.explain.parts import merge_parts, plan_chunks
    from e2x_pipeline.locking import run_lock

    # absolute paths for the workers, which may run in another folder
    cfg = cfg.model_copy(update={"output_dir": Path(cfg.output_dir).resolve()})
    checkpoint = Path(checkpoint).resolve()
    layout = cfg.split_layout(split)
    d = layout.root
    config = cfg.model_dump(mode="json")
    with run_lock(cfg.output_dir):
        merge_parts(d)  # a killed run's parts first, so that the chunks skip their rows
        cands = stages.failures(
            pd.read_parquet(layout.require("candidates")), cfg.explain.max_candidates
        )
        slots = _worker_slots()  # starts a LocalCluster now, so wall_seconds leaves it out
        plan = plan_chunks(cands, chunks or CHUNKS_PER_SLOT * slots)
        reference = stages.reference_image(cfg).numpy()
        annotate = (
            dask.annotate(resources={"GPU": float(gpus_per_task)})
            if gpus_per_task
            else contextlib.nullcontext()
        )
        t0 = time.perf_counter()
        with shared_prefect_api(), annotate:
            futures = [
                explain_chunk_task.submit(
                    config, str(checkpoint), split, ids, reference, torch_threads, str(Path.cwd())
                )
                for ids in plan
            ]
        try:
            wait(futures)
            reports = [f.result() for f in futures]
        finally:  # finished chunks are kept even when one failed: a rerun skips them
            table = merge_parts(d)
        seconds = time.perf_counter() - t0
        overlays = stages.overlay_stage(cfg, split)
    return {
        **stages.explain_summary(table, overlays),
        "chunks": reports,
        "wall_seconds": round(seconds, 3),
        "worker_threads": slots,
    }


@flow(name="e2x-explain-dask", log_prints=True)
def dask_explain_flow(
    config: dict,
    split: str | None = None,
    progress: bool = True,
    checkpoint: str | None = None,
    chunks: int | None = None,
    gpus_per_task: float = 0,
    torch_threads: int | None = 1,
) -> dict:
    """Explain the split's failures in chunks on the flow's task runner (Dask) and merge."""
    from e2x_pipeline import stages

    cfg = E2XConfig.model_validate(config)
    split = split or cfg.data.eval_split
    ckpt = checkpoint or stages.resolve_checkpoint(cfg, progress)
    return explain_in_chunks(cfg, ckpt, split, chunks, gpus_per_task, torch_threads)


@contextlib.contextmanager
def _quiet(name: str, level: int = logging.WARNING):
    logger = logging.getLogger(name)
    old = logger.level
    if old == logging.NOTSET or old < level:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def explain_with_dask(
    cfg: E2XConfig,
    split: str,
    options: dict | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
) -> dict:
    """Run :func:`dask_explain_flow` on a ``DaskTaskRunner`` made from ``options``
    (:func:`flows.runners.dask_options`: address, workers, gpus_per_task, chunks)."""
    opts = {**dask_options(), **(options or {})}
    runner = dask_task_runner(opts["address"], opts["workers"], opts["gpus_per_task"])
    # the flow and its workers report to one server; Dask's scheduler and nannies (in this
    # process) log only warnings
    with shared_prefect_api(), _quiet("distributed"):
        return dask_explain_flow.with_options(task_runner=runner)(
            cfg.model_dump(mode="json"),
            split,
            progress,
            str(checkpoint) if checkpoint else None,
            opts["chunks"],
            opts["gpus_per_task"],
        )
