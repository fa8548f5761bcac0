"""What does a redaction block cost a node's commit, and what does the ``sealed`` rebuild cost?
Store-level, no network (issue 15: redaction must leave no byte of a pair in the files).

Fills a store with ``--pairs`` sealed records of ``--size``-byte payloads (their pairs held,
written in blocks of 500), then appends ``--blocks`` blocks of one redaction each (of one
record each: an organisation's admin redacting its own records one per block), timing each
``append``, then times ``scrub`` (the WAL truncated and, where the store defers it, the one
rebuild of ``sealed`` that covers every redaction block before it).

    python -m tests.bench.redaction_bench [--pairs 20000] [--size 1000] [--blocks 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from ledger.records import seal_record
from ledger.store import SqliteStore
from tests.factory import ChainBuilder, redaction_record
from tests.unit.test_one_rule import A1, A2, GOVERNED, GX


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.db"
        store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config,
                            autocheckpoint=False)
        builder = ChainBuilder(GX, store)
        ids = []
        for start in range(0, args.pairs, 500):
            items = [seal_record(GX.writer, chain=GOVERNED.chain_id, type="sensor.reading",
                                 subject="oven", payload={"v": os.urandom(args.size // 2).hex()},
                                 ts=1, nonce=n) for n in range(start, min(args.pairs, start + 500))]
            store.append(builder.block([r for r, _ in items]),
                         payloads={r.id: p for r, p in items})
            ids += [r.id for r, _ in items]
        store.scrub()
        size = path.stat().st_size
        (table,) = store._db.execute(
            "SELECT SUM(pgsize) FROM dbstat WHERE name = 'sealed'").fetchone()
        appends = []
        for k in range(args.blocks):
            block = builder.block([redaction_record(GOVERNED.config, A1, [ids[k * 7]],
                                                    approvers=[A1, A2], nonce=3_000_000 + k)])
            started = time.perf_counter()
            store.append(block)
            appends.append(time.perf_counter() - started)
        wal_only = ""
        if hasattr(store, "rebuild_pending"):  # the rebuild deferred to ``scrub``
            started = time.perf_counter()
            store.scrub(rebuild=False)
            wal_only = (f"; before it, a scrub of the WAL alone (rebuild=False): "
                        f"{(time.perf_counter() - started) * 1e3:.1f} ms")
            real = store._rebuild_if_pending
            spent: list[float] = []

            def timed() -> bool:
                started = time.perf_counter()
                try:
                    return real()
                finally:
                    spent.append(time.perf_counter() - started)

            store._rebuild_if_pending = timed  # type: ignore[method-assign]
        started = time.perf_counter()
        done = store.scrub()
        scrub_s = time.perf_counter() - started
        if wal_only:
            wal_only += (f"; of the scrub, the rebuild's transaction (commit and fsync "
                         f"included) {spent[0] * 1e3:.1f} ms, the TRUNCATE checkpoint "
                         f"{(scrub_s - spent[0]) * 1e3:.1f} ms")
        started = time.perf_counter()
        store.scrub()
        idle_s = time.perf_counter() - started
        rebuilds = getattr(store, "sealed_rebuilds", "n/a")
        store.close()
    print(f"{args.pairs} pairs of {args.size} B, file {size / 2**20:.1f} MiB, sealed table "
          f"{table / 2**20:.1f} MiB")
    print(f"redaction block append: median {statistics.median(appends) * 1e3:.1f} ms, "
          f"max {max(appends) * 1e3:.1f} ms over {args.blocks} blocks "
          f"({', '.join(f'{a * 1e3:.1f}' for a in appends)})")
    print(f"scrub after them: {scrub_s * 1e3:.1f} ms (complete: {done}); a scrub with "
          f"nothing pending: {idle_s * 1e3:.1f} ms; rebuilds counted: {rebuilds}{wal_only}")


if __name__ == "__main__":
    main()
