"""E2X: Explain to Fix. Mine, explain, cluster and repair object-detector failures."""

from __future__ import annotations

from importlib import metadata, resources

DISTRIBUTION = "e2x-pipeline"
"""The name this package is installed under (``pyproject.toml``: ``[project] name``)."""

DEFAULT_CONFIG = "configs/demo.yaml"
"""The default config inside this package (package data); the repository's
``configs/demo.yaml`` is a byte-identical copy (tests/test_packaging.py checks)."""


def _version() -> str:
    # one source of truth: the version pyproject.toml gave the installed distribution
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()


def default_config_text() -> str:
    """The default config file's text: every key with its default, commented."""
    return resources.files(__name__).joinpath(DEFAULT_CONFIG).read_text(encoding="utf-8")
