"""The chain audit: every rule of SPEC section 4, the first bad height reported."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.audit import BytesChunk, ChainVerifier, audit_chunks
from ledger.blocks import Block, build_header, sign_certificate
from ledger.crypto import RECORD_TAG
from ledger.encoding import packb
from ledger.errors import AuditError
from ledger.records import Record
from ledger.store import MemoryStore, SqliteStore
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()
KEYS = dict(enumerate(FX.validator_keys[:3]))


def good_chain(blocks: int = 5) -> ChainBuilder:
    b = ChainBuilder(FX, MemoryStore())
    for i in range(blocks):
        b.add(i % 3 + 1)
    return b


def audit(blocks: list[bytes], workers: int = 1, chunk: int = 2) -> int:
    chunks = [BytesChunk(s + 1, list(blocks[s:s + chunk])) for s in range(0, len(blocks), chunk)]
    return audit_chunks(FX.genesis, chunks, workers=workers).height


def reseal(b: ChainBuilder, block: Block, **header_changes: object) -> Block:
    """Re-derive the header from the block's records, apply changes, and re-certify."""
    prev = b.store.block(block.height - 1)
    log = b.store.log
    header = build_header(
        chain=block.header.chain, height=block.height, time_ms=block.header.time_ms,
        prev_hash=prev.hash if prev else FX.genesis.hash, records=block.records, log=log,
        proposer=block.header.proposer, validators_hash=block.header.validators_hash)
    header = dataclasses.replace(header, **header_changes)  # type: ignore[arg-type]
    return Block(header, block.records, sign_certificate(FX.genesis.chain_id, header, 0, KEYS))


def faulty_chain(fault: Callable[[ChainBuilder], Block]) -> list[bytes]:
    """Blocks 1-2 good, block 3 from ``fault``, blocks 4-5 good on top of it."""
    b = ChainBuilder(FX, MemoryStore())
    b.add(2)
    b.add(2)
    bad = fault(b)
    out = [blk.to_wire() for blk in b.blocks] + [bad.to_wire()]
    # Continue on top of the bad block without the store's checks.
    prev, log = bad, b.store.log.copy()
    log.extend(bad.leaf_hashes())
    for _ in range(2):
        recs = [b.record()]
        b.time_ms += 1000
        h = build_header(chain=FX.genesis.chain_id, height=prev.height + 1, time_ms=b.time_ms,
                         prev_hash=prev.hash, records=recs, log=log, proposer=0,
                         validators_hash=FX.genesis.validators.hash)
        log.extend(r for r in [Block(h, tuple(recs), prev.cert).leaf_hashes()[0]])
        prev = Block(h, tuple(recs), sign_certificate(FX.genesis.chain_id, h, 0, KEYS))
        out.append(prev.to_wire())
    return out


def bad_signature(b: ChainBuilder) -> Block:
    rec = b.record()
    forged = Record.from_wire(packb([rec.body_bytes, bytes(64)]))
    return reseal(b, b.block([b.record(), forged]))


def unauthorised(b: ChainBuilder) -> Block:
    return b.block([b.record(FX.outsider)])


def operator_wrong_type(b: ChainBuilder) -> Block:
    return b.block([b.record(FX.operator, type="quality.certificate")])


def broken_link(b: ChainBuilder) -> Block:
    return reseal(b, b.block([b.record()]), prev_hash=b"\x07" * 32)


def weak_cert(b: ChainBuilder) -> Block:
    block = b.block([b.record()])
    keys = {0: FX.validator_keys[0], 1: FX.validator_keys[1]}
    return dataclasses.replace(block, cert=sign_certificate(FX.genesis.chain_id, block.header,
                                                            0, keys))


def wrong_log_root(b: ChainBuilder) -> Block:
    return reseal(b, b.block([b.record()]), log_root=b"\x01" * 32)


def wrong_log_size(b: ChainBuilder) -> Block:
    return reseal(b, b.block([b.record()]), log_size=99)


def duplicate_from_earlier(b: ChainBuilder) -> Block:
    return b.block([b.store.block(1).records[0]])  # type: ignore[union-attr]


def reused_nonce(b: ChainBuilder) -> Block:
    first = b.store.block(1).records[0]  # type: ignore[union-attr]
    rec = Record.create(FX.writer, chain=FX.genesis.chain_id, type="sensor.reading",
                        subject="other", payload=1, ts=0, nonce=first.body.nonce)
    return b.block([rec])


def duplicate_within_block(b: ChainBuilder) -> Block:
    rec = b.record()
    return b.block([rec, rec])


def time_goes_back(b: ChainBuilder) -> Block:
    return reseal(b, b.block([b.record()]), time_ms=1)


def wrong_chain_record(b: ChainBuilder) -> Block:
    rec = Record.create(FX.writer, chain="elsewhere", type="sensor.reading", subject="s",
                        payload=1, ts=0, nonce=10**9)
    return b.block([rec])


def wrong_validators_hash(b: ChainBuilder) -> Block:
    return reseal(b, b.block([b.record()]), validators_hash=b"\x00" * 32)


