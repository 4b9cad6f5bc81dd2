"""Screenshot a FiftyOne App view with headless Chromium: proof that the App shows what we wrote.

``python -m e2x_pipeline.app_snapshot --dataset e2x-pool --view e2x-repair --out shot.png``
launches the App on 127.0.0.1, waits until it answers, renders the saved view's URL with headless
Chromium (``chromium`` must be installed: ``apt-get install -y chromium``) and writes a PNG.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def screenshot_url(
    url: str, out: Path, size: tuple[int, int] = (1600, 1000), budget_ms: int = 20000
):
    """Render ``url`` with headless Chromium into the PNG ``out`` (arguments, never a shell)."""
    binary = chromium_binary()
    if binary is None:
        raise FileNotFoundError(
            "no chromium binary on PATH; install it: apt-get install -y chromium"
        )
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}",
            url,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the FiftyOne App did not answer at {url} within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot_view(dataset: str, view: str, out: Path, port: int | None = None) -> Path:
    """Launch the App on 127.0.0.1 for ``dataset``'s saved ``view`` and screenshot it."""
    from .fiftyone_io import launch_app

    port = port or free_port()
    session = launch_app(dataset, view, "127.0.0.1", port, wait=False)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/")
        query = urllib.parse.urlencode({"view": view})
        return screenshot_url(f"{base}/datasets/{urllib.parse.quote(dataset)}?{query}", out)
    finally:
        session.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--view", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--port", type=int)
    args = p.parse_args(argv)
    print(snapshot_view(args.dataset, args.view, args.out, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
