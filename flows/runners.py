"""Task runners for ``--task-runner``: Prefect's default (threads) or Dask through prefect-dask.

Dask workers run each Prefect task in their own process and report it to the Prefect API named
in the settings the task carries (prefect-dask serialises the submitting flow's settings context
into every task). Without ``PREFECT_API_URL`` that setting is empty and every worker process
would start its own temporary Prefect server; :func:`shared_prefect_api` gives the workers the
flow's own (temporary) server instead, so all task runs land on one server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

DASK_HINT = "--task-runner dask needs prefect-dask and dask.distributed: pip install -e '.[dask]'"


def dask_options(
    address: str | None = None,
    workers: int = 2,
    gpus_per_task: float = 0,
    chunks: int | None = None,
) -> dict[str, Any]:
    """The JSON-able options of a Dask explain run (flow parameters, CLI flags)."""
    return {
        "address": address,
        "workers": int(workers),
        "gpus_per_task": float(gpus_per_task),
        "chunks": chunks,
    }


def dask_task_runner(address: str | None = None, workers: int = 2, gpus_per_task: float = 0):
    """A ``DaskTaskRunner`` on ``address`` (``tcp://HOST:PORT``) or a new LocalCluster.

    The LocalCluster has ``workers`` single-threaded worker processes on 127.0.0.1 (no
    dashboard); with ``gpus_per_task`` each worker offers one ``GPU`` resource, so tasks
    annotated with it run one per worker. For several GPUs start one worker per GPU with
    dask-cuda (``dask cuda worker tcp://HOST:PORT --nthreads 1 --resources GPU=1``) and pass
    the scheduler's address.
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ValueError(DASK_HINT) from None
    if address:
        return DaskTaskRunner(address=address)
    kwargs: dict[str, Any] = {
        "n_workers": int(workers),
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
    }
    if gpus_per_task:
        kwargs["resources"] = {"GPU": max(1.0, float(gpus_per_task))}
    return DaskTaskRunner(cluster_kwargs=kwargs)


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[str]:
    """Make ``PREFECT_API_URL`` name a server that Dask workers can reach; yield its URL.

    With ``PREFECT_API_URL`` set (a real server, or the test harness) nothing changes. Without
    it, the process's temporary server (the one its flow runs already use; started if needed) is
    set as ``PREFECT_API_URL`` for the block, so tasks submitted in it carry that URL. It listens
    on 127.0.0.1: workers on other hosts need a real server (``prefect server start``).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server.api_url
