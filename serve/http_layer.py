"""HTTP plumbing of osr-serve shared by every route: the request body's size limit and deadline,
503 for requests cut by shutdown, error bodies in the shape each API family expects ({"detail"}
for /v1 and the rest, {"error"} for /v2, the Open Inference Protocol's), the exception handlers,
and the API-key guards.

Limits enforced below the ASGI app (slow or oversized request line and headers) live in
http_protocol.py; a request only reaches this module once its headers are complete."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from osr.serve import oip
from osr.serve.decode_gate import Overloaded
from osr.serve.security_headers import SecurityHeadersMiddleware
from osr.serve.settings import Settings

log = logging.getLogger("osr.serve")
CLOSE = {"Connection": "close"}  # the rest of a refused body is never read: the connection cannot be reused


def install_http_guards(app: FastAPI, settings: Settings) -> None:
    """The body limit and deadline, --protect-all's key check, 503 on shutdown, and the security
    headers on all of their answers, in that order from the inside out (add the metrics middleware
    after this, so it counts their answers)."""
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if settings.protect_all and settings.api_key is not None:
        app.add_middleware(ProtectAllMiddleware, expected=_expected_key(settings))
    app.add_middleware(ShutdownMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)


# -- request body limit and deadline --------------------------------------------------------------

class BodyReadError(HTTPException):
    """Reading the request body hit a limit; answered at once and the connection closed."""


class BodyTooLarge(BodyReadError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes", headers=CLOSE)


class BodyTimeout(BodyReadError):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"request body did not arrive within {timeout_s:g} s of its headers", headers=CLOSE)


class BodyLimitMiddleware:
    """413 when Content-Length is over the limit (nothing read), or as soon as the streamed body is;
    408 when the body has not fully arrived ``timeout_s`` after the request reached the app."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(scope["path"], BodyTooLarge(self.max_bytes))(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        received = 0
        body_done = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or deadline is None:  # after the body: http.disconnect waits, no deadline
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
                except asyncio.TimeoutError:
                    raise BodyTimeout(self.timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyReadError as exc:  # raised where no exception handler caught it
            if started:
                raise
            await error_response(scope["path"], exc)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# -- shutdown -------------------------------------------------------------------------------------

SHUTTING_DOWN = "the server is shutting down and could not finish this request in its grace period; retry"


class ShutdownMiddleware:
    """503 + Retry-After for requests cut by shutdown.

    When --graceful-shutdown-s runs out, uvicorn cancels the requests still running; uncaught,
    the cancellation becomes uvicorn's bare 500 and a traceback. Nothing else cancels a request
    task, so a CancelledError here means exactly that cut."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            log.warning("%s %s cut by shutdown after the grace period", scope.get("method"), scope["path"])
            if not started:  # the task ends here: nothing awaits it, so the cancellation is spent
                cut = HTTPException(503, SHUTTING_DOWN, headers={"Retry-After": "1", **CLOSE})
                await error_response(scope["path"], cut)(scope, receive, send)


# -- errors ---------------------------------------------------------------------------------------

# Retry-After of a 503 for load (the decode budget, a request's deadline): long enough for the
# decodes in flight to finish, short enough for a client to come back soon
OVERLOAD_RETRY_AFTER_S = 5


def overloaded(message: str) -> HTTPException:
    """The 503 of a request refused for load."""
    return HTTPException(503, message, headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)})


def is_oip_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_response(path: str, exc: HTTPException) -> JSONResponse:
    key = "error" if is_oip_path(path) else "detail"
    return JSONResponse({key: str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        status = 400 if is_oip_path(request.url.path) else 422
        return error_response(request.url.path, HTTPException(status, _describe_validation(exc)))

    @app.exception_handler(oip.OipError)
    async def protocol_error(request: Request, exc: oip.OipError) -> Response:
        return error_response(request.url.path, HTTPException(exc.status, str(exc)))

    @app.exception_handler(Overloaded)
    async def decode_budget_full(request: Request, exc: Overloaded) -> Response:
        metrics = getattr(getattr(request.app.state, "service", None), "metrics", None)
        if metrics is not None:
            metrics.overloaded.labels("decode_budget").inc()
        return error_response(request.url.path, overloaded(str(exc)))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up mid-upload (a load generator stopping, a cancelled upload): nobody
        # reads the answer, and it is not a server error worth a traceback.
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, HTTPException(500, f"internal server error: {type(exc).__name__}"))


# -- API key --------------------------------------------------------------------------------------

MISSING_KEY = "missing API key: send it in the X-API-Key header or as 'Authorization: Bearer <key>'"
# always open, key or not: liveness and readiness probes
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key of the X-API-Key header, else of 'Authorization: Bearer', as the raw bytes sent."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization":
            scheme, _, credentials = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = credentials.strip()
    return bearer


def key_problem(headers: list[tuple[bytes, bytes]], expected: bytes) -> HTTPException | None:
    """None when the request carries the key, else the 401 to answer.

    Both sides are bytes: the configured key as UTF-8, the header as sent (Starlette decodes
    header values as latin-1, which would make a UTF-8 key unmatchable)."""
    key = presented_key(headers)
    challenge = {"WWW-Authenticate": "Bearer"}
    if not key:
        return HTTPException(401, MISSING_KEY, headers=challenge)
    if not hmac.compare_digest(key, expected):
        return HTTPException(401, "invalid API key", headers=challenge)
    return None


def _expected_key(settings: Settings) -> bytes | None:
    return settings.api_key.get_secret_value().encode("utf-8") if settings.api_key else None


def api_key_guard(settings: Settings) -> Callable[[Request], None]:
    """Route dependency: the /v1 and /v2 model routes need the key when one is configured."""
    expected = _expected_key(settings)

    def check(request: Request) -> None:
        if expected is None:
            return
        problem = key_problem(request.scope["headers"], expected)
        if problem is not None:
            raise problem

    return check


class ProtectAllMiddleware:
    """--protect-all: every path but the health probes needs the key (/metrics, /docs, /redoc,
    /openapi.json, the demo page, unknown paths), checked before routing."""

    def __init__(self, app: ASGIApp, expected: bytes) -> None:
        self.app = app
        self.expected = expected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in PROBE_PATHS:
            problem = key_problem(scope["headers"], self.expected)
            if problem is not None:
                await error_response(scope["path"], problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
