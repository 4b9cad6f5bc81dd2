"""Offline-safe defaults for FiftyOne and Prefect, set before either is imported.

Users can override each variable in their environment; these are only defaults.
"""

from __future__ import annotations

import os
from pathlib import Path


def set_offline_defaults(home: Path | None = None) -> None:
    home = home or Path.cwd() / ".e2x"
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    # Prefect creates its home folder without parents and then fails to open its database.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The 20 s default times out on a loaded 2-core machine (shared/STACK.md).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The App and the bundled mongod listen on loopback only unless the user says otherwise.
    os.environ.setdefault("FIFTYONE_DEFAULT_APP_ADDRESS", "127.0.0.1")
    # So does a Prefect server started from here (Prefect's own default, made explicit).
    os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")
