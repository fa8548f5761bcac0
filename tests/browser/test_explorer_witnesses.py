"""Witness cosignatures in the explorer (SPEC section 11), in chromium.

1. ledger.js's cosignature check against Python's (``ledger.witness``): the signed bytes are
   the same, and each of a list of valid and bad cosignatures made in Python gets the verdict
   ``count_witnesses`` gives; a receipt's ``witnesses`` are checked by ``verifyReceipt``.
2. The block view lists a block's cosignatures with the witness's name and "verified" or
   "bad", checked in the browser; its Verify button checks them under the configuration
   verified from genesis; the record view's receipt check reports them.

The explorer talks to the real app in process (``InProcessApi``, through Playwright's
routing: no server, no port); the block JSON view and receipts get the cosignatures a test
chooses, as a node lists those witnesses posted to it."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from ledger.blocks import Header
from ledger.crypto import PrivateKey
from ledger.encoding import b64decode
from ledger.errors import WitnessError
from ledger.receipts import build_receipt, verify_receipt
from ledger.store.memory import MemoryStore
from ledger.witness import (
    cosign,
    count_witnesses,
    for_header,
    header_message,
    witnesses_json,
)
from tests.browser.conftest import EXPLORER, new_page, screenshot
from tests.factory import ChainBuilder, make_fixture
from tests.inprocess import InProcessApi

pytestmark = pytest.mark.slow
ORIGIN = "http://127.0.0.1:9"
FX = make_fixture(witnesses=3)
W = FX.witnesses


# -- 1. ledger.js against ledger/witness.py --------------------------------------------------

@pytest.fixture(scope="module")
def lib(browser: Any) -> Iterator[Any]:
    page, errors = new_page(browser)
    script = (EXPLORER / "ledger.js").read_text()
    html = "<!doctype html><title>ledger.js</title><script src=/l.js></script>"
    page.route(f"{ORIGIN}/", lambda route: route.fulfill(content_type="text/html", body=html))
    page.route(f"{ORIGIN}/l.js", lambda route: route.fulfill(
        content_type="text/javascript", body=script))
    page.goto(f"{ORIGIN}/")
    page.wait_for_function("window.Ledger !== undefined")
    yield page
    assert errors == []


@pytest.fixture(scope="module")
def chain() -> tuple[MemoryStore, ChainBuilder]:
    store = MemoryStore(FX.genesis.hash)
    b = ChainBuilder(FX, store)
    for n in (2, 300, 1):  # block 2 large enough for multi-byte log sizes
        b.add(n)
    return store, b


CHECK = """async ([g, block, entries]) => {
    const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
    await Ledger.configOf(genesis);
    const { header, blockHash } = await Ledger.headerOf(Ledger.unb64(block, "block"));
    const message = Ledger.hex(Ledger.cosignedMessage(genesis.genesisHash, header, blockHash));
    const checked = await Ledger.checkCosignatures(entries, genesis.witnesses,
        genesis.genesisHash, header, blockHash, "block");
    let count;
    try {
        count = (await Ledger.countWitnesses(entries, genesis.witnesses, genesis.genesisHash,
                                             header, blockHash, "block", 0)).length;
    } catch (e) { count = e.message; }
    return { message, checked, count };
}"""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_js_checks_python_made_cosignatures_as_python_does(
        lib: Any, chain: tuple[MemoryStore, ChainBuilder]) -> None:
    _, b = chain
    g = FX.genesis
    outsider = PrivateKey.generate()
    for block in b.blocks:
        header = block.header
        other = b.blocks[block.height % len(b.blocks)].header  # another block
        good = [(k.public, cosign(k, g.hash, header)) for k in W[:2]]
        cases: list[tuple[str, list[tuple[bytes, bytes]], list[bool]]] = [
            ("two good", good, [True, True]),
            ("none", [], []),
            ("unknown key", [*good, (outsider.public, cosign(outsider, g.hash, header))],
             [True, True, False]),
            ("other block", [(W[2].public, cosign(W[2], g.hash, other))], [False]),
            ("listed twice", [good[0], good[0]], [True, False]),
            ("bit flipped", [(good[0][0], bytes([good[0][1][0] ^ 1]) + good[0][1][1:])],
             [False]),
            ("truncated", [(good[0][0], good[0][1][:63])], [False]),
        ]
        for name, pairs, oks in cases:
            entries = [{"pubkey": pk.hex(), "sig": b64(sig)} for pk, sig in pairs]
            got = lib.evaluate(CHECK, [b64(g.raw), b64(block.to_wire()), entries])
            assert bytes.fromhex(got["message"]) == header_message(g.hash, header)
            try:
                py: int | str = count_witnesses(pairs, g.config, g.hash, header, "block")
            except WitnessError as exc:
                py = str(exc)
            # the count, or the first bad entry's reason word for word
            assert got["count"] == py, (name, got["count"], py)
            assert [c["ok"] for c in got["checked"]] == oks, name
    names = [c["name"] for c in lib.evaluate(CHECK, [
        b64(g.raw), b64(b.blocks[0].to_wire()),
        [{"pubkey": k.public.hex(), "sig": b64(cosign(k, g.hash, b.blocks[0].header))}
         for k in (W[2], W[0])]])["checked"]]
    assert names == ["witness2", "witness0"]


VERIFY = """async ([g, text, k]) => {
    const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
    const r = await Ledger.verifyReceipt(text, genesis, { witnesses: k });
    return { ok: r.ok, reason: r.reason || null, witnesses: r.ok ? r.witnesses : null,
             steps: r.steps };
}"""


def test_js_receipt_check_reports_and_demands_cosignatures(
        lib: Any, chain: tuple[MemoryStore, ChainBuilder]) -> None:
    store, b = chain
    g = FX.genesis
    block = b.blocks[1]
    receipt = build_receipt(store, block.records[7].id)
    assert receipt is not None

    def run(doc: dict[str, Any], k: int = 0) -> dict[str, Any]:
        got: dict[str, Any] = lib.evaluate(VERIFY, [b64(g.raw), json.dumps(doc), k])
        return got

    bare = run(receipt)
    assert bare["ok"] and bare["witnesses"] is None
    assert run(receipt, 1)["reason"].startswith("receipt: no witness cosignatures")
    signed = {**receipt, "witnesses": witnesses_json(
        (k.public, cosign(k, g.hash, block.header)) for k in W)}
    got = run(signed, 3)
    assert got["ok"] and got["witnesses"] == 3 == verify_receipt(signed, g, witnesses=3).witnesses
    last = got["steps"][-1]
    assert last.startswith("witness cosignatures: 3 of the 3 witnesses of genesis cosigned "
                           "this block (")
    assert sorted(last.split("(")[1].rstrip(")").split(", ")) == [
        "witness0", "witness1", "witness2"]
    two = {**receipt, "witnesses": signed["witnesses"][:2]}
    assert run(two, 3)["reason"] == ("receipt: 2 witness cosignatures of height 2, 3 "
                                     "required (the configuration lists 3 witnesses)")
    wrong = {**receipt, "witnesses": witnesses_json(
        [(W[0].public, cosign(W[0], g.hash, b.blocks[0].header))])}
    assert "does not verify over block" in run(wrong)["reason"]


# -- 2. the explorer's block and record views ---------------------------------------------


@pytest.fixture(scope="module")
def app() -> InProcessApi:
    api = InProcessApi(FX)
    service = api.service
    for n in (2, 3):
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)
    return api


def serve(page: Any, api: InProcessApi, cosigners: dict[int, list[PrivateKey]] | None,
          extra: dict[int, list[dict[str, str]]] | None = None) -> None:
    """Answer the page's requests from the app; block JSON views and receipts list the
    cosignatures of ``cosigners[height]`` (+ ``extra[height]``), or with ``cosigners``
    None what the node holds."""
    from starlette.testclient import TestClient

    client = TestClient(api.app, base_url=ORIGIN)

    def listed(height: int) -> list[dict[str, str]]:
        block = api.store.block(height)
        assert block is not None
        return witnesses_json((k.public, cosign(k, FX.genesis.hash, block.header))
                              for k in (cosigners or {}).get(height, [])) + (
            extra or {}).get(height, [])

    def handle(route: Any) -> None:
        request = route.request
        path = request.url[len(ORIGIN):].split("?")[0]
        if path == "/v1/events":  # no live feed in this test
            route.fulfill(status=200, content_type="text/event-stream",
                          body="retry: 600000\n\n")
            return
        resp = client.request(request.method, request.url[len(ORIGIN):],
                              headers={k: v for k, v in request.headers.items()
                                       if k.lower() in ("accept", "content-type")})
        body = resp.content
        json_view = resp.headers.get("content-type", "").startswith("application/json")
        if cosigners is not None and resp.status_code == 200 and json_view and (
                path.startswith("/v1/blocks/") or path.endswith("/receipt")):
            doc = resp.json()
            doc["witnesses"] = listed(doc["height"])
            body = json.dumps(doc).encode()
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
        route.fulfill(status=resp.status_code, headers=headers, body=body)

    page.route(f"{ORIGIN}/**", handle)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    page, errors = new_page(browser)
    yield page
    page.context.close()
    assert errors == []


def test_block_view_shows_each_cosignature_verified_or_bad(app: InProcessApi,
                                                           page: Any) -> None:
    block1 = app.store.block(1)
    assert block1 is not None
    forged = PrivateKey.generate()
    serve(page, app, {2: [W[0], W[2]]}, extra={2: [
        # a witness's signature over block 1, and a key that is no witness
        {"pubkey": W[1].public.hex(), "sig": b64(cosign(W[1], FX.genesis.hash,
                                                        block1.header))},
        {"pubkey": forged.public.hex(), "sig": b64(forged.sign(b"x"))}]})
    page.goto(f"{ORIGIN}/#/block/2")
    page.get_by_role("heading", name="Witness cosignatures (4)").wait_for()
    rows = page.locator("#cosignatures tbody tr")
    expect(rows.nth(3).locator(".cosig-status")).not_to_have_text("checking…")
    got = [(rows.nth(i).locator(".witness-name").inner_text(),
            rows.nth(i).get_attribute("data-pubkey"),
            rows.nth(i).locator(".cosig-status").inner_text()) for i in range(4)]
    assert got == [("witness0", W[0].public.hex(), "verified"),
                   ("witness2", W[2].public.hex(), "verified"),
                   ("witness1", W[1].public.hex(), "bad"),
                   ("not a witness of this height", forged.public.hex(), "bad")]
    assert "does not verify over block" in (
        rows.nth(2).locator(".cosig-status").get_attribute("title") or "")
    assert page.locator("#cosignature-source").inner_text().startswith(
        "2 of 4 cosignatures verified in this browser")
    screenshot(page, "desktop-block-cosignatures")
    # the block's Verify fails on the bad entries, naming the first
    page.click("#verify-block")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "INVALID"
    assert page.locator("#verify-result .reason").inner_text().startswith(
        "block 2.witnesses[2]: ")


def test_block_verify_counts_cosignatures_under_the_verified_configuration(
        app: InProcessApi, page: Any) -> None:
    serve(page, app, {1: [], 2: [W[1], W[0]]})
    page.goto(f"{ORIGIN}/#/block/1")
    page.locator("#no-cosignatures").wait_for()
    page.goto(f"{ORIGIN}/#/block/2")
    expect(page.locator("#cosignature-source")).to_contain_text("against the witnesses of "
                                                                "genesis")
    page.click("#verify-block")
    page.locator("#verify-result .result").wait_for()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID"
    assert "cosigned by 2 witnesses" in page.locator("#verify-result").inner_text()
    assert "witness cosignatures: 2 of the 3 witnesses of genesis cosigned this block" in \
        page.locator("#verify-result ol").inner_text()
    expect(page.locator("#cosignature-source")).to_contain_text("verified from genesis in "
                                                                "this browser")


def test_record_view_receipt_check_reports_cosignatures(app: InProcessApi,
                                                        page: Any) -> None:
    block = app.store.block(2)
    assert block is not None
    serve(page, app, {2: W})
    page.goto(f"{ORIGIN}/#/record/{block.records[1].id.hex()}")
    page.click("#verify-button")
    page.locator("#verify-result .result").wait_for()
    text = page.locator("#verify-result").inner_text()
    assert page.locator("#verify-result .verdict").inner_text() == "VALID", text
    assert "cosigned by 3 witnesses." in text
    assert "witness cosignatures: 3 of the 3 witnesses of genesis" in text
    # the header the page checked is the one Python verifies
    receipt = json.loads(page.evaluate("fetch('/v1/records/" + block.records[1].id.hex()
                                       + "/receipt').then((r) => r.text())"))
    assert verify_receipt(receipt, FX.genesis, witnesses=3).witnesses == 3
    assert Header.from_wire(b64decode(receipt["header"], "h")) == block.header


def test_block_view_shows_what_the_node_holds(page: Any) -> None:
    """No injection: two witnesses post to the app, its block JSON lists them."""
    api = InProcessApi(FX)
    block = api.service.builder.block([api.record()])
    api.service.append(block)
    api.service.builder.blocks.append(block)
    with api.sync_client() as http:
        for key in (W[2], W[1]):
            resp = http.post("/v1/log/cosignatures", json=for_header(
                key, FX.genesis.hash, block.header).to_json())
            assert resp.status_code == 200, resp.text
    serve(page, api, None)
    page.goto(f"{ORIGIN}/#/block/1")
    page.get_by_role("heading", name="Witness cosignatures (2)").wait_for()
    rows = page.locator("#cosignatures tbody tr")
    expect(rows.nth(1).locator(".cosig-status")).to_have_text("verified")
    assert sorted(rows.nth(i).locator(".witness-name").inner_text() for i in range(2)) == [
        "witness1", "witness2"]
    assert rows.nth(0).locator(".cosig-status").inner_text() == "verified"
