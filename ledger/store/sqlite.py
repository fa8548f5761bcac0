"""The SQLite block store: one file, WAL mode, one transaction per block.

Layout (every proof is served in O(log n) reads, never by rehashing history):

- ``blocks``: height -> header bytes, certificate bytes, hash, first log index, count.
- ``records``: one row per committed record keyed by its log index ``seq`` (position in
  the chain-wide Merkle log), with a unique index on ``(signer, nonce)`` and an index on
  ``(subject, seq)``. ``nonce`` is stored as the signed 64-bit reinterpretation of the
  unsigned value, since SQLite integers are signed. A repeated id needs no unique index:
  the same id is the same body, whose ``(signer, nonce)`` the unique index refuses.
- ``ids``: ``(id8, seq)``, the id index, where ``id8`` is the id's first 8 bytes as a
  signed integer (lookups compare the full id of the rows found). Ids are random, so a
  B-tree of them has every page hot: inserting each block's ids as it committed wrote about
  one page per record to the WAL once the chain outgrew a few hundred thousand records, and
  the cost per record grew with the chain. So the newest ids live in memory
  (``RecentIds``, rebuilt from ``records`` on open), in 16 slices of the id space; each
  block's transaction merges at most one slice, in one sorted batch, once it holds
  ``MERGE_AT`` ids: a batch writes each index page of its slice once, and no block pays for
  the whole index (``meta.ids_upto`` records, per slice, the log index below which the
  slice's records are in ``ids``).
- ``config_changes``: height -> record index and change bytes of every committed
  ``ledger.config`` record, written in its block's transaction; on open the configuration
  history is rebuilt from genesis through these rows (no chain re-verification).
- ``sealed``: log index -> ``payload_digest`` of every committed sealed record (SPEC section
  10): "a redaction names a sealed record committed earlier" (its signer is in ``records``)
  is an indexed lookup. Since schema 7 the row also holds the record's pair (``salt``,
  ``payload``; see below), NULL while the node lacks it and after a redaction.
- ``digests`` (schema 6): ``(d8, seq)``, the digest index, kept like ``ids`` (digests are
  as random as ids: a unique index on them, schema 5's ``sealed_by_digest``, wrote a page
  per sealed record to the WAL and cost a quarter of the sealed records' extra CPU at 40k
  records): the newest digests are in memory (a second ``RecentIds``, rebuilt from
  ``sealed`` on open), merged one slice per block (``meta.digests_upto``). The chain-
  extension rule's "each digest once" asks ``seen_digests``, which looks in both.
- ``redactions``: record id -> height of the ``ledger.redact`` record that named it,
  written in that block's transaction ("not yet redacted"; ``redacted_at``).
- the pairs (schema 5 in a ``payloads`` table, schema 7 in the ``salt`` and ``payload``
  columns of ``sealed``: one row and one B-tree insert per sealed record instead of two,
  ~1 us less per record per node): ``(salt, payload_bytes)`` of a sealed record, kept
  beside the chain (SPEC section 10): written in the record's block's transaction when the
  node held it then, or later by ``put_payloads`` (block sync, a bundle), each checked
  against its digest; never for a redacted record. A block carrying a redaction sets the
  pairs it names to NULL in its own transaction (O(the pairs named)) and, when it cleared
  one, sets ``meta.sealed_rebuild_pending`` in the same transaction. The writer
  connection runs with ``secure_delete=ON``, so SQLite overwrites the old cell's bytes
  (and freed pages, overflow pages included) with zeros; but SQLite leaves copies of
  cells it moved between pages that ``secure_delete`` never zeroes, so ``scrub`` (never
  the commit) rebuilds the table while the flag is set (``_rebuild_sealed``, O(the pairs
  held), one rebuild per call however many redaction blocks set the flag, cleared in the
  rebuild's transaction; an open for writing does it too, so a crash cannot lose it),
  then checkpoints the WAL and truncates it, so the bytes are in neither file once a
  ``scrub`` completes. The node spaces its scrubs' rebuilds out
  (``node.payloads.SCRUB_REBUILD_INTERVAL_S``). Copies outside the files
  (backups, exports, the OS's freed disk blocks) are the operator's business
  (docs/privacy.md). A schema-6 file opened for writing moves its pairs into ``sealed``
  and drops ``payloads``.
- ``signing_state``: pubkey -> the consensus signing state a validator wrote in the
  transaction of a block it committed (group commit: the block and the state durable with
  one fsync; the node also keeps the state in its own file, and takes whichever of the two
  signed last: ``node.runtime.load_signing_state``). Opaque bytes to the store.
- ``log_nodes``: the hash of every *perfect* subtree of the log with level >= 1, keyed
  by (level, index). Level-0 nodes are leaf hashes of the envelopes in ``records``.
- ``cosignatures`` (schema 4): ``(height, pubkey) -> sig``, the witness cosignatures the
  node checked and kept (SPEC section 11); ``split_views``: the JSON bytes of each
  cosignature that verified over another block than ours (evidence), oldest first, unique.
  They arrive over HTTP, not with a block: each is one short transaction of its own on the
  writer connection, under the writer's lock (a block commit waits for at most one of
  them, one fsync; a cosignature never waits for a block's checks, only its COMMIT).

Persistence: ``append`` runs in a single ``BEGIN IMMEDIATE`` transaction, and with
``synchronous=FULL`` (the default) the WAL is fsynced at commit, so a block the store has
acknowledged survives a crash, and a writer killed mid-transaction leaves exactly the
blocks committed before it.

Checkpoints: by default SQLite checkpoints the WAL into the database file in the commit
that takes it past 1000 pages, so that commit pays for copying the pages and two more
fsyncs (of the WAL and of the database file) before ``append`` returns. A store opened with
``autocheckpoint=False`` (the node's) never checkpoints in ``append``; its owner calls
``checkpoint`` from another thread, which runs a PASSIVE checkpoint on a connection of its
own: it copies what no reader still needs, never takes the writer's lock and never blocks
a commit (WAL mode lets a writer append while a checkpoint copies), and the next commit
after a complete one starts the WAL over from its beginning (same size on disk, no growth).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from ledger import merkle
from ledger.blocks import Block, Certificate, Header
from ledger.config import Config, ConfigHistory
from ledger.errors import (
    CorruptStoreError,
    DecodeError,
    DuplicateError,
    StoreError,
    ValidationError,
)
from ledger.records import Record, SealedPayload
from ledger.store.base import (
    MAX_SPLIT_VIEWS,
    MAX_SPLIT_VIEWS_PER_WITNESS,
    ConfigChange,
    PayloadsPut,
    RecordLocation,
    block_change,
    block_sealed_rows,
    check_extends,
    check_governed,
    join_block,
    judge_payloads,
    next_config,
    rebuild_history,
    split_view_witness,
    store_redactions,
)
from ledger.validation import ChainTip, block_redactions

SCHEMA_VERSION = 7
CACHE_KIB = 32 * 1024  # SQLite page cache per connection
READER_CACHE_KIB = 4 * 1024  # page cache of each reading thread's own connection
ID_SLICES = 16  # the id space in slices (by the first 4 bits), merged one at a time
MERGE_AT = 2048  # ids of one slice kept in memory before one sorted merge into ``ids``
CLOSE_WAIT_S = 10.0  # ``close`` waits this long at most for reads under way to end
WAL_BOUND_BYTES = 16 * 2**20  # ``checkpoint`` holds the writer back once the WAL is larger
#: Keys the ``seen_*`` lookups found not on the chain, remembered (``_Absent``) up to
#: this many of each kind, then forgotten all at once: ~14 MB at most each; a full mempool
#: (100,000 records by default) holds fewer pending keys, so its lookups stay answered here.
ABSENT_KEPT = 1 << 17
K = TypeVar("K")


class _Absent(Generic[K]):
    """Keys a lookup found not on the chain (record ids, (signer, nonce) pairs, payload
    digests), so the next lookup of one skips the index. Exact, not a guess: the store is
    the chain's only writer and ``append`` forgets a block's keys before writing them; a
    read-only store (another process may write the file) keeps none. At most
    ``ABSENT_KEPT``, then forgotten all at once."""

    def __init__(self, keep: bool) -> None:
        self.keys: set[K] = set()
        self.keep = keep

    def unknown(self, wanted: set[K]) -> set[K]:
        """Those of ``wanted`` not known absent."""
        return wanted - self.keys if self.keys else wanted

    def learn(self, asked: set[K], found: set[K]) -> None:
        """``asked`` was looked up and only ``found`` is on the chain."""
        if self.keep:
            if len(self.keys) + len(asked) > ABSENT_KEPT:
                self.keys.clear()
            self.keys.update(asked - found)

    def forget(self, keys: Iterable[K]) -> None:
        """``keys`` are about to be written."""
        if self.keys:
            self.keys.difference_update(keys)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    header BLOB NOT NULL,
    cert BLOB NOT NULL,
    first_seq INTEGER NOT NULL,
    record_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL,
    height INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    signer BLOB NOT NULL,
    nonce INTEGER NOT NULL,
    subject TEXT NOT NULL,
    envelope BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ids (
    id8 INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (id8, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS records_by_signer_nonce ON records (signer, nonce);
CREATE INDEX IF NOT EXISTS records_by_subject ON records (subject, seq);
CREATE TABLE IF NOT EXISTS config_changes (
    height INTEGER PRIMARY KEY,
    idx INTEGER NOT NULL,
    change BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sealed (
    seq INTEGER PRIMARY KEY,
    digest BLOB NOT NULL,
    salt BLOB,
    payload BLOB
);
CREATE TABLE IF NOT EXISTS digests (
    d8 INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (d8, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS redactions (
    id BLOB PRIMARY KEY,
    height INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cosignatures (
    height INTEGER NOT NULL,
    pubkey BLOB NOT NULL,
    sig BLOB NOT NULL,
    PRIMARY KEY (height, pubkey)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS split_views (
    seq INTEGER PRIMARY KEY,
    doc BLOB NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS signing_state (
    pubkey BLOB PRIMARY KEY,
    state BLOB NOT NULL
);
"""


