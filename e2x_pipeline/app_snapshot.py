"""Screenshot a FiftyOne App view with headless Chromium: proof that the App shows what we wrote.

``python -m e2x_pipeline.app_snapshot --dataset e2x-pool --view e2x-repair --out shot.png``
launches the App on 127.0.0.1, waits until it answers, renders the saved view's URL with headless
Chromium (``report.browser``; ``apt-get install -y chromium``) and writes a PNG.
"""

from __future__ import annotations

import argparse
import socket
import time
import urllib.parse
import urllib.request
from pathlib import Path


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
    from .report.browser import screenshot

    port = port or free_port()
    session = launch_app(dataset, view, "127.0.0.1", port, wait=False)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/")
        query = urllib.parse.urlencode({"view": view})
        url = f"{base}/datasets/{urllib.parse.quote(dataset)}?{query}"
        return screenshot(url, out, width=1600, height=1000)
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
