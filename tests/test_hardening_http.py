"""Slow clients, big headers and shutdown (issue 10), over raw sockets on 127.0.0.1 against a real
uvicorn running osr-serve's protocol class: half-sent headers and bodies are cut with 408,
oversized headers get 431, requests cut by shutdown get 503 with Retry-After, and a real
osr-serve process wires all of it from its flags and exits 0 on SIGTERM."""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from osr.serve.app import create_app
from osr.serve.http_protocol import GuardedHttpToolsProtocol
from osr.serve.in_thread import free_port, serving
from osr.serve.predictor import Predictor
from osr.serve.server import uvicorn_options
from osr.serve.settings import Settings

pytest.importorskip("httptools", reason="the header deadline and cap are httptools-protocol features")

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
MAX_HEADER_BYTES = 8192


def running(app, settings: Settings, protocol: type | None = None) -> Iterator[tuple[str, uvicorn.Server]]:
    options = {**uvicorn_options(settings), "log_level": "error"}
    options["http"] = protocol or GuardedHttpToolsProtocol.with_limits(settings.header_timeout_s,
                                                                       settings.max_header_bytes)
    return serving(app, 60, **options)


@pytest.fixture(scope="module")
def settings(tiny_model_repository: Path) -> Settings:
    return Settings(model_repository=tiny_model_repository, threads=1, port=free_port(),
                    header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S,
                    max_header_bytes=MAX_HEADER_BYTES)


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[tuple[str, uvicorn.Server]]:
    with running(create_app(settings), settings) as served:
        yield served


