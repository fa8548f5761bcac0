"""A chain built by the library across configuration changes (SPEC sections 4, 6, 9): the
audit follows the changes from genesis (inline and with worker processes over a store),
refuses a block certified by the set a change replaced, and receipts carry the
``config_proof`` that lets a verifier with nothing but genesis.json do the same."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ledger.audit import ChainVerifier, audit_chunks, store_chunks
from ledger.blocks import Block
from ledger.config import Config
from ledger.errors import AuditError, ReceiptError
from ledger.receipts import build_receipt, dumps_receipt, verify_receipt
from ledger.store.sqlite import SqliteStore
from ledger.validation import check_records
from tests.factory import (
    ChainBuilder,
    change_bytes,
    change_record,
    config_doc,
    make_governed_fixture,
    seeded_key,
)

FX = make_governed_fixture()
NEW = [seeded_key("validator-new-0"), seeded_key("validator-new-1")]


def replace_validators(config: Config, keep: slice, new: list[Any]) -> tuple[bytes, list[Any]]:
    """A change keeping genesis's validators[keep] and adding ``new`` keys."""
    d = copy.deepcopy(config_doc(FX.genesis))
    d["validators"] = d["validators"][keep] + [
        {"name": f"new{i}", "pubkey": k.public.hex(), "power": 1} for i, k in enumerate(new)]
    return change_bytes(config, d), new


def build(tmp_path: Path, *, stale_cert_at: int | None = None) -> tuple[SqliteStore,
                                                                         ChainBuilder]:
    """Heights 1..5: a change at 2 (validators 1..3 and NEW[0], governing from 3), another
    at 4 (validators 2..3 and both NEW, governing from 5)."""
    store = SqliteStore(tmp_path / "chain.db", genesis_hash=FX.genesis.hash)
    b = ChainBuilder(FX, store, extra_keys=NEW)
    config = FX.genesis.config
    b.add(2)
    for height, keep, new in ((2, slice(1, 4), NEW[:1]), (4, slice(2, 4), NEW[:2])):
        if height == 4:
            b.add(1)
        change, joiners = replace_validators(config, keep, new)
        added = [k for k in joiners if config.validators.by_key(k.public) is None]
        rec = change_record(config, FX.admins[0], change, approvers=FX.admins[1:],
                            joiners=added, nonce=height)
        block = b.block([rec, b.record()])
        store.append(block)
        b.blocks.append(block)
        new_config = check_records(config, block.records).config
        assert new_config is not None and new_config.version == config.version + 1
        config = new_config
        if stale_cert_at != height + 1:
            b.follow(config)
    b.add(3)
    return store, b


def test_the_audit_follows_changes_inline_and_in_worker_processes(tmp_path: Path) -> None:
    store, b = build(tmp_path)
    verifier = ChainVerifier(FX.genesis)
    for block in b.blocks:
        verifier.verify_next(block.to_wire())
    assert verifier.height == 5 and verifier.config.version == 2
    assert [len(verifier.history.validators_at(h)) for h in range(1, 6)] == [4, 4, 4, 4, 4]
    assert verifier.history.validators_at(5)[3].pubkey == NEW[1].public
    sizes = store.block_sizes()
    for workers in (1, 2):
        report = audit_chunks(FX.genesis, store_chunks(str(tmp_path / "chain.db"), sizes, 1),
                              workers=workers)
        assert report.height == 5


@pytest.mark.parametrize("height", [3, 5])
def test_a_block_certified_by_the_replaced_set_fails_the_audit_at_its_height(
        tmp_path: Path, height: int) -> None:
    store, b = build(tmp_path, stale_cert_at=height)
    verifier = ChainVerifier(FX.genesis)
    with pytest.raises(AuditError, match=rf"^height {height}: validators_hash"):
        for block in b.blocks:
            verifier.verify_next(block.to_wire())
    with pytest.raises(AuditError, match=rf"^height {height}:"):
        audit_chunks(FX.genesis, store_chunks(str(tmp_path / "chain.db"),
                                              store.block_sizes(), 1), workers=2)


def test_receipts_carry_the_config_proof(tmp_path: Path) -> None:
    store, b = build(tmp_path)
    changes = [(2, 0), (4, 0)]
    last: Block = b.blocks[-1]
    for block in b.blocks:
        for rec in block.records:
            receipt = build_receipt(store, rec.id, changes)
            assert receipt is not None
            steps = [s["height"] for s in receipt["config_proof"]]
            assert steps == [h for h, _ in changes if h < block.height]
            assert verify_receipt(dumps_receipt(receipt), FX.genesis).header.height \
                == block.height
    rec_id = last.records[0].id
    full = build_receipt(store, rec_id, changes)
    assert full is not None
    for bad, what in [
        ({**full, "config_proof": full["config_proof"][:1]}, "validators_hash"),
        ({**full, "config_proof": []}, "validators_hash"),
        ({k: v for k, v in full.items() if k != "config_proof"}, "validators_hash"),
        ({**full, "config_proof": full["config_proof"][::-1]}, "validators_hash"),
        ({**full, "config_proof": [full["config_proof"][0]] * 2}, "not above"),
    ]:
        with pytest.raises(ReceiptError, match=what):
            verify_receipt(bad, FX.genesis)
    # a step that is not a change: the record of height 3
    other = build_receipt(store, b.blocks[2].records[0].id)
    assert other is not None
    step = {k: other[k] for k in ("height", "index", "envelope", "header", "audit_path",
                                  "cert")}
    with pytest.raises(ReceiptError, match="not a configuration change"):
        verify_receipt({**full, "config_proof": [full["config_proof"][0], step]}, FX.genesis)
