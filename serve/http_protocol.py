"""Limits on a request's line and headers, below the ASGI app: uvicorn's httptools protocol with
a deadline for the headers (408) and a cap on their size (431).

uvicorn has neither. Its keep-alive timeout only runs between requests and is reset by every
byte, so a client that sends half a header holds a connection (and a file descriptor) forever;
the httptools parser takes headers of any size (and joins a long value piece by piece). ASGI
middleware cannot help, as the app only sees a request once its headers are complete; the body
deadline is the app's (http_layer.BodyLimitMiddleware).

What is counted: the deadline runs from the connection opening, or from the first byte of each
later request on a kept-alive connection, to the end of the headers. The cap counts the bytes
received while the headers are incomplete (so memory stays within the cap plus one read of at
most 256 KiB) and, exactly, the request line and header fields once they are parsed.

osr-serve passes this class to uvicorn by its import path (server.PROTOCOL); worker processes
import it and read the limits from OSR_HEADER_TIMEOUT_S / OSR_MAX_HEADER_BYTES, which osr-serve
exports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from osr.serve.security_headers import API_CSP, SECURITY_HEADERS
from osr.serve.settings import Settings

HEADER_TIMEOUT_ENV = "OSR_HEADER_TIMEOUT_S"
MAX_HEADER_BYTES_ENV = "OSR_MAX_HEADER_BYTES"

log = logging.getLogger("osr.serve")


class _HeadersTooLarge(Exception):
    """Raised from a parser callback to stop parsing; httptools reports it as a parser error."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # None: from the environment (as osr-serve exports it), else the Settings default
    header_timeout_s: float | None = None
    max_header_bytes: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout_s = self.header_timeout_s or float(
            os.environ.get(HEADER_TIMEOUT_ENV) or Settings.model_fields["header_timeout_s"].default)
        self._max_bytes = self.max_header_bytes or int(
            os.environ.get(MAX_HEADER_BYTES_ENV) or Settings.model_fields["max_header_bytes"].default)
        self._awaiting_headers = True
        self._received = 0  # bytes read while the headers were incomplete
        self._parsed = 0  # request line and header fields of the current request
        self._header_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    @classmethod
    def with_limits(cls, header_timeout_s: float, max_header_bytes: int) -> type[GuardedHttpToolsProtocol]:
        """A subclass with fixed limits (an in-process server, as in the tests)."""
        return type(cls.__name__, (cls,), {"header_timeout_s": header_timeout_s,
                                           "max_header_bytes": max_header_bytes})

    # -- the deadline ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self._timeout_s, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm()  # a pipelined request waits for the previous response; its turn comes
            return
        self._refuse(408, f"request headers did not arrive within {self._timeout_s:g} s")

    # -- the size cap ---------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._received += len(data)
            if self._header_timer is None:
                self._arm()
        super().data_received(data)
        if self._awaiting_headers and self._received > self._max_bytes and not self.transport.is_closing():
            self._refuse(431, self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._parsed = 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._parsed += size
        if self._parsed > self._max_bytes:
            self._refusal = (431, self._too_large())
            raise _HeadersTooLarge

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._received = 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True  # the next request's deadline starts with its first byte
        self._received = 0

    def send_400_response(self, msg: str) -> None:
        if self._refusal is not None:  # our callback stopped the parser
            self._refuse(*self._refusal)
        else:  # a malformed request (uvicorn has logged it): its 400, with the security headers
            self._refuse(400, msg, logged=True)

    def _too_large(self) -> str:
        return f"request line and headers are larger than the limit of {self._max_bytes} bytes"

    # -- answering ------------------------------------------------------------------------------

    def _refuse(self, status: int, message: str, logged: bool = False) -> None:
        """Answer with a JSON error and close: the rest of the request is never read."""
        self._disarm()
        self._awaiting_headers = False
        if not logged:
            client = "%s:%d" % self.client if self.client else "client"
            log.warning("%s: %d, %s", client, status, message)
        body = json.dumps({"detail": message}).encode()
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [name + b": " + value + b"\r\n" for name, value in SECURITY_HEADERS]
        head += [b"content-security-policy: " + API_CSP.encode() + b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"connection: close\r\n", b"\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
