"""/docs renders Swagger UI in chromium from the node's own files, under the page's CSP."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from tests.browser.conftest import new_page, screenshot
from tests.inprocess import InProcessApi


def test_docs_renders_with_no_other_origin_and_no_csp_error(browser: Any) -> None:
    app = InProcessApi().app
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        page, errors = new_page(browser)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"http://127.0.0.1:{port}/docs")
        page.wait_for_selector(".swagger-ui .opblock")
        assert page.inner_text(".swagger-ui .info .title").startswith("ledger node API")
        assert page.locator(".swagger-ui .opblock").count() >= 8
        screenshot(page, "swagger-ui")
        assert errors == []  # a CSP violation is a console error
        origin = f"http://127.0.0.1:{port}/"
        assert all(url.startswith(origin) for url in requests), requests
        page.context.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
