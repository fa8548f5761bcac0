"""Sealed payloads in the stores (SPEC section 10): a block's pairs are kept in its write,
checked against their digests; pairs that arrive later are kept only for committed sealed
records that no redaction names; a redaction deletes its records' pairs in its block's
write, and in SQLite the bytes are then in neither the database file nor its WAL."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from ledger.errors import CorruptStoreError, PayloadMismatchError, StoreError
from ledger.records import Record, SealedPayload, seal_record
from ledger.store.check import check_indexes
from ledger.store.memory import MemoryStore
from ledger.store.sqlite import SqliteStore
from tests.factory import ChainBuilder, redaction_record
from tests.unit.test_one_rule import A1, A2, GOVERNED, GX

CHAIN = GOVERNED.chain_id


def make_store(kind: str, tmp_path: Path) -> MemoryStore | SqliteStore:
    if kind == "memory":
        return MemoryStore(GOVERNED.hash, config=GOVERNED.config)
    return SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)


def sealed(nonce: int, marker: bytes, pad: int = 3000) -> tuple[Record, SealedPayload]:
    return seal_record(GX.writer, chain=CHAIN, type="sensor.reading", subject="oven",
                       payload={"recipe": marker.decode(), "pad": "x" * pad,
                                "tail": marker.decode()[::-1]}, ts=1,
                       nonce=1000 + nonce)


# A schema-7 file rewritten as schema 6 stored it: the pairs in a ``payloads`` table of their
# own (copied from the sealed rows with ``copy``), none in the sealed rows.
SCHEMA_6 = """
    CREATE TABLE payloads (seq INTEGER PRIMARY KEY, salt BLOB NOT NULL,
                           payload BLOB NOT NULL);
    {copy}
    ALTER TABLE sealed DROP COLUMN salt;
    ALTER TABLE sealed DROP COLUMN payload;
    UPDATE meta SET value = 6 WHERE key = 'schema_version';
"""


def as_schema_6(path: Path) -> None:
    """Rewrite the store at ``path`` as schema 6 stored the same chain."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_6.format(copy="INSERT INTO payloads SELECT seq, salt, payload "
                                          "FROM sealed WHERE payload IS NOT NULL;"))
    db.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_pairs_are_kept_fetched_late_and_deleted_by_a_redaction(kind: str,
                                                                tmp_path: Path) -> None:
    store = make_store(kind, tmp_path)
    builder = ChainBuilder(GX, store)
    a, pa = sealed(1, b"MARKER-A")
    b, pb = sealed(2, b"MARKER-B")
    c, pc = sealed(3, b"MARKER-C")
    inline = builder.record()
    block = builder.block([a, b, c, inline])
    with pytest.raises(PayloadMismatchError):  # a pair that is not the record's
        store.append(block, payloads={a.id: pb})
    assert store.height == 0
    store.append(block, payloads={a.id: pa, inline.id: pa})  # the inline one is ignored
    assert store.payloads([a.id, b.id, inline.id]) == {a.id: pa}
    assert store.missing_payloads() == [(1, b.id), (2, c.id)]
    assert store.missing_payloads(after_seq=1, limit=1) == [(2, c.id)]

    put = store.put_payloads({b.id: pb, c.id: pa, inline.id: pa, os.urandom(32): pb})
    assert put.stored == (b.id,) and put.mismatched == (c.id,)
    assert store.put_payloads({b.id: pb}).stored == ()  # already held
    assert [(s, i) for s, i, _ in store.payloads_between(0, 4)] == [(0, a.id), (1, b.id)]

    redaction = redaction_record(GOVERNED.config, A1, [a.id, c.id], approvers=[A1, A2])
    store.append(builder.block([redaction]))
    assert store.redacted([a.id, b.id, c.id]) == {a.id, c.id}
    assert store.payloads([a.id, b.id, c.id]) == {b.id: pb}
    assert store.missing_payloads() == []  # c is redacted: never wanted again
    assert store.put_payloads({a.id: pa, c.id: pc}).stored == ()  # never stored again
    assert store.scrub()


