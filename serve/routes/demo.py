"""GET /: a small demo page (serve/static/demo.html, .js, .css; nothing loaded from elsewhere).

The page sends the picked or dropped images to /v1/classify and shows, per image, the class or
unknown, the p-value and the top-k, next to the model's card from /v1/model.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from osr.serve.routes.docs import own_assets, same_origin_only
from osr.serve.security_headers import FRAME_ANCESTORS

PAGE = "demo.html"
# no inline script or style on this page; thumbnails are blob: URLs of the picked files
DEMO_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            f"connect-src 'self'; base-uri 'none'; {FRAME_ANCESTORS}")


def demo_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def demo_page() -> HTMLResponse:
        return same_origin_only(HTMLResponse((own_assets() / PAGE).read_text(encoding="utf-8")), DEMO_CSP)

    return router
