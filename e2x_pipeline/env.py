"""Offline-safe defaults for FiftyOne and Prefect, set before either is imported.

Users can override each variable in their environment; these are only defaults.

Prefect: a user who has configured Prefect keeps their setup as it is. When ``PREFECT_API_URL``,
``PREFECT_HOME`` or ``PREFECT_PROFILE`` is set, or ``~/.prefect/profiles.toml`` exists (an
active profile), E2X sets no Prefect location; runs go to their server or their home. Only when
nothing is configured does E2X keep Prefect's state in ``./.e2x/prefect`` (then a flow starts
Prefect's temporary local server there). Nothing is created on disk here: the folder is made
by :func:`ensure_prefect_home`, which the commands that run flows call.
"""

from __future__ import annotations

import os
from pathlib import Path

_PREFECT_SETTINGS = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_PROFILE")


def prefect_configured() -> bool:
    """Has the user configured Prefect (a server, a home or a profile)?"""
    if any(os.environ.get(v) for v in _PREFECT_SETTINGS):
        return True
    return (Path.home() / ".prefect" / "profiles.toml").is_file()


def set_offline_defaults(home: Path | None = None) -> None:
    home = home or Path.cwd() / ".e2x"
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not prefect_configured():
        os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The 20 s default times out on a loaded 2-core machine (shared/STACK.md).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The App and the bundled mongod listen on loopback only unless the user says otherwise.
    os.environ.setdefault("FIFTYONE_DEFAULT_APP_ADDRESS", "127.0.0.1")
    # So does a Prefect server started from here (Prefect's own default, made explicit).
    os.environ.setdefault("PREFECT_SERVER_API_HOST", "127.0.0.1")


def ensure_prefect_home() -> None:
    """Create ``PREFECT_HOME`` (with its parents) when it is set: Prefect creates its home folder
    without parents and then fails to open its database. Called right before a flow runs."""
    home = os.environ.get("PREFECT_HOME")
    if home:
        Path(home).expanduser().mkdir(parents=True, exist_ok=True)
