"""Headless Chromium for the report: prove its images load, and take a screenshot.

The report's inline script writes ``data-loaded`` / ``data-broken`` on ``#e2x-image-check`` after
the page's load event; :func:`check_in_browser` reads them back from ``chromium --dump-dom``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--allow-file-access-from-files",
]


def chromium_path() -> str | None:
    """The Chromium (or Chrome) binary on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="e2x-chromium-") as profile:
        return subprocess.run(
            [exe, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def check_in_browser(index: str | Path, timeout: float = 120) -> dict:
    """Load the report in headless Chromium; ``{"images", "loaded", "broken", "text"}``."""
    url = Path(index).resolve().as_uri()
    proc = _run(["--virtual-time-budget=15000", "--dump-dom", url], timeout)
    m = re.search(r'<p id="e2x-image-check"[^>]*>', proc.stdout)
    if m is None:
        raise RuntimeError(f"chromium did not render {url}: {proc.stderr[-2000:]}")
    tag = m.group(0)

    def attr(name: str) -> int | None:
        a = re.search(rf'data-{name}="(\d+)"', tag)
        return int(a.group(1)) if a else None

    text = re.search(r'<p id="e2x-image-check"[^>]*>(.*?)</p>', proc.stdout, re.S)
    return {
        "images": attr("expected"),
        "loaded": attr("loaded"),
        "broken": attr("broken"),
        "text": text.group(1) if text else "",
    }


def screenshot(
    index: str | Path, out: str | Path, width: int = 1280, height: int = 2400, timeout: float = 120
) -> Path:
    """A PNG screenshot of the first ``height`` pixels at ``width`` of a report file, or of a
    page when ``index`` is an http(s) URL (the FiftyOne App)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    is_url = str(index).startswith(("http://", "https://"))
    url = str(index) if is_url else Path(index).resolve().as_uri()
    proc = _run(
        [
            f"--window-size={width},{height}",
            "--virtual-time-budget=15000",
            f"--screenshot={out}",
            url,
        ],
        timeout,
    )
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {url}: {proc.stderr[-2000:]}")
    return out
