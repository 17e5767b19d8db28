"""The API key (issue 10): a key that is given but blank refuses to start instead of switching
authentication off, keys compare as UTF-8 bytes, and --protect-all also guards /metrics and the docs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from osr.serve.app import create_app
from osr.serve.server import main
from osr.serve.settings import Settings

KEY = "clé-ключ"  # not latin-1 encodable as a whole; "é" is, with other bytes than in UTF-8
PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
DOCS_AND_METRICS = ("/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/", "/static/demo.css")
MODEL_ROUTES = ("/v2", "/v2/models/tiny", "/v2/models/tiny/versions/1", "/v2/models/tiny/ready",
                "/v2/models/tiny/config")


# a setup that should have been refused must fail the test, not start serving
pytestmark = pytest.mark.usefixtures("never_serve")


def wait_ready(client: TestClient, headers: dict | None = None) -> None:
    deadline = time.monotonic() + 30
    while client.get("/readyz", headers=headers).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.fixture(scope="module")
def secured(tiny_model_repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=tiny_model_repository, threads=1, api_key=SecretStr(KEY))
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def protect_all(tiny_model_repository: Path) -> Iterator[TestClient]:
    settings = Settings(model_repository=tiny_model_repository, threads=1, api_key=SecretStr(KEY), protect_all=True)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


# -- a blank key refuses to start -----------------------------------------------------------------

BLANK_KEY = ("osr-serve: invalid settings: api_key: Value error, the API key is empty or only whitespace; set a "
             "key, or unset OSR_API_KEY and drop --api-key-file to serve without one")


@pytest.mark.parametrize("content", ["", "\n", "   \t\n"], ids=["empty", "newline", "spaces"])
def test_blank_api_key_file_refuses_to_start(capsys, monkeypatch, tiny_model_repository, tmp_path, content) -> None:
    monkeypatch.delenv("OSR_API_KEY", raising=False)
    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(tiny_model_repository), "--api-key-file", str(key_file)])
    assert info.value.code == 2
    assert capsys.readouterr().err == BLANK_KEY + "\n"


@pytest.mark.parametrize("value", ["", "   ", "\t"], ids=["empty", "spaces", "tab"])
def test_blank_api_key_variable_refuses_to_start(capsys, monkeypatch, tiny_model_repository, value) -> None:
    monkeypatch.setenv("OSR_API_KEY", value)
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(tiny_model_repository)])
    assert info.value.code == 2
    assert capsys.readouterr().err == BLANK_KEY + "\n"


def test_key_that_http_cannot_carry_refuses_to_start(capsys, monkeypatch, tiny_model_repository) -> None:
    monkeypatch.setenv("OSR_API_KEY", "abc\ndef")
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(tiny_model_repository)])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("osr-serve: invalid settings: api_key: Value error, the API key holds control "
                                       "characters, which an HTTP header cannot carry\n")


def test_unreadable_key_file_refuses_to_start(capsys, monkeypatch, tiny_model_repository, tmp_path) -> None:
    monkeypatch.delenv("OSR_API_KEY", raising=False)
    key_file = tmp_path / "key"
    key_file.write_bytes(b"\xff\xfe not utf-8")
    for path in (key_file, tmp_path / "missing"):
        with pytest.raises(SystemExit) as info:
            main(["--model-repository", str(tiny_model_repository), "--api-key-file", str(path)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"osr-serve: cannot read the API key file {path}: ") and err.count("\n") == 1, err


def test_surrounding_whitespace_of_a_key_is_dropped(tiny_model_repository, tmp_path) -> None:
    assert Settings(model_repository=tiny_model_repository, api_key=" k3y\n").api_key.get_secret_value() == "k3y"


def test_protect_all_without_a_key_refuses_to_start(capsys, monkeypatch, tiny_model_repository) -> None:
    monkeypatch.delenv("OSR_API_KEY", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["--model-repository", str(tiny_model_repository), "--protect-all"])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("osr-serve: invalid settings: Value error, protect_all needs an API key "
                                       "(OSR_API_KEY or --api-key-file)\n")


# -- UTF-8 keys -----------------------------------------------------------------------------------

def raw_status(app, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """Status of a GET whose header bytes reach the app exactly as given (TestClient re-encodes
    header values, so it cannot send latin-1 bytes)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "headers": headers}
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


@pytest.mark.parametrize("header", [b"x-api-key", b"authorization"])
def test_non_ascii_key_matches_when_sent_as_utf8(secured: TestClient, header: bytes) -> None:
    def status(key: bytes) -> int:
        value = key if header == b"x-api-key" else b"Bearer " + key
        return raw_status(secured.app, "/v2/models/tiny", [(header, value)])

    assert status(KEY.encode("utf-8")) == 200
    assert status(KEY.encode("utf-8")[:-1]) == 401
    assert status(b"cl\xe9-" + KEY.encode("utf-8")[5:]) == 401  # the same text with a latin-1 "e acute"


def test_latin1_bytes_of_a_latin1_key_do_not_match(tiny_model_repository: Path) -> None:
    """The issue's finding: a key "clé" matched only the latin-1 bytes cl\\xe9, never its UTF-8."""
    settings = Settings(model_repository=tiny_model_repository, threads=1, api_key=SecretStr("clé"))
    with TestClient(create_app(settings)) as client:
        assert raw_status(client.app, "/v2", [(b"x-api-key", "clé".encode("utf-8"))]) == 200
        assert raw_status(client.app, "/v2", [(b"x-api-key", "clé".encode("latin-1"))]) == 401


# -- which routes are open ------------------------------------------------------------------------

def test_probes_docs_and_metrics_are_open_by_default(secured: TestClient) -> None:
    for path in PROBES + DOCS_AND_METRICS:
        assert secured.get(path).status_code == 200, path
    for path in MODEL_ROUTES:
        response = secured.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    assert secured.post("/v1/classify").status_code == 401
    assert secured.post("/v2/models/tiny/infer", content=b"{}").status_code == 401


def test_protect_all_guards_docs_and_metrics_but_not_probes(protect_all: TestClient) -> None:
    for path in PROBES:
        assert protect_all.get(path).status_code == 200, path
    key = {"x-api-key": KEY.encode()}
    for path in DOCS_AND_METRICS + MODEL_ROUTES:
        response = protect_all.get(path)
        assert response.status_code == 401, path
        assert response.json() in ({"detail": "missing API key: send it in the X-API-Key header or as "
                                              "'Authorization: Bearer <key>'"},
                                   {"error": "missing API key: send it in the X-API-Key header or as "
                                             "'Authorization: Bearer <key>'"})
        assert protect_all.get(path, headers={"x-api-key": b"wrong"}).status_code == 401, path
        assert protect_all.get(path, headers=key).status_code == 200, path
    assert protect_all.get("/nowhere").status_code == 401  # no route map for guessers either
    assert protect_all.get("/nowhere", headers=key).status_code == 404
