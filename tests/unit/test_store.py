"""Block stores: SQLite and in-memory behave alike (same tests, both stores)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import merkle
from ledger.errors import BlockError, CorruptStoreError, DuplicateError, StoreError
from ledger.store import BlockStore, MemoryStore, SqliteStore
from ledger.store import sqlite as sqlite_store
from ledger.store.check import check_indexes
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlockStore]:
    s: BlockStore = (SqliteStore(tmp_path / "chain.db", genesis_hash=FX.genesis.hash)
                     if request.param == "sqlite" else MemoryStore(FX.genesis.hash))
    yield s
    s.close()


def test_blocks_read_back_byte_identical(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    for n in (0, 1, 5, 2):
        b.add(n)
    assert store.height == 4
    for block in b.blocks:
        assert store.block_bytes(block.height) == block.to_wire()
    assert store.block_bytes(5) is None and store.block_bytes(0) is None
    assert store.tip_hash() == b.blocks[-1].hash


def test_records_are_indexed(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    b.add(2)
    block = b.add(3)
    rec = block.records[1]
    loc = store.locate(rec.id)
    assert loc is not None and (loc.height, loc.index, loc.seq) == (2, 1, 3)
    assert store.envelope(rec.id) == rec.envelope
    assert store.locate(b"\x00" * 32) is None
    assert store.seen_ids([rec.id, b"\x01" * 32]) == {rec.id}
    pair = (rec.body.signer, rec.body.nonce)
    assert store.seen_nonces([pair, (rec.body.signer, 10**6)]) == {pair}


def test_seen_checks_answer_for_many_records_at_once(store: BlockStore) -> None:
    """More ids and pairs than one query binds, from two signers, mixed with unknown ones."""
    b = ChainBuilder(FX, store)
    stored = [*b.add(700).records, b.record(key=FX.operator)]
    store.append(b.block(stored[-1:]))
    unknown = [bytes([i % 256, i // 256]) * 16 for i in range(600)]
    assert store.seen_ids([r.id for r in stored] + unknown) == {r.id for r in stored}
    pairs = {(r.body.signer, r.body.nonce) for r in stored}
    others = {(r.body.signer, r.body.nonce + 10**6) for r in stored}
    assert store.seen_nonces(list(pairs | others)) == pairs


def test_large_nonce_round_trips(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    b.nonce = 2**64 - 3
    block = b.add(2)
    pairs = {(r.body.signer, r.body.nonce) for r in block.records}
    assert {n for _, n in pairs} == {2**64 - 2, 2**64 - 1}
    assert store.seen_nonces(pairs) == pairs


def test_subject_history_pages_oldest_first(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    recs = []
    for _ in range(3):
        block = b.block([b.record(subject="a"), b.record(subject="b"), b.record(subject="a")])
        store.append(block)
        recs += [r for r in block.records if r.body.subject == "a"]
    page1 = store.subject_history("a", limit=4)
    assert [e for _, e in page1] == [r.envelope for r in recs[:4]]
    page2 = store.subject_history("a", after_seq=page1[-1][0].seq, limit=4)
    assert [e for _, e in page2] == [r.envelope for r in recs[4:]]
    assert store.subject_history("nobody") == []


def test_subject_history_pages_newest_first(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    recs = []
    for _ in range(3):
        block = b.block([b.record(subject="a"), b.record(subject="b"), b.record(subject="a")])
        store.append(block)
        recs += [r for r in block.records if r.body.subject == "a"]
    newest = recs[::-1]
    page1 = store.subject_history_desc("a", limit=4)
    assert [e for _, e in page1] == [r.envelope for r in newest[:4]]
    page2 = store.subject_history_desc("a", before_seq=page1[-1][0].seq, limit=4)
    assert [e for _, e in page2] == [r.envelope for r in newest[4:]]
    assert store.subject_history_desc("a", before_seq=page2[-1][0].seq) == []
    assert store.subject_history_desc("nobody") == []


def test_paging_1200_records_both_ways_gives_each_once_in_order(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    wanted: list[bytes] = []
    for _ in range(12):  # 12 blocks of 100 "deep" records, another subject interleaved
        records = []
        for i in range(110):
            records.append(b.record(subject="other" if i % 11 == 5 else "deep"))
        store.append(b.block(records))
        wanted += [r.envelope for r in records if r.body.subject == "deep"]
    assert len(wanted) == 1200
    forward: list[bytes] = []
    after, pages = -1, 0
    while pages < 100:
        rows = store.subject_history("deep", after_seq=after, limit=97)
        pages += 1
        forward += [e for _, e in rows]
        if len(rows) < 97:
            break
        after = rows[-1][0].seq
    assert forward == wanted and pages == 13
    backward: list[bytes] = []
    before: int | None = None
    pages = 0
    while pages < 100:
        rows = store.subject_history_desc("deep", before_seq=before, limit=97)
        pages += 1
        assert [loc.seq for loc, _ in rows] == sorted((loc.seq for loc, _ in rows), reverse=True)
        backward += [e for _, e in rows]
        if len(rows) < 97:
            break
        before = rows[-1][0].seq
    assert backward == wanted[::-1] and pages == 13


def test_block_that_does_not_extend_the_tip_is_refused(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    b.add(1)
    good = b.block([b.record()])
    import dataclasses

    with pytest.raises(BlockError, match="expected height 2"):
        store.append(dataclasses.replace(good, header=dataclasses.replace(good.header, height=3)))
    with pytest.raises(BlockError, match="prev_hash"):
        store.append(dataclasses.replace(
            good, header=dataclasses.replace(good.header, prev_hash=b"\x00" * 32)))
    with pytest.raises(BlockError, match="log_root"):
        store.append(dataclasses.replace(
            good, header=dataclasses.replace(good.header, log_root=b"\x00" * 32)))
    assert store.height == 1
    store.append(good)
    assert store.height == 2


def test_duplicate_record_is_refused_atomically(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    first = b.add(2)
    dup = b.block([b.record(), first.records[0]])
    with pytest.raises(DuplicateError):
        store.append(dup)
    assert store.height == 1
    assert store.locate(dup.records[0].id) is None  # nothing of the failed block was kept
    assert store.log.size == 2
    b.add(1)
    assert store.height == 2


def test_log_proofs_served_from_stored_nodes(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    envelopes: list[bytes] = []
    sizes = []
    for n in (1, 4, 3, 7, 0, 2, 16, 5):
        block = b.add(n)
        envelopes += [r.envelope for r in block.records]
        sizes.append((block.header.log_size, block.header.log_root))
    leaves = [merkle.leaf_hash(e) for e in envelopes]
    size, root = sizes[-1]
    for index in range(size):
        plan = merkle.plan_inclusion(index, size)
        proof = merkle.assemble_proof(plan, store.log_nodes(merkle.all_node_ids(plan)))
        assert len(merkle.all_node_ids(plan)) <= 2 * size.bit_length()
        merkle.verify_inclusion(index, size, leaves[index], proof, root)
    for old_size, old_root in sizes:
        plan = merkle.plan_consistency(old_size, size)
        proof = merkle.assemble_proof(plan, store.log_nodes(merkle.all_node_ids(plan)))
        merkle.verify_consistency(old_size, size, old_root, root, proof)


def test_sqlite_store_reopens_where_it_left(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as s:
        b = ChainBuilder(FX, s)
        for _ in range(5):
            b.add(3)
        tip, root = s.tip_hash(), s.log.root()
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as s:
        assert (s.height, s.tip_hash(), s.log.root()) == (5, tip, root)
        b.store = s
        b.add(2)
        assert s.height == 6
    with SqliteStore(path, readonly=True) as ro:
        assert ro.height == 6 and ro.genesis_hash == FX.genesis.hash
    # WAL mode is on
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_store_refuses_another_genesis_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    SqliteStore(path, genesis_hash=FX.genesis.hash).close()
    with pytest.raises(StoreError, match="belongs to genesis"):
        SqliteStore(path, genesis_hash=b"\x01" * 32)
    with pytest.raises(StoreError, match="no such store"):
        SqliteStore(tmp_path / "nope.db", readonly=True)


def test_sqlite_store_detects_a_damaged_log(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as s:
        b = ChainBuilder(FX, s)
        for _ in range(3):
            b.add(4)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE log_nodes SET hash = zeroblob(32) WHERE level = 3")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptStoreError, match="height 3"):
        SqliteStore(path)


def test_a_schema_1_store_is_migrated_on_open(tmp_path: Path) -> None:
    """Schema 1 had a unique index on the full id; opening it writable builds ``ids``."""
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        b = ChainBuilder(FX, store)
        blocks = [b.add(4) for _ in range(3)]
    db = sqlite3.connect(path)
    db.executescript("""
        DROP TABLE ids;
        DELETE FROM meta WHERE key = 'ids_upto';
        CREATE UNIQUE INDEX records_by_id ON records (id);
        UPDATE meta SET value = 1 WHERE key = 'schema_version';
    """)
    db.close()
    with pytest.raises(StoreError, match=r"schema version 1.*ledger node run"):
        SqliteStore(path, readonly=True)
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        rec = blocks[1].records[2]
        loc = store.locate(rec.id)
        assert loc is not None and (loc.height, loc.index) == (2, 2)
        assert store.seen_ids([r.id for blk in blocks for r in blk.records]) == {
            r.id for blk in blocks for r in blk.records}
        check_indexes(store)
        assert store.indexed_id_count() == 12 and len(store._recent) == 0
    with SqliteStore(path, readonly=True) as store:
        assert store.envelope(rec.id) == rec.envelope


def test_recent_ids_merge_into_the_index_and_survive_reopening(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One slice of the id space per block, round robin, once it holds MERGE_AT ids."""
    monkeypatch.setattr(sqlite_store, "MERGE_AT", 2)
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        b = ChainBuilder(FX, store)
        records = [r for _ in range(40) for r in b.add(6).records]
        merged = store.indexed_id_count() - len(store._recent)
        assert 0 < merged < len(records) and len(store._recent) > 0
    for readonly in (False, True):
        with SqliteStore(path, readonly=readonly) as store:
            assert store.indexed_id_count() == len(records)
            assert store.indexed_id_count() - len(store._recent) == merged
            for seq, r in enumerate(records):
                loc = store.locate(r.id)
                assert loc is not None and loc.seq == seq and store.envelope(r.id) == r.envelope
            assert store.seen_ids([r.id for r in records] + [b"\x07" * 32]) == {
                r.id for r in records}
            check_indexes(store)
    db = sqlite3.connect(path)
    (seq,) = db.execute("SELECT seq FROM ids LIMIT 1").fetchone()
    db.execute("DELETE FROM ids WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    with SqliteStore(path, readonly=True) as store, pytest.raises(CorruptStoreError):
        check_indexes(store)


def test_ids_and_nonces_known_absent_are_not_asked_again_and_stay_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``seen_ids`` and ``seen_nonces`` remember what they found missing, so the proposal's
    and the append's lookups of a record admission asked about cost no query; a record that
    then commits is seen at once (``append`` forgets it first), also once its id is merged
    into the ``ids`` table, and a block repeating it is refused. The memory is bounded
    (ABSENT_KEPT, then forgotten all at once) and a read-only store keeps none."""
    monkeypatch.setattr(sqlite_store, "MERGE_AT", 1)  # a slice merged every block
    monkeypatch.setattr(sqlite_store, "ABSENT_KEPT", 40)
    path = tmp_path / "chain.db"
    store = SqliteStore(path, genesis_hash=FX.genesis.hash)
    b = ChainBuilder(FX, store)
    records = [b.record() for _ in range(32)]
    ids = [r.id for r in records]
    pairs = [(r.body.signer, r.body.nonce) for r in records]
    assert store.seen_ids(ids) == set() and store.seen_nonces(pairs) == set()
    assert store._absent_ids.keys == set(ids) and store._absent_nonces.keys == set(pairs)
    queries: list[str] = []
    store._db.set_trace_callback(queries.append)
    assert store.seen_ids(ids[:8]) == set() and store.seen_nonces(pairs[:8]) == set()
    assert not queries  # answered from memory
    for i in range(0, 32, 4):
        store.append(b.block(records[i:i + 4]))
        assert store.seen_ids(ids) == set(ids[:i + 4])  # each block's records seen at once
        assert store.seen_nonces(pairs) == set(pairs[:i + 4])
        assert not set(ids[:i + 4]) & store._absent_ids.keys
        assert not set(pairs[:i + 4]) & store._absent_nonces.keys
    store._db.set_trace_callback(None)
    assert store._db.execute("SELECT COUNT(*) FROM ids").fetchone()[0] > 0
    with pytest.raises(DuplicateError):
        store.append(b.block([records[0]]))
    many = [bytes([7, n]) * 16 for n in range(30)]
    assert store.seen_ids(many) == set()
    assert store._absent_ids.keys == set(many)  # over ABSENT_KEPT: forgotten, then these
    store.close()
    with SqliteStore(path, readonly=True) as ro:
        assert ro.seen_ids([*ids, *many]) == set(ids)
        assert ro.seen_nonces(pairs) == set(pairs)
        assert ro._absent_ids.keys == set() and ro._absent_nonces.keys == set()


def test_sqlite_reads_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    """API reads go through each thread's read-only connection: a writer holding the
    store's lock (an append through COMMIT and fsync) does not hold them up."""
    import threading
    import time

    from ledger.store import SqliteStore
    from tests.factory import ChainBuilder, make_fixture

    fx = make_fixture()
    store = SqliteStore(tmp_path / "chain.db", genesis_hash=fx.genesis.hash)
    builder = ChainBuilder(fx, store)
    block = builder.add(3)
    record = block.records[1]
    writing, done = threading.Event(), threading.Event()

    def long_append() -> None:
        with store._lock:  # what an append holds, for 2 s
            writing.set()
            done.wait(2)

    writer = threading.Thread(target=long_append)
    writer.start()
    writing.wait()
    answers: list[object] = []
    reader = threading.Thread(target=lambda: answers.extend([
        store.locate(record.id), store.envelope(record.id), store.block_bytes(1),
        store.subject_history(record.body.subject), store.subject_history_desc(
            record.body.subject)]))
    started = time.monotonic()
    reader.start()
    reader.join(5)
    elapsed = time.monotonic() - started
    done.set()
    writer.join()
    assert elapsed < 1.0, f"reads waited {elapsed:.2f} s for the writer"
    location, envelope, data, history, newest = answers
    assert location is not None and location.height == 1
    assert envelope == record.envelope and data == block.to_wire()
    assert len(history) == len(newest) == 3  # type: ignore[arg-type]
    builder.add(2)  # a reader's connection sees what is committed after it opened
    more: list[object] = []
    again = threading.Thread(target=lambda: more.append(store.block_bytes(2)))
    again.start()
    again.join(5)
    assert more == [builder.blocks[-1].to_wire()]
    store.close()


def test_sqlite_close_waits_for_reads_under_way_in_other_threads(tmp_path: Path) -> None:
    """A node's stop closed the store while a worker thread still stepped a read on its own
    connection (the sealed-payload scan): closing a connection under a running statement
    crashed the process (SIGSEGV, 3 of 10 quick start/stops of four nodes). ``close`` now
    waits for reads under way, and a read after it is a ``StoreError``."""
    import threading
    import time

    store = SqliteStore(tmp_path / "chain.db", genesis_hash=FX.genesis.hash)
    ChainBuilder(FX, store).add(3)
    reading, release = threading.Event(), threading.Event()
    rows: list[object] = []

    def slow_read() -> None:
        with store._reading() as db:
            reading.set()
            release.wait(5)
            rows.append(db.execute("SELECT count(*) FROM records").fetchone()[0])

    reader = threading.Thread(target=slow_read)
    reader.start()
    assert reading.wait(5)
    closer = threading.Thread(target=store.close)
    closer.start()
    time.sleep(0.3)
    assert closer.is_alive()  # waiting for the read, not closing under it
    release.set()
    closer.join(5)
    reader.join(5)
    assert not closer.is_alive() and rows == [3]
    with pytest.raises(StoreError, match="closed"):
        store.block_bytes(1)
