"""Swagger UI at ``/docs``, served by the node itself: no CDN.

FastAPI's default ``/docs`` page loads Swagger UI from cdn.jsdelivr.net: a blank page on a
plant network with no internet. The JS, CSS and favicon come from the ``fastapi-offline``
package (Swagger UI 5, MIT/Apache-2.0), served under ``/docs/static/``. The page's one inline
script (the ``SwaggerUIBundle`` call) is allowed by its hash in the page's
Content-Security-Policy, so the page loads nothing from another origin and runs no other
inline script.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(fastapi_offline.__file__).resolve().parent / "static"
PREFIX = "/docs/static"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def docs_csp(html: str) -> str:
    """A CSP for ``html``: own origin only, plus the hash of each of its inline scripts."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in INLINE_SCRIPT.findall(html))
    # Swagger UI sets style attributes from script: styles need 'unsafe-inline' (no script).
    return (f"default-src 'self'; script-src 'self' {hashes}; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def add_swagger_ui(app: FastAPI, path: str = "/docs") -> None:
    """Serve Swagger UI for ``app``'s OpenAPI description at ``path``, from local files.

    Build ``app`` with ``docs_url=None`` (and ``redoc_url=None``) so FastAPI's CDN pages are
    not registered.
    """
    openapi_url = app.openapi_url or "/openapi.json"
    html = bytes(get_swagger_ui_html(
        openapi_url=openapi_url, title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{PREFIX}/favicon.png",
        swagger_ui_parameters=app.swagger_ui_parameters).body).decode()
    headers = {"Content-Security-Policy": docs_csp(html), "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer"}

    @app.get(path, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    app.mount(PREFIX, StaticFiles(directory=STATIC), name="swagger-ui")