def _rebuild_sealed(db: sqlite3.Connection, select: str) -> None:
    """Replace ``sealed`` (in the caller's transaction) by a table of ``select``'s rows
    (seq, digest, salt, payload), written in seq order. A redaction must leave no byte of
    its pairs in the file, and ``secure_delete`` zeroes only the cells it deletes and the
    pages it frees: a row that grew in place (a pair healed by ``put_payloads``, the
    schema-6 migration) or shrank (a redaction) makes SQLite move cells between pages, and
    a moved cell's old bytes stay in the unallocated gap of its former page (seen: a
    redacted marker still in the file after pairs healed out of order). Appending in seq
    order moves no leaf cell; dropping the old table zeroes all of its pages. O(the
    table): run by ``SqliteStore.scrub`` (one rebuild for every redaction block before
    it, never in a block's commit) and by the schema-6 migration."""
    db.execute("DROP TABLE IF EXISTS sealed_rebuilt")
    db.execute("CREATE TABLE sealed_rebuilt (seq INTEGER PRIMARY KEY, digest BLOB NOT NULL, "
               "salt BLOB, payload BLOB)")
    db.execute(f"INSERT INTO sealed_rebuilt {select} ORDER BY 1")
    db.execute("DROP TABLE sealed")
    db.execute("ALTER TABLE sealed_rebuilt RENAME TO sealed")


#: ``meta`` key, present while a redaction's cleared pairs may have copies left in the file
#: (set in the redaction block's transaction, deleted in the rebuild's: ``scrub``)
_REBUILD_KEY = "sealed_rebuild_pending"
TRUNCATE_WAIT_MS = 100  # how long a truncation of the WAL waits for readers (then: later)

_IN_CHUNK = 500  # values bound in one "IN (...)" query (SQLite allows 32766)


def id8(record_id: bytes) -> int:
    """The indexed part of a record id: its first 8 bytes as a signed 64-bit integer."""
    return int.from_bytes(record_id[:8], "big", signed=True)


def _id8s(keys: Iterable[bytes]) -> list[int]:
    """The sorted ``id8`` of ``keys`` (inlined: the lookups run it per key, on every node
    for every record's id and every sealed record's digest)."""
    return sorted({int.from_bytes(k[:8], "big", signed=True) for k in keys})


