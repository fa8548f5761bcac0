"""The SQLite store's bookkeeping for SPEC section 10 (``sealed`` and ``redactions``,
schema 3): written in the block's transaction, and rebuilt from the stored records when a
schema-2 file is opened for writing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger.blocks import Block
from ledger.errors import CorruptStoreError, DigestReusedError, RedactionTargetError, StoreError
from ledger.store import SqliteStore
from ledger.store import sqlite as sqlite_store
from ledger.store.check import check_indexes
from tests.factory import ChainBuilder, sealed_record
from tests.unit.test_one_rule import GOVERNED, GX, ORG0_WRITER, SEALED_FAULTS, SealedChain


def test_a_schema_2_store_gains_its_sealed_and_redaction_rows_on_open(tmp_path: Path) -> None:
    c = SealedChain()
    path = tmp_path / "chain.db"
    c.sqlite(path).close()
    db = sqlite3.connect(path)
    db.executescript("""
        DROP TABLE sealed;
        DROP TABLE redactions;
        UPDATE meta SET value = 2 WHERE key = 'schema_version';
    """)
    db.close()
    with pytest.raises(StoreError, match=r"schema version 2.*ledger node run"):
        SqliteStore(path, readonly=True)
    ids = [c.own.id, c.acme.id, c.gone.id, c.inline.id]
    with SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config) as store:
        assert store.sealed_signers(ids) == {c.own.id: ORG0_WRITER.public,
                                             c.acme.id: c.acme.body.signer,
                                             c.gone.id: c.gone.body.signer}
        assert [store.redacted_at(i) for i in ids] == [None, None, 2, None]
        assert store.seen_digests([c.gone.body.payload_digest or b""]) == {
            c.gone.body.payload_digest}
    with SqliteStore(path, readonly=True) as store:
        assert store.redacted([c.gone.id, c.own.id]) == {c.gone.id}


def test_a_block_that_fails_the_rule_leaves_no_row(tmp_path: Path) -> None:
    """The rule is checked before the transaction: a refused block writes nothing."""
    c = SealedChain()
    header, records = SEALED_FAULTS["two redactions of one record in one block"](c)
    with c.sqlite(tmp_path / "chain.db") as store:
        with pytest.raises(RedactionTargetError, match="already redacted"):
            store.append(Block.from_wire(c.block(header, records)))
        assert store.height == 2 and store.redacted([c.own.id]) == set()


def test_node_check_compares_sealed_rows_with_the_envelopes(tmp_path: Path) -> None:
    c = SealedChain()
    path = tmp_path / "chain.db"
    with c.sqlite(path) as store:
        check_indexes(store)
    db = sqlite3.connect(path)
    db.execute("DELETE FROM sealed WHERE seq = 1")
    db.commit()
    db.close()
    with (SqliteStore(path, readonly=True) as store,
          pytest.raises(CorruptStoreError, match="sealed row of record 1")):
        check_indexes(store)


def test_a_schema_5_store_gains_its_digest_index_on_open(tmp_path: Path) -> None:
    """Schema 5 kept a unique index on the full digest; schema 6 replaces it with
    ``digests`` (filled on open) and the recent digests in memory."""
    c = SealedChain()
    path = tmp_path / "chain.db"
    c.sqlite(path).close()
    db = sqlite3.connect(path)
    db.executescript("""
        DROP TABLE digests;
        DELETE FROM meta WHERE key = 'digests_upto';
        CREATE UNIQUE INDEX sealed_by_digest ON sealed (digest);
        UPDATE meta SET value = 5 WHERE key = 'schema_version';
    """)
    db.close()
    with pytest.raises(StoreError, match=r"schema version 5.*ledger node run"):
        SqliteStore(path, readonly=True)
    digests = [r.body.payload_digest or b"" for r in (c.own, c.acme, c.gone)]
    with SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config) as store:
        assert store.seen_digests([*digests, b"\x07" * 32]) == set(digests)
        assert len(store._recent_digests) == 0 and store.indexed_digest_count() == 3
        check_indexes(store)
        with pytest.raises(DigestReusedError):  # the rule still finds a committed digest
            store.append(c.builder.block([sealed_record(
                GX.writer, GOVERNED.chain_id, nonce=20_001, digest=digests[1])]))
    with SqliteStore(path, readonly=True) as store:
        assert store._db.execute("SELECT name FROM sqlite_master "
                                 "WHERE name = 'sealed_by_digest'").fetchall() == []
        assert store.seen_digests(digests) == set(digests)


def test_digests_merged_into_the_index_are_still_found(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With a slice merged every block, most digests are in ``digests``, the rest in
    memory; after a reopen (the memory rebuilt from ``sealed``) every one is found, a reused
    one is refused, and ``ledger node check`` sees a missing index row."""
    monkeypatch.setattr(sqlite_store, "MERGE_AT", 1)
    path = tmp_path / "chain.db"
    store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    records = [sealed_record(GX.writer, GOVERNED.chain_id, nonce=30_000 + n)
               for n in range(64)]
    for i in range(0, 64, 4):
        store.append(builder.block(records[i:i + 4]))
    digests = {r.body.payload_digest or b"" for r in records}
    merged = store._db.execute("SELECT COUNT(*) FROM digests").fetchone()[0]
    assert 0 < merged < 64 and store.indexed_digest_count() == 64
    assert store.seen_digests(digests) == digests
    store.close()
    with SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config) as store:
        builder.store = store
        assert store.seen_digests([*digests, b"\x07" * 32]) == digests
        check_indexes(store)
        for old in (records[0], records[-1]):  # in ``digests``, and likely still in memory
            with pytest.raises(DigestReusedError):
                store.append(builder.block([sealed_record(
                    GX.writer, GOVERNED.chain_id, nonce=40_000 + old.body.nonce,
                    digest=old.body.payload_digest)]))
        seq = store._db.execute("SELECT seq FROM digests LIMIT 1").fetchone()[0]
    db = sqlite3.connect(path)
    db.execute("DELETE FROM digests WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    with (SqliteStore(path, readonly=True) as store,
          pytest.raises(CorruptStoreError, match="digest index")):
        check_indexes(store)


