"""Receipts from a store verify offline; any single changed byte fails (SPEC section 6)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ledger import merkle
from ledger.errors import ReceiptError
from ledger.receipts import build_receipt, dumps_receipt, verify_receipt
from ledger.store import SqliteStore
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[SqliteStore, ChainBuilder]:
    path = tmp_path_factory.mktemp("receipts") / "chain.db"
    store = SqliteStore(path, genesis_hash=FX.genesis.hash)
    b = ChainBuilder(FX, store)
    for n in (1, 5, 3, 8):
        b.add(n)
    return store, b


def test_every_record_has_a_valid_receipt(chain: tuple[SqliteStore, ChainBuilder]) -> None:
    store, b = chain
    for block in b.blocks:
        for i, rec in enumerate(block.records):
            receipt = build_receipt(store, rec.id)
            assert receipt is not None
            assert set(receipt) == {"chain", "record_id", "envelope", "height", "index",
                                    "header", "audit_path", "cert"}
            assert (receipt["height"], receipt["index"]) == (block.height, i)
            assert base64.b64decode(receipt["envelope"]) == rec.envelope
            result = verify_receipt(dumps_receipt(receipt), FX.genesis)
            assert result.record.id == rec.id and result.signers == (0, 1, 2)
    assert build_receipt(store, b"\x00" * 32) is None


def test_audit_path_is_rfc9162(chain: tuple[SqliteStore, ChainBuilder]) -> None:
    store, b = chain
    block = b.blocks[3]
    receipt = build_receipt(store, block.records[5].id)
    assert receipt is not None
    leaves = block.leaf_hashes()
    assert receipt["audit_path"] == [h.hex() for h in merkle.inclusion_proof(leaves, 5)]


def receipt_text(chain: tuple[SqliteStore, ChainBuilder]) -> str:
    store, b = chain
    receipt = build_receipt(store, b.blocks[3].records[6].id)
    assert receipt is not None
    return dumps_receipt(receipt)


def test_any_single_changed_byte_fails(chain: tuple[SqliteStore, ChainBuilder]) -> None:
    text = receipt_text(chain).encode()
    verify_receipt(text, FX.genesis)
    accepted = []
    for pos in range(len(text)):
        original = text[pos]
        # Neighbouring characters and case flips are the likely near-misses.
        for new in {original ^ 0x01, original ^ 0x20, ord("0"), ord("a"), ord(" ")} - {original}:
            changed = text[:pos] + bytes([new]) + text[pos + 1:]
            try:
                verify_receipt(changed, FX.genesis)
            except ReceiptError:
                continue
            accepted.append((pos, chr(original), chr(new)))
    assert accepted == []


def test_receipt_from_another_genesis_or_tampered_fields_fail(
        chain: tuple[SqliteStore, ChainBuilder]) -> None:
    doc = json.loads(receipt_text(chain))
    other = make_fixture(chain="other-chain")
    with pytest.raises(ReceiptError, match="chain"):
        verify_receipt(doc, other.genesis)
    cases = {
        "index": doc["index"] + 1,
        "height": doc["height"] - 1,
        "audit_path": doc["audit_path"][:-1],
        "cert": {"round": 0, "signatures": doc["cert"]["signatures"][:2]},
        "record_id": doc["record_id"].upper(),
    }
    for key, value in cases.items():
        with pytest.raises(ReceiptError):
            verify_receipt({**doc, key: value}, FX.genesis)
    missing = dict(doc)
    del missing["cert"]
    with pytest.raises(ReceiptError, match="missing 'cert'"):
        verify_receipt(missing, FX.genesis)
    with pytest.raises(ReceiptError, match="appears twice"):
        verify_receipt('{"chain":"a","chain":"b"}', FX.genesis)


def test_cli_verify_accepts_and_rejects(chain: tuple[SqliteStore, ChainBuilder],
                                       tmp_path: Path) -> None:
    from node.cli import main

    genesis = FX.write_genesis(tmp_path)
    good = tmp_path / "receipt.json"
    text = receipt_text(chain)
    good.write_text(text)
    assert main(["verify", str(good), "--genesis", str(genesis)]) == 0
    bad = tmp_path / "bad.json"
    pos = text.index('"sig":"') + 10
    bad.write_text(text[:pos] + ("A" if text[pos] != "A" else "B") + text[pos + 1:])
    assert main(["verify", str(bad), "--genesis", str(genesis)]) == 1
