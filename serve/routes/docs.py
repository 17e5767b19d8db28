"""/docs (Swagger UI), /redoc and /static: served from files installed with the package, no CDN.

Swagger UI and ReDoc come from the ``fastapi-offline`` package (its ``static/`` folder: the
swagger-ui-dist bundle and redoc.standalone.js), mounted at /static/vendor; osr's own assets (the
demo page, the favicon) are the package data in serve/static/, mounted at /static. The pages
reference nothing outside the server (tests/test_docs_offline.py), so /docs works offline, and
their Content-Security-Policy keeps the browser on this server: ReDoc's bundle would otherwise
fetch the Redocly logo from cdn.redoc.ly (tests/test_demo_page.py blocks and counts such requests).
Every page's policy also forbids framing it (``frame-ancestors 'none'``); the OAuth2 redirect
page's one inline script is allowed by its hash, nothing else runs there.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from osr.serve.security_headers import FRAME_ANCESTORS

STATIC_URL = "/static"
VENDOR_URL = "/static/vendor"
FAVICON = "favicon.svg"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Swagger UI starts from an inline script and uses data: images; ReDoc injects styles and runs a
# blob: web worker. Nothing may come from another origin.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
            f"base-uri 'none'; {FRAME_ANCESTORS}")


def inline_scripts_csp(response: HTMLResponse) -> str:
    """A policy for a page that runs only its own inline scripts, each allowed by its sha256."""
    hashes = [base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
              for script in re.findall(r"<script>(.*?)</script>", response.body.decode(), re.DOTALL)]
    sources = " ".join(f"'sha256-{digest}'" for digest in hashes)
    return f"default-src 'none'; script-src {sources}; base-uri 'none'; {FRAME_ANCESTORS}"


def same_origin_only(response: HTMLResponse, policy: str = DOCS_CSP) -> HTMLResponse:
    response.headers["Content-Security-Policy"] = policy
    return response


def vendor_assets() -> Path:
    """fastapi-offline's static folder (swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js)."""
    return Path(str(files("fastapi_offline") / "static"))


def own_assets() -> Path:
    return Path(str(files("osr.serve") / "static"))


def docs_router(title: str, openapi_url: str) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return same_origin_only(get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{root}{VENDOR_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{VENDOR_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_URL}/{FAVICON}",
            # no badge that asks validator.swagger.io about the schema
            swagger_ui_parameters={"validatorUrl": None},
        ))

    redirect_page = get_swagger_ui_oauth2_redirect_html()
    redirect_csp = inline_scripts_csp(redirect_page)

    @router.get(OAUTH2_REDIRECT_URL)
    async def swagger_ui_redirect() -> HTMLResponse:
        return same_origin_only(HTMLResponse(redirect_page.body), redirect_csp)

    @router.get("/redoc")
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return same_origin_only(get_redoc_html(
            openapi_url=root + openapi_url, title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{VENDOR_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{STATIC_URL}/{FAVICON}", with_google_fonts=False,
        ))

    return router


def mount_static(app: FastAPI) -> None:
    """The two asset folders; the more specific mount first, since mounts match by prefix."""
    app.mount(VENDOR_URL, StaticFiles(directory=vendor_assets()), name="vendor")
    app.mount(STATIC_URL, StaticFiles(directory=own_assets()), name="static")


def install_openapi(app: FastAPI, extra_models: Sequence[type[BaseModel]] = ()) -> None:
    """/openapi.json without FastAPI's default 422 body (a list of validation errors), which
    osr-serve never sends: its handler answers {"detail": "..."} (400 {"error": "..."} on /v2), and
    every route declares its own error codes (serve/routes/schemas.py ``error_responses``).

    ``extra_models``: models that routes reference by hand (``#/components/schemas/<Name>``, e.g.
    a request body the route reads itself), added to the components.
    """

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes, tags=app.openapi_tags, servers=app.servers)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    default = operation.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in str(default.get("content", {})):
                        del operation["responses"]["422"]
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            if extra_models:
                _, definitions = models_json_schema([(model, "validation") for model in extra_models],
                                                    ref_template="#/components/schemas/{model}")
                for name, definition in definitions.get("$defs", {}).items():
                    components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
