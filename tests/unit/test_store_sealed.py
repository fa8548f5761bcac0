"""The SQLite store's bookkeeping for SPEC section 10 (``sealed`` and ``redactions``,
schema 3): written in the block's transaction, and rebuilt from the stored records when a
schema-2 file is opened for writing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ledger.blocks import Block
from ledger.errors import CorruptStoreError, RedactionTargetError, StoreError
from ledger.store import SqliteStore
from ledger.store.check import check_indexes
from tests.unit.test_one_rule import GOVERNED, ORG0_WRITER, SEALED_FAULTS, SealedChain


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
