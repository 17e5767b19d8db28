"""The demo page (GET /) and /docs, /redoc in a real headless browser (Debian's chromium, driven
by Playwright), with every request to a host other than 127.0.0.1 blocked: the page shows per
image what /v1/classify answers, and the API docs render offline. bench/demo_screenshot.py runs
the same functions and saves docs/demo.png."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("demo_screenshot", ROOT / "bench" / "demo_screenshot.py")
demo = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(demo)

pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
if not os.access(demo.CHROMIUM, os.X_OK):
    pytest.skip(f"no chromium at {demo.CHROMIUM}: to run the demo-page browser tests, `sudo apt-get install chromium` "
                "(as .ci/run does; or set OSR_CHROMIUM to a chromium binary), then "
                "`.venv/bin/python -m pytest tests/test_demo_page.py`", allow_module_level=True)


@pytest.fixture(scope="module")
def base_url(serve_app):
    from osr.serve.app import create_app
    from osr.serve.settings import Settings

    app = create_app(Settings(model_repository=ROOT / "model_repository", model="cifar10-ad"))
    with serve_app(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser_page():
    with demo.chromium_page() as (page, blocked):
        yield page, blocked


def test_demo_page_shows_what_classify_answers(base_url: str, browser_page, tmp_path: Path) -> None:
    page, blocked = browser_page
    files = [*demo.SAMPLES, demo.grey_image(tmp_path)]
    rendered = demo.classify_in_page(page, base_url, files)
    expected = demo.service_rows(base_url, files, top_k=3)
    assert [card["path"] for card in rendered] == [row["path"] for row in expected]
    for card, row in zip(rendered, expected):
        assert card["class_name"] == row["class_name"], (card, row)
        assert card["p_value"] == f"p-value {row['p_value']:.4f}"
        assert card["top_k"] == [entry["class_name"] for entry in row["top_k"]]
        assert ("unknown" in card["kind"].split()) == row["unknown"]
    assert any(row["unknown"] for row in expected)  # the grey image: the page's unknown case is exercised
    card_text = page.inner_text("#card")
    assert "cifar10-ad, version 1" in card_text and "0.757" in card_text and "4.8 %" in card_text
    assert blocked == []


@pytest.mark.parametrize(("path", "operation"), [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_api_docs_render_without_a_network(base_url: str, browser_page, path: str, operation: str) -> None:
    page, blocked = browser_page
    page.goto(base_url + path)
    page.locator(operation).nth(9).wait_for(timeout=30_000)  # the operations are rendered
    assert "/v1/classify" in page.inner_text("body")
    assert blocked == []
