"""ledger.js (the explorer's protocol code) against the Python library, in chromium.

The script is served from a routed http://127.0.0.1 origin (a secure context, so WebCrypto
works) without any server: Playwright answers the requests itself.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from ledger.blocks import Vote
from ledger.encoding import decode, packb
from ledger.errors import DecodeError, ReceiptError
from ledger.genesis import Genesis
from ledger.receipts import build_receipt, dumps_receipt, verify_receipt
from ledger.store.memory import MemoryStore
from tests.browser.conftest import EXPLORER, new_page
from tests.factory import ChainBuilder, make_fixture

pytestmark = pytest.mark.slow
ORIGIN = "http://127.0.0.1:9"
FX = make_fixture()


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


def js_encode(page: Any, value_js: str) -> bytes:
    hex_text = page.evaluate(f"Ledger.hex(Ledger.encode({value_js}))")
    return bytes.fromhex(hex_text)


def test_encoder_matches_msgpack_python_for_votes(page: Any) -> None:
    block_hash = bytes(range(32))
    bh_js = "Uint8Array.from({length: 32}, (_, i) => i)"
    cases = [(chain, kind, height, rnd, bh)
             for chain in ("demo", "c" * 31, "c" * 32, "é" * 200, "x" * 70_000)
             for kind in (1, 2)
             for height in (1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**53 - 1)
             for rnd in (0, 200)
             for bh in (None, block_hash)]
    js_values = ", ".join(
        f"[{json.dumps(c)}, {k}, {h}, {r}, {bh_js if bh else 'null'}]"
        for c, k, h, r, bh in cases)
    got = page.evaluate(f"[{js_values}].map((v) => Ledger.hex(Ledger.encode(v)))")
    want = [Vote(c, k, h, r, bh).to_wire().hex() for c, k, h, r, bh in cases]
    assert got == want
    # Beyond 2^53, BigInt; bin of every length class; nested arrays (validators_hash input).
    assert js_encode(page, "[2n ** 64n - 1n, 2n ** 60n]") == packb([2**64 - 1, 2**60])
    for n in (0, 255, 256, 65_536):
        assert js_encode(page, f"[new Uint8Array({n}), true, false]") == packb(
            [bytes(n), True, False])
    keys = [[bytes([i]) * 32, i + 1] for i in range(20)]
    js_keys = "Array.from({length: 20}, (_, i) => [new Uint8Array(32).fill(i), i + 1])"
    assert js_encode(page, js_keys) == packb(keys)


DECODE = """(data) => {
    try {
        return {ok: true, value: Ledger.toPlain(Ledger.decode(Ledger.unb64(data, "x")))};
    } catch (e) {
        return {ok: false, error: e instanceof Ledger.VerifyError ? "rejected" : String(e)};
    }
}"""


def js_decode(page: Any, data: bytes) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(DECODE, base64.b64encode(data).decode())
    return result


def test_decoder_reads_what_msgpack_python_writes(page: Any) -> None:
    values: list[Any] = [
        0, 127, 128, -1, -32, -33, -128, -129, -32_768, -32_769, -(2**31), -(2**31) - 1,
        2**32, -(2**53) + 1, 1.5, -0.25, 1e300, "", "a" * 31, "日本語" * 30, b"\x00\x01",
        None, True, False, [], [1, [2, [3]]], {"value": 21.5, "unit": "C"},
        {"k" * 40: list(range(20))}, {str(i): i for i in range(20)}, ["x"] * 70_000,
    ]
    for value in values:
        want = base64.b64encode(value).decode() if isinstance(value, bytes) else value
        assert js_decode(page, packb(value)) == {"ok": True, "value": want}, value
    # Beyond 2^53: BigInt, shown as text; float32.
    assert js_decode(page, packb(2**64 - 1))["value"] == str(2**64 - 1)
    assert js_decode(page, msgpack.packb(1.5, use_single_float=True))["value"] == 1.5
    # A repeated key, an ext type, the unused byte, trailing bytes, bad UTF-8, truncation.
    for bad in (b"\x82\xa1a\x01\xa1a\x02", b"\xd4\x01\x00", b"\xc1", b"\x01\x02",
                b"\xa2\xff\xfe", b"\x92\x01"):
        assert js_decode(page, bad) == {"ok": False, "error": "rejected"}, bad


def test_decoder_accepts_and_rejects_exactly_what_python_does(page: Any) -> None:
    # The validity rules of ledger.encoding.decode: ext in any form, depth 64, key identity.
    rng = random.Random(11)
    cases = [b"\x91" * 63 + b"\x90", b"\x91" * 64 + b"\x90", b"\x91" * 64 + b"\x01",
             b"\x82\x01\x01\xcb\x3f\xf0" + bytes(6) + b"\x02",  # 1 and 1.0: two keys
             b"\x82\x01\x01\xc3\x02", b"\x82\xa11\x01\x01\x02",
             b"\x82\xcb\x7f\xf8" + bytes(6) + b"\x01\xca\x7f\xc0\x00\x00\x02",  # NaN twice
             b"\x82\xcb" + bytes(8) + b"\x01\xcb\x80" + bytes(7) + b"\x02",  # 0.0, -0.0
             b"\x82\x92\x01\x02\x01\xdc\x00\x02\xcc\x01\x02\x02",  # one array key twice
             b"\x82\x82\xa1a\x01\xa1b\x02\x01\x82\xa1b\x02\xa1a\x01\x02",  # map keys
             b"\xc7\x04\xff\x00\x00\x00\x01", b"\xc8\x00\x04\xff\x00\x00\x00\x01",
             b"\xc9\x00\x00\x00\x04\xff\x00\x00\x00\x01", b"\xd6\xff\x00\x00\x00\x01"]
    for _ in range(300):
        data = bytearray(rng.choice(cases))
        data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append(bytes(data))
    for data in cases:
        try:
            decode(data, "x")
            python_ok = True
        except DecodeError:
            python_ok = False
        result = js_decode(page, data)
        assert result["ok"] == python_ok and result.get("error", "rejected") == "rejected", (
            data.hex(), result)


@pytest.fixture(scope="module")
def receipts() -> list[str]:
    store = MemoryStore(genesis_hash=FX.genesis.hash)
    b = ChainBuilder(FX, store)
    for n in (1, 5, 3):
        b.add(n)
    # A sensor that may write sensor.reading only, writing another type: not authorised.
    rogue = b.record(FX.operator, type="quality.certificate", subject="x")
    block = b.block([rogue, b.record(payload=2**64 - 1)], signers=4, round=7)
    store.append(block)
    b.blocks.append(block)
    out = []
    for block in b.blocks:
        for rec in block.records:
            receipt = build_receipt(store, rec.id)
            assert receipt is not None
            out.append(dumps_receipt(receipt))
    return out


def verify_js(page: Any, texts: list[str], genesis: Genesis) -> list[dict[str, Any]]:
    return page.evaluate(
        """async ([texts, g]) => {
            const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
            const out = [];
            for (const t of texts) {
              const r = await Ledger.verifyReceipt(t, genesis);
              out.push({ok: r.ok, reason: r.reason || null, signers: r.signers || null});
            }
            return out;
        }""", [texts, base64.b64encode(genesis.raw).decode()])


def python_ok(text: str | bytes, genesis: Genesis) -> bool:
    try:
        verify_receipt(text, genesis)
    except ReceiptError:
        return False
    return True


def test_js_verifier_agrees_with_python_on_every_receipt(page: Any, receipts: list[str]) -> None:
    got = verify_js(page, receipts, FX.genesis)
    want = [python_ok(t, FX.genesis) for t in receipts]
    assert [g["ok"] for g in got] == want
    assert want.count(False) == 1  # the rogue record
    assert "is not authorised for type" in next(g["reason"] for g in got if not g["ok"])
    assert got[-1]["signers"] == [0, 1, 2, 3]


def test_js_verifier_rejects_every_single_byte_change(page: Any, receipts: list[str]) -> None:
    text = receipts[7]  # in a block of 3: a two-step audit path
    mutants = []
    for pos in range(len(text)):
        for new in {chr(ord(text[pos]) ^ 1), "0", " "} - {text[pos]}:
            mutants.append(text[:pos] + new + text[pos + 1:])
    got = verify_js(page, mutants, FX.genesis)
    accepted = [m for m, g in zip(mutants, got, strict=True) if g["ok"]]
    assert accepted == [], [python_ok(m, FX.genesis) for m in accepted]


def test_js_verifier_rejects_another_genesis_and_tampered_fields(
        page: Any, receipts: list[str]) -> None:
    doc = json.loads(receipts[7])
    other_chain = make_fixture(chain="other-chain").genesis
    same_chain_other_keys = make_fixture(validators=3).genesis
    assert verify_js(page, [receipts[7]], other_chain)[0]["reason"].startswith(
        "receipt is for chain")
    assert "validators_hash does not match genesis" in verify_js(
        page, [receipts[7]], same_chain_other_keys)[0]["reason"]
    sigs = doc["cert"]["signatures"]
    swapped = [sigs[1], sigs[0], *sigs[2:]]
    cases = {
        "index": ({**doc, "index": doc["index"] + 1}, ""),
        "height": ({**doc, "height": doc["height"] - 1}, "but the header is for height"),
        "path": ({**doc, "audit_path": doc["audit_path"][:-1]}, "wrong proof length"),
        "quorum": ({**doc, "cert": {"round": 0, "signatures": sigs[:2]}},
                   "more than 2/3 is required"),
        "order": ({**doc, "cert": {"round": 0, "signatures": swapped}}, "ascending"),
        "round": ({**doc, "cert": {"round": 1, "signatures": sigs}}, "does not verify"),
        "upper": ({**doc, "record_id": doc["record_id"].upper()}, "lowercase"),
        "missing": ({k: v for k, v in doc.items() if k != "cert"}, "missing 'cert'"),
    }
    texts = [json.dumps(d) for d, _ in cases.values()]
    got = verify_js(page, texts, FX.genesis)
    for (name, (_, reason)), g, t in zip(cases.items(), got, texts, strict=True):
        assert not g["ok"] and reason in g["reason"], (name, g)
        assert not python_ok(t, FX.genesis), name


def test_js_block_verifier(page: Any) -> None:
    store = MemoryStore(genesis_hash=FX.genesis.hash)
    b = ChainBuilder(FX, store)
    good = [b.add(n).to_wire() for n in (0, 1, 5)]
    rogue = b.block([b.record(FX.operator, type="quality.certificate")]).to_wire()
    weak = b.block([b.record()], signers=2).to_wire()
    flipped = bytearray(good[2])
    flipped[200] ^= 0x01  # inside the first record's body
    blocks = [*good, rogue, weak, bytes(flipped)]
    got = page.evaluate(
        """async ([blocks, g]) => {
            const genesis = Ledger.parseGenesis(Ledger.unb64(g, "genesis"));
            const out = [];
            for (const b of blocks) {
                out.push(await Ledger.verifyBlock(Ledger.unb64(b, "b"), genesis));
            }
            return out.map((r) => r.reason || "ok");
        }""", [[base64.b64encode(x).decode() for x in blocks],
               base64.b64encode(FX.genesis.raw).decode()])
    assert got[:3] == ["ok"] * 3
    assert "not authorised" in got[3]
    assert "more than 2/3 is required" in got[4]
    assert got[5] != "ok"
