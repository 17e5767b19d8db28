"""/docs and /redoc work without a network: their pages reference only this server, every asset
they name is served from files installed with the package, and /metrics names their routes.
(tests/test_demo_page.py renders them in a real browser with every other host blocked.)"""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from osr.serve.app import create_app
from osr.serve.settings import Settings

# src="..." / href="..." attributes, and the quoted URLs the pages' inline scripts load
URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
SCRIPT_URL = re.compile(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def client(tiny_model_repository: Path):
    with TestClient(create_app(Settings(model_repository=tiny_model_repository))) as test_client:
        deadline = time.monotonic() + 30
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield test_client


def referenced_urls(html: str) -> list[str]:
    return URL_ATTRIBUTE.findall(html) + SCRIPT_URL.findall(html)


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/"])
def test_page_references_only_this_server_and_every_asset_is_there(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"].startswith("default-src 'self'")  # nothing from elsewhere
    urls = referenced_urls(response.text)
    assert urls, "the page names its assets"
    external = [u for u in urls if re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", u, re.I)]
    assert not external, external
    for url in urls:
        asset = client.get(urljoin(f"http://testserver{page}", url))
        assert asset.status_code == 200, (url, asset.status_code)
        assert asset.content, url


def test_docs_assets_are_swagger_ui_and_redoc_from_the_installed_package(client: TestClient) -> None:
    from osr.serve.routes.docs import vendor_assets

    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert (vendor_assets() / name).stat().st_size > 100_000, name
        assert client.get(f"/static/vendor/{name}").content == (vendor_assets() / name).read_bytes()
    assert "SwaggerUIBundle" in client.get("/docs").text
    assert "redoc.standalone.js" in client.get("/redoc").text
    assert "fonts.googleapis.com" not in client.get("/redoc").text


def test_metrics_name_the_docs_routes(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/static/vendor/swagger-ui.css", "/static/demo.js", "/"):
        assert client.get(path).status_code == 200
    routes = set()
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "osr_requests_total" and sample.labels["status"] == "200":
                routes.add(sample.labels["route"])
    assert {"/docs", "/redoc", "/openapi.json", "/static/vendor", "/static", "/"} <= routes, routes
    assert "unmatched" not in routes