def test_digests_known_absent_are_not_asked_again_and_stay_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``seen_digests`` remembers the digests it found missing, so the proposal's and the
    append's lookups of a digest admission asked for cost no index query; a digest that
    then commits is seen at once (``append`` forgets it first), also once merged into the
    ``digests`` table, and a block reusing it is refused. The memory is bounded
    (ABSENT_KEPT, then forgotten all at once) and a read-only store keeps none."""
    monkeypatch.setattr(sqlite_store, "MERGE_AT", 1)  # a slice merged every block
    monkeypatch.setattr(sqlite_store, "ABSENT_KEPT", 40)
    path = tmp_path / "chain.db"
    store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    records = [sealed_record(GX.writer, GOVERNED.chain_id, nonce=50_000 + n)
               for n in range(32)]
    digests = [r.body.payload_digest or b"" for r in records]
    assert store.seen_digests(digests) == set()
    assert store._absent_digests.keys == set(digests)
    queries: list[str] = []
    store._db.set_trace_callback(queries.append)
    assert store.seen_digests(digests[:8]) == set()
    assert not [q for q in queries if "digests" in q]  # answered from memory
    for i in range(0, 32, 4):
        store.append(builder.block(records[i:i + 4]))
        done = set(digests[:i + 4])
        assert store.seen_digests(digests) == done  # each block's digests seen at once
        assert not done & store._absent_digests.keys
    store._db.set_trace_callback(None)
    assert store._db.execute("SELECT COUNT(*) FROM digests").fetchone()[0] > 0
    with pytest.raises(DigestReusedError):
        store.append(builder.block([sealed_record(GX.writer, GOVERNED.chain_id, nonce=60_000,
                                                  digest=digests[0])]))
    many = [bytes([7, n]) * 16 for n in range(30)]
    assert store.seen_digests(many) == set()
    assert store._absent_digests.keys == set(many)  # over ABSENT_KEPT: forgotten, then these
    store.close()
    with SqliteStore(path, readonly=True) as ro:
        assert ro.seen_digests([*digests, *many]) == set(digests)
        assert ro._absent_digests.keys == set()


def test_a_rolled_back_bulk_forgets_the_digests_known_absent(tmp_path: Path) -> None:
    """A bulk write rolled back reloads the store's memory: nothing it learnt inside
    (absent digests included) outlives the rollback."""
    store = SqliteStore(tmp_path / "chain.db", genesis_hash=GOVERNED.hash,
                        config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    rec = sealed_record(GX.writer, GOVERNED.chain_id, nonce=70_000)
    digest = rec.body.payload_digest or b""
    assert store.seen_digests([digest]) == set()
    with pytest.raises(RuntimeError), store.bulk():
        store.append(builder.block([rec]))
        assert store.seen_digests([digest]) == {digest}
        raise RuntimeError("abandon the batch")
    assert store._absent_digests.keys == set()
    assert store.seen_digests([digest]) == set()
    store.close()


@pytest.mark.parametrize("count", [0, 1, 5, 63, 64, 65, 127, 200])
def test_rows_inserted_several_at_a_time_are_every_row_once(count: int) -> None:
    """``_insert_rows`` (the ``sealed`` and ``payloads`` rows of a block): every row once,
    in runs of 64, 32, ... 1 rows, whatever the count."""
    db = sqlite3.connect(":memory:", isolation_level=None)  # as the store's writer
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a BLOB, b BLOB)")
    rows = [(i, bytes([i % 256]) * 3, None) for i in range(count)]
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    sqlite_store._insert_rows(db, "t", 3, rows)
    db.set_trace_callback(None)
    assert db.execute("SELECT seq, a, b FROM t ORDER BY seq").fetchall() == rows
    assert len(statements) == count // 64 + bin(count % 64).count("1")
    with pytest.raises(sqlite3.IntegrityError):  # a repeated key is refused as before
        sqlite_store._insert_rows(db, "t", 3, [(count + 1, b"", b""), (count + 1, b"", b"")])