def test_redacted_bytes_leave_the_sqlite_file_and_its_wal(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    # small cells, cells with overflow pages (30 KB: more than a 4 KiB page) and mid-sized
    records = [sealed(n, f"SECRET-{n:04d}-MARKER".encode(), pad=(50, 30_000, 3000)[n % 3])
               for n in range(1, 41)]
    for i in range(0, 40, 10):
        batch = records[i:i + 10]
        store.append(builder.block([r for r, _ in batch]),
                     payloads={r.id: p for r, p in batch})
    gone = [r.id for r, _ in records[:20]]
    assert store.scrub()  # the inserts are in the file now, not only in the WAL

    def found(marker: bytes) -> list[str]:
        return [f.name for f in tmp_path.iterdir() if marker in f.read_bytes()]

    assert found(b"SECRET-0005-MARKER") == ["s.db"]
    store.append(builder.block([redaction_record(GOVERNED.config, A1, gone,
                                                 approvers=[A1, A2])]))
    assert found(b"SECRET-0005-MARKER")  # the WAL still holds the frames of the insert
    assert store.scrub()
    assert (tmp_path / "s.db-wal").stat().st_size == 0
    for n in range(1, 21):
        marker = f"SECRET-{n:04d}-MARKER"
        assert found(marker.encode()) == found(marker[::-1].encode()) == [], n
    assert found(b"SECRET-0021-MARKER") == ["s.db"]  # the others stay
    store.close()
    reopened = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash,
                           config=GOVERNED.config)
    assert len(reopened.payloads(r.id for r, _ in records)) == 20
    reopened.close()


