"""Witness cosignatures and split-view evidence in the stores (schema 4): kept apart from
the blocks, durable across a reopen, read back in order; a schema-3 file gains the tables
when opened for writing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger.errors import StoreError
from ledger.store import MemoryStore, SqliteStore
from ledger.store.base import MAX_SPLIT_VIEWS, BlockStore
from ledger.store.sqlite import SCHEMA_VERSION
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture(witnesses=2)


def exercise(store: BlockStore) -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    assert store.add_cosignature(2, b, b"s" * 64)
    assert store.add_cosignature(2, a, b"t" * 64)
    assert not store.add_cosignature(2, b, b"u" * 64)  # the first is kept
    assert store.add_cosignature(1, b, b"v" * 64)
    assert store.cosignatures(2) == [(a, b"t" * 64), (b, b"s" * 64)]
    assert store.cosignatures(3) == []
    assert list(store.cosignatures_between(1, 2)) == [
        (1, b, b"v" * 64), (2, a, b"t" * 64), (2, b, b"s" * 64)]
    assert list(store.cosignatures_between(2, 5)) == [(2, a, b"t" * 64), (2, b, b"s" * 64)]
    assert list(store.cosignatures_between(3, 5)) == []
    assert store.add_split_view(b'{"height":2}')
    assert not store.add_split_view(b'{"height":2}')
    assert store.add_split_view(b'{"height":1}')
    assert store.split_views() == [b'{"height":2}', b'{"height":1}']


def test_memory_store_keeps_cosignatures() -> None:
    exercise(MemoryStore(FX.genesis.hash))


def test_sqlite_store_keeps_cosignatures_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        ChainBuilder(FX, store).add(2)
        exercise(store)
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        assert len(store.cosignatures(2)) == 2 and len(store.split_views()) == 2
        assert store.height == 1
    with SqliteStore(path, readonly=True) as store:
        assert len(list(store.cosignatures_between(0, 10))) == 3
        with pytest.raises(StoreError, match="read-only"):
            store.add_cosignature(3, b"\x01" * 32, b"s" * 64)


def test_cosignatures_between_pages_through_many(tmp_path: Path) -> None:
    """Read in slices (constant memory for the export): every row once, in order."""
    with SqliteStore(tmp_path / "chain.db", synchronous="OFF") as store:
        expected = []
        for h in range(1, 400):
            for k in range(h % 4):
                pk = bytes([k + 1]) * 32
                store.add_cosignature(h, pk, bytes([h % 256]) * 64)
                expected.append((h, pk, bytes([h % 256]) * 64))
        assert list(store.cosignatures_between(1, 399)) == expected
        assert list(store.cosignatures_between(100, 200)) == [
            r for r in expected if 100 <= r[0] <= 200]


def test_split_views_are_bounded() -> None:
    store = MemoryStore()
    for i in range(MAX_SPLIT_VIEWS):
        assert store.add_split_view(b"%d" % i)
    assert not store.add_split_view(b"one more")
    assert len(store.split_views()) == MAX_SPLIT_VIEWS


def test_a_schema_3_store_gains_the_witness_tables_on_open(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        ChainBuilder(FX, store).add(3)
        tip = store.tip_hash()
    db = sqlite3.connect(path)
    db.executescript("""
        DROP TABLE cosignatures;
        DROP TABLE split_views;
        UPDATE meta SET value = 3 WHERE key = 'schema_version';
    """)
    db.close()
    with pytest.raises(StoreError, match=r"schema version 3.*ledger node run"):
        SqliteStore(path, readonly=True)
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        assert store.height == 1 and store.tip_hash() == tip
        assert store.cosignatures(1) == [] and store.split_views() == []
        assert store.add_cosignature(1, b"\x01" * 32, b"s" * 64)
    with SqliteStore(path, readonly=True) as store:
        assert store.cosignatures(1) == [(b"\x01" * 32, b"s" * 64)]
        (version,) = store._db.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert int(version) == SCHEMA_VERSION == 7


def _split_view(witness: bytes, n: int) -> bytes:
    """A split-view entry as node.api.split_view_json writes it (canonical JSON)."""
    return (b'{"block_hash":"%s","height":1,"kind":"split_view","node_block_hash":"%s",'
            b'"witness":"%s"}' % (b"%064x" % n, b"0" * 64, witness.hex().encode()))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_one_witness_cannot_crowd_out_another_witness_split_view(
        kind: str, tmp_path: Path) -> None:
    """Review 14: the store's bound was one for all witnesses, so a single witness key
    posting MAX_SPLIT_VIEWS cosignatures of made-up blocks filled it, and every later split
    view — another witness's, the one that shows the nodes lied — was dropped unseen."""
    store: BlockStore = MemoryStore() if kind == "memory" else SqliteStore(
        tmp_path / "chain.db", genesis_hash=FX.genesis.hash, synchronous="OFF")
    flooder, honest = b"\x0a" * 32, b"\x0b" * 32
    kept = sum(store.add_split_view(_split_view(flooder, n)) for n in range(MAX_SPLIT_VIEWS))
    assert kept >= 1
    assert store.add_split_view(_split_view(honest, 1))
    assert _split_view(honest, 1) in store.split_views()
    assert len(store.split_views()) <= MAX_SPLIT_VIEWS
    store.close()
