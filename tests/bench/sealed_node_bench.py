"""Per-record CPU of four real nodes in one process, inline vs sealed records.

Between ``sealed_cpu_bench`` (admission, consensus and append called directly) and
``cluster_bench`` (four processes, HTTP, sockets, and every other process on the machine in
the figure): four ``node.runtime.Node`` built from their parts (the real mempool,
``ConsensusCore`` and a ``SqliteStore`` each) run in one event loop over the in-memory
transport of ``tests/memnet.py``, so every step a node takes for a record is timed — the
batch split, admission, record gossip and the peers' admission of it, proposals, their
decoding and validation, votes, the commit's write — but no HTTP and no sockets. The
``cluster_bench`` payloads (~150 bytes), pre-signed; ``--clients`` batches of ``--batch``
in flight, batch j to node j mod 4, each waiting for its commit on that node (as
``wait=commit`` does). Reported: the process CPU time until every node has committed every
record (``time.process_time``: all four nodes, their worker threads, the signature checks)
per record per node, and records/s.
Inline and sealed runs alternate ``--repeat`` times, each on fresh stores.

    python -m tests.bench.sealed_node_bench [--records 10000] [--repeat 3] [--stages]

``--stages``: each run's CPU by stage (``tests/bench/stages.py``, plus the sealed path's own
stages below), per record per node: where a sealed record's extra CPU goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from ledger.crypto import write_key_file
from ledger.encoding import packb, split_batch
from ledger.genesis import Genesis
from ledger.records import Record, seal_record
from ledger.store import SqliteStore
from node.config import NodeConfig
from node.runtime import Node, tune_gc
from tests.factory import make_fixture
from tests.memnet import MemNet

FX = make_fixture()
N = len(FX.genesis.validators)
CONSENSUS = {"create_empty_blocks": False, "max_block_records": 10_000,
             "timeout_commit_ms": 20}


def batches(count: int, batch: int, sealed: bool) -> list[tuple[bytes, list[bytes]]]:
    """``count`` signed records in msgpack batches of ``batch``: (body, record ids)."""
    now = time.time_ns() // 1_000_000
    pad = "x" * 110
    out = []
    for start in range(0, count, batch):
        items: list[object] = []
        ids = []
        for i in range(start, min(start + batch, count)):
            kw = dict(chain=FX.genesis.chain_id, type="sensor.reading",
                      subject=f"plant-{i % 20}/line-{i % 3}/temp",
                      payload={"v": i * 0.1, "unit": "C", "note": pad}, ts=now, nonce=i + 1)
            if sealed:
                r, p = seal_record(FX.writer, **kw)  # type: ignore[arg-type]
                items.append([r.envelope, p.salt, p.payload])
            else:
                r = Record.create(FX.writer, **kw)  # type: ignore[arg-type]
                items.append(r.envelope)
            ids.append(r.id)
        out.append((packb(items), ids))
    return out


async def start_nodes(root: Path) -> list[Node]:
    """N validators of ``FX`` (the bench's consensus timeouts) in this process, in folders
    under ``root``, linked by an in-memory network, started without their HTTP API."""
    doc = json.loads(FX.genesis.raw)
    doc["consensus"] = doc.get("consensus", {}) | CONSENSUS
    genesis = Genesis.from_bytes(json.dumps(doc, indent=2).encode())
    (root / "genesis.json").write_bytes(genesis.raw)
    net = MemNet(N)
    nodes: list[Node] = []
    for i in range(N):
        d = root / f"node{i}"
        d.mkdir()
        write_key_file(d / "node.pem", FX.validator_keys[i])
        cfg = NodeConfig(dir=d, index=i, api=("127.0.0.1", 0), p2p=("127.0.0.1", 0),
                         genesis_path=root / "genesis.json", key_path=d / "node.pem",
                         store_path=d / "chain.db")
        node = Node(cfg, genesis, FX.validator_keys[i],
                    SqliteStore(cfg.store_path, genesis_hash=genesis.hash))
        await node.start(net.factory, api=False)
        nodes.append(node)
    return nodes


async def one_run(root: Path, work: list[tuple[bytes, list[bytes]]], clients: int,
                  batch: int) -> tuple[float, float, int, list[dict[str, int]]]:
    """(CPU seconds, wall seconds, heights, each node's ``ledger_payload_pairs_total`` by
    ``how``) of committing ``work`` on a fresh cluster."""
    nodes = await start_nodes(root)
    try:
        queue = list(enumerate(work))
        queue.reverse()

        async def client() -> None:
            while queue:
                j, (body, ids) = queue.pop()
                node = nodes[j % N]
                results = await node.submit(split_batch(body, "batch", batch))
                assert all(r.status == "accepted" for r in results), results[0]

                async def seen(wanted: list[bytes], node: Node = node) -> dict[bytes, int]:
                    return {rid: 0 for rid in await asyncio.to_thread(node.store.seen_ids,
                                                                      wanted)}

                await node.commits.wait(ids, 120, seen)

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - t0
        deadline = time.monotonic() + 60  # every node's commits counted, not only the first
        while (len({n.store.height for n in nodes}) > 1 or any(len(n.mempool) for n in nodes)
               ) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        cpu = time.process_time() - c0
        return cpu, wall, nodes[0].store.height, [dict(n.metrics.payload_pairs) for n in nodes]
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options of the in-process node benches (this one and inline_node_bench)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stages", action="store_true",
                        help="CPU time by stage (tests/bench/stages.py), per record per node")
    return parser


#: The sealed path's own stages (``--stages``), beyond ``stages.STAGES``.
SEALED_STAGES = [
    ("node.mempool", "new_pair", "sealed: new_pair (admission)"),
    ("ledger.records", "sealed_payload_matches", "sealed: pair check (decode, salted sha256)"),
    ("ledger.records", "check_sealed_payload", "sealed: pair check, the labelled rule"),
    ("node.mempool", "Mempool.pairs_for", "sealed: pairs_for (commit)"),
    ("ledger.store.sqlite", "SqliteStore.seen_digests", "store: seen_digests"),
    ("ledger.store.sqlite", "block_sealed_rows", "sealed: block_sealed_rows (append)"),
    ("ledger.store.sqlite", "_insert_rows", "sealed: sealed rows insert (append)"),
]


def main() -> None:
    args = arguments(__doc__).parse_args()
    if args.stages:
        from tests.bench import stages
        stages.STAGES.extend(SEALED_STAGES)
        stages.install()
    tune_gc()  # as ``ledger node run`` does
    work = {s: batches(args.records, args.batch, s) for s in (False, True)}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for k in range(args.repeat):
        for sealed in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                used, wall, heights, how = asyncio.run(one_run(Path(tmp), work[sealed],
                                                               args.clients, args.batch))
            per = used / args.records / N
            cpu[sealed].append(per)
            print(f"run {k + 1} {'sealed' if sealed else 'inline'}: {per * 1e6:6.1f} us CPU "
                  f"per record per node, {args.records / wall:7,.0f} records/s, "
                  f"{args.records / heights:5.0f} records per block"
                  + ("; pairs by how: " + "; ".join(
                      ", ".join(f"{k} {n}" for k, n in sorted(d.items())) for d in how)
                     if sealed else ""), flush=True)
            if args.stages:
                stages.report(used, args.records, N)
    for label, pick in (("median", statistics.median), ("least", min)):
        a, b = pick(cpu[False]) * 1e6, pick(cpu[True]) * 1e6
        print(f"{label}: inline {a:6.1f} us, sealed {b:6.1f} us, {b - a:+5.1f} us per record "
              f"per node (sealed / inline CPU {b / a:.3f})")


if __name__ == "__main__":
    main()