def connect(settings: Settings) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", settings.port), timeout=10)
    sock.settimeout(10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response read until the server closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def send_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> None:
    """Send chunk by chunk, stopping as soon as the server answers (so that it has read all we sent
    when it closes, and the close is a FIN, not a reset that would drop its answer)."""
    for chunk in chunks:
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return
        if select.select([sock], [], [], 0.05)[0]:
            return


# -- headers --------------------------------------------------------------------------------------

def test_half_sent_headers_get_408(server, settings: Settings) -> None:
    with connect(settings) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - start
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {"detail": f"request headers did not arrive within {HEADER_TIMEOUT_S:g} s"}
    assert HEADER_TIMEOUT_S * 0.9 <= elapsed < HEADER_TIMEOUT_S + 3


def test_silent_connection_gets_408(server, settings: Settings) -> None:
    with connect(settings) as sock:
        assert read_response(sock)[0] == 408


def test_trickled_headers_are_cut_at_the_deadline(server, settings: Settings) -> None:
    """A byte every 0.1 s: each byte would reset a keep-alive style idle timer, not this deadline."""
    with connect(settings) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(50):
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
            if select.select([sock], [], [], 0.1)[0]:
                break
        status, _, _ = read_response(sock)
    assert status == 408 and time.monotonic() - start < HEADER_TIMEOUT_S + 3


def test_kept_alive_connection_gets_a_fresh_deadline(server, settings: Settings) -> None:
    with connect(settings) as sock:
        time.sleep(HEADER_TIMEOUT_S * 0.6)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 200"), response
        time.sleep(HEADER_TIMEOUT_S * 0.6)  # idle: uvicorn's keep-alive (5 s) applies, not the deadline
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert read_response(sock)[0] == 408


@pytest.mark.parametrize("size", [1_000_000, 30_000_000], ids=["1MB", "30MB"])
def test_oversized_headers_get_431(server, settings: Settings, size: int) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
        for _ in range(size // 4096):
            yield b"a" * 4096

    with connect(settings) as sock:
        send_until_answered(sock, chunks())
        status, headers, body = read_response(sock)
    assert status == 431 and headers["connection"] == "close"
    assert json.loads(body) == {"detail": f"request line and headers are larger than the limit of "
                                          f"{MAX_HEADER_BYTES} bytes"}


def test_oversized_headers_in_one_read_get_431(server, settings: Settings) -> None:
    """Headers that arrive complete in a single read are measured exactly, field by field."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES) + b"\r\n\r\n"
    with connect(settings) as sock:
        sock.sendall(request)
        assert read_response(sock)[0] == 431


def test_many_headers_under_the_cap_are_fine(server, settings: Settings) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(MAX_HEADER_BYTES // 200)}
    assert httpx.get(f"http://127.0.0.1:{settings.port}/healthz", headers=headers).status_code == 200


def test_slow_sockets_are_released(server, settings: Settings) -> None:
    """40 half-open requests: each is answered and closed by the deadline; the server stays healthy."""
    _, uvicorn_server = server
    sockets = [connect(settings) for _ in range(40)]
    try:
        for sock in sockets:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.1)
        assert len(uvicorn_server.server_state.connections) >= 40
        assert [read_response(sock)[0] for sock in sockets] == [408] * 40
    finally:
        for sock in sockets:
            sock.close()
    deadline = time.monotonic() + 5
    while len(uvicorn_server.server_state.connections) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(uvicorn_server.server_state.connections) == 0
    assert httpx.get(f"http://127.0.0.1:{settings.port}/readyz").status_code == 200


# -- bodies ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "content_type", "key"), [
    ("/v2/models/tiny/infer", "application/json", "error"),
    ("/v1/classify", "multipart/form-data; boundary=b0", "detail"),
])
def test_half_sent_body_gets_408(server, settings: Settings, path: str, content_type: str, key: str) -> None:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 5000\r\n\r\n").encode()
    with connect(settings) as sock:
        start = time.monotonic()
        sock.sendall(head + b"--b0\r\n" + b"x" * 100)
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - start
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {key: f"request body did not arrive within {BODY_TIMEOUT_S:g} s of its headers"}
    assert BODY_TIMEOUT_S * 0.9 <= elapsed < BODY_TIMEOUT_S + 3


def test_slow_but_steady_body_within_the_deadline_is_served(server, settings: Settings) -> None:
    request = {"inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}]}
    body = json.dumps(request).encode()
    head = f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    with connect(settings) as sock:
        sock.sendall(head)
        for start in range(0, len(body), len(body) // 4 + 1):
            time.sleep(BODY_TIMEOUT_S / 8)
            sock.sendall(body[start:start + len(body) // 4 + 1])
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


# -- shutdown -------------------------------------------------------------------------------------

def test_request_cut_by_shutdown_gets_503(tiny_model_repository: Path) -> None:
    """uvicorn cancels requests still running when the grace period ends: 503 + Retry-After, not 500."""
    settings = Settings(model_repository=tiny_model_repository, threads=1, port=free_port(),
                        graceful_shutdown_s=0.3)
    started = threading.Event()

    class SlowPredictor(Predictor):
        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            if batch.shape[0] == 3:  # the test's request, not the warm-up
                started.set()
                time.sleep(2)
            return super().run(batch)

    app = create_app(settings, predictor_factory=lambda: SlowPredictor.from_repository(tiny_model_repository,
                                                                                        threads=1))
    responses: list[httpx.Response] = []
    request = {"inputs": [{"name": "images", "shape": [3, 32, 32, 3], "datatype": "UINT8", "data": [0] * 9216}]}
    with running(app, settings) as (url, server):
        client = threading.Thread(target=lambda: responses.append(
            httpx.post(f"{url}/v2/models/tiny/infer", json=request, timeout=30)))
        client.start()
        assert started.wait(20)
        server.should_exit = True
        client.join(30)
    [response] = responses
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"error": "the server is shutting down and could not finish this request in its "
                                        "grace period; retry"}


# -- the real process -----------------------------------------------------------------------------

def test_osr_serve_process_applies_the_limits_and_exits_0(tiny_model_repository: Path, osr_serve_process) -> None:
    process, port = osr_serve_process("--log-level", "warning", "--header-timeout-s", "0.5", "--max-header-bytes",
                                      "4096", "--body-timeout-s", "0.5", "--threads", "1")
    settings_like = Settings(model_repository=tiny_model_repository, port=port)
    with connect(settings_like) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert read_response(sock)[0] == 408
    with connect(settings_like) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n")
        assert read_response(sock)[0] == 431
    with connect(settings_like) as sock:
        sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\n{")
        assert read_response(sock)[0] == 408
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
