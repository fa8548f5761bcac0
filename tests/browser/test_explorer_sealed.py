"""Sealed and redacted records in the explorer's views (SPEC section 10), in chromium.

The page talks to the real app in process (``InProcessApi``, through Playwright's routing:
no server, no port), whose chain holds sealed records, an inline one and a redaction; each
sealed record's JSON (record, block and subject history views) is given the shape a node
serves for the case the test sets up — ``payload``/``salt`` served, withheld by a read
policy, not held by the node, redacted, or a served pair that does not match the digest — so
every case is drawn whatever the read policy of the node. The views show the "sealed" and
"redacted" badges, the digest, the payload only after it matched the digest in the browser,
and why it is not shown otherwise; every value stays text (a payload holding markup draws no
element). ``test_explorer_sealed_live.py`` shows the same against a node's own answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import expect

from ledger.records import Record, SealedPayload, seal_record
from tests.browser.conftest import PHONE, new_page, screenshot
from tests.factory import make_governed_fixture, redaction_record
from tests.inprocess import InProcessApi, now_ms

pytestmark = pytest.mark.slow
ORIGIN = "http://127.0.0.1:9"
FX = make_governed_fixture()
SUBJECT = "oven-4/batch"
MARKUP = '<img src=x onerror="document.title=\'pwned\'">'


@dataclass
class Case:
    record: Record
    pair: SealedPayload
    status: str  # served | withheld | missing | redacted | mismatch (a pair that does not
    # match) | lying (the right pair, under a payload_digest that is not the envelope's)
    redacted_at: int | None = None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Chain:
    api: InProcessApi
    cases: dict[str, Case]  # by name
    inline: Record
    redaction: Record


@pytest.fixture(scope="module")
def chain() -> Chain:
    """Height 1: sealed records (served, withheld, missing, redacted-to-be, a bad pair) and
    an inline one, all of SUBJECT; height 2: a reading; height 3: the redaction."""
    api = InProcessApi(FX)
    service = api.service
    ts = now_ms()

    def sealed(n: int, payload: Any) -> tuple[Record, SealedPayload]:
        return seal_record(FX.writer, chain=FX.genesis.chain_id, type="batch.recipe",
                           subject=SUBJECT, payload=payload, ts=ts + n, nonce=5000 + n)

    made = {name: sealed(n, payload) for n, (name, payload) in enumerate([
        ("served", {"operator": MARKUP, "yield_pct": 93.5}),
        ("withheld", {"yield_pct": 91.0}),
        ("missing", {"yield_pct": 90.0}),
        ("redacted", {"operator": "Li Wei", "yield_pct": 88.0}),
        ("mismatch", {"yield_pct": 99.0}),
        ("lying", {"yield_pct": 97.0})])}
    inline = Record.create(FX.writer, chain=FX.genesis.chain_id, type="batch.note",
                           subject=SUBJECT, payload={"note": MARKUP}, ts=ts, nonce=4999)
    redaction = redaction_record(FX.genesis.config, FX.admins[0], [made["redacted"][0].id],
                                 approvers=FX.admins[:2], reason="erasure request 2026-17")
    for records in ([*(r for r, _ in made.values()), inline], [api.record()], [redaction]):
        block = service.builder.block(records)
        service.append(block)
        service.builder.blocks.append(block)
    cases = {name: Case(rec, pair, name, 3 if name == "redacted" else None)
             for name, (rec, pair) in made.items()}
    # the "mismatch" node serves another record's pair
    cases["mismatch"].pair = made["withheld"][1]
    return Chain(api, cases, inline, redaction)


def sealed_view(doc: dict[str, Any], case: Case) -> dict[str, Any]:
    """A sealed record's JSON as a node serves it in ``case`` (SPEC section 7, v1.1)."""
    for key in ("payload", "salt", "redacted", "payload_status"):
        doc.pop(key, None)
    digest = case.record.body.payload_digest
    assert digest is not None
    doc["payload_digest"] = (digest if case.status != "lying" else bytes(32)).hex()
    if case.status in ("served", "mismatch", "lying"):
        doc["payload"], doc["salt"] = b64(case.pair.payload), b64(case.pair.salt)
        doc["payload_status"] = "served"
    else:
        doc["payload_status"] = case.status
    if case.redacted_at is not None:
        doc["redacted"] = {"height": case.redacted_at}
    return doc