def test_the_store_check_refuses_a_pair_that_is_not_the_records(tmp_path: Path) -> None:
    """``ledger node check`` (check_indexes): a pair held must match its record's digest and
    belong to a record no redaction names."""
    store = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    (a, pa), (b, pb) = sealed(1, b"A"), sealed(2, b"B")
    store.append(builder.block([a, b]), payloads={a.id: pa, b.id: pb})
    check_indexes(store)
    store._db.execute("UPDATE sealed SET salt = ? WHERE seq = 1", (bytes(32),))
    with pytest.raises(CorruptStoreError, match=r"height 1.*payload held for record 1 is not"):
        check_indexes(store)
    store._db.execute("UPDATE sealed SET salt = ? WHERE seq = 1", (pb.salt,))
    store.append(builder.block([redaction_record(GOVERNED.config, A1, [a.id],
                                                 approvers=[A1, A2])]))
    check_indexes(store)
    store._db.execute("UPDATE sealed SET salt = ?, payload = ? WHERE seq = 0",
                      (pa.salt, pa.payload))
    with pytest.raises(CorruptStoreError, match="payload of record 0 is held although"):
        check_indexes(store)
    store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_pair_checked_at_admission_is_not_decoded_again_when_it_heals_a_store(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``put_payloads`` of a resubmitted pair that admission checked against this very
    digest (``SealedPayload.checked_for``) skips the second decode and hash; a pair
    checked for another digest, or never, is checked in full (and refused if it does not
    match)."""
    from ledger.store import base

    store = make_store(kind, tmp_path)
    r1, p1 = sealed(1, b"HEAL-ONE")
    r2, p2 = sealed(2, b"HEAL-TWO")
    store.append(ChainBuilder(GX, store).block([r1, r2]))  # committed without their pairs
    p1.check(r1)
    calls: list[str] = []
    real = base.check_sealed_payload
    monkeypatch.setattr(base, "check_sealed_payload",
                        lambda *a: (calls.append(a[3]), real(*a))[1])
    forged = SealedPayload(p2.salt, p2.payload + b"")
    object.__setattr__(forged, "checked_for", r1.body.payload_digest)  # not r2's digest
    put = store.put_payloads({r1.id: p1, r2.id: SealedPayload(p2.salt, b"\xc0")})
    assert set(put.stored) == {r1.id} and list(put.mismatched) == [r2.id]
    assert calls == [f"record {r2.id.hex()}"]
    assert set(store.put_payloads({r2.id: forged}).stored) == {r2.id}
    assert len(calls) == 2
    assert store.payloads([r1.id, r2.id]) == {r1.id: p1, r2.id: p2}


def test_a_schema_6_store_moves_its_pairs_into_the_sealed_rows_on_open(
        tmp_path: Path) -> None:
    """Schema 6 kept the pairs in a ``payloads`` table of their own; schema 7 keeps each in
    its record's ``sealed`` row (one B-tree insert per sealed record instead of two). A
    schema-6 file opened for writing keeps every pair it held, lacks those it lacked,
    never regains a redacted one, and no longer has the table."""
    path = tmp_path / "s.db"
    store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    (a, pa), (b, pb), (c, _) = (sealed(n, f"MIGRATED-{n}".encode(), pad=(50, 30_000, 9)[n])
                                for n in range(3))
    store.append(builder.block([a, b, c]), payloads={a.id: pa, b.id: pb})
    store.append(builder.block([redaction_record(GOVERNED.config, A1, [a.id],
                                                 approvers=[A1, A2])]))
    store.close()
    as_schema_6(path)  # the same chain as schema 6 stored it
    with pytest.raises(StoreError, match=r"schema version 6.*ledger node run"):
        SqliteStore(path, readonly=True)
    with SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config) as store:
        assert store.payloads([a.id, b.id, c.id]) == {b.id: pb}
        assert [rid for _, rid in store.missing_payloads()] == [c.id]
        check_indexes(store)
        assert store._db.execute("SELECT name FROM sqlite_master "
                                 "WHERE name = 'payloads'").fetchall() == []
        assert store.put_payloads({a.id: pa}).stored == ()  # redacted: never again
    assert b"MIGRATED-0" not in path.read_bytes()  # the redacted pair, never moved
    with SqliteStore(path, readonly=True) as store:
        assert store.payloads_between(0, 3) == [(1, b.id, pb)]


def _leaked(directory: Path, markers: dict[int, bytes]) -> list[int]:
    """Which of ``markers`` (n -> marker) appear in any file of ``directory``."""
    data = b"".join(f.read_bytes() for f in directory.iterdir() if f.is_file())
    return sorted(n for n, m in markers.items() if m in data or m[::-1] in data)


@pytest.mark.parametrize("seed", [1, 3, 7])
def test_redacted_bytes_leave_the_file_after_pairs_healed_out_of_order(
        tmp_path: Path, seed: int) -> None:
    """Pairs that arrive after their records (``put_payloads``: gossip, block sync) grow
    ``sealed`` rows in the middle of the table; SQLite then moves cells between pages and a
    moved cell's old bytes stay in the unallocated gap of its former page, which
    ``secure_delete`` does not zero. A redaction must leave none of them behind."""
    import random

    rnd = random.Random(seed)
    store = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    records = [sealed(n, f"HEALED-{n:05d}-MARK".encode(), pad=rnd.choice([10, 60, 200, 700]))
               for n in range(400)]
    for i in range(0, len(records), 100):
        store.append(builder.block([r for r, _ in records[i:i + 100]]))
    order = list(range(len(records)))
    rnd.shuffle(order)
    for n in order:  # one at a time, in no order: each grows a row mid-table
        assert store.put_payloads({records[n][0].id: records[n][1]}).stored
    gone = [n for n in range(len(records)) if n % 2]
    store.append(builder.block([redaction_record(GOVERNED.config, A1,
                                                 [records[n][0].id for n in gone],
                                                 approvers=[A1, A2])]))
    # the commit cleared the pairs (none is served) and left the rebuild to the scrub
    assert store.payloads(records[n][0].id for n in gone) == {}
    assert store.rebuild_pending() and store.sealed_rebuilds == 0
    assert store.scrub()
    assert not store.rebuild_pending() and store.sealed_rebuilds == 1
    store.close()
    markers = {n: f"HEALED-{n:05d}-MARK".encode() for n in range(len(records))}
    assert _leaked(tmp_path, {n: markers[n] for n in gone}) == []
    assert len(_leaked(tmp_path, markers)) == len(records) - len(gone)  # the others stay


def test_a_migrated_schema_6_file_keeps_no_copy_of_a_redacted_pair(tmp_path: Path) -> None:
    """A schema-6 file whose ``payloads`` rows were written out of order (healed) and whose
    redactions deleted some of them: after the migration to schema 7 no redacted pair is in
    the file (nor in its WAL), nor after a redaction made under schema 7."""
    import random

    rnd = random.Random(3)
    path = tmp_path / "s.db"
    store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    records = [sealed(n, f"OLDFILE-{n:05d}-MARK".encode(), pad=rnd.choice([10, 60, 200, 700]))
               for n in range(400)]
    for i in range(0, len(records), 100):
        store.append(builder.block([r for r, _ in records[i:i + 100]]))
    before = [n for n in range(len(records)) if n % 3 == 0]  # redacted under schema 6
    store.append(builder.block([redaction_record(GOVERNED.config, A1,
                                                 [records[n][0].id for n in before],
                                                 approvers=[A1, A2])]))
    store.close()
    order = list(range(len(records)))
    rnd.shuffle(order)
    db = sqlite3.connect(path, isolation_level=None)  # the chain as schema 6 wrote it
    db.execute("PRAGMA secure_delete=ON")
    db.executescript(SCHEMA_6.format(copy=""))
    for n in order:  # healed one at a time, out of order
        db.execute("INSERT INTO payloads VALUES (?, ?, ?)",
                   (n, records[n][1].salt, records[n][1].payload))
    db.executemany("DELETE FROM payloads WHERE seq = ?", [(n,) for n in before])
    db.close()
    markers = {n: f"OLDFILE-{n:05d}-MARK".encode() for n in range(len(records))}
    with SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config) as store:
        assert (tmp_path / "s.db-wal").stat().st_size == 0  # the open's TRUNCATE checkpoint
        assert _leaked(tmp_path, {n: markers[n] for n in before}) == []
        assert len(store.payloads([r.id for r, _ in records])) == len(records) - len(before)
        check_indexes(store)
        after = [n for n in range(len(records)) if n % 3 == 1]
        builder = ChainBuilder(GX, store, time_ms=builder.time_ms + 10_000,
                               blocks=builder.blocks)
        store.append(builder.block([redaction_record(GOVERNED.config, A1,
                                                     [records[n][0].id for n in after],
                                                     approvers=[A1, A2], nonce=2_000_001)]))
        assert store.scrub()
        check_indexes(store)
    assert _leaked(tmp_path, {n: markers[n] for n in before + after}) == []
    assert len(_leaked(tmp_path, markers)) == len(records) - len(before) - len(after)


def test_a_migration_cut_short_leaves_the_schema_6_file_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The schema 6 -> 7 migration is one transaction: an error after the new table is
    built rolls everything back (``payloads`` and its pairs still there), and the next
    open migrates."""
    import ledger.store.sqlite as sqlite_store

    path = tmp_path / "s.db"
    store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    (a, pa), (b, pb) = sealed(1, b"CUT-A"), sealed(2, b"CUT-B")
    store.append(ChainBuilder(GX, store).block([a, b]), payloads={a.id: pa, b.id: pb})
    store.close()
    as_schema_6(path)
    real = sqlite_store._rebuild_sealed

    def cut_short(db: sqlite3.Connection, select: str) -> None:
        real(db, select)
        raise OSError("power cut")

    monkeypatch.setattr(sqlite_store, "_rebuild_sealed", cut_short)
    with pytest.raises(OSError, match="power cut"):
        SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    monkeypatch.undo()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (6,)
    assert db.execute("SELECT COUNT(*) FROM payloads").fetchone() == (2,)
    assert {r[1] for r in db.execute("PRAGMA table_info(sealed)")} == {"seq", "digest"}
    db.close()
    with SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config) as store:
        assert store.payloads([a.id, b.id]) == {a.id: pa, b.id: pb}
        check_indexes(store)