def _recent_of(recent: RecentIds, keys: set[bytes]) -> set[bytes]:
    """Those of ``keys`` that ``recent`` holds (``RecentIds.get``, inlined per key)."""
    pending = recent.pending
    return {k for k in keys if k in pending[k[0] * ID_SLICES // 256]}


def _slice(record_id: bytes) -> int:
    """Which of the ID_SLICES slices of the id space ``record_id`` falls in."""
    return record_id[0] * ID_SLICES // 256


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    """``values`` in runs short enough to bind in one "IN (...)" query."""
    for i in range(0, len(values), _IN_CHUNK):
        yield values[i:i + _IN_CHUNK]


_ROWS_AT_ONCE = 64  # rows in one multi-row INSERT of ``_insert_rows`` at most


# The hot inserts (``append``'s rows: one or more per record) bind their blobs as
# ``bytearray``, the same BLOB to SQLite: the sqlite3 module adapts every parameter that is
# not exactly an int, float, str or bytearray (``need_adapt`` in CPython's
# Modules/_sqlite/cursor.c), and for ``bytes`` that is a registry lookup, then a failed
# ``__adapt__`` lookup on its PrepareProtocol type that formats an AttributeError and drops
# it: ~0.7 us per value, far more than the copy (timed: rows of three 32..120-byte blobs
# inserted in 2.9 us each as bytes, 1.5 us as bytearray). Reads still return ``bytes``.


def _insert_rows(db: sqlite3.Connection, table: str, width: int,
                 rows: Sequence[tuple[Any, ...]]) -> None:
    """``INSERT INTO table VALUES`` each of ``rows`` (``width`` columns), several rows per
    statement: executemany steps one statement per row, and a sealed record's ``sealed``
    row (schema 6: and its ``payloads`` row) cost ~0.5 us more each that way (timed per
    statement). Each ``bytes`` value is bound as a ``bytearray`` (see above). Runs of 64,
    then of 32, 16, ... 1 rows: at most seven statement texts per
    table, each kept in the connection's statement cache."""
    one = "(" + ",".join("?" * width) + ")"
    start, count = 0, len(rows)
    size = _ROWS_AT_ONCE
    while start < count:
        while size > count - start:
            size //= 2
        sql = f"INSERT INTO {table} VALUES " + ",".join([one] * size)
        while count - start >= size:
            db.execute(sql, [bytearray(v) if type(v) is bytes else v
                             for row in rows[start:start + size] for v in row])
            start += size


def to_signed64(nonce: int) -> int:
    """Map an unsigned 64-bit nonce onto SQLite's signed integers (and back, below)."""
    return nonce - 2**64 if nonce >= 2**63 else nonce


def from_signed64(value: int) -> int:
    """Inverse of ``to_signed64``."""
    return value + 2**64 if value < 0 else value


class RecentIds:
    """Committed ids not yet in the ``ids`` table, by slice of the id space (also used for
    the payload digests not yet in ``digests``: any random 32-byte key)."""

    def __init__(self, upto: list[int], rows: Iterable[tuple[bytes, int]]) -> None:
        self.upto = upto  # per slice: its records below this log index are in ``ids``
        self.pending: list[dict[bytes, int]] = [{} for _ in range(ID_SLICES)]
        for rid, seq in rows:
            k = _slice(rid)
            if seq >= upto[k]:
                self.pending[k][rid] = seq

    def get(self, record_id: bytes) -> int | None:
        """The log index of a recent id."""
        return self.pending[_slice(record_id)].get(record_id)

    def covers(self, record_id: bytes, seq: int) -> bool:
        """Whether the id of record ``seq`` belongs here rather than in ``ids``."""
        return seq >= self.upto[_slice(record_id)]

    def __len__(self) -> int:
        return sum(len(p) for p in self.pending)

    def plan(self, added: list[tuple[bytes, int]], height: int, end: int,
             ) -> tuple[list[dict[bytes, int]], int | None, list[tuple[int, int]], list[int]]:
        """For a block adding ``added`` (ids up to log index ``end``): the new ids by slice,
        the slice to merge (one per block, round robin, once it holds MERGE_AT ids), its
        sorted ``(id8, seq)`` rows, and the new per-slice marks. Changes nothing."""
        new: list[dict[bytes, int]] = [{} for _ in range(ID_SLICES)]
        for rid, seq in added:
            new[_slice(rid)][rid] = seq
        k = height % ID_SLICES
        if len(self.pending[k]) + len(new[k]) < MERGE_AT:
            return new, None, [], self.upto
        merged = {**self.pending[k], **new[k]}
        upto = list(self.upto)
        upto[k] = end
        return new, k, sorted((id8(rid), seq) for rid, seq in merged.items()), upto

    def apply(self, new: list[dict[bytes, int]], merged: int | None, upto: list[int]) -> None:
        """After the block's transaction committed."""
        for k, ids in enumerate(new):
            if k == merged:
                self.pending[k] = {}
            else:
                self.pending[k].update(ids)
        self.upto = upto


class SqliteStore:
    """A BlockStore in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str], *, genesis_hash: bytes | None = None,
                 synchronous: str = "FULL", readonly: bool = False,
                 config: Config | None = None, autocheckpoint: bool = True) -> None:
        """Open (or create, unless ``readonly``) the store at ``path``.

        With ``genesis_hash``, a new store is bound to that genesis and an existing one
        must already be. ``readonly`` opens an existing store without writing to it.
        With ``config`` (genesis's version 0) the store follows configuration changes:
        ``history`` is rebuilt from the recorded changes, and each appended block's header
        fields are checked against the configuration in force at its height.
        ``autocheckpoint=False``: commits never checkpoint the WAL (``checkpoint`` does).
        """
        self.path = Path(path)
        self.readonly = readonly
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise StoreError(f"unknown synchronous mode {synchronous!r}")
        if readonly and not self.path.is_file():
            raise StoreError(f"{self.path}: no such store")
        self._lock = threading.RLock()
        self._bulk = False  # inside ``bulk``: appends share its one transaction
        self._local = threading.local()  # each reading thread's own read-only connection
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()  # not the writer's: a new reader never waits
        # reads under way on readers' own connections; ``close`` waits for them to end, as a
        # connection closed while another thread steps a statement on it crashes the process
        self._reads_active = 0
        self._reads_done = threading.Condition(self._readers_lock)
        self._closing = False
        self._checkpointer: sqlite3.Connection | None = None  # ``checkpoint``'s own
        self._checkpoint_lock = threading.Lock()
        #: ``sealed`` rebuilds this store ran (``scrub``, an open): a statistic
        self.sealed_rebuilds = 0
        # the last truncation of the WAL (the open's, a scrub's) found a reader in the way:
        # frames that held deleted pairs may still be in it; ``checkpoint`` retries
        self._truncate_due = False
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._db = sqlite3.connect(uri, uri=True, isolation_level=None,
                                           check_same_thread=False)
            else:
                self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                           check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                # a redaction's deleted payloads are overwritten, not left in free space
                self._db.execute("PRAGMA secure_delete=ON")
                self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                if not autocheckpoint:
                    self._db.execute("PRAGMA wal_autocheckpoint=0")
                self._db.executescript(_SCHEMA)  # adds the newer tables to an older file
                if self._stored_version() == 1:
                    self._migrate_from_1()
                if self._stored_version() == 2:
                    self._migrate_from_2()
                if self._stored_version() == 3:
                    self._migrate_from_3()
                if self._stored_version() == 4:  # schema 5's ``payloads``: now in ``sealed``
                    self._db.execute("UPDATE meta SET value = 5 WHERE key = 'schema_version'")
                if self._stored_version() == 5:
                    self._migrate_from_5()
                if self._stored_version() == 6:
                    self._migrate_from_6()
                # A scrub a crash cut short or that never ran (a redaction committed, the
                # file still holding copies of its pairs' cells, the WAL the frames of their
                # insert) is done before anything reads: ``sealed`` rebuilt if a redaction
                # left that pending (here rather than at the node's first scrub, which runs
                # only after a redaction: every writer, ``ledger node check`` and restores
                # too, finds the files scrubbed), the WAL checkpointed and truncated.
                if self._stored_version() == SCHEMA_VERSION:
                    self._rebuild_if_pending()
                (busy, _, _), = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._truncate_due = busy != 0  # a reader's snapshot: ``checkpoint`` retries
            # Random record ids make the id index's pages all hot; SQLite's default 2 MB
            # page cache re-reads them from the OS on every insert and lookup once the
            # chain outgrows it (throughput fell ~10% from 10k to 100k records).
            self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._init_meta(genesis_hash)
            self._load_tip()
            self._history: ConfigHistory | None = None
            self._config = config
            # every committed change, read once (GET /v1/config reads them per request)
            self._changes: tuple[ConfigChange, ...] | None = None
            if config is not None:
                try:
                    self._history = rebuild_history(config, self.config_changes())
                except ValidationError as exc:
                    raise CorruptStoreError(f"a recorded configuration change does not "
                                            f"apply ({exc})") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open store ({exc})") from exc

    @property
    def history(self) -> ConfigHistory | None:
        """The configuration versions this store's chain has made (None without genesis's)."""
        return self._history

    def config_changes(self) -> list[ConfigChange]:
        """Every committed configuration change, oldest first (none in a store written
        before the table existed and opened read-only)."""
        height, changes = self._height, self._changes
        if changes is None:
            with self._reading() as db:  # like the other reads: never behind a COMMIT's fsync
                try:
                    rows = db.execute("SELECT height, idx, change FROM config_changes "
                                      "WHERE height <= ? ORDER BY height",
                                      (height,)).fetchall()
                except sqlite3.OperationalError:  # a read-only store from before the table
                    return []
            changes = tuple(ConfigChange(h, i, bytes(c)) for h, i, c in rows)
            with self._lock:  # kept unless a block was appended meanwhile (append extends it)
                if self._changes is None and self._height == height:
                    self._changes = changes
        return [c for c in changes if c.height <= height]

    # -- opening -----------------------------------------------------------------------

    def _stored_version(self) -> int | None:
        try:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:  # a new file: no tables yet
            return None
        return None if row is None else int(row[0])

    def _migrate_from_1(self) -> None:
        """Schema 1 -> 2: fill ``ids`` (created empty by the schema script), which replaces
        the unique index on the full id."""
        self._db.create_function("id8", 1, lambda b: id8(bytes(b)), deterministic=True)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT INTO ids SELECT id8(id), seq FROM records ORDER BY 1, 2")
            self._db.execute("DROP INDEX IF EXISTS records_by_id")
            (count,) = self._db.execute("SELECT COUNT(*) FROM records").fetchone()
            self._db.execute("INSERT INTO meta VALUES ('ids_upto', ?)",
                             (json.dumps([count] * ID_SLICES),))
            self._db.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _migrate_from_2(self) -> None:
        """Schema 2 -> 3: fill ``sealed`` and ``redactions`` (created empty by the schema
        script) from the records already stored, decoding each envelope once."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            reader = self._db.execute("SELECT seq, height, envelope FROM records ORDER BY seq")
            sealed: list[tuple[int, bytes]] = []
            redacted: list[tuple[bytes, int]] = []
            for seq, height, envelope in reader:
                record = Record.from_wire(bytes(envelope))
                if record.body.payload_digest is not None:
                    sealed.append((seq, record.body.payload_digest))
                for redaction in block_redactions(None, [record]):
                    redacted.extend((rid, height) for rid in redaction.ids)
            self._db.executemany("INSERT INTO sealed (seq, digest) VALUES (?, ?)", sealed)
            self._db.executemany("INSERT OR IGNORE INTO redactions VALUES (?, ?)", redacted)
            self._db.execute("UPDATE meta SET value = 3 WHERE key = 'schema_version'")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _migrate_from_3(self) -> None:
        """Schema 3 -> 4: ``cosignatures`` and ``split_views`` (created empty by the schema
        script; a chain written before witnesses has none)."""
        self._db.execute("UPDATE meta SET value = 4 WHERE key = 'schema_version'")

    def _migrate_from_5(self) -> None:
        """Schema 5 -> 6: fill ``digests`` (created empty by the schema script), which
        replaces the unique index on the full digest."""
        self._db.create_function("id8", 1, lambda b: id8(bytes(b)), deterministic=True)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("DELETE FROM digests")
            self._db.execute("INSERT INTO digests SELECT id8(digest), seq FROM sealed "
                             "ORDER BY 1, 2")
            self._db.execute("DROP INDEX IF EXISTS sealed_by_digest")
            (count,) = self._db.execute("SELECT COUNT(*) FROM records").fetchone()
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('digests_upto', ?)",
                             (json.dumps([count] * ID_SLICES),))
            self._db.execute("UPDATE meta SET value = 6 WHERE key = 'schema_version'")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _migrate_from_6(self) -> None:
        """Schema 6 -> 7: the pairs move from ``payloads`` into their ``sealed`` rows (one
        row and one B-tree insert per sealed record instead of two); ``payloads`` is dropped
        (``secure_delete``: its freed pages are zeroed; the open's TRUNCATE checkpoint then
        empties the WAL)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = {row[1] for row in db.execute("PRAGMA table_info(sealed)")}
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                          "AND name = 'payloads'").fetchone() is not None:
                # built anew in seq order, not by growing each row in place (which moves
                # cells between pages and leaves copies of them behind: ``_rebuild_sealed``)
                _rebuild_sealed(db, "SELECT s.seq, s.digest, p.salt, p.payload FROM sealed s "
                                    "LEFT JOIN payloads p ON p.seq = s.seq")
                db.execute("DROP TABLE payloads")  # ``secure_delete``: its pages zeroed
            elif "payload" not in columns:
                _rebuild_sealed(db, "SELECT seq, digest, NULL, NULL FROM sealed")
            db.execute("UPDATE meta SET value = 7 WHERE key = 'schema_version'")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _init_meta(self, genesis_hash: bytes | None) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        version = rows.get("schema_version")
        if version is None and self.readonly:
            raise StoreError(f"{self.path}: not a ledger store")
        if version is None:
            self._db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            rows["ids_upto"] = rows["digests_upto"] = json.dumps([0] * ID_SLICES)
            self._db.execute("INSERT INTO meta VALUES ('ids_upto', ?)", (rows["ids_upto"],))
            self._db.execute("INSERT INTO meta VALUES ('digests_upto', ?)",
                             (rows["digests_upto"],))
        elif version != SCHEMA_VERSION:
            hint = (" (open it once with `ledger node run` to upgrade it)"
                    if int(version) < SCHEMA_VERSION else "")
            raise StoreError(f"{self.path}: schema version {version}, this code reads "
                             f"{SCHEMA_VERSION}{hint}")
        stored = rows.get("genesis_hash")
        if genesis_hash is not None:
            if stored is None and not self.readonly:
                self._db.execute("INSERT INTO meta VALUES ('genesis_hash', ?)", (genesis_hash,))
            elif stored is not None and stored != genesis_hash:
                raise StoreError(f"{self.path}: store belongs to genesis {bytes(stored).hex()}, "
                                 f"not {genesis_hash.hex()}")
        self.genesis_hash: bytes | None = genesis_hash or (bytes(stored) if stored else None)
        self._rebuild_pending = _REBUILD_KEY in rows
        self._load_recent(rows)

    def _load_recent(self, rows: Mapping[str, Any]) -> None:
        """The recent ids and digests, from the ``meta`` rows ``rows``."""
        marks = []
        for key in ("ids_upto", "digests_upto"):
            try:
                upto = json.loads(rows[key])
                if len(upto) != ID_SLICES or not all(type(u) is int for u in upto):
                    raise ValueError(upto)
            except (KeyError, TypeError, ValueError) as exc:
                raise CorruptStoreError(
                    f"meta {key} is not {ID_SLICES} integers ({exc!r})") from exc
            marks.append(upto)
        self._recent = RecentIds(marks[0], ((bytes(rid), seq) for rid, seq in self._db.execute(
            "SELECT id, seq FROM records WHERE seq >= ?", (min(marks[0]),))))
        self._recent_digests = RecentIds(marks[1], (
            (bytes(d), seq) for seq, d in self._db.execute(
                "SELECT seq, digest FROM sealed WHERE seq >= ?", (min(marks[1]),))))
        # What ``seen_digests``, ``seen_ids`` and ``seen_nonces`` found missing (a new
        # record is asked for at admission, by the proposer, in the proposal's validation
        # and in ``append``: one index lookup per node instead of three or four).
        keep = not self.readonly
        self._absent_digests: _Absent[bytes] = _Absent(keep)
        self._absent_ids: _Absent[bytes] = _Absent(keep)
        self._absent_nonces: _Absent[tuple[bytes, int]] = _Absent(keep)

    def _load_tip(self) -> None:
        row = self._db.execute(
            "SELECT height, hash, header, first_seq, record_count FROM blocks "
            "ORDER BY height DESC LIMIT 1"
        ).fetchone()
        if row is None:
            self._height, self._tip_hash, self._log = 0, None, merkle.CompactRange()
            self._tip_time = -1
            return
        height, block_hash, header_bytes, first_seq, count = row
        try:
            header = Header.from_wire(header_bytes)
        except DecodeError as exc:
            raise CorruptStoreError(f"tip header does not decode ({exc})", height) from exc
        if header.height != height or header.hash != block_hash:
            raise CorruptStoreError("tip header does not match its row", height)
        size = first_seq + count
        if header.log_size != size:
            raise CorruptStoreError(f"log_size {header.log_size} but {size} records", height)
        ids = merkle.compact_range_ids(size)
        nodes = self._read_log_nodes(ids)
        if len(nodes) != len(ids):
            raise CorruptStoreError("Merkle log nodes are missing", height)
        log = merkle.CompactRange.from_hashes(size, [nodes[i] for i in ids])
        if log.root() != header.log_root:
            raise CorruptStoreError("stored Merkle log does not match the tip's log_root", height)
        self._height, self._tip_hash, self._log = height, bytes(block_hash), log
        self._tip_time = header.time_ms

    # -- the protocol --------------------------------------------------------------------

    @property
    def height(self) -> int:
        """Height of the last committed block (0 when empty)."""
        return self._height

    @property
    def log(self) -> merkle.CompactRange:
        """The Merkle log over every committed envelope."""
        return self._log

    def tip_hash(self) -> bytes | None:
        """Hash of the last block."""
        return self._tip_hash

    def append(self, block: Block, last_cert: Certificate | None = None,
               payloads: Mapping[bytes, SealedPayload] | None = None,
               signing_state: tuple[bytes, bytes] | None = None) -> None:
        """Write ``block`` and everything derived from it in one transaction (and, with
        ``last_cert``, the previous block's canonical certificate; with ``payloads``, the
        pairs of its sealed records; the pairs a redaction in it names are cleared, their
        bytes gone from the files once ``scrub`` completes; with
        ``signing_state`` = (pubkey, state bytes), that validator's signing state, durable
        with the block and by the same fsync)."""
        with self._lock:
            redactions = store_redactions(self._history, block)
            new_log, completed = check_extends(
                block, ChainTip(self._height, self._tip_hash or self.genesis_hash,
                                self._tip_time, self._log),
                last_cert, seen_ids=self.seen_ids, seen_nonces=self.seen_nonces,
                seen_digests=self.seen_digests, sealed_signers=self.sealed_signers,
                redacted=self.redacted, redactions=redactions, history=self._history)
            check_governed(self._history, block)
            change = block_change(block)
            new_config = next_config(self._history, change)
            h = block.header
            first_seq = self._log.size
            blob = bytearray  # see ``_insert_rows``
            rows = [
                (first_seq + i, blob(r.id), h.height, i, blob(r.body.signer),
                 to_signed64(r.body.nonce), r.body.subject, blob(r.envelope))
                for i, r in enumerate(block.records)
            ]
            # (seq, digest, salt, payload): the pair in the row when held, else NULLs
            sealed_rows = block_sealed_rows(block, first_seq, payloads)
            redaction_rows = [(rid, h.height) for red in redactions for rid in red.ids]
            erased = sorted(seq for seq in (self._seq_of(rid, self._db)
                                            for rid, _ in redaction_rows) if seq is not None)
            new_ids, merged, merge_rows, upto = self._recent.plan(
                [(r.id, first_seq + i) for i, r in enumerate(block.records)], h.height,
                first_seq + len(rows))
            new_digests, merged_d, merge_rows_d, upto_d = self._recent_digests.plan(
                [(row[1], row[0]) for row in sealed_rows], h.height, first_seq + len(rows))
            # on the chain from this write on
            self._absent_digests.forget(row[1] for row in sealed_rows)
            self._absent_ids.forget(r.id for r in block.records)
            self._absent_nonces.forget((r.body.signer, r.body.nonce) for r in block.records)
            db = self._db
            bulk = self._bulk
            pends = False
            try:
                if not bulk:
                    db.execute("BEGIN IMMEDIATE")
                try:
                    db.execute(
                        "INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?)",
                        (h.height, h.hash, h.to_wire(), block.cert.to_wire(), first_seq,
                         len(rows)),
                    )
                    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    if merged is not None:  # one sorted batch: each page written once
                        db.executemany("INSERT INTO ids VALUES (?, ?)", merge_rows)
                        db.execute("UPDATE meta SET value = ? WHERE key = 'ids_upto'",
                                   (json.dumps(upto),))
                    db.executemany("INSERT INTO log_nodes VALUES (?, ?, ?)",
                                   [(level, i, blob(node)) for level, i, node in completed])
                    if sealed_rows:
                        _insert_rows(db, "sealed", 4, sealed_rows)
                    if merged_d is not None:
                        db.executemany("INSERT INTO digests VALUES (?, ?)", merge_rows_d)
                        db.execute("UPDATE meta SET value = ? WHERE key = 'digests_upto'",
                                   (json.dumps(upto_d),))
                    if redaction_rows:  # with its block: never a redaction without it
                        db.executemany("INSERT INTO redactions VALUES (?, ?)", redaction_rows)
                        # the pairs' bytes overwritten in place (``secure_delete``)
                        held = db.executemany("UPDATE sealed SET salt = NULL, payload = NULL "
                                              "WHERE seq = ? AND payload IS NOT NULL",
                                              [(seq,) for seq in erased]).rowcount
                        # and every stale copy of them by the next ``scrub``'s rebuild, the
                        # flag durable with this block (the rebuild is O(the table): in the
                        # commit, redactions one per block would pay it per block); a block
                        # naming only pairs never held (a restore) leaves nothing to rebuild
                        if held > 0:
                            db.execute("INSERT OR REPLACE INTO meta VALUES (?, 1)",
                                       (_REBUILD_KEY,))
                            pends = True  # in memory once written (a rolled-back bulk reloads)
                    if last_cert is not None:
                        db.execute("UPDATE blocks SET cert = ? WHERE height = ?",
                                   (last_cert.to_wire(), last_cert.height))
                    if change is not None:  # with its block: a restart sees both or neither
                        db.execute("INSERT INTO config_changes VALUES (?, ?, ?)",
                                   (change.height, change.index, change.change))
                    if signing_state is not None:
                        db.execute("INSERT OR REPLACE INTO signing_state VALUES (?, ?)",
                                   signing_state)
                    if not bulk:
                        db.execute("COMMIT")
                except BaseException:
                    if not bulk:  # in a bulk: ``bulk`` rolls the whole batch back
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError as exc:
                raise DuplicateError(
                    f"height {h.height}: a record id, (signer, nonce), payload_digest or "
                    f"redacted id is already stored ({exc})") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"height {h.height}: write failed ({exc})") from exc
            self._height, self._tip_hash, self._log = h.height, h.hash, new_log
            self._tip_time = h.time_ms
            if pends:  # a hint (``scrub`` reads the row), never set for a failed write
                self._rebuild_pending = True
            self._recent.apply(new_ids, merged, upto)
            self._recent_digests.apply(new_digests, merged_d, upto_d)
            if self._history is not None and new_config is not None:
                self._history.append(h.height, new_config)
            if change is not None and self._changes is not None:
                self._changes = (*self._changes, change)

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Appends inside share one transaction: a bulk import (``node.restore``) writes
        thousands of blocks with one commit and one fsync, each page written once, where
        ``append`` alone commits every block. Each block is checked exactly as by
        ``append``. The blocks are durable together when the ``with`` block ends normally;
        on any exception every block of the batch is rolled back (the store is again at its
        last committed tip, in memory too) and the exception propagates. Reads from other
        threads do not see the batch until it commits."""
        with self._lock:
            if self._bulk:
                raise StoreError("bulk() does not nest")
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot start a write ({exc})") from exc
            self._bulk = True
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._reload()
                raise
            finally:
                self._bulk = False

    def _reload(self) -> None:
        """Read the tip, the recent ids and the configuration history from the file again
        (after a rolled-back bulk write advanced them in memory)."""
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self._rebuild_pending = _REBUILD_KEY in rows
        self._load_recent(rows)
        self._load_tip()
        self._changes = None
        if self._config is not None:
            self._history = rebuild_history(self._config, self.config_changes())

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for a read that never waits for the writer: this thread's own
        read-only connection, which sees the last committed state (WAL readers do not block
        on a writer, and a writer's COMMIT and fsync do not block them). A read-only store
        has no writer: it reads through its one connection."""
        if self.readonly:
            with self._lock:
                yield self._db
            return
        with self._readers_lock:
            if self._closing:
                raise StoreError("the store is closed")
            self._reads_active += 1
        try:
            db: sqlite3.Connection | None = getattr(self._local, "db", None)
            if db is None:
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                     isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA busy_timeout=5000")
                db.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
                with self._readers_lock:
                    self._readers.append(db)
                self._local.db = db
            yield db
        finally:
            with self._readers_lock:
                self._reads_active -= 1
                if not self._reads_active:
                    self._reads_done.notify_all()

    def block_bytes(self, height: int) -> bytes | None:
        """The exact block bytes at ``height``."""
        with self._reading() as db:
            try:
                row = db.execute(
                    "SELECT header, cert, first_seq, record_count FROM blocks WHERE height = ?",
                    (height,),
                ).fetchone()
                if row is None:
                    return None
                header, cert, first_seq, count = row
                envelopes = [e for (e,) in db.execute(
                    "SELECT envelope FROM records WHERE seq >= ? AND seq < ? ORDER BY seq",
                    (first_seq, first_seq + count),
                )]
            except sqlite3.Error as exc:  # e.g. a blob column rewritten as invalid text
                raise CorruptStoreError(f"stored rows do not read ({exc})") from exc
        if not all(type(v) is bytes for v in (header, cert, *envelopes)):
            raise CorruptStoreError("a stored header, certificate or envelope is not a blob")
        if len(envelopes) != count:
            raise CorruptStoreError(f"{count - len(envelopes)} records are missing", height)
        return join_block(header, envelopes, count, cert)

    def header_cert(self, height: int) -> tuple[bytes, bytes] | None:
        """The header and certificate bytes of the block at ``height`` (a checkpoint: one
        row, none of the block's records)."""
        with self._reading() as db:
            try:
                row = db.execute("SELECT header, cert FROM blocks WHERE height = ?",
                                 (height,)).fetchone()
            except sqlite3.Error as exc:
                raise CorruptStoreError(f"stored rows do not read ({exc})") from exc
        if row is None:
            return None
        if not all(type(v) is bytes for v in row):
            raise CorruptStoreError("a stored header or certificate is not a blob", height)
        return row[0], row[1]

    def block(self, height: int) -> Block | None:
        """The decoded block at ``height``."""
        data = self.block_bytes(height)
        return None if data is None else Block.from_wire(data)

    def _seq_of(self, record_id: bytes, db: sqlite3.Connection) -> int | None:
        """The log index of a committed record. The newest ids are in memory, updated
        after their block's COMMIT, so any connection's next read finds their rows."""
        seq = self._recent.get(record_id)
        if seq is None:
            row = db.execute(
                "SELECT r.seq FROM ids JOIN records r ON r.seq = ids.seq "
                "WHERE ids.id8 = ? AND r.id = ?", (id8(record_id), record_id)).fetchone()
            seq = None if row is None else row[0]
        return seq

    def locate(self, record_id: bytes) -> RecordLocation | None:
        """Where record ``record_id`` was committed."""
        with self._reading() as db:
            seq = self._seq_of(record_id, db)
            row = None if seq is None else db.execute(
                "SELECT height, idx, seq FROM records WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else RecordLocation(*row)

    def envelope(self, record_id: bytes) -> bytes | None:
        """The envelope of a committed record."""
        with self._reading() as db:
            seq = self._seq_of(record_id, db)
            row = None if seq is None else db.execute(
                "SELECT envelope FROM records WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else bytes(row[0])

    def seen_ids(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` are already committed: none of those known absent
        (``_absent_ids``), recent ones from memory, the others in one indexed query per 500
        (those not found are then known absent)."""
        return self._seen(ids, self._absent_ids, self._recent,
                          "SELECT r.id FROM ids JOIN records r ON r.seq = ids.seq "
                          "WHERE ids.id8 IN")

    def _seen(self, keys: Iterable[bytes], absent: _Absent[bytes], recent: RecentIds,
              select: str) -> set[bytes]:
        """Which of ``keys`` (record ids, payload digests) are committed: ``absent``'s
        known absences, then ``recent`` in memory, then ``select`` (a query ending in
        "IN", given the keys' ``id8``, returning the full keys) per 500."""
        wanted = set(keys)
        with self._lock:
            unknown = absent.unknown(wanted)
            if not unknown:
                return set()
            found = _recent_of(recent, unknown)
            asked = unknown - found
            for chunk in _chunks(_id8s(asked)):
                found.update(bytes(k) for (k,) in self._db.execute(
                    f"{select} ({','.join('?' * len(chunk))})", chunk))
            absent.learn(asked, found)
        return found & wanted

    def id_indexed(self, record_id: bytes, seq: int) -> bool:
        """Whether the id index maps ``record_id`` to ``seq`` (for ``ledger node check``)."""
        with self._lock:
            if self._recent.covers(record_id, seq):
                return self._recent.get(record_id) == seq
            return self._db.execute("SELECT 1 FROM ids WHERE id8 = ? AND seq = ?",
                                    (id8(record_id), seq)).fetchone() is not None

    def indexed_id_count(self) -> int:
        """Ids in the index: rows of ``ids`` and recent ids in memory (one per record)."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM ids").fetchone()
            return int(count) + len(self._recent)

    def seen_nonces(self, pairs: Iterable[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Which (signer, nonce) pairs are already committed (one indexed query per signer
        and 500 nonces)."""
        wanted = set(pairs)
        found: set[tuple[bytes, int]] = set()
        with self._lock:
            asked = self._absent_nonces.unknown(wanted)
            if not asked:
                return found
            by_signer: dict[bytes, list[int]] = {}
            for signer, nonce in asked:
                by_signer.setdefault(signer, []).append(to_signed64(nonce))
            for signer, nonces in by_signer.items():
                for chunk in _chunks(nonces):
                    found.update((signer, from_signed64(n)) for (n,) in self._db.execute(
                        "SELECT nonce FROM records WHERE signer = ? AND nonce IN "
                        f"({','.join('?' * len(chunk))})", [signer, *chunk]))
            self._absent_nonces.learn(asked, found)
        return found

    def seen_digests(self, digests: Iterable[bytes]) -> set[bytes]:
        """Which sealed payload digests are already committed: none of those known absent
        (``_absent_digests``), recent ones from memory, the others through ``digests`` in
        one indexed query per 500 (those not found are then known absent)."""
        return self._seen(digests, self._absent_digests, self._recent_digests,
                          "SELECT s.digest FROM digests x JOIN sealed s ON s.seq = x.seq "
                          "WHERE x.d8 IN")

    def digest_indexed(self, digest: bytes, seq: int) -> bool:
        """Whether the digest index maps ``digest`` to ``seq`` (for ``ledger node check``)."""
        with self._lock:
            if self._recent_digests.covers(digest, seq):
                return self._recent_digests.get(digest) == seq
            return self._db.execute("SELECT 1 FROM digests WHERE d8 = ? AND seq = ?",
                                    (id8(digest), seq)).fetchone() is not None

    def sealed_count(self) -> int:
        """Rows of ``sealed``: the committed sealed records."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM sealed").fetchone()
            return int(count)

    def indexed_digest_count(self) -> int:
        """Digests in the index: rows of ``digests`` and recent digests in memory."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM digests").fetchone()
            return int(count) + len(self._recent_digests)

    def sealed_signers(self, ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """Which of ``ids`` are committed sealed records, with their signers (each id
        through the id index, then one query per 500 log indexes)."""
        with self._lock:
            by_seq = {}
            for rid in set(ids):
                seq = self._seq_of(rid, self._db)
                if seq is not None:
                    by_seq[seq] = rid
            out: dict[bytes, bytes] = {}
            for chunk in _chunks(sorted(by_seq)):
                for seq, signer in self._db.execute(
                        "SELECT s.seq, r.signer FROM sealed s JOIN records r ON r.seq = s.seq "
                        f"WHERE s.seq IN ({','.join('?' * len(chunk))})", chunk):
                    out[by_seq[seq]] = bytes(signer)
        return out

    def redacted(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` a committed redaction names (one query per 500). Through this
        thread's WAL reader, like ``payloads``: every read of a sealed record asks it (the
        API on its event loop), and it must never wait for a block's write. A redaction's
        rows commit with its block, so the next read sees them."""
        return set(self.redaction_heights(ids))

    def redaction_heights(self, ids: Iterable[bytes]) -> dict[bytes, int]:
        """Those of ``ids`` a committed redaction names, with its height (``redacted`` with
        the heights, in the same one query per 500)."""
        wanted = sorted(set(ids))
        found: dict[bytes, int] = {}
        with self._reading() as db:
            for chunk in _chunks(wanted):
                found.update((bytes(i), int(h)) for i, h in db.execute(
                    "SELECT id, height FROM redactions WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk))
        return found

    # -- sealed payloads ----------------------------------------------------------------

    def put_payloads(self, pairs: Mapping[bytes, SealedPayload]) -> PayloadsPut:
        """Keep pairs that arrived after their records committed (see BlockStore), in one
        short transaction under the writer's lock."""
        if not pairs:
            return PayloadsPut()
        with self._lock:
            digests: dict[bytes, tuple[int, bytes]] = {}
            by_seq = {}
            for rid in pairs:
                seq = self._seq_of(rid, self._db)
                if seq is not None:
                    by_seq[seq] = rid
            for chunk in _chunks(sorted(by_seq)):
                marks = ",".join("?" * len(chunk))
                for seq, digest in self._db.execute(
                        f"SELECT seq, digest FROM sealed WHERE seq IN ({marks}) "
                        "AND payload IS NULL",
                        chunk):
                    digests[by_seq[seq]] = (seq, bytes(digest))
            for rid in self.redacted(digests):
                del digests[rid]
            keep, bad = judge_payloads(pairs, digests)
            if keep:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    try:
                        self._db.executemany(
                            "UPDATE sealed SET salt = ?, payload = ? WHERE seq = ?",
                            [(p.salt, p.payload, seq) for seq, _, p in keep])
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.path}: cannot store payloads ({exc})") from exc
        return PayloadsPut(tuple(rid for _, rid, _ in keep), tuple(bad))

    def payloads(self, ids: Iterable[bytes]) -> dict[bytes, SealedPayload]:
        """The pairs held for those of ``ids`` that are committed."""
        out: dict[bytes, SealedPayload] = {}
        with self._reading() as db:
            for rid in set(ids):
                seq = self._seq_of(rid, db)
                row = None if seq is None else db.execute(
                    "SELECT salt, payload FROM sealed WHERE seq = ? AND payload IS NOT NULL",
                    (seq,)).fetchone()
                if row is not None:
                    out[rid] = SealedPayload(bytes(row[0]), bytes(row[1]))
        return out

    def missing_payloads(self, after_seq: int = -1,
                         limit: int = 1000) -> list[tuple[int, bytes]]:
        """Committed sealed records after ``after_seq`` with no pair held and not redacted."""
        with self._reading() as db:
            return [(seq, bytes(rid)) for seq, rid in db.execute(
                "SELECT s.seq, r.id FROM sealed s JOIN records r ON r.seq = s.seq "
                "WHERE s.seq > ? AND s.payload IS NULL "
                "AND NOT EXISTS (SELECT 1 FROM redactions x WHERE x.id = r.id) "
                "ORDER BY s.seq LIMIT ?", (after_seq, limit))]

    def payloads_between(self, first_seq: int, count: int, limit: int | None = None,
                         ) -> list[tuple[int, bytes, SealedPayload]]:
        """Every pair held for records in ``[first_seq, first_seq + count)``, in log order
        (the first ``limit`` when given)."""
        with self._reading() as db:
            return [(seq, bytes(rid), SealedPayload(bytes(salt), bytes(payload)))
                    for seq, rid, salt, payload in db.execute(
                        "SELECT p.seq, r.id, p.salt, p.payload FROM sealed p "
                        "JOIN records r ON r.seq = p.seq WHERE p.seq >= ? AND p.seq < ? "
                        "AND p.payload IS NOT NULL ORDER BY p.seq LIMIT ?",
                        (first_seq, first_seq + count, -1 if limit is None else limit))]

    def rebuild_pending(self) -> bool:
        """A committed redaction cleared pairs whose stale copies only ``scrub(rebuild=True)``
        removes (the flag in ``meta``; read from memory, never waits for the writer)."""
        return self._rebuild_pending

    def scrub(self, rebuild: bool = True) -> bool:
        """Make the pairs that redactions deleted unrecoverable from the files: with
        ``rebuild``, if a redaction left it pending, rebuild ``sealed`` (``_rebuild_sealed``,
        O(the pairs held), at most once per call whatever the number of redaction blocks
        before it) in a transaction of its own that also clears the flag; then checkpoint
        the WAL into the database file and truncate it to zero bytes, so the frames that
        held deleted payloads are gone (``secure_delete`` zeroed them in the pages written
        back). Runs under the writer's lock (commits wait for it). True when it is done:
        False while a reader's snapshot keeps frames in use, or while a rebuild is still
        pending (``rebuild=False``, or a redaction committed meanwhile): call again later."""
        if self.readonly:
            return True
        with self._lock:
            if self._bulk:
                raise StoreError("scrub() inside bulk()")
            try:
                if rebuild:
                    self._rebuild_if_pending()
                truncated = self._truncate_wal()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: scrub failed ({exc})") from exc
            return truncated and not self._rebuild_pending

    def _truncate_wal(self, wait_ms: int = TRUNCATE_WAIT_MS) -> bool:
        """Checkpoint the WAL and truncate it to zero bytes (under the writer's lock),
        waiting at most ``wait_ms`` for readers' snapshots rather than the connection's
        5 s: commits wait behind it, and the caller tries again later (``scrub``'s caller;
        ``checkpoint`` while ``_truncate_due``). True if done."""
        db = self._db
        (usual,), = db.execute("PRAGMA busy_timeout")
        db.execute(f"PRAGMA busy_timeout={wait_ms}")
        try:
            (busy, _, _), = db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.execute(f"PRAGMA busy_timeout={int(usual)}")
        self._truncate_due = busy != 0
        return not self._truncate_due

    def _rebuild_if_pending(self) -> bool:
        """Rebuild ``sealed`` if ``meta`` says a redaction left copies behind, and clear
        the flag, in one transaction (under the writer's lock, outside any other); True if
        it rebuilt."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            pending = db.execute("SELECT 1 FROM meta WHERE key = ?",
                                 (_REBUILD_KEY,)).fetchone() is not None
            if pending:
                _rebuild_sealed(db, "SELECT seq, digest, salt, payload FROM sealed")
                db.execute("DELETE FROM meta WHERE key = ?", (_REBUILD_KEY,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._rebuild_pending = False
        self.sealed_rebuilds += pending
        return pending

    def checkpoint(self, *, passes: int = 3,
                   bound_bytes: int = WAL_BOUND_BYTES) -> tuple[int, int]:
        """PASSIVE checkpoints on a connection of this method's own (see "Checkpoints"
        above): returns (frames in the WAL, frames copied to the database file).

        A pass never takes the writer's lock, so it never blocks ``append``; but the WAL
        starts over from its beginning (at the next commit) only when a checkpoint has
        copied every frame and no commit came since, which commits arriving during the pass
        prevent. So up to ``passes`` passes run until one finds nothing new (each copies
        only what came during the last: short, likely to fall between two blocks; a pass
        with nothing to copy costs no fsync). If the WAL still holds more than
        ``bound_bytes`` (commits back to back, no gap between them), one more pass runs
        under the writer's lock: the commits wait for it, once, and the WAL stays bounded.
        Call it from one thread at a time (others wait); a read-only store has nothing to
        checkpoint."""
        if self.readonly:
            return (0, 0)
        with self._checkpoint_lock:
            try:
                if self._checkpointer is None:
                    self._checkpointer = sqlite3.connect(
                        str(self.path), isolation_level=None, check_same_thread=False)
                    self._checkpointer.execute("PRAGMA busy_timeout=1000")
                db = self._checkpointer
                log = copied = previous = -1
                for _ in range(max(1, passes)):
                    _, log, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
                    if copied >= log == previous:  # all copied, and no commit came meanwhile
                        return (int(log), int(copied))
                    previous = log
                (page,) = db.execute("PRAGMA page_size").fetchall()[0]
                if log * (page + 24) > bound_bytes:
                    with self._lock:
                        _, log, copied = db.execute(
                            "PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: WAL checkpoint failed ({exc})") from exc
            finally:
                self._retry_truncate()
        return (int(log), int(copied))

    def _retry_truncate(self) -> None:
        """A truncation a reader kept from completing (at open, in ``scrub``) is retried
        by the periodic ``checkpoint`` until it completes: the WAL may hold frames with
        deleted pairs, and the node starts no scrub unless a redaction commits. Without
        waiting for readers: a long one (an audit of the file) costs the commits nothing."""
        if self._truncate_due:
            with self._lock:
                if not self._bulk:
                    try:
                        self._truncate_wal(0)
                    except sqlite3.Error as exc:
                        raise StoreError(f"{self.path}: WAL truncation failed ({exc})") \
                            from exc

    def wal_bytes(self) -> int:
        """The size of the WAL file (0 if there is none)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    def signing_state(self, pubkey: bytes) -> bytes | None:
        """The signing state ``append`` last wrote for ``pubkey`` (None: never)."""
        with self._reading() as db:
            try:
                row = db.execute("SELECT state FROM signing_state WHERE pubkey = ?",
                                 (pubkey,)).fetchone()
            except sqlite3.OperationalError:  # a read-only store of an older schema
                return None
        return None if row is None else bytes(row[0])

    def redacted_at(self, record_id: bytes) -> int | None:
        """The height of the redaction naming ``record_id``, if one committed."""
        with self._reading() as db:
            row = db.execute("SELECT height FROM redactions WHERE id = ?",
                             (record_id,)).fetchone()
        return None if row is None else int(row[0])

    def subject_history(self, subject: str, after_seq: int = -1,
                        limit: int = 100) -> list[tuple[RecordLocation, bytes]]:
        """Committed records of ``subject`` after log index ``after_seq``, oldest first."""
        return self._subject_rows("seq > ? ORDER BY seq", subject, after_seq, limit)

    def subject_history_desc(self, subject: str, before_seq: int | None = None,
                             limit: int = 100) -> list[tuple[RecordLocation, bytes]]:
        """Committed records of ``subject`` before log index ``before_seq``, newest first
        (the same ``(subject, seq)`` index, walked backwards)."""
        bound = 2**63 - 1 if before_seq is None else before_seq
        return self._subject_rows("seq < ? ORDER BY seq DESC", subject, bound, limit)

    def _subject_rows(self, where: str, subject: str, seq: int,
                      limit: int) -> list[tuple[RecordLocation, bytes]]:
        with self._reading() as db:
            rows = db.execute(
                f"SELECT height, idx, seq, envelope FROM records WHERE subject = ? AND {where} "
                "LIMIT ?", (subject, seq, limit)).fetchall()
        return [(RecordLocation(h, i, s), bytes(e)) for h, i, s, e in rows]

    def log_nodes(self, ids: Iterable[merkle.NodeId]) -> Mapping[merkle.NodeId, bytes]:
        """Perfect-subtree hashes of the log; level 0 is hashed from the stored envelope."""
        with self._reading() as db:  # a proof never waits behind a block being written
            return self._read_log_nodes(ids, db)

    def _read_log_nodes(self, ids: Iterable[merkle.NodeId],
                        db: sqlite3.Connection | None = None) -> dict[merkle.NodeId, bytes]:
        """One indexed read per id (a proof plan names O(log n) of them)."""
        db = self._db if db is None else db
        out: dict[merkle.NodeId, bytes] = {}
        for level, index in ids:
            if level == 0:
                row = db.execute(
                    "SELECT envelope FROM records WHERE seq = ?", (index,)
                ).fetchone()
                if row is not None:
                    out[(0, index)] = merkle.leaf_hash(row[0])
            else:
                row = db.execute(
                    "SELECT hash FROM log_nodes WHERE level = ? AND idx = ?", (level, index)
                ).fetchone()
                if row is not None:
                    out[(level, index)] = bytes(row[0])
        return out

    # -- witness cosignatures ------------------------------------------------------------

    def _write_witness(self, statement: str, args: tuple[Any, ...]) -> bool:
        """One statement in its own transaction on the writer connection (fsynced at its
        COMMIT, like a block's); whether it changed a row."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        with self._lock:
            try:
                return self._db.execute(statement, args).rowcount == 1
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: write failed ({exc})") from exc

    def add_cosignature(self, height: int, pubkey: bytes, sig: bytes) -> bool:
        """Keep a checked cosignature; False if that witness's for ``height`` is held."""
        return self._write_witness("INSERT OR IGNORE INTO cosignatures VALUES (?, ?, ?)",
                                   (height, pubkey, sig))

    def cosignatures(self, height: int) -> list[tuple[bytes, bytes]]:
        """The ``(pubkey, sig)`` cosignatures held for ``height``, ordered by key."""
        with self._reading() as db:
            rows = db.execute("SELECT pubkey, sig FROM cosignatures WHERE height = ? "
                              "ORDER BY pubkey", (height,)).fetchall()
        return [(bytes(pk), bytes(sig)) for pk, sig in rows]

    def cosignatures_between(self, lo: int, hi: int) -> Iterator[tuple[int, bytes, bytes]]:
        """``(height, pubkey, sig)`` for heights ``lo..hi``, in height then key order, read
        a slice of heights at a time (constant memory, for the export bundle)."""
        after: tuple[int, bytes] = (lo - 1, b"\xff" * 33)  # sorts after any key of lo - 1
        while True:
            with self._reading() as db:  # keyset paging: each slice one indexed range read
                rows = db.execute(
                    "SELECT height, pubkey, sig FROM cosignatures WHERE (height, pubkey) > "
                    "(?, ?) AND height <= ? ORDER BY height, pubkey LIMIT ?",
                    (*after, hi, _IN_CHUNK)).fetchall()
            for h, pk, sig in rows:
                yield int(h), bytes(pk), bytes(sig)
            if len(rows) < _IN_CHUNK:
                return
            after = (int(rows[-1][0]), bytes(rows[-1][1]))

    def add_split_view(self, cosig_json: bytes) -> bool:
        """Keep split-view evidence; False if held already or the store holds the most (of
        all, or of the witness it names)."""
        witness = split_view_witness(cosig_json)
        with self._lock:  # the count and the insert under the writer's lock
            if witness is not None:
                held = self._db.execute("SELECT doc FROM split_views").fetchall()
                if sum(split_view_witness(bytes(d)) == witness for (d,) in held) >= \
                        MAX_SPLIT_VIEWS_PER_WITNESS:
                    return False
            return self._write_witness(
                "INSERT OR IGNORE INTO split_views (doc) SELECT ? WHERE (SELECT COUNT(*) FROM "
                "split_views) < ?", (bytes(cosig_json), MAX_SPLIT_VIEWS))

    def split_views(self) -> list[bytes]:
        """The split-view evidence held, oldest first."""
        with self._reading() as db:
            return [bytes(d) for (d,) in db.execute("SELECT doc FROM split_views ORDER BY seq")]

    def block_sizes(self, start: int = 1) -> list[tuple[int, int]]:
        """(height, record count) of every block from ``start``, in order."""
        return [(height, count) for height, _, count in self.block_rows(start)]

    def block_rows(self, start: int = 1) -> list[tuple[int, int, int]]:
        """(height, first log index, record count) of every block from ``start``."""
        with self._lock:
            return list(self._db.execute(
                "SELECT height, first_seq, record_count FROM blocks WHERE height >= ? "
                "ORDER BY height", (start,)))

    def record_rows(self, first_seq: int, count: int) -> list[tuple[Any, ...]]:
        """Raw index rows (seq, id, height, idx, signer, nonce, subject, envelope)."""
        with self._lock:
            return list(self._db.execute(
                "SELECT seq, id, height, idx, signer, nonce, subject, envelope FROM records "
                "WHERE seq >= ? AND seq < ? ORDER BY seq", (first_seq, first_seq + count)))

    def sealed_rows(self, first_seq: int, count: int) -> dict[int, bytes]:
        """Rows of ``sealed`` (log index -> payload_digest) in ``[first_seq, first_seq +
        count)`` (for ``ledger node check``)."""
        with self._lock:
            return {seq: bytes(d) for seq, d in self._db.execute(
                "SELECT seq, digest FROM sealed WHERE seq >= ? AND seq < ?",
                (first_seq, first_seq + count))}

    def stored_record_count(self) -> int:
        """Rows in the records table (should equal the log size)."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM records").fetchone()
        return int(count)

    def record_count(self) -> int:
        """Records committed so far (the log size)."""
        return self._log.size

    def close(self) -> None:
        """Close the database (and every reading thread's connection): reads under way in
        other threads end first (at most CLOSE_WAIT_S; past it their connections are left
        open rather than closed under them), and later ones raise ``StoreError``."""
        with self._readers_lock:
            self._closing = True
            ended = self._reads_done.wait_for(lambda: not self._reads_active, CLOSE_WAIT_S)
        # ``checkpoint`` takes its lock, then (past the WAL bound) the writer's: same order
        with self._checkpoint_lock, self._lock, self._readers_lock:
            if ended:
                for db in self._readers:
                    db.close()
            self._readers.clear()
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
