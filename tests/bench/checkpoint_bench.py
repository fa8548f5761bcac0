"""Does a block's commit pay for WAL checkpoints? Store-level, no network (issue 17).

Builds ``--blocks`` blocks of ``--records`` records once, then appends them to two fresh
stores, timing each ``append``: one with SQLite's automatic checkpoints (a commit that
takes the WAL past 1000 pages checkpoints it before returning: copies pages and fsyncs
the WAL and the database file) and one as the node opens its store
(``autocheckpoint=False``) with a thread running ``SqliteStore.checkpoint`` (PASSIVE, its
own connection) every ``--interval`` seconds. Prints p50/p99/p99.9/max per mode; the two
runs are interleaved ``--repeat`` times (the machine is shared: compare within a run).

    python -m tests.bench.checkpoint_bench [--blocks 400] [--records 200] [--repeat 2]
                                           [--gap-ms 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from ledger.blocks import Block
from ledger.store import SqliteStore
from tests.bench.cluster_bench import percentile
from tests.factory import ChainBuilder, make_fixture


def build(fx_dir: Path, blocks: int, records: int) -> list[Block]:
    fx = make_fixture()
    with SqliteStore(fx_dir / "scratch.db", genesis_hash=fx.genesis.hash,
                     synchronous="OFF") as store:
        builder = ChainBuilder(fx, store)
        out = []
        for _ in range(blocks):
            block = builder.block([builder.record(subject=f"s{i % 9}")
                                   for i in range(records)])
            store.append(block)
            out.append(block)
    return out


WAL_PEAK: list[int] = []  # the WAL's size after the last append of each run


def timed(path: Path, blocks: list[Block], background: float | None,
          gap: float) -> list[float]:
    fx = make_fixture()
    times = []
    with SqliteStore(path, genesis_hash=fx.genesis.hash,
                     autocheckpoint=background is None) as store:
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(background or 1.0):
                store.checkpoint()

        t = threading.Thread(target=loop)
        if background is not None:
            t.start()
        try:
            for block in blocks:
                t0 = time.perf_counter()
                store.append(block)
                times.append(time.perf_counter() - t0)
                time.sleep(gap)  # the node's heights are apart (timeout_commit, votes)
            WAL_PEAK.append(store.wal_bytes())
        finally:
            stop.set()
            if background is not None:
                t.join()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=400)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--gap-ms", type=float, default=20.0,
                        help="pause between appends (cluster_bench's timeout_commit_ms)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        blocks = build(d, args.blocks, args.records)
        for k in range(args.repeat):
            for name, bg in (("autocheckpoint (before)", None),
                             (f"off + PASSIVE every {args.interval:g} s (after)", args.interval)):
                t = timed(d / f"{k}-{bg}.db", blocks, bg, args.gap_ms / 1000)
                print(f"{name}: append mean {sum(t) / len(t) * 1e3:.1f} ms, "
                      f"p50 {percentile(t, 50) * 1e3:.1f} ms, "
                      f"p90 {percentile(t, 90) * 1e3:.1f} ms, "
                      f"p95 {percentile(t, 95) * 1e3:.1f} ms, "
                      f"p99 {percentile(t, 99) * 1e3:.1f} ms, "
                      f"p99.9 {percentile(t, 99.9) * 1e3:.1f} ms, max {max(t) * 1e3:.1f} ms, "
                      f"WAL {WAL_PEAK[-1] / 2**20:.1f} MiB at the end "
                      f"(load average {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
