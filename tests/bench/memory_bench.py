"""Memory of four real nodes in one process as the chain grows (issue 17: per-node RSS).

``sealed_node_bench``'s cluster (four ``node.runtime.Node`` over ``tests/memnet.py``, SQLite
stores, inline records), committing ``--records`` in ``--step`` chunks; after each chunk
(every node at the same height, the mempools empty, ``gc.collect``) it prints the process's
RSS (anonymous), SQLite's heap (``sqlite3_memory_used``: the page caches), the bytes
``tracemalloc`` traces (with ``--trace``), and each node's verified-signature caches
(records', consensus signatures'), ids not yet merged into the index and cached absences.
``--trace`` then prints the allocations that grew from the first chunk to the last, by line
(``--frames N``: by traceback). Small blocks (``--batch 20 --clients 1``) make many heights.

    python -m tests.bench.memory_bench [--records 60000] [--step 10000] [--batch 250]
        [--clients 4] [--trace] [--frames 1]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import gc
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from ledger.encoding import split_batch
from node.runtime import Node, tune_gc
from tests.bench.sealed_node_bench import N, batches, start_nodes


def sqlite_heap() -> int:
    """Bytes SQLite has allocated (the library the sqlite3 module loaded)."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return -1
    lib = ctypes.CDLL(name)
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return int(lib.sqlite3_memory_used())


def rss_mb() -> dict[str, int]:
    """VmRSS and its anonymous part, MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def seen_on(node: Node) -> Callable[[Sequence[bytes]], Awaitable[Mapping[bytes, int]]]:
    """Which of some ids ``node``'s store holds (``CommitWaiters.wait``'s look-up)."""
    async def seen(wanted: Sequence[bytes]) -> Mapping[bytes, int]:
        held = await asyncio.to_thread(node.store.seen_ids, list(wanted))
        return {rid: 0 for rid in held}
    return seen


async def run(args: argparse.Namespace) -> None:
    work = batches(args.records, args.batch, False)
    if args.trace:
        tracemalloc.start(args.frames)
    root = Path(tempfile.mkdtemp())
    nodes = await start_nodes(root)
    queue = list(enumerate(work))
    queue.reverse()
    snaps: list[tuple[int, tracemalloc.Snapshot]] = []

    async def client(limit: int) -> None:
        while queue and queue[-1][0] * args.batch < limit:
            j, (body, ids) = queue.pop()
            node = nodes[j % N]
            results = await node.submit(split_batch(body, "batch", args.batch))
            assert all(r.status == "accepted" for r in results), results[0]

            await node.commits.wait(ids, 120, seen_on(node))

    t0 = time.perf_counter()
    try:
        for limit in range(args.step, args.records + 1, args.step):
            await asyncio.gather(*(client(limit) for _ in range(args.clients)))
            deadline = time.monotonic() + 60
            while (len({n.store.height for n in nodes}) > 1
                   or any(len(n.mempool) for n in nodes)) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            gc.collect()
            traced = tracemalloc.get_traced_memory()[0] / 2**20 if args.trace else 0.0
            print(f"{limit:9,} records {time.perf_counter() - t0:5.0f} s height "
                  f"{nodes[0].store.height}: RSS {rss_mb()} MB, SQLite heap "
                  f"{sqlite_heap() / 2**20:.1f} MB, traced {traced:.1f} MB; per node: record "
                  f"cache {[len(n.mempool.cache._seen) for n in nodes]}, vote cache "
                  f"{[len(n.mempool.vote_cache._seen) for n in nodes]}, unmerged ids "
                  f"{[len(getattr(n.store, '_recent', ())) for n in nodes]}", flush=True)
            if args.trace:
                snaps.append((limit, tracemalloc.take_snapshot()))
                if len(snaps) > 2:
                    del snaps[1]  # the first and the latest
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))
    if len(snaps) == 2:
        (a, first), (b, last) = snaps
        print(f"grew from {a:,} to {b:,} records:")
        for stat in last.compare_to(first, "traceback" if args.frames > 1 else "lineno")[:25]:
            print(stat)
            if args.frames > 1:
                for line in stat.traceback.format()[-2 * args.frames:]:
                    print("   ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--step", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--frames", type=int, default=1)
    args = parser.parse_args()
    tune_gc()  # as ``ledger node run`` does
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
