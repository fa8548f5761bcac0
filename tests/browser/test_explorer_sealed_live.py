"""Sealed records in the explorer against a node's own answers (SPEC section 10), in chromium.

The node is the real API and service in-process, served by uvicorn on 127.0.0.1 (as the
configuration page's test does), committing what it admits; its genesis has
``read_policies``: only admins read ``batch.recipe`` payloads, ``sensor.reading`` has no
policy. The SDK submits sealed records with their pairs (``seal``/``submit(payloads=)``),
then a redaction of one, through the HTTP API; the node keeps the pairs with the block and
deletes the redacted one on commit. The explorer reads without
a key, so a ``batch.recipe`` payload shows "payload withheld by read policy"; a page whose
requests are signed (RFC 9421, ``ledger.httpsig``) by an admin's key — Playwright adds the
headers, as a signing proxy in front of a browser would — is served the payload, which the
page checks against the digest before it shows it; the redacted record shows "redacted" on
every view, for every reader, and its receipt still verifies."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import expect

from ledger import httpsig
from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from ledger.records import Record
from node.client import LedgerClient
from tests.browser.conftest import new_page, screenshot
from tests.factory import make_governed_fixture, redaction_record
from tests.inprocess import InProcessApi, now_ms

pytestmark = pytest.mark.slow
MARKER = "MARKER-live-5d1c-recipe"
SUBJECT = "oven-9/batch"


def policy_fixture() -> Any:
    fx = make_governed_fixture()
    doc = json.loads(fx.genesis.raw)
    doc["read_policies"] = {"batch.recipe": ["admin"]}
    return replace(fx, genesis=Genesis.from_bytes(json.dumps(doc).encode()))


FX = policy_fixture()
A0, A1, _ = FX.admins


@dataclass
class Live:
    base: str
    secret: Record  # batch.recipe: admins only
    open: Record  # sensor.reading: no read policy
    gone: Record  # batch.recipe, redacted at height 2
    redaction: Record


def fill(api: InProcessApi, base: str) -> Live:
    """Through the node's own API, as clients do: the writer submits three sealed records
    with their pairs (one block), then admin0 a redaction of one, approved by two admins."""
    with LedgerClient(base, identity=FX.writer) as writer:
        items = [writer.seal(type=t, subject=SUBJECT, payload=p) for t, p in (
            ("batch.recipe", {"recipe": MARKER, "oven_c": 212}),
            ("sensor.reading", {"value": 21.5}),
            ("batch.recipe", {"recipe": "to be erased", "operator": "Li Wei"}))]
        done = writer.submit([r for r, _ in items], payloads={r.id: p for r, p in items},
                             wait=True)
        assert [d["height"] for d in done] == [1, 1, 1], done
    gone = items[2][0]
    redaction = redaction_record(FX.genesis.config, A0, [gone.id], approvers=[A0, A1],
                                 reason="erasure request 2026-301", ts=now_ms())
    with LedgerClient(base, identity=A0) as admin:
        assert admin.submit([redaction], wait=True)[0]["height"] == 2
    held = api.store.payloads([r.id for r, _ in items])
    assert set(held) == {items[0][0].id, items[1][0].id}  # the redaction deleted that pair
    return Live(base, items[0][0], items[1][0], gone, redaction)


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    api = InProcessApi(FX, autocommit=True)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        # in a worker thread: Playwright's sync API keeps an event loop in this one
        with ThreadPoolExecutor(1) as pool:
            yield pool.submit(fill, api, f"http://127.0.0.1:{port}").result(timeout=60)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def signing(page: Any, base: str, key: PrivateKey) -> None:
    """Sign every GET the page sends to the node with ``key`` (RFC 9421, SPEC section 10)."""
    def handle(route: Any) -> None:
        request = route.request
        if request.method != "GET" or request.url.endswith("/v1/events") or (
                "/v1/events?" in request.url):
            route.continue_()
            return
        headers = dict(request.headers)
        headers.update(httpsig.sign_request(key, "GET", request.url, int(time.time())))
        route.continue_(headers=headers)

    page.route(f"{base}/v1/**", handle)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page, errors = new_page(browser)
    yield page
    page.context.close()
    assert errors == []


def test_an_anonymous_reader_sees_withheld_served_and_redacted(live: Live, page: Any) -> None:
    page.goto(f"{live.base}/#/block/1")
    page.get_by_role("heading", name="Records (3)").wait_for()
    cell = {name: page.locator(f"tr[data-id='{r.id.hex()}'] td.payload")
            for name, r in (("secret", live.secret), ("open", live.open), ("gone", live.gone))}
    expect(cell["open"]).to_have_attribute("data-payload-status", "served")
    assert cell["secret"].inner_text() == "payload withheld by read policy"
    assert cell["open"].inner_text() == '✓ {"value":21.5}'
    assert cell["gone"].inner_text() == "payload redacted at height 2"
    assert page.locator(f"tr[data-id='{live.gone.id.hex()}'] .badge").all_inner_texts() == [
        "sealed", "redacted"]
    assert MARKER not in page.content()
    page.goto(f"{live.base}/#/record/{live.secret.id.hex()}")
    expect(page.locator("#payload-note")).to_have_text("payload withheld by read policy")
    assert page.locator("#record-badges .badge").all_inner_texts() == ["sealed"]
    page.click("#verify-button")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"
    assert MARKER not in page.content()
    screenshot(page, "desktop-record-withheld-live")


def test_an_admin_signed_view_shows_the_payload_checked(live: Live, page: Any) -> None:
    signing(page, live.base, A0)
    page.goto(f"{live.base}/#/record/{live.secret.id.hex()}")
    page.locator("#payload-check").wait_for()
    assert json.loads(page.locator("#payload").inner_text()) == {"recipe": MARKER,
                                                                 "oven_c": 212}
    assert page.locator("#record-badges .badge").all_inner_texts() == ["sealed"]
    page.click("#verify-button")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"
    steps = page.locator("#verify-result li").all_inner_texts()
    assert any("the payload and salt given match this payload_digest" in s for s in steps)
    # the node's receipt for an admin carries the pair too, checked in the browser
    assert any("the payload and salt the receipt carries match" in s for s in steps)
    screenshot(page, "desktop-record-served-live")
    # the subject's history, signed too: the admin reads both sealed payloads still held
    page.goto(f"{live.base}/#/subject/{SUBJECT}")
    row = page.locator(f"tr[data-id='{live.secret.id.hex()}'] td.payload")
    expect(row).to_have_attribute("data-payload-status", "served")
    assert MARKER in row.inner_text()
    gone = page.locator(f"tr[data-id='{live.gone.id.hex()}'] td.payload")
    assert gone.inner_text() == "payload redacted at height 2"


def test_a_member_without_the_role_is_withheld(live: Live, page: Any) -> None:
    signing(page, live.base, FX.operator)
    page.goto(f"{live.base}/#/record/{live.secret.id.hex()}")
    expect(page.locator("#payload-note")).to_have_text("payload withheld by read policy")
    assert MARKER not in page.content()


def test_the_redacted_record_and_its_redaction(live: Live, page: Any) -> None:
    signing(page, live.base, A0)  # even an admin: the pair is gone
    page.goto(f"{live.base}/#/record/{live.gone.id.hex()}")
    expect(page.locator("#payload-note")).to_have_text("payload redacted at height 2")
    assert page.locator("#record-badges .badge").all_inner_texts() == ["sealed", "redacted"]
    page.click("#verify-button")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"
    page.goto(f"{live.base}/#/record/{live.redaction.id.hex()}")
    box = page.locator("#redaction")
    box.wait_for()
    assert box.locator("ul.redacted-ids a").all_inner_texts() == [live.gone.id.hex()]
    page.goto(f"{live.base}/#/block/2")
    page.click("#verify-block")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"
