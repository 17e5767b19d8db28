"""Drive the demo page (GET /) in a real headless browser and save a screenshot.

    .venv/bin/python bench/demo_screenshot.py [--out docs/demo.png] [--model cifar10-lite0]

Starts osr-serve in-process on a free 127.0.0.1 port with the bundled model, opens the page in
Debian's chromium (Playwright's Python package drives it; no browser download: apt-get install
chromium), picks samples/airplane.jpg, ship.jpg, cat.jpg and a flat grey image (which the bundled
model flags unknown, so the screenshot shows that case too), waits for their result cards, checks
the rendered classes against /v1/classify, and writes the screenshot. Every request to another
host is blocked and reported. tests/test_demo_page.py runs the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from osr.serve.in_thread import serving

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("OSR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SAMPLES = [ROOT / "samples" / name for name in ("airplane.jpg", "ship.jpg", "cat.jpg")]


def grey_image(folder: Path) -> Path:
    """A flat grey 32x32 PNG: nothing like any CIFAR-10 class."""
    from PIL import Image

    path = folder / "grey.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(path)
    return path


@contextlib.contextmanager
def chromium_page(width: int = 1100, height: int = 760) -> Iterator[tuple[object, list[str]]]:
    """(page, blocked): a page in which every request to a host other than 127.0.0.1 is aborted
    and its URL appended to ``blocked``."""
    from playwright.sync_api import sync_playwright

    blocked: list[str] = []

    def only_local(route, request) -> None:
        host = urlsplit(request.url).hostname
        if request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            blocked.append(request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.route("**/*", only_local)
            yield page, blocked
        finally:
            browser.close()


def classify_in_page(page, base_url: str, files: Sequence[Path], timeout_ms: int = 30_000) -> list[dict]:
    """Open the demo page, wait for the model card, pick ``files``; the rendered result cards."""
    page.goto(base_url + "/")
    page.wait_for_selector("#card-facts:not([hidden])", timeout=timeout_ms)
    page.set_input_files("#files", [str(f) for f in files])
    # locators, not wait_for_function: the page's CSP forbids the eval that a string predicate needs
    page.locator("[data-testid=result]").nth(len(files) - 1).wait_for(timeout=timeout_ms)
    return page.eval_on_selector_all("[data-testid=result]", """cards => cards.map(card => ({
        path: card.dataset.path,
        class_name: card.querySelector('.class-name').textContent,
        p_value: card.querySelector('.p-value') ? card.querySelector('.p-value').textContent : null,
        top_k: Array.from(card.querySelectorAll('.top-k tr td:first-child')).map(td => td.textContent),
        kind: card.className,
    }))""")


def service_rows(base_url: str, files: Sequence[Path], top_k: int = 3) -> list[dict]:
    """What /v1/classify answers for the same files (the page asks for top_k=3 by default)."""
    upload = [("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files]
    response = httpx.post(f"{base_url}/v1/classify", params={"top_k": top_k}, files=upload, timeout=30)
    response.raise_for_status()
    return response.json()["results"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "demo.png")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--model", default="cifar10-lite0")
    args = parser.parse_args(argv)

    from osr.serve.app import create_app
    from osr.serve.settings import Settings

    app = create_app(Settings(model_repository=args.model_repository, model=args.model))
    with tempfile.TemporaryDirectory() as folder, serving(app) as (url, _), chromium_page() as (page, blocked):
        files = [*SAMPLES, grey_image(Path(folder))]
        rendered = classify_in_page(page, url, files)
        expected = service_rows(url, files)
        page.screenshot(path=str(args.out), full_page=True)
    by_path = {card["path"]: card for card in rendered}
    for row in expected:
        shown = by_path[row["path"]]["class_name"]
        print(f"{row['path']}: page shows {shown!r}, /v1/classify says {row['class_name']!r} "
              f"(p-value {row['p_value']:.4f})")
        if shown != row["class_name"]:
            print("MISMATCH", file=sys.stderr)
            return 1
    print(json.dumps({"blocked_requests": blocked, "screenshot": str(args.out)}))
    return 1 if blocked else 0


if __name__ == "__main__":
    sys.exit(main())
