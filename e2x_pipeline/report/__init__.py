"""The self-contained HTML report of a run (``e2x report``; written by the flow at its end)."""

from .browser import check_in_browser, chromium_path, screenshot
from .build import build_report, default_run_id

__all__ = ["build_report", "check_in_browser", "chromium_path", "default_run_id", "screenshot"]
