"""Durable writes per committed height, counted with strace on real node processes.

Starts a 4-node cluster, attaches ``strace -f -y`` (fsync, fdatasync, sync_file_range,
rename; counted by call and file) to one node, and submits records in two phases:

- light: ``--light`` records one at a time with wait=commit (one record per height),
  reporting the submit->commit latency p50/p99;
- load: ``--batches`` batches of ``--batch`` records from 4 client threads (wait=commit).

Per phase it prints the node's sync calls per height (the deterministic figure) and the
latencies (noisy on a shared machine: the load average is printed beside them).

    python -m tests.bench.fsync_bench [--light 60] [--batches 40] [--batch 100]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ledger.crypto import read_key_file
from ledger.genesis import Genesis
from tests.bench.cluster_bench import CONSENSUS, percentile, post_records, presign
from tests.integration.cluster_util import Cluster

SYSCALLS = "fsync,fdatasync,sync_file_range,rename,renameat,renameat2"


def strace_counts(out: str) -> dict[str, int]:
    """Calls by syscall and file (``fdatasync chain.db-wal``) in ``strace -y`` output."""
    counts: dict[str, int] = {}
    for line in out.splitlines():
        m = re.search(r"\b(\w+)\((?:\d+<([^>]*)>)?", line)
        if m is None or "resumed" in line or m.group(1) not in SYSCALLS.split(","):
            continue
        name = m.group(1) + (f" {Path(m.group(2)).name}" if m.group(2) else "")
        counts[name] = counts.get(name, 0) + 1
    return counts


def traced(pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["strace", "-f", "-y", "-o", str(out), "-e",
                             f"trace={SYSCALLS}", "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def phase(c: Cluster, node: int, out: Path, work: object) -> tuple[dict[str, int], int]:
    """Run ``work()`` with strace attached to ``node``: (calls by syscall, heights)."""
    h0 = c.height(node)
    tracer = traced(c.procs[node].pid, out)
    time.sleep(1.0)  # let strace attach to every thread
    assert callable(work)
    work()
    time.sleep(0.5)
    h1 = c.height(node)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(timeout=30)
    return strace_counts(out.read_text()), h1 - h0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--light", type=int, default=60)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--node", type=int, default=1, help="the node traced")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster.create(Path(tmp), nodes=4, consensus=CONSENSUS)
        c.start_all()
        try:
            genesis = Genesis.load(c.dir / "genesis.json")
            key = read_key_file(c.dir / "clients" / "demo.pem")
            total = args.light + args.batches * args.batch
            _records, items = presign(key, genesis.chain_id, total)
            light_items, load_items = items[:args.light], items[args.light:]
            light: list[float] = []

            def light_work() -> None:
                with httpx.Client(timeout=60) as http:
                    for one in light_items:
                        t0 = time.perf_counter()
                        post_records(http, c.url(0), [one], 30).raise_for_status()
                        light.append(time.perf_counter() - t0)

            counts, heights = phase(c, args.node, c.dir / "strace-light.txt", light_work)
            load1 = os.getloadavg()[0]
            report("light", counts, heights)
            print(f"light: p50 {percentile(light, 50) * 1e3:.1f} ms, "
                  f"p99 {percentile(light, 99) * 1e3:.1f} ms over {len(light)} records "
                  f"(load average {load1:.2f})")

            batches = [load_items[i:i + args.batch]
                       for i in range(0, len(load_items), args.batch)]
            lat: list[float] = []
            lock = threading.Lock()

            def client(k: int) -> None:
                with httpx.Client(timeout=120) as http:
                    for j in range(k, len(batches), 4):
                        t0 = time.perf_counter()
                        post_records(http, c.url(j % 4), batches[j], 60).raise_for_status()
                        with lock:
                            lat.append(time.perf_counter() - t0)

            def load_work() -> None:
                threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

            counts, heights = phase(c, args.node, c.dir / "strace-load.txt", load_work)
            report("load", counts, heights)
            print(f"load: batch p50 {percentile(lat, 50) * 1e3:.0f} ms, "
                  f"p99 {percentile(lat, 99) * 1e3:.0f} ms (load average "
                  f"{os.getloadavg()[0]:.2f})")
        finally:
            c.stop_all()


def report(name: str, counts: dict[str, int], heights: int) -> None:
    syncs = sum(n for s, n in counts.items() if "sync" in s.split()[0])
    per = syncs / heights if heights else float("nan")
    detail = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
    print(f"{name}: {heights} heights, {detail}: {per:.2f} sync calls per height")



if __name__ == "__main__":
    main()
