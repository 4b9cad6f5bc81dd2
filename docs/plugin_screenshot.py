"""Screenshot the App's "E2X: explain selected samples" form in headless Chromium, and run it.

    pip install -e ".[screenshots]"   # playwright, the Python package only: it drives the
                                      # system Chromium, no browser download
    apt-get install -y chromium
    python docs/plugin_screenshot.py --dataset e2x-val-failures --out docs/img/plugin-operator.png

It serves the App on 127.0.0.1 with the plugin taken straight from this repository's ``plugins/``
folder (``FIFTYONE_PLUGINS_DIR``), selects the dataset's first two samples through the session,
opens the operator browser (the backtick key), picks the operator, adds a second method and
takes the screenshot. With ``--execute`` it then clicks Execute, as a user would, waits until the
heatmap fields are on the selected samples (the operator ran in the App's server) and writes a
second screenshot next to the first (``<out>-result.png``). Needs a failures dataset published
by ``e2x cluster`` / ``e2x demo`` (it records the run the operator explains with).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dismiss(page) -> None:
    """Close the App's enterprise advert, which covers the form's right edge."""
    button = page.get_by_text("Dismiss", exact=True)
    if button.count():
        button.first.click()


def _heatmaps_written(ds, ids: list[str], field: str, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ds.reload()
        if field in ds.get_field_schema():
            maps = ds.select(ids).values(field)
            if all(m is not None for m in maps):
                return True
        time.sleep(1.0)
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="an E2X failures dataset")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "plugin-operator.png")
    p.add_argument("--port", type=int, default=5199)
    p.add_argument("--add-method", default="ig", help="a second method to pick in the form")
    p.add_argument("--execute", action="store_true", help="also click Execute and check")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)

    # before fiftyone is imported: its config reads the plugins folder once
    os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(ROOT / "plugins"))
    import fiftyone as fo
    from playwright.sync_api import sync_playwright

    ds = fo.load_dataset(args.dataset)
    ids = ds.limit(2).values("id")
    session = fo.launch_app(ds, port=args.port, address="127.0.0.1", remote=True, auto=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(f"http://127.0.0.1:{args.port}/datasets/{args.dataset}")
            page.wait_for_selector("text=Samples", timeout=60_000)
            page.wait_for_timeout(4000)  # the grid's tiles load after the page
            _dismiss(page)
            session.selected = ids  # what clicking the tiles' checkboxes does
            page.wait_for_timeout(2000)
            page.keyboard.press("Backquote")  # the operator browser
            page.wait_for_timeout(1000)
            page.keyboard.type("explain selected")
            page.wait_for_timeout(1000)
            page.keyboard.press("Enter")
            page.wait_for_selector("text=Samples per explanation", timeout=60_000)
            if args.add_method:
                page.get_by_placeholder("Type and press enter to add a value").click()
                page.wait_for_timeout(500)
                # the dropdown's options are labelled "<method>" or "<method> (score and box ...)"
                option = (
                    page.get_by_role("option")
                    .filter(has_text=f"{args.add_method} (")
                    .or_(page.get_by_role("option", name=args.add_method, exact=True))
                )
                option.first.click()
                # close the dropdown by clicking a label (Escape would close the whole form)
                page.get_by_text("Samples per explanation", exact=True).click()
            page.wait_for_timeout(1500)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            print(f"form: {args.out}")
            if args.execute:
                page.get_by_role("button", name="Execute", exact=True).click()
                method = args.add_method or "e2x"
                ok = _heatmaps_written(ds, ids, f"{method}_heatmap", timeout=180)
                page.wait_for_timeout(3000)  # the App reloads the dataset
                result = args.out.with_name(args.out.stem + "-result.png")
                page.screenshot(path=str(result))
                print(f"after Execute: {result}; {method}_heatmap on the selection: {ok}")
                if not ok:
                    return 1
            browser.close()
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
