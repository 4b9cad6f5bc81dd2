"""Screenshot the App's Model Evaluation panel comparing two checkpoints' evaluation runs.

    pip install -e ".[screenshots]"   # playwright, the Python package only: it drives the
                                      # system Chromium, no browser download
    apt-get install -y chromium
    e2x demo                          # publishes e2x-val with the base and retrained runs
    python docs/eval_panel_screenshot.py --dataset e2x-val --out docs/img/model-evaluation.png

It serves the App on 127.0.0.1 with the Samples grid and FiftyOne's built-in Model Evaluation
panel side by side (``session.spaces``), opens the first ``e2x_<checkpoint>`` evaluation run,
picks the other one in the panel's "Select a comparison" menu and takes the screenshot of the
two runs' summaries side by side (mAP, precision, recall, TP/FP/FN). The runs are what
``e2x demo`` stores: the base checkpoint's (from the mining stage) and the retrained
checkpoint's (from the second run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PANEL = "model_evaluation_panel_builtin"  # FiftyOne's own panel (plugins/panels)


def _dismiss(page) -> None:
    """Close the App's enterprise advert and its analytics banner.

    The advert is a popover whose backdrop takes every click until it is dismissed.
    """
    for text in ("Dismiss", "Disable"):
        button = page.get_by_text(text, exact=True)
        if button.count():
            button.first.click()
            page.wait_for_timeout(500)
    page.keyboard.press("Escape")


def _shrink(path: Path) -> None:
    """Rewrite the PNG with a 256-colour palette: a quarter of the bytes, same to the eye."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    tmp = path.with_suffix(".tmp.png")
    small.save(tmp, optimize=True)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="e2x-val", help="an E2X mining dataset")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "model-evaluation.png")
    p.add_argument("--port", type=int, default=5198)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--base", help="evaluation key to open (default: the first e2x_ run)")
    p.add_argument("--compare", help="evaluation key to compare with (default: the other)")
    args = p.parse_args(argv)

    import fiftyone as fo
    from playwright.sync_api import sync_playwright

    ds = fo.load_dataset(args.dataset)
    runs = [k for k in ds.list_evaluations() if k.startswith("e2x_")]
    base = args.base or (runs[0] if runs else None)
    compare = args.compare or next((k for k in runs if k != base), None)
    if base is None or compare is None:
        raise SystemExit(
            f"dataset {args.dataset!r} has evaluation runs {runs}; it needs two e2x_ runs "
            "(run 'e2x demo', which evaluates the base and the retrained checkpoint)"
        )
    spaces = fo.Space(
        children=[fo.Panel(type="Samples", pinned=True), fo.Panel(type=PANEL)],
        orientation="horizontal",
    )
    session = fo.launch_app(
        ds, port=args.port, address="127.0.0.1", remote=True, auto=False, spaces=spaces
    )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=args.chromium,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1400})
            page.goto(f"http://127.0.0.1:{args.port}/datasets/{args.dataset}")
            page.wait_for_selector(f"text={base}", timeout=90_000)
            page.wait_for_timeout(3000)  # the advert pops up after the panel
            _dismiss(page)
            page.get_by_text(base, exact=True).first.click()
            # the run's summary table, then the menu of runs to compare it with
            page.wait_for_selector("text=Select a comparison", timeout=90_000)
            page.wait_for_timeout(2000)
            page.get_by_text("Select a comparison", exact=True).first.click()
            page.wait_for_timeout(1000)
            page.get_by_text(compare, exact=True).last.click()
            page.wait_for_timeout(6000)  # both runs' metrics load
            _dismiss(page)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            _shrink(args.out)
            print(f"Model Evaluation panel, {base} vs {compare}: {args.out}")
            browser.close()
    finally:
        session.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
