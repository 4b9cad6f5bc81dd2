"""E2X: Explain to Fix. Mine, explain, cluster and repair object-detector failures."""

__version__ = "0.1.0"
