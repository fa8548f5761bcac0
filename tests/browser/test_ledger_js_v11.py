"""ledger.js (the explorer's in-browser verifier) on the SPEC v1.1 conformance vectors
(tests/vectors/v1.1, made by an independent implementation), in chromium: it follows the
configuration changes from genesis — the valid chain's set replaced at heights 2 and 4 — and
rejects each faulty chain at its manifest's ``first_bad_height``, as ``ledger audit`` does;
receipts verify through their ``config_proof``."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import EXPLORER, new_page
from tests.unit.test_vectors_v11 import CHAINS, MANIFEST, VECTORS, blocks

pytestmark = pytest.mark.slow
ORIGIN = "http://127.0.0.1:9"
GENESIS_B64 = base64.b64encode((VECTORS / MANIFEST["genesis"]).read_bytes()).decode()

VERIFY_CHAIN = """async ([blocks, g]) => {
    const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
    const r = await Ledger.verifyChain(blocks.map((b) => Ledger.unb64(b, "block")), genesis);
    return {ok: r.ok, height: r.height, reason: r.reason || null, versions: r.versions};
}"""


@pytest.fixture(scope="module")
def page(browser: Any) -> Iterator[Any]:
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


def _chain(page: Any, name: str) -> dict[str, Any]:
    data = [base64.b64encode(b).decode() for b in blocks(name)]
    result: dict[str, Any] = page.evaluate(VERIFY_CHAIN, [data, GENESIS_B64])
    return result


def test_the_valid_chain_is_accepted_following_both_changes(page: Any) -> None:
    got = _chain(page, "valid")
    assert got["ok"], got["reason"]
    assert got["height"] == 6
    assert got["versions"] == [{"version": 0, "from": 1}, {"version": 1, "from": 3},
                               {"version": 2, "from": 5}]


@pytest.mark.parametrize("name", sorted(n for n, c in CHAINS.items() if not c["valid"]))
def test_each_faulty_chain_is_rejected_at_its_first_bad_height(page: Any, name: str) -> None:
    bad = CHAINS[name]["first_bad_height"]
    got = _chain(page, name)
    assert not got["ok"], name
    assert got["height"] == bad and got["reason"].startswith(f"height {bad}: "), got


def test_a_later_block_alone_needs_the_configuration_in_force(page: Any) -> None:
    # Block 3 of the valid chain is certified by the set version 1 brought in: under genesis
    # alone it is refused (the set in force matters), after the chain's changes it passes.
    data = [base64.b64encode(b).decode() for b in blocks("valid")]
    got = page.evaluate("""async ([blocks, g]) => {
        const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
        const bytes = blocks.map((b) => Ledger.unb64(b, "block"));
        const alone = await Ledger.verifyBlock(bytes[2], genesis);
        const chain = await Ledger.verifyChain(bytes.slice(0, 2), genesis);
        const inForce = await Ledger.verifyBlock(bytes[2], chain.config);
        return [alone.reason || "ok", inForce.reason || "ok", chain.config.version];
    }""", [data, GENESIS_B64])
    assert "validators_hash does not match genesis" in got[0]
    assert got[1:] == ["ok", 1]


@pytest.mark.parametrize("entry", MANIFEST["receipts"], ids=lambda e: e["file"])
def test_receipts_follow_the_config_proof(page: Any, entry: dict[str, Any]) -> None:
    text = (VECTORS / entry["file"]).read_text()
    got = page.evaluate("""async ([text, g]) => {
        const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
        const r = await Ledger.verifyReceipt(text, genesis);
        return {ok: r.ok, reason: r.reason || null, version: r.config ? r.config.version : null};
    }""", [text, GENESIS_B64])
    if entry["valid"]:
        assert got["ok"], got["reason"]
    else:
        assert not got["ok"] and "validators_hash" in got["reason"], got


def test_the_chain_is_followed_on_from_where_it_was_left(page: Any) -> None:
    # The explorer's block check follows the chain once, then from its tip: resuming gives
    # the same configurations in force as one pass.
    data = [base64.b64encode(b).decode() for b in blocks("valid")]
    got = page.evaluate("""async ([blocks, g]) => {
        const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
        const bytes = blocks.map((b) => Ledger.unb64(b, "block"));
        const first = await Ledger.verifyChain(bytes.slice(0, 2), genesis);
        const rest = await Ledger.verifyChain(bytes.slice(2), genesis, first.state);
        const again = await Ledger.verifyChain(bytes.slice(3), genesis,
            (await Ledger.verifyChain(bytes.slice(0, 2), genesis)).state);
        return [rest.ok, rest.height,
                [1, 2, 3, 4, 5, 6].map((h) => Ledger.configAt(rest.state, h).version),
                again.reason];
    }""", [data, GENESIS_B64])
    assert got[:3] == [True, 6, [0, 0, 1, 1, 2, 2]]
    assert got[3].startswith("height 3: ")  # block 4 given as height 3
