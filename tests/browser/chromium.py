"""Which chromium the browser tests drive, shared by conftest.py and `make test`.

In order: ``LEDGER_CHROMIUM`` if set (and only it: an explicit choice), Debian's
``/usr/bin/chromium``, then the browser Playwright downloaded itself (`playwright install
chromium`, in ``~/.cache/ms-playwright``). ``python -m tests.browser.chromium`` prints the path
found, or exits 1 with nothing printed; `make test` uses it to decide whether to install one.
"""

from __future__ import annotations

import os
import sys

DEBIAN = "/usr/bin/chromium"


def playwright_chromium() -> str | None:
    """The executable of Playwright's own chromium download, if it is present."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    with sync_playwright() as p:
        path = p.chromium.executable_path
    return path if os.access(path, os.X_OK) else None


def find_chromium() -> str | None:
    chosen = os.environ.get("LEDGER_CHROMIUM")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    if os.access(DEBIAN, os.X_OK):
        return DEBIAN
    return playwright_chromium()


def describe_missing() -> str:
    chosen = os.environ.get("LEDGER_CHROMIUM")
    if chosen:
        return f"no chromium at LEDGER_CHROMIUM={chosen}"
    return (f"no chromium for the browser tests (neither {DEBIAN} nor Playwright's own): run "
            "'sudo apt-get install chromium' (Debian/Ubuntu) or "
            "'.venv/bin/playwright install chromium', then 'make test' again")


if __name__ == "__main__":
    found = find_chromium()
    if found is None:
        sys.exit(1)
    print(found)
