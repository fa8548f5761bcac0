"""Browser tests of the explorer: Playwright driving chromium, headless.

The browser is Debian's /usr/bin/chromium where present, else Playwright's own download, or
LEDGER_CHROMIUM (tests/browser/chromium.py); `make test` installs one first if none is there.
The flags keep chromium off the network: this machine has no internet, and without them
chromium keeps trying to reach Google's services.
Screenshots go to tests/browser/artifacts/ (ignored by git).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.chromium import describe_missing, find_chromium

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
EXPLORER = Path(__file__).resolve().parents[2] / "node" / "explorer"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}


# Module scope, not session: while Playwright's sync API is open, its event loop counts as
# running in this thread, and a later test's asyncio.run() would fail in the same process.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = find_chromium()
    if chromium is None:  # a failure, not a skip: CI must run these tests
        pytest.fail(describe_missing())
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageErrors(list[str]):
    """Uncaught errors and console errors of a page: a test fails if any appear."""


def new_page(browser: Any, viewport: dict[str, int] = DESKTOP) -> tuple[Any, PageErrors]:
    page = browser.new_context(viewport=viewport, accept_downloads=True).new_page()
    page.set_default_timeout(20_000)
    errors = PageErrors()
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error"
            else None)
    return page, errors


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")
    page.screenshot(path=str(path), full_page=True)
    return path
