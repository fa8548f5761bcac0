"""Per-record node CPU of admission and the store's append, inline vs sealed records.

In one process, no cluster: the ``cluster_bench --sealed`` payloads (~150 bytes), what
every node of a cluster does with each record, in three phases:

- admission: the batch's msgpack bytes split (``split_batch``, as the API and record
  gossip do) and admitted to a ``Mempool`` in batches of ``--batch`` (``precheck`` +
  ``admit``);
- consensus: per block of ``--block``, the proposer's ``_fresh_records`` and the proposal's
  ``check_block`` (a ``ConsensusCore`` over the store and the mempool);
- append: the block committed to a fresh ``SqliteStore`` (``append`` with the mempool's
  pairs, then ``remove_committed``).

Signatures are verified once before timing (the verified cache holds them), as a node's
mempool has them when the block commits: what is left is what sealing adds. Inline and
sealed runs alternate ``--repeat`` times; each phase's process CPU time
(``time.process_time``) per record is printed, with the medians and the least.

    python -m tests.bench.sealed_cpu_bench [--records 40000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ledger.consensus.core import ConsensusCore
from ledger.encoding import packb, split_batch
from ledger.records import Record, SealedPayload, seal_record
from ledger.store.sqlite import SqliteStore
from node.mempool import Mempool
from node.runtime import tune_gc
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()
NOW = 1_700_000_000_000


def make(n: int, sealed: bool) -> list[tuple[Record, SealedPayload | None]]:
    pad = "x" * 110
    out: list[tuple[Record, SealedPayload | None]] = []
    for i in range(n):
        kw = dict(chain=FX.genesis.chain_id, type="sensor.reading",
                  subject=f"plant-{i % 20}/line-{i % 3}/temp",
                  payload={"v": i * 0.1, "unit": "C", "note": pad}, ts=NOW, nonce=i + 1)
        if sealed:
            out.append(seal_record(FX.writer, **kw))  # type: ignore[arg-type]
        else:
            out.append((Record.create(FX.writer, **kw), None))  # type: ignore[arg-type]
    return out


def run(made: list[tuple[Record, SealedPayload | None]], batch: int,
        block: int) -> tuple[float, float, float]:
    """(admission, consensus, append) CPU seconds per record."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "chain.db", genesis_hash=FX.genesis.hash,
                            config=FX.genesis.config)
        pool = Mempool(FX.genesis, store, max_records=len(made) + 1)
        for r, _ in made:
            pool.cache.remember(r)  # signatures are not what sealing adds
        builder = ChainBuilder(FX, store, time_ms=NOW)
        bodies = [packb([r.envelope if p is None else [r.envelope, p.salt, p.payload]
                         for r, p in made[b:b + batch]]) for b in range(0, len(made), batch)]
        admit_s = consensus_s = append_s = 0.0
        for start in range(0, len(made), block):
            t0 = time.process_time()
            for b in range(start, min(start + block, len(made)), batch):
                items = split_batch(bodies[b // batch], "batch", batch)
                out = pool.admit(pool.precheck(items), NOW)
                assert all(x.status == "accepted" for x in out), out[0]
            t1 = time.process_time()
            records = [r for r, _ in made[start:start + block]]
            blk = builder.block(records)
            core = ConsensusCore(FX.genesis, store, pool, verify=pool.verify)
            t2 = time.process_time()
            fresh = core._fresh_records(pool.reap(block, 2**30))
            core.check_block(blk.header, blk.records)
            pairs = pool.pairs_for(records)
            t3 = time.process_time()
            assert len(fresh) == len(records)
            store.append(blk, payloads=pairs)
            pool.remove_committed(blk)
            t4 = time.process_time()
            admit_s += t1 - t0
            consensus_s += t3 - t2
            append_s += t4 - t3
        store.close()
    n = len(made)
    return admit_s / n, consensus_s / n, append_s / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--block", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tune_gc()  # the node's collector settings (young collections every 50,000 objects)
    data = {False: make(args.records, False), True: make(args.records, True)}
    res: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    phases = ("admission", "consensus", "append")
    for k in range(args.repeat):
        for sealed in (False, True):
            got = run(data[sealed], args.batch, args.block)
            res[sealed].append(got)
            print(f"run {k + 1} {'sealed' if sealed else 'inline'}: " + ", ".join(
                f"{part} {x * 1e6:5.1f}" for part, x in zip(phases, got, strict=True))
                + " us/record", flush=True)
    # the median, and the least: other processes only ever add CPU time (cache misses,
    # preemption), so on a shared machine the least of several runs is the steadier figure
    for label, pick in (("median", statistics.median), ("least", min)):
        med = {s: [pick(x[i] for x in v) for i in range(len(phases))] for s, v in res.items()}
        for i, part in enumerate(phases):
            print(f"{label} {part:9}: inline {med[False][i] * 1e6:6.1f} us, sealed "
                  f"{med[True][i] * 1e6:6.1f} us, {(med[True][i] - med[False][i]) * 1e6:+5.1f} us")
        total = [sum(med[s]) * 1e6 for s in (False, True)]
        print(f"{label} total    : inline {total[0]:6.1f} us, sealed {total[1]:6.1f} us, "
              f"{total[1] - total[0]:+5.1f} us/record")

if __name__ == "__main__":
    main()
