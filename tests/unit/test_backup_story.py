"""The facts docs/storage.md#back-up rests on, checked on a real SQLite store."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path

from ledger.errors import StoreError
from ledger.store import SqliteStore
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()


def _height(path: Path) -> int:
    with SqliteStore(path, readonly=True) as store:
        return store.height


def test_wal_holds_committed_blocks_until_a_clean_close(tmp_path: Path) -> None:
    live = tmp_path / "live" / "chain.db"
    live.parent.mkdir()
    store = SqliteStore(live, genesis_hash=FX.genesis.hash)
    try:
        builder = ChainBuilder(FX, store)
        for _ in range(3):
            builder.add(2)
        wal = live.with_name("chain.db-wal")
        assert wal.stat().st_size > 0  # the committed blocks are (still) in the WAL
        alone, pair, online = (tmp_path / n for n in ("alone", "pair", "online"))
        for d in (alone, pair):
            d.mkdir()
        shutil.copy(live, alone / "chain.db")  # chain.db without its WAL: blocks missing
        shutil.copy(live, pair / "chain.db")
        shutil.copy(wal, pair / "chain.db-wal")  # with it: complete
        with (contextlib.closing(sqlite3.connect(live)) as src,
              contextlib.closing(sqlite3.connect(online)) as dst):
            src.backup(dst)  # what `sqlite3 chain.db ".backup copy.db"` does
        assert not online.with_name("online-wal").exists()  # one self-contained file
        with contextlib.suppress(StoreError):  # alone: here not even the schema left the WAL
            assert _height(alone / "chain.db") < 3
        assert _height(pair / "chain.db") == 3
        assert _height(online) == 3
    finally:
        store.close()
    assert not live.with_name("chain.db-wal").exists()  # a clean close folds the WAL in
    assert _height(live) == 3