def serve(page: Any, chain: Chain) -> None:
    from starlette.testclient import TestClient

    client = TestClient(chain.api.app, base_url=ORIGIN)
    by_id = {c.record.id.hex(): c for c in chain.cases.values()}

    def fix(doc: Any) -> Any:
        if isinstance(doc, dict) and doc.get("id") in by_id and "envelope" in doc:
            return sealed_view(doc, by_id[doc["id"]])
        if isinstance(doc, dict):
            return {k: fix(v) for k, v in doc.items()}
        if isinstance(doc, list):
            return [fix(v) for v in doc]
        return doc

    def handle(route: Any) -> None:
        request = route.request
        path = request.url[len(ORIGIN):].split("?")[0]
        if path == "/v1/events":  # no live feed in this test
            route.fulfill(status=200, content_type="text/event-stream", body="retry: 600000\n\n")
            return
        resp = client.request(request.method, request.url[len(ORIGIN):],
                              headers={k: v for k, v in request.headers.items()
                                       if k.lower() in ("accept", "content-type")})
        body = resp.content
        if resp.status_code == 200 and resp.headers.get("content-type", "").startswith(
                "application/json") and path.startswith(("/v1/records/", "/v1/blocks/",
                                                         "/v1/subjects/")):
            body = json.dumps(fix(resp.json())).encode()
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
        route.fulfill(status=resp.status_code, headers=headers, body=body)

    page.route(f"{ORIGIN}/**", handle)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page, errors = new_page(browser)
    yield page
    page.context.close()
    assert errors == []


def no_markup_ran(page: Any) -> None:
    assert page.locator("#view img").count() == 0
    assert page.title() != "pwned"


def row_of(page: Any, rec: Record) -> Any:
    return page.locator(f"tr[data-id='{rec.id.hex()}']")


def test_block_view_badges_and_payload_cells(chain: Chain, page: Any) -> None:
    serve(page, chain)
    page.goto(f"{ORIGIN}/#/block/1")
    page.get_by_role("heading", name="Records (7)").wait_for()
    c = chain.cases
    cells = {name: row_of(page, case.record).locator("td.payload") for name, case in c.items()}
    expect(cells["served"]).to_have_attribute("data-payload-status", "served")
    got = {name: (cell.get_attribute("data-payload-status"), cell.inner_text())
           for name, cell in cells.items()}
    assert got == {
        "served": ("served", "✓ " + json.dumps({"operator": MARKUP, "yield_pct": 93.5},
                                                separators=(",", ":"))),
        "withheld": ("withheld", "payload withheld by read policy"),
        "missing": ("missing", "payload not held by this node"),
        "redacted": ("redacted", "payload redacted at height 3"),
        "mismatch": ("mismatch", got["mismatch"][1]),
        "lying": ("mismatch", got["lying"][1]),
    }
    assert got["mismatch"][1].startswith("✗ the payload served does not match the record's "
                                         "payload_digest")
    assert got["lying"][1].startswith("✗ the node's payload_digest " + "00" * 32 + " is not "
                                      "the one in the record's envelope")
    badges = {name: row_of(page, case.record).locator(".badge").all_inner_texts()
              for name, case in c.items()}
    assert badges == {"served": ["sealed"], "withheld": ["sealed"], "missing": ["sealed"],
                      "redacted": ["sealed", "redacted"], "mismatch": ["sealed"],
                      "lying": ["sealed"]}
    inline = row_of(page, chain.inline)
    assert inline.locator(".badge").count() == 0
    assert inline.locator("td.payload").inner_text() == json.dumps({"note": MARKUP},
                                                                   separators=(",", ":"))
    no_markup_ran(page)
    screenshot(page, "desktop-block-sealed")


