"""Benchmark: catching up from stored bytes (issue 17, "Block sync from stored bytes").

A node whose chain.db was wiped catches up a chain of N records (blocks of 500, the audit
bench's chain builder) two ways, each into a fresh store:

- **peer sync**: the BlockResponse frames a serving node builds from its stored bytes
  (``Node.block_frames``, timed on their own) handed to a real ``node.runtime.Node``'s
  ``on_frame`` as if from validator 0, ``sync_batch`` heights per request, exactly as
  answers to its BlockRequests: ``check_block_response`` in worker threads, the core's
  block-sync commit, ``SqliteStore.append``;
- **follow** (``LEDGER_FOLLOW``): the node's ``Follower`` fetching ``GET /v1/blocks/{h}``
  from a real node process serving the chain over HTTP on 127.0.0.1.

It reports records per second of wall time and CPU-microseconds per record of the catching-up
process (every thread; for following, the serving process's CPU is not counted), and, with
``--profile``, a cProfile of the receive path run in one thread (what each record costs
beyond the signature check). On a shared machine prefer the CPU figures.

    python -m tests.bench.sync_bench [--records 20000] [--per-block 500] [--paths peer,follow]
        [--profile] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ledger.blocks import peek_cert_obj
from ledger.consensus.messages import encode_block_response, peek_block_response
from ledger.crypto import PrivateKey, write_key_file
from ledger.store import SqliteStore
from node.config import NodeConfig
from node.follow import Follower
from node.runtime import CONSENSUS, Node
from tests.bench.audit_bench import build_store, serving_node
from tests.factory import make_fixture
from tests.memnet import Unlinked

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 600.0


def receiver(directory: Path, genesis: Path) -> Node:
    """A node with an empty store (its chain.db wiped) and a key in no configuration."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    shutil.copy(genesis, directory / "genesis.json")
    write_key_file(directory / "node.pem", PrivateKey.generate())
    (directory / "config.json").write_text(json.dumps({
        "api": "127.0.0.1:1", "p2p": "127.0.0.1:2", "genesis": "genesis.json",
        "key": "node.pem", "store": "chain.db"}))
    node = Node.from_config(NodeConfig.load(directory))
    node.transport = Unlinked()  # type: ignore[assignment]
    return node


def frames_from(db: Path) -> tuple[list[bytes], float, int]:
    """Every block's BlockResponse frame, built from the stored bytes as a serving node
    does; the CPU seconds that took and the records."""
    store = SqliteStore(db, readonly=True)
    start = time.process_time()
    frames: list[bytes] = []
    last_cert: Any = None
    for height in range(1, store.height + 1):
        data = store.block_bytes(height)
        assert data is not None
        frames.append(bytes([CONSENSUS]) + encode_block_response(data, last_cert))
        last_cert = peek_cert_obj(data)
    cpu = time.process_time() - start
    records = store.log.size
    store.close()
    return frames, cpu, records


async def peer_sync(node: Node, frames: list[bytes]) -> None:
    consensus = asyncio.ensure_future(node.consensus_loop())
    batch = node.core.config.sync_batch
    deadline = time.monotonic() + WAIT_S
    try:
        height = node.store.height + 1
        while height <= len(frames):
            stop = min(len(frames) + 1, height + batch)
            node.sync_requests.asked_for(0, height, time.monotonic())
            for h in range(height, stop):
                node.on_frame(0, frames[h - 1])
            while node.store.height < stop - 1:
                assert time.monotonic() < deadline, f"stuck at {node.store.height}"
                assert not consensus.done(), consensus.exception()
                await asyncio.sleep(0.002)
            height = stop
    finally:
        consensus.cancel()
        await asyncio.gather(consensus, return_exceptions=True)


async def follow(node: Node, url: str, tip: int) -> None:
    follower = Follower(node, [url])
    consensus = asyncio.ensure_future(node.consensus_loop())
    following = asyncio.ensure_future(follower.run())
    deadline = time.monotonic() + WAIT_S
    try:
        while node.store.height < tip:
            assert time.monotonic() < deadline, f"stuck at {node.store.height}"
            assert not following.done(), following.exception()
            await asyncio.sleep(0.005)
    finally:
        following.cancel()
        consensus.cancel()
        await asyncio.gather(following, consensus, return_exceptions=True)


def measure(run: Any, records: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall_s": wall, "cpu_s": cpu, "records_per_s": records / wall,
            "cpu_us_per_record": cpu / records * 1e6}


def profile(node: Node, frames: list[bytes], top: int) -> None:
    """The receive path in this thread: check each response, then append the block."""
    prof = cProfile.Profile()
    prof.enable()
    for frame in frames:
        body = frame[1:]
        header = peek_block_response(body)
        assert header is not None
        response = node.check_block_response(header, body)
        node.store.append(response.block, response.last_cert)
    prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--paths", default="peer,follow")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fx = make_fixture()
    genesis = fx.write_genesis(args.out)
    db = args.out / f"sync-{args.records}-{args.per_block}.db"
    if not db.exists():
        build_store(db, args.records, args.per_block)
    frames, serve_cpu, records = frames_from(db)
    tip = len(frames)
    print(f"{records:,} records in {tip} blocks; serving them as frames from stored bytes: "
          f"{serve_cpu / records * 1e6:.2f} CPU-us per record")
    report: dict[str, Any] = {"records": records, "blocks": tip,
                              "serve_cpu_us_per_record": serve_cpu / records * 1e6}
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    for _ in range(args.repeat):
        if "peer" in paths:
            node = receiver(args.out / "sync-peer", genesis)
            r = measure(lambda n=node: asyncio.run(peer_sync(n, frames)), records)
            assert node.store.height == tip
            node.store.close()
            report.setdefault("peer", []).append(r)
            print(f"  peer sync:  {r['records_per_s']:8,.0f} records/s ({r['wall_s']:.2f} s), "
                  f"{r['cpu_us_per_record']:.1f} CPU-us per record")
        if "follow" in paths:
            with serving_node(db, genesis, args.out) as url:
                node = receiver(args.out / "sync-follow", genesis)
                r = measure(lambda n=node, u=url: asyncio.run(follow(n, u, tip)), records)
                node.store.close()
            report.setdefault("follow", []).append(r)
            print(f"  follow:     {r['records_per_s']:8,.0f} records/s ({r['wall_s']:.2f} s), "
                  f"{r['cpu_us_per_record']:.1f} CPU-us per record (the follower's)")
    if args.profile:
        node = receiver(args.out / "sync-profile", genesis)
        profile(node, frames, 25)
        node.store.close()
    (args.out / "sync_bench.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
