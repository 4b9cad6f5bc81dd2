"""Task runners for ``--task-runner``: Prefect's default (threads) or Dask through prefect-dask."""

from __future__ import annotations


def dask_task_runner(address: str | None = None, workers: int = 2, gpus_per_task: int = 0):
    """A ``DaskTaskRunner`` on ``address`` (``tcp://HOST:PORT``) or a new LocalCluster.

    The LocalCluster has ``workers`` single-threaded worker processes. For several GPUs start one
    worker per GPU with dask-cuda (``dask cuda worker tcp://HOST:PORT --resources GPU=1``) and pass
    the scheduler's address; tasks annotated with ``gpus_per_task`` then run one per GPU.
    """
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise ValueError(
            "--task-runner dask needs prefect-dask and dask.distributed: pip install -e '.[dask]'"
        ) from None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )
