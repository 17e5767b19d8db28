"""Security headers on every response (issue 20: no frame-ancestors or X-Frame-Options on /, /docs,
/redoc; no X-Content-Type-Options anywhere; no CSP on /docs/oauth2-redirect), including the
errors of the ASGI app and the refusals written by the protocol class below it."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from osr.serve.app import create_app
from osr.serve.http_protocol import GuardedHttpToolsProtocol
from osr.serve.in_thread import free_port, serving
from osr.serve.server import uvicorn_options
from osr.serve.settings import Settings

FRAME_ANCESTORS = "frame-ancestors 'none'"
HTML_PAGES = ["/", "/docs", "/redoc", "/docs/oauth2-redirect"]


@pytest.fixture(scope="module")
def client(tiny_model_repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=tiny_model_repository, threads=1, api_key="k" * 16, max_body_bytes=4096)
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        deadline = time.monotonic() + 60
        while test_client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield test_client


def assert_secure(headers, where: str) -> str:
    assert headers.get("x-content-type-options") == "nosniff", where
    assert headers.get("x-frame-options") == "DENY", where
    assert headers.get("referrer-policy") == "no-referrer", where
    policy = headers.get("content-security-policy", "")
    assert FRAME_ANCESTORS in policy, (where, policy)
    assert len(headers.get_list("content-security-policy")) == 1, where
    return policy


KEY = {"X-API-Key": "k" * 16}


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("GET", "/healthz", {}, 200),
    ("GET", "/readyz", {}, 200),
    ("GET", "/metrics", {}, 200),
    ("GET", "/openapi.json", {}, 200),
    ("GET", "/static/demo.js", {}, 200),
    ("GET", "/v1/model", {"headers": KEY}, 200),
    ("GET", "/v1/model", {}, 401),
    ("GET", "/no/such/path", {}, 404),
    ("POST", "/v1/classify", {"headers": KEY, "files": [("files", ("a.jpg", b"text", "image/jpeg"))]}, 415),
    ("POST", "/v1/classify", {"headers": KEY, "content": b"x" * 5000}, 413),
    ("POST", "/v2/models/tiny/infer", {"headers": KEY, "content": b"{"}, 400),
    ("GET", "/v2/health/live", {}, 200),
])
def test_every_response_carries_the_security_headers(client: TestClient, method: str, path: str, kwargs: dict,
                                                     status: int) -> None:
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    policy = assert_secure(response.headers, path)
    if "text/html" not in response.headers.get("content-type", ""):
        assert policy == "default-src 'none'; frame-ancestors 'none'"


@pytest.mark.parametrize("path", HTML_PAGES)
def test_every_html_page_has_its_own_policy_that_forbids_framing(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = assert_secure(response.headers, path)
    assert "base-uri 'none'" in policy and "default-src" in policy


def test_the_oauth2_redirect_page_runs_only_its_own_inline_script(client: TestClient) -> None:
    response = client.get("/docs/oauth2-redirect")
    policy = response.headers["content-security-policy"]
    (script,) = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert policy.startswith(f"default-src 'none'; script-src 'sha256-{digest}';")
    assert "unsafe-inline" not in policy


def test_refusals_below_the_app_carry_the_headers(tiny_model_repository: Path) -> None:
    """408/431 and the 400 for a malformed request are written by the protocol class, not the app."""
    settings = Settings(model_repository=tiny_model_repository, threads=1, port=free_port(),
                        header_timeout_s=0.5, max_header_bytes=2048)
    options = {**uvicorn_options(settings), "log_level": "error",
               "http": GuardedHttpToolsProtocol.with_limits(0.5, 2048)}

    def exchange(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", settings.port), timeout=10) as sock:
            sock.sendall(request)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    with serving(create_app(settings), 60, **options):
        for request, status in [(b"NOT HTTP AT ALL\r\n\r\n", b"400"), (b"GET / HTTP/1.1\r\nX: " + b"a" * 4096, b"431"),
                                (b"GET / HTTP/1.1\r\nHost: x\r\n", b"408")]:
            head = exchange(request).split(b"\r\n\r\n")[0].decode("latin-1").lower()
            assert head.split()[1] == status.decode(), head
            for line in ("x-content-type-options: nosniff", "x-frame-options: deny", "referrer-policy: no-referrer",
                         "content-security-policy: default-src 'none'; frame-ancestors 'none'"):
                assert line in head.splitlines(), (status, head)