def test_blobs_bound_as_bytearray_are_stored_and_read_back_as_the_same_bytes(
        tmp_path: Path) -> None:
    """``append`` binds its blobs as bytearray (cheaper to the sqlite3 module than bytes):
    the file holds BLOBs, every read gives ``bytes`` equal to what was appended, and the
    id and digest lookups find them (from memory, and from the file after a reopen)."""
    store = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    a, pa = sealed(1, b"MARKER-A", pad=10)
    inline = builder.record()
    block = builder.block([a, inline])
    store.append(block, payloads={a.id: pa})
    held = store.payloads([a.id])[a.id]
    assert type(held.salt) is bytes and type(held.payload) is bytes and held == pa
    assert store.envelope(inline.id) == inline.envelope
    assert type(store.envelope(a.id)) is bytes and store.envelope(a.id) == a.envelope
    assert store.seen_ids([a.id, inline.id]) == {a.id, inline.id}
    assert store.seen_digests([a.body.payload_digest or b""]) == {a.body.payload_digest}
    db = sqlite3.connect(tmp_path / "s.db")
    try:
        kinds = db.execute("SELECT typeof(id), typeof(signer), typeof(envelope) FROM records "
                           "UNION SELECT typeof(digest), typeof(salt), typeof(payload) "
                           "FROM sealed UNION SELECT typeof(hash), 'blob', 'blob' "
                           "FROM log_nodes").fetchall()
    finally:
        db.close()
    assert kinds == [("blob", "blob", "blob")]
    store.close()
    reopened = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash,
                           config=GOVERNED.config)
    assert reopened.seen_ids([a.id]) == {a.id}
    assert reopened.seen_digests([a.body.payload_digest or b""]) == {a.body.payload_digest}
    reopened.close()
