"""A process the scrub crash test SIGKILLs at a chosen point of a redaction's erasure.

``python -m tests.integration.scrub_crasher DB MODE ARG``:

- ``commit BLOCKFILE``: open the store, append the (redaction) block in BLOCKFILE, then die
  at once: the commit is durable, no scrub ran.
- ``rebuild N``: open the store (whose rebuild is pending: the open does it) and die at the
  first progress callback after N SQLite VM steps of ``_rebuild_sealed``.
- ``checkpoint MICROSECONDS``: open the store and die that long after the open's
  ``wal_checkpoint(TRUNCATE)`` starts (mid-checkpoint when it is short enough).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ledger.store.sqlite as sq
from ledger.blocks import Block
from tests.unit.test_one_rule import GOVERNED


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main(path: str, mode: str, arg: str) -> None:
    if mode == "rebuild":
        real = sq._rebuild_sealed

        def rebuild(db: sqlite3.Connection, select: str) -> None:
            print("rebuilding", flush=True)
            db.set_progress_handler(lambda: die() or 1, int(arg))
            real(db, select)
            db.set_progress_handler(None, 0)
            print("rebuilt", flush=True)

        sq._rebuild_sealed = rebuild  # type: ignore[assignment]
    elif mode == "checkpoint":
        delay = int(arg) / 1e6

        class Conn(sqlite3.Connection):
            def execute(self, sql: str, *a: Any) -> sqlite3.Cursor:  # type: ignore[override]
                if "wal_checkpoint(TRUNCATE)" in sql:
                    print("checkpointing", flush=True)
                    threading.Timer(delay, die).start()
                return super().execute(sql, *a)

        connect = sqlite3.connect

        def patched(*a: Any, **kw: Any) -> sqlite3.Connection:
            kw.setdefault("factory", Conn)
            return connect(*a, **kw)

        sq.sqlite3.connect = patched  # type: ignore[assignment]
    store = sq.SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    print("opened", flush=True)
    if mode == "commit":
        store.append(Block.from_wire(Path(arg).read_bytes()))
        print("committed", flush=True)
        die()
    time.sleep(1)  # a checkpoint timer still to fire
    print("survived", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
