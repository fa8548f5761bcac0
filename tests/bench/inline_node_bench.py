"""CPU per record of four real nodes in one process, inline records only (issue 17).

``sealed_node_bench``'s cluster (four ``node.runtime.Node`` over ``tests/memnet.py``, SQLite
stores, the cluster_bench payloads pre-signed, ``--clients`` batches of ``--batch`` in
flight, each waiting for its commit) with inline records only: the figure the inline hot
path's changes are measured by (``time.process_time`` of every thread: all four nodes, their
worker threads, the signature checks, per record per node). No HTTP, no sockets. Run it
under ``py-spy record --idle`` off for the stage table (docs/performance.md).

    python -m tests.bench.inline_node_bench [--records 10000] [--repeat 3]
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from node.runtime import tune_gc
from tests.bench import stages
from tests.bench.sealed_node_bench import N, arguments, batches, one_run


def main() -> None:
    args = arguments(__doc__).parse_args()
    if args.stages:
        stages.install()
    tune_gc()  # as ``ledger node run`` does
    work = batches(args.records, args.batch, False)
    cpu: list[float] = []
    for k in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            used, wall, heights, _ = asyncio.run(one_run(Path(tmp), work, args.clients,
                                                         args.batch))
        per = used / args.records / N
        cpu.append(per)
        print(f"run {k + 1}: {per * 1e6:6.1f} us CPU per record per node, "
              f"{args.records / wall:7,.0f} records/s, {args.records / heights:5.0f} records "
              f"per block ({time.perf_counter() - t0:.1f} s with start and stop)", flush=True)
        if args.stages:
            stages.report(used, args.records, N)
    print(f"median {statistics.median(cpu) * 1e6:6.1f} us, least {min(cpu) * 1e6:6.1f} us "
          "CPU per record per node")


if __name__ == "__main__":
    main()
