"""HTTP plumbing of osr-serve shared by every route: the request body limit, error bodies in the
shape each API family expects ({"detail"} for /v1 and the rest, {"error"} for /v2, the Open
Inference Protocol's), the exception handlers, and the API-key guard."""

from __future__ import annotations

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
from osr.serve.settings import Settings

log = logging.getLogger("osr.serve")


# -- request body limit ---------------------------------------------------------------------------

class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """413 when Content-Length is over the limit (nothing read), or as soon as the streamed body is."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(scope["path"], BodyTooLarge(self.max_bytes))(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no exception handler caught it
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


# -- errors ---------------------------------------------------------------------------------------

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
        return error_response(request.url.path, HTTPException(400, str(exc)))

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

def api_key_guard(settings: Settings) -> Callable[[Request], None]:
    expected = settings.api_key.get_secret_value().encode() if settings.api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        key = request.headers.get("x-api-key")
        if key is None:
            scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
            key = credentials.strip() if scheme.lower() == "bearer" else None
        challenge = {"WWW-Authenticate": "Bearer"}
        if not key:
            raise HTTPException(401, "missing API key: send it in the X-API-Key header or as "
                                     "'Authorization: Bearer <key>'", headers=challenge)
        if not hmac.compare_digest(key.encode(), expected):
            raise HTTPException(401, "invalid API key", headers=challenge)

    return check