def wrong_records_root(b: ChainBuilder) -> Block:
    return reseal(b, b.block([b.record()]), records_root=b"\x00" * 32)


def cert_for_other_round(b: ChainBuilder) -> Block:
    block = b.block([b.record()])
    cert = dataclasses.replace(block.cert, round=5)  # signatures are for round 0
    return dataclasses.replace(block, cert=cert)


def garbage(b: ChainBuilder) -> Block:
    class Raw(Block):
        def to_wire(self) -> bytes:
            return b"\x93\xc1"
    block = b.block([b.record()])
    return Raw(block.header, block.records, block.cert)


FAULTS = [bad_signature, unauthorised, operator_wrong_type, broken_link, weak_cert,
          wrong_log_root, wrong_log_size, duplicate_from_earlier, reused_nonce,
          duplicate_within_block, time_goes_back, wrong_chain_record, wrong_validators_hash,
          wrong_records_root, cert_for_other_round, garbage]


def test_good_chain_passes_inline_and_in_workers() -> None:
    blocks = [blk.to_wire() for blk in good_chain(7).blocks]
    assert audit(blocks) == 7
    assert audit(blocks, workers=2) == 7


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_each_fault_is_reported_at_height_3(fault: Callable[[ChainBuilder], Block]) -> None:
    blocks = faulty_chain(fault)
    assert audit(blocks[:2]) == 2  # the part before the fault is fine
    with pytest.raises(AuditError) as info:
        audit(blocks)
    assert info.value.height == 3, str(info.value)
    assert str(info.value).startswith("height 3: ")


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_incremental_verifier_stops_at_the_bad_block(fault: Callable[[ChainBuilder], Block],
                                                     ) -> None:
    verifier = ChainVerifier(FX.genesis)
    blocks = faulty_chain(fault)
    assert [verifier.verify_next(data).height for data in blocks[:2]] == [1, 2]
    with pytest.raises(AuditError) as info:
        verifier.verify_next(blocks[2])
    assert info.value.height == 3, str(info.value)
    assert verifier.height == 2  # a bad block does not advance the verifier


def test_incremental_verifier_agrees_with_the_batch_audit() -> None:
    blocks = [blk.to_wire() for blk in good_chain(7).blocks]
    verifier = ChainVerifier(FX.genesis)
    summaries = [verifier.verify_next(data) for data in blocks]
    report = audit_chunks(FX.genesis, [BytesChunk(1, list(blocks))], workers=1)
    assert (verifier.height, verifier.records, verifier.tip_hash) == (
        report.height, report.records, report.tip_hash)
    assert summaries[-1].hash == report.tip_hash


def test_fault_found_by_a_worker_after_an_earlier_bad_block_reports_the_earlier() -> None:
    blocks = faulty_chain(broken_link)
    blocks[4] = b"garbage"
    with pytest.raises(AuditError) as info:
        audit(blocks, workers=2, chunk=1)
    assert info.value.height == 3


def test_missing_block_is_reported() -> None:
    blocks: list[bytes | None] = [blk.to_wire() for blk in good_chain(3).blocks]
    blocks[1] = None
    with pytest.raises(AuditError, match="height 2: block is missing"):
        audit_chunks(FX.genesis, [BytesChunk(1, blocks)], workers=1)


def test_record_signature_tag_is_checked() -> None:
    # A record signed without the domain tag must not pass.
    b = ChainBuilder(FX, MemoryStore())
    rec = b.record()
    untagged = Record.from_wire(packb([rec.body_bytes, FX.writer.sign(rec.body_bytes)]))
    assert FX.writer.sign(RECORD_TAG + rec.body_bytes) == rec.sig
    block = b.block([untagged])
    with pytest.raises(AuditError, match=r"height 1: .*signature"):
        audit([block.to_wire()])


def test_store_chunks_audit_a_sqlite_store(tmp_path: Path) -> None:
    from ledger.audit import store_chunks

    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as s:
        b = ChainBuilder(FX, s)
        for i in range(20):
            b.add(i % 4)
        sizes = s.block_sizes()
    report = audit_chunks(FX.genesis, store_chunks(str(path), sizes, records_per_chunk=7),
                          workers=2)
    assert (report.height, report.records) == (20, sum(i % 4 for i in range(20)))


def test_store_row_rewritten_as_text_is_reported_at_its_height(tmp_path: Path) -> None:
    import sqlite3

    from ledger.audit import store_chunks

    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as s:
        b = ChainBuilder(FX, s)
        for _ in range(5):
            b.add(2)
        sizes = s.block_sizes()
    with sqlite3.connect(path) as db:  # blob || blob is TEXT in SQLite: not valid UTF-8 here
        db.execute("UPDATE records SET envelope = envelope || X'ff' WHERE seq = 5")
    with pytest.raises(AuditError) as info:
        audit_chunks(FX.genesis, store_chunks(str(path), sizes), workers=1)
    assert info.value.height == 3, str(info.value)
