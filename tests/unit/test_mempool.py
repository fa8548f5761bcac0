"""Mempool admission: each check, the bound, the verified-signature cache."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from ledger.crypto import RECORD_TAG
from ledger.encoding import packb
from ledger.records import MAX_PAYLOAD_BYTES, Record
from ledger.store import MemoryStore
from node.mempool import Mempool, MempoolFull
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()


def now() -> int:
    return time.time_ns() // 1_000_000


def fresh(builder: ChainBuilder, **kw: object) -> Record:
    builder.time_ms = now()
    return builder.record(**kw)  # type: ignore[arg-type]


def admit(pool: Mempool, envelopes: list[bytes]) -> list[tuple[str, str | None]]:
    results = pool.admit(pool.precheck(envelopes), now())
    return [(r.status, r.error) for r in results]


def test_each_admission_check_has_its_code() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    good = fresh(b)
    forged = Record.from_wire(packb([good.body_bytes, bytes(64)]))
    stranger = fresh(b, key=FX.outsider)
    same_nonce = Record.create(FX.writer, chain=FX.genesis.chain_id, type="sensor.reading",
                               subject="other", payload=1, ts=now(), nonce=good.body.nonce)
    old = Record.create(FX.writer, chain=FX.genesis.chain_id, type="sensor.reading",
                        subject="s", payload=1, ts=now() - 3_600_000, nonce=10**9)
    other_chain = Record.create(FX.writer, chain="elsewhere", type="sensor.reading",
                                subject="s", payload=1, ts=now(), nonce=10**9 + 1)
    assert admit(pool, [good.envelope, good.envelope, forged.envelope, stranger.envelope,
                        same_nonce.envelope, old.envelope, other_chain.envelope, b"\xc1"]) == [
        ("accepted", None), ("duplicate", None), ("rejected", "bad_signature"),
        ("rejected", "unauthorized"),
        ("rejected", "nonce_reused"), ("rejected", "clock_skew"), ("rejected", "wrong_chain"),
        ("rejected", "malformed")]
    assert len(pool) == 1


def test_bad_signature_is_rejected() -> None:
    pool = Mempool(FX.genesis, MemoryStore(FX.genesis.hash))
    b = ChainBuilder(FX, MemoryStore())
    rec = fresh(b)
    forged = packb([rec.body_bytes, FX.operator.sign(RECORD_TAG + rec.body_bytes)])
    assert admit(pool, [forged]) == [("rejected", "bad_signature")]


def test_committed_records_are_duplicates_and_leave_the_pool() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    recs = [fresh(b) for _ in range(3)]
    assert [s for s, _ in admit(pool, [r.envelope for r in recs])] == ["accepted"] * 3
    block = b.block(pool.reap(2, 10**6))
    store.append(block)
    pool.remove_committed(block)
    assert len(pool) == 1 and pool.get(recs[2].id) is not None
    assert admit(pool, [recs[0].envelope]) == [("duplicate", None)]


def test_a_full_pool_refuses_more() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store, max_records=2)
    b = ChainBuilder(FX, store)
    admit(pool, [fresh(b).envelope, fresh(b).envelope])
    with pytest.raises(MempoolFull):
        admit(pool, [fresh(b).envelope])


def test_reap_respects_count_and_bytes_limits() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    recs = [fresh(b) for _ in range(5)]
    admit(pool, [r.envelope for r in recs])
    assert pool.reap(3, 10**6) == recs[:3]
    assert pool.reap(10, len(recs[0].envelope) * 2) == recs[:2]


def test_admitted_signatures_are_not_verified_again() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    rec = fresh(b)
    admit(pool, [rec.envelope])
    assert pool.verify(rec.body.signer, rec.sign_bytes(), rec.sig)
    assert pool.cache.hits == 1
    assert not pool.verify(rec.body.signer, rec.sign_bytes() + b"x", rec.sig)


def test_pending_records_are_known_by_envelope_until_committed() -> None:
    """A proposal's records are looked up, not decoded again; the cache empties on commit."""
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    recs = [fresh(b) for _ in range(2)]
    admit(pool, [r.envelope for r in recs])
    assert pool.known(bytes(recs[0].envelope)) is pool.get(recs[0].id)
    assert pool.known(recs[0].envelope + b"\x00") is None
    block = b.block(recs[:1])
    store.append(block)
    pool.remove_committed(block)
    assert pool.known(recs[0].envelope) is None and pool.known(recs[1].envelope) is not None
    hits = pool.cache.hits
    assert pool.verify(recs[0].body.signer, recs[0].sign_bytes(), recs[0].sig)
    assert pool.cache.hits == hits  # verified again: committed records leave the cache


def test_precheck_verifies_only_what_the_node_does_not_hold() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    held, seen_in_proposal, new = fresh(b), fresh(b), fresh(b)
    pool.admit(pool.precheck([held.envelope]), now())
    # Block validation verified this one (it came in a proposal before its gossip).
    assert pool.verify(seen_in_proposal.body.signer, seen_in_proposal.sign_bytes(),
                       seen_in_proposal.sig)
    hits = pool.cache.hits
    checked = pool.precheck([held.envelope, seen_in_proposal.envelope, new.envelope, b"\x90"])
    assert [(r.status, r.error) for r in checked.results] == [
        ("accepted", None), ("accepted", None), ("accepted", None), ("rejected", "malformed")]
    # The held envelope is not checked at all; the proposal's record is a cache hit.
    assert pool.cache.hits == hits + 1
    assert [r.status for r in pool.admit(checked, now())] == [
        "duplicate", "accepted", "accepted", "rejected"]


