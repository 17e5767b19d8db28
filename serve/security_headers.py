"""Browser security headers on every osr-serve response (issue 20).

- ``X-Content-Type-Options: nosniff``: a browser never guesses another type than the one sent
  (an uploaded file's name echoed in a JSON error is never run as HTML);
- ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: no page of the service can be
  framed by another site (clickjacking on the demo page or /docs);
- ``Referrer-Policy: no-referrer``;
- ``Content-Security-Policy``: the HTML pages (/, /docs, /redoc, /docs/oauth2-redirect) set their
  own, each with ``frame-ancestors 'none'``; every other response gets ``default-src 'none';
  frame-ancestors 'none'`` (JSON and text are never documents that load anything).

The middleware adds them to responses of every route, error and refusal of the ASGI app; the
refusals written below it (408 and 431 for headers, the 400 for malformed requests,
http_protocol.py) carry the same headers.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

FRAME_ANCESTORS = "frame-ancestors 'none'"
API_CSP = f"default-src 'none'; {FRAME_ANCESTORS}"
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_CSP = b"content-security-policy"


class SecurityHeadersMiddleware:
    """Adds SECURITY_HEADERS to every HTTP response, and a CSP to those that have none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                if _CSP not in present:
                    headers.append((_CSP, API_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
