"""/docs is Swagger UI from the node's own files: no CDN (an air-gapped plant network)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re

import httpx

from node.swaggerui import INLINE_SCRIPT
from tests.inprocess import InProcessApi

URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def test_docs_references_only_local_urls_and_they_answer() -> None:
    app = InProcessApi().app

    async def main() -> None:
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            page = await client.get("/docs")
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            html = page.text
            assert "cdn" not in html.lower() and "http" not in html.lower()
            urls = URL.findall(html)
            assert sorted(urls) == ["/docs/static/favicon.png", "/docs/static/swagger-ui-bundle.js",
                                    "/docs/static/swagger-ui.css"]
            types = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
            for url in urls:
                resp = await client.get(url)
                assert resp.status_code == 200, url
                assert types[url[url.rindex("."):]] in resp.headers["content-type"], url
                assert len(resp.content) > 1000, url
            js = await client.get("/docs/static/swagger-ui-bundle.js")
            assert "SwaggerUIBundle" in js.text
            # The page loads the description it names, from this node.
            assert "url: '/openapi.json'" in html
            assert (await client.get("/openapi.json")).status_code == 200
            # Its CSP allows its own origin and its one inline script, by hash, nothing else.
            csp = page.headers["content-security-policy"]
            (script,) = INLINE_SCRIPT.findall(html)
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            script_src = next(d for d in csp.split("; ") if d.startswith("script-src"))
            assert script_src == f"script-src 'self' 'sha256-{digest}'"
            assert "default-src 'self'" in csp and "connect-src 'self'" in csp
            # FastAPI's CDN page for ReDoc is gone, not left behind.
            assert (await client.get("/redoc")).status_code == 404

    asyncio.run(main())