def test_admit_asks_the_store_again_when_a_block_committed_after_precheck() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    rec = fresh(b)
    checked = pool.precheck([rec.envelope])
    b.add(0)
    store.append(b.block([rec]))  # committed elsewhere meanwhile (by block sync, say)
    assert [r.status for r in pool.admit(checked, now())] == ["duplicate"]
    assert len(pool) == 0


def test_a_forged_copy_of_a_held_record_is_reported_as_forged() -> None:
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    b = ChainBuilder(FX, store)
    pending, committed = fresh(b), fresh(b)
    pool.admit(pool.precheck([pending.envelope, committed.envelope]), now())
    block = b.block([committed])
    store.append(block)
    pool.remove_committed(block)
    forged = [packb([r.body_bytes, bytes(64)]) for r in (pending, committed)]
    assert [(r.status, r.error) for r in pool.admit(pool.precheck(forged), now())] == [
        ("rejected", "bad_signature"), ("rejected", "bad_signature")]
    assert [r.status for r in pool.admit(pool.precheck(
        [pending.envelope, committed.envelope]), now())] == ["duplicate", "duplicate"]


def amplifying(key: object, nonce: int) -> Record:
    """A record whose 64 KiB payload is an array of empty maps: ~70x its size decoded."""
    return Record.create(key, chain=FX.genesis.chain_id, type="sensor.reading",  # type: ignore[arg-type]
                         subject="bomb", payload=[{}] * (MAX_PAYLOAD_BYTES - 3), ts=now(),
                         nonce=nonce)


def test_cost_bounds_what_a_record_takes_decoded() -> None:
    rec = amplifying(FX.writer, 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        decoded = Record.from_wire(rec.envelope)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert decoded.elements > MAX_PAYLOAD_BYTES - 3
    assert held > 40 * len(rec.envelope)  # what envelope bytes used to count
    assert held < decoded.cost  # the cost the mempool counts is an upper bound


def test_amplifying_records_fill_the_pool_by_cost_within_a_memory_bound() -> None:
    # Before: the pool counted envelope bytes, so 32 MiB held ~500 such records, ~2.4 GB.
    max_bytes = 32 * 1024 * 1024
    pool = Mempool(FX.genesis, MemoryStore(FX.genesis.hash), max_bytes=max_bytes)
    envelopes = [amplifying(FX.writer, n).envelope for n in range(1, 11)]
    full = False
    tracemalloc.start()
    try:
        for i in range(0, len(envelopes), 2):
            try:
                admit(pool, envelopes[i:i + 2])
            except MempoolFull:
                full = True
                break
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert full and 0 < len(pool) < 10
    assert pool.bytes <= max_bytes
    assert peak < max_bytes + 16 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB"


def test_records_nobody_may_submit_are_dropped_one_by_one() -> None:
    # A batch of unauthorised amplifying records holds at most one of them decoded at once.
    pool = Mempool(FX.genesis, MemoryStore(FX.genesis.hash))
    envelopes = [amplifying(FX.outsider, n).envelope for n in range(4)]
    one = Record.from_wire(envelopes[0]).cost
    tracemalloc.start()
    try:
        results = admit(pool, envelopes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert results == [("rejected", "unauthorized")] * 4
    assert peak < 2 * one, f"peak {peak / 2**20:.1f} MiB, one record costs {one / 2**20:.1f}"


def test_the_verified_cache_stays_bounded_over_many_blocks() -> None:
    """Issue 17: every node's RSS grew ~20-25 bytes per committed record. Consensus verified
    each height's proposal, votes and certificates through the record cache, whose entries
    only a commit or a drop removes, and a committed record's late gossip (a duplicate)
    left its signature there too: entries piled up to the 150,000 bound (~430 bytes each).
    Over many heights, the record cache now empties at each commit and the consensus
    signatures stay within their own small LRU."""
    store = MemoryStore(FX.genesis.hash)
    pool = Mempool(FX.genesis, store)
    pool.vote_cache.limit = 32
    b = ChainBuilder(FX, store)
    chain, validators = FX.genesis.chain_id, FX.genesis.validators
    last_ms = 0
    for _ in range(120):
        recs = [fresh(b) for _ in range(3)]
        assert [s for s, _ in admit(pool, [r.envelope for r in recs])] == ["accepted"] * 3
        b.time_ms = max(b.time_ms, last_ms + 1)  # each block after the last
        block = b.block(pool.reap(10, 10**6))
        last_ms = block.header.time_ms
        # as the consensus core does: the certificate's precommits through the pool
        block.cert.verify(chain, validators, pool.verify)
        store.append(block)
        pool.remove_committed(block)
        # the committed records' gossip arriving after the commit; a reused nonce
        assert admit(pool, [recs[0].envelope]) == [("duplicate", None)]
        b.nonce -= 1
        again = fresh(b, payload={"v": "another record, the last one's nonce"})
        assert admit(pool, [again.envelope]) == [("rejected", "nonce_reused")]
    assert len(pool) == 0
    assert len(pool.cache._seen) == 0  # before the fix: 120 x (3 precommits + 2 refused)
    assert len(pool.vote_cache._seen) == 32
    # still exact and still a cache: a recent precommit is a hit, a changed message is not
    hits = pool.vote_cache.hits
    assert block.cert.verify(chain, validators, pool.verify) is None
    assert pool.vote_cache.hits == hits + len(block.cert.signatures)
    index, sig = block.cert.signatures[0]
    key = validators[index].pubkey
    assert not pool.verify(key, block.cert.precommit(chain).sign_bytes() + b"x", sig)
