"""ledger.js on sealed records (SPEC section 10), in chromium: the payload digest rule
(``payloadDigest``/``checkSealedPayload`` agree with ledger/records.py on every case), and the
in-browser receipt check of sealed records — the v1.1 conformance vector made by an
independent implementation, receipts made by the Python library, and tampered ones."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ledger.crypto import RECORD_TAG, sha256
from ledger.encoding import packb
from ledger.errors import LedgerError
from ledger.receipts import build_receipt, dumps_receipt, verify_receipt
from ledger.records import Record, check_sealed_payload, payload_digest, seal_record
from ledger.store.memory import MemoryStore
from tests.browser.conftest import EXPLORER, new_page
from tests.factory import ChainBuilder, make_fixture
from tests.unit.test_vectors_v11 import MANIFEST, VECTORS

pytestmark = pytest.mark.slow
ORIGIN = "http://127.0.0.1:9"
FX = make_fixture()
V11_GENESIS = base64.b64encode((VECTORS / MANIFEST["genesis"]).read_bytes()).decode()
FX_GENESIS = base64.b64encode(FX.genesis.raw).decode()
SEALED = MANIFEST["sealed"]
SALT = bytes(range(32))


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


VERIFY = """async ([texts, g, pairs]) => {
    const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
    const out = [];
    for (const [i, t] of texts.entries()) {
        const p = pairs && pairs[i];
        const opts = p ? {payload: {salt: Ledger.unhex(p[0], "salt"),
                                    payload: Ledger.unhex(p[1], "payload")}} : {};
        const r = await Ledger.verifyReceipt(t, genesis, opts);
        out.push({ok: r.ok, reason: r.reason || null, steps: r.steps,
                  record: r.record || null, sealed: r.ok ? r.sealed : null});
    }
    return out;
}"""


def verify_js(page: Any, texts: list[str], genesis_b64: str,
              pairs: list[tuple[str, str] | None] | None = None) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = page.evaluate(VERIFY, [texts, genesis_b64, pairs])
    return got


def python_ok(text: str) -> bool:
    try:
        verify_receipt(text, FX.genesis)
    except LedgerError:
        return False
    return True


# ---- the digest rule ----

def _nested(depth: int) -> bytes:
    return b"\x91" * (depth - 1) + b"\x90"  # `depth` nested arrays


CASES: list[tuple[str, bytes, bytes, bool]] = [
    # (name, salt, payload bytes, whether to corrupt the digest)
    ("a map", SALT, packb({"recipe": "R-77", "oven_c": 212}), False),
    ("a low-entropy value", SALT, packb(True), False),
    ("kept as sent (1 as uint8, not fixint)", SALT, b"\xcc\x01", False),
    ("64 KiB exactly", SALT, packb(b"x" * (64 * 1024 - 5)), False),
    ("64 levels of nesting", SALT, _nested(64), False),
    ("a wrong digest", SALT, packb({"recipe": "R-77"}), True),
    ("a 31-byte salt", SALT[:31], packb(1), False),
    ("a 33-byte salt", SALT + b"\x00", packb(1), False),
    ("more than 64 KiB", SALT, packb(b"x" * (64 * 1024)), False),
    ("65 levels of nesting", SALT, _nested(65), False),
    ("an ext type", SALT, b"\xd4\x01\x00", False),
    ("trailing bytes", SALT, packb(1) + b"\x00", False),
    ("a repeated key", SALT, b"\x82\xa1a\x01\xa1a\x02", False),
    ("truncated", SALT, packb("recipe")[:-1], False),
    ("no payload at all", SALT, b"", False),
]


def test_the_digest_rule_agrees_with_ledger_records(page: Any) -> None:
    rows: list[tuple[str, str, str, str, bool]] = []
    for name, salt, data, corrupt in CASES:
        digest = payload_digest(salt, data)
        if corrupt:
            digest = bytes([digest[0] ^ 1]) + digest[1:]
        try:
            check_sealed_payload(digest, salt, data, "p")
            want = True
        except LedgerError:
            want = False
        rows.append((name, salt.hex(), data.hex(), digest.hex(), want))
    got = page.evaluate("""async (rows) => {
        const out = [];
        for (const [name, salt, data, digest] of rows) {
            const s = Ledger.unhex(salt, "salt"), d = Ledger.unhex(data, "data");
            const computed = Ledger.hex(await Ledger.payloadDigest(s, d));
            try {
                const v = await Ledger.checkSealedPayload(digest, s, d, "p");
                out.push([name, computed, true, JSON.stringify(Ledger.toPlain(v))]);
            } catch (e) {
                out.push([name, computed, e instanceof Ledger.VerifyError ? false : String(e),
                          e.message]);
            }
        }
        return out;
    }""", [list(r[:4]) for r in rows])
    for (name, salt_hex, data_hex, _digest, want), (_n, computed, ok, detail) in zip(
            rows, got, strict=True):
        assert computed == payload_digest(bytes.fromhex(salt_hex),
                                          bytes.fromhex(data_hex)).hex(), name
        assert ok is want, (name, detail)
    assert [g[3] for g in got[:2]] == ['{"recipe":"R-77","oven_c":212}', "true"]
    assert "is not the record's payload_digest" in got[5][3]
    assert "the salt is 31 bytes, not 32" in got[6][3]


def test_the_vector_pair_matches_its_digest(page: Any) -> None:
    # The manifest's pair, made by the independent implementation.
    got = page.evaluate("""async (s) => {
        const salt = Ledger.unhex(s.salt, "salt"), p = Ledger.unhex(s.payload_bytes, "p");
        const v = await Ledger.checkSealedPayload(s.payload_digest, salt, p);
        return [Ledger.hex(await Ledger.payloadDigest(salt, p)), Ledger.toPlain(v)];
    }""", SEALED)
    assert got[0] == SEALED["payload_digest"]
    assert got[1] == {"recipe": "R-77", "oven_c": 212}


# ---- receipts ----

def test_the_sealed_vector_receipt_verifies_by_its_digest(page: Any) -> None:
    text = (VECTORS / "receipt-h3-sealed.json").read_text()
    pair = (SEALED["salt"], SEALED["payload_bytes"])
    bad_salt = ("00" + SEALED["salt"][2:], SEALED["payload_bytes"])
    plain, with_pair, wrong = verify_js(page, [text] * 3, V11_GENESIS, [None, pair, bad_salt])
    assert plain["ok"], plain["reason"]
    assert plain["sealed"] is True
    record = plain["record"]
    assert record["payload_digest"] == SEALED["payload_digest"] and "payload" not in record
    assert any(s.startswith("sealed record: the chain holds its payload_digest "
                            + SEALED["payload_digest"]) for s in plain["steps"])
    assert with_pair["ok"], with_pair["reason"]
    assert any("payload and salt given match" in s for s in with_pair["steps"])
    assert not wrong["ok"] and "is not the record's payload_digest" in wrong["reason"]


@pytest.fixture(scope="module")
def made() -> dict[str, Any]:
    """A chain of the Python library with two sealed records beside inline ones: their
    receipts, pairs and envelopes."""
    store = MemoryStore(genesis_hash=FX.genesis.hash)
    b = ChainBuilder(FX, store)
    b.add(2)
    sealed, pairs = [], []
    for n, payload in enumerate(({"operator": "Li Wei", "shift": 3}, 21.5)):
        rec, pair = seal_record(FX.writer, chain=FX.genesis.chain_id, type="batch.recipe",
                                subject="oven", payload=payload, ts=b.time_ms,
                                nonce=10_000 + n)
        sealed.append(rec)
        pairs.append(pair)
    inline = b.record()
    block = b.block([sealed[0], inline, sealed[1]])
    store.append(block, payloads={r.id: p for r, p in zip(sealed, pairs, strict=True)})
    receipts = []
    for rec in (*sealed, inline):
        receipt = build_receipt(store, rec.id)
        assert receipt is not None
        receipts.append(dumps_receipt(receipt))
    return {"receipts": receipts, "pairs": pairs, "sealed": sealed}


def test_python_made_sealed_receipts_verify_with_and_without_their_pair(
        page: Any, made: dict[str, Any]) -> None:
    texts = made["receipts"]
    assert all(python_ok(t) for t in texts)
    pairs = [(p.salt.hex(), p.payload.hex()) for p in made["pairs"]]
    got = verify_js(page, [*texts, *texts[:2]], FX_GENESIS, [None, None, None, *pairs])
    assert [g["ok"] for g in got] == [True] * 5, [g["reason"] for g in got]
    assert [g["sealed"] for g in got] == [True, True, False, True, True]
    for g, rec in zip(got[:2], made["sealed"], strict=True):
        assert g["record"]["payload_digest"] == rec.body.payload_digest.hex()
        assert g["record"]["id"] == rec.id.hex() and "payload" not in g["record"]
    assert got[2]["record"]["payload"] == {"v": 1.5, "unit": "C"}
    # The pair of one sealed record given with the other's receipt; a pair with an inline
    # record's receipt.
    swapped, inline = verify_js(page, [texts[0], texts[2]], FX_GENESIS, [pairs[1], pairs[0]])
    assert not swapped["ok"] and "is not the record's payload_digest" in swapped["reason"]
    assert not inline["ok"] and "the record is not sealed" in inline["reason"]


def _resigned(body: dict[str, Any]) -> bytes:
    raw = packb(body)
    return packb([raw, FX.writer.sign(RECORD_TAG + raw)])


def test_tampered_sealed_receipts_are_rejected_as_python_does(
        page: Any, made: dict[str, Any]) -> None:
    doc = json.loads(made["receipts"][0])
    rec: Record = made["sealed"][0]
    b = rec.body
    assert b.payload_digest is not None
    body = {"chain": b.chain, "type": b.type, "subject": b.subject,
            "payload_digest": b.payload_digest, "ts": b.ts, "nonce": b.nonce,
            "signer": b.signer}
    other_digest = dict(body, payload_digest=sha256(b"another payload"))
    both = dict(body, payload={"recipe": "R-77"})  # 8 keys: payload and payload_digest
    instead = {k: v for k, v in both.items() if k != "nonce"}  # 7 keys, both of them
    short = dict(body, payload_digest=b.payload_digest[:31])
    mutants = []
    for new in (other_digest, both, instead, short):
        envelope = _resigned(new)
        raw = packb(new)
        # the envelope alone replaced, then with a record_id that matches it
        mutants.append(json.dumps(dict(doc, envelope=base64.b64encode(envelope).decode())))
        mutants.append(json.dumps(dict(doc, envelope=base64.b64encode(envelope).decode(),
                                       record_id=sha256(raw).hex())))
    got = verify_js(page, mutants, FX_GENESIS)
    assert [python_ok(m) for m in mutants] == [False] * len(mutants)
    assert [g["ok"] for g in got] == [False] * len(mutants)
    reasons = [g["reason"] for g in got]
    assert "audit path leads to root" in reasons[1]  # a valid sealed record, not this block's
    assert "expected a map of 7 keys, got 8" in reasons[3]
    assert 'unexpected key "payload"' in reasons[5]
    assert "payload_digest: expected 32 bytes, got 31" in reasons[7]


def test_a_receipt_carrying_the_payload_is_checked_against_its_digest(
        page: Any, made: dict[str, Any]) -> None:
    # A node serves an authorised reader the receipt with `payload` and `salt` (b64): the
    # browser decides as ledger/receipts.py's receipt_payload does.
    sealed_doc, inline_doc = json.loads(made["receipts"][0]), json.loads(made["receipts"][2])
    mine, other = made["pairs"]

    def carrying(doc: dict[str, Any], pair: Any) -> str:
        return json.dumps(dict(doc, payload=b64(pair.payload), salt=b64(pair.salt)))

    no_salt = json.dumps(dict(sealed_doc, payload=b64(mine.payload)))
    texts = [carrying(sealed_doc, mine), carrying(sealed_doc, other),
             carrying(inline_doc, mine), no_salt]
    got = verify_js(page, texts, FX_GENESIS)
    assert [python_ok(t) for t in texts] == [True, False, False, False]
    assert verify_receipt(texts[0], FX.genesis).payload == mine
    assert got[0]["ok"], got[0]["reason"]
    assert got[0]["record"]["payload"] == {"operator": "Li Wei", "shift": 3}
    assert any("the payload and salt the receipt carries match" in s for s in got[0]["steps"])
    assert [g["ok"] for g in got[1:]] == [False, False, False]
    assert got[1]["reason"].startswith("receipt.payload: sha256 of the salt and payload is "
                                       "not the record's payload_digest")
    assert got[2]["reason"] == "receipt carries a payload or salt, but its record is not sealed"
    assert got[3]["reason"] == "receipt: missing 'salt'"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