def test_record_view_shows_a_served_payload_checked_against_its_digest(
        chain: Chain, page: Any) -> None:
    case = chain.cases["served"]
    serve(page, chain)
    page.goto(f"{ORIGIN}/#/record/{case.record.id.hex()}")
    page.locator("#payload-check").wait_for()
    assert page.locator("#record-badges .badge").all_inner_texts() == ["sealed"]
    assert case.record.body.payload_digest is not None
    assert page.get_by_text(case.record.body.payload_digest.hex(), exact=True).count() == 1
    assert json.loads(page.locator("#payload").inner_text()) == {"operator": MARKUP,
                                                                 "yield_pct": 93.5}
    assert page.get_by_text(case.pair.salt.hex(), exact=True).count() == 1
    assert page.evaluate("[...document.getElementById('view').childNodes]"
                         ".filter((n) => n.nodeType === Node.TEXT_NODE).length") == 0
    no_markup_ran(page)
    # the receipt of a sealed record verifies here, with the payload shown against its digest
    page.click("#verify-button")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"
    steps = page.locator("#verify-result li").all_inner_texts()
    assert any("sealed record: the chain holds its payload_digest" in s for s in steps)
    assert any("the payload and salt given match this payload_digest" in s for s in steps)
    screenshot(page, "desktop-record-sealed")


@pytest.mark.parametrize(("name", "text"), [
    ("withheld", "payload withheld by read policy"),
    ("missing", "payload not held by this node"),
    ("redacted", "payload redacted at height 3"),
])
def test_record_view_says_why_a_payload_is_not_shown(chain: Chain, page: Any, name: str,
                                                     text: str) -> None:
    case = chain.cases[name]
    serve(page, chain)
    page.goto(f"{ORIGIN}/#/record/{case.record.id.hex()}")
    note = page.locator("#payload-note")
    expect(note).to_have_text(text)
    assert note.get_attribute("data-payload-status") == name
    assert page.locator("#payload").count() == 0
    badges = page.locator("#record-badges .badge").all_inner_texts()
    assert badges == (["sealed", "redacted"] if name == "redacted" else ["sealed"])
    if name == "redacted":
        assert page.locator("#record-redacted a").get_attribute("href") == "#/block/3"
    # the receipt still verifies (it never held the payload)
    page.click("#verify-button")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"


def test_a_payload_that_does_not_match_its_digest_is_not_shown(chain: Chain,
                                                               page: Any) -> None:
    case = chain.cases["mismatch"]
    serve(page, chain)
    page.goto(f"{ORIGIN}/#/record/{case.record.id.hex()}")
    note = page.locator("#payload-note.error")
    expect(note).to_contain_text("✗ the payload served does not match the record's "
                                 "payload_digest")
    assert note.get_attribute("data-payload-status") == "mismatch"
    assert page.locator("#payload").count() == 0
    assert "yield_pct" not in page.locator("#view").inner_text()  # no payload at all


def test_the_redaction_record_lists_what_it_redacts(chain: Chain, page: Any) -> None:
    serve(page, chain)
    page.goto(f"{ORIGIN}/#/record/{chain.redaction.id.hex()}")
    box = page.locator("#redaction")
    box.wait_for()
    target = chain.cases["redacted"].record.id.hex()
    assert box.locator("ul.redacted-ids a").all_inner_texts() == [target]
    assert "erasure request 2026-17" in box.inner_text()
    # the block holding the redaction verifies here, the chain followed from genesis
    page.goto(f"{ORIGIN}/#/block/3")
    page.click("#verify-block")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"


def test_subject_history_shows_badges_and_charts_only_checked_payloads(
        chain: Chain, browser: Any) -> None:
    page, errors = new_page(browser, PHONE)
    try:
        serve(page, chain)
        page.goto(f"{ORIGIN}/#/subject/{SUBJECT}")
        page.locator("#history tbody tr").first.wait_for()
        cells = {name: row_of(page, case.record).locator("td.payload").get_attribute(
            "data-payload-status") for name, case in chain.cases.items()}
        assert cells == {"served": "served", "withheld": "withheld", "missing": "missing",
                         "redacted": "redacted", "mismatch": "mismatch", "lying": "mismatch"}
        assert row_of(page, chain.cases["redacted"].record).locator(
            ".badge.redacted").count() == 1
        # the chart has one point: the only payload that matched its digest
        assert page.locator("#chart-svg").get_attribute("data-points") == "1"
        no_markup_ran(page)
        screenshot(page, "phone-subject-sealed")
        # proved in the log: a sealed row's digest must be its envelope's
        page.check("#prove")
        page.click("#history-apply")
        expect(page.locator("#proof-note")).to_have_text(
            "1 of 7 records shown are NOT proved in the log.")
        unproved = page.locator("tr[data-proved='false']")
        assert unproved.get_attribute("data-id") == chain.cases["lying"].record.id.hex()
        assert "its fields are not its envelope's" in unproved.inner_text()
    finally:
        page.context.close()
    assert errors == []
