"""The WAN bench's client: run inside the client namespace (or on the host for the loopback
figure), it signs its records, then measures light-load submit->commit latency and saturated
committed throughput with tests/bench/cluster_bench.py's load code, and prints one JSON line.

    python -m tests.wan.load --cluster DIR --urls URL0,URL1,... [--ca CA.pem]
        [--light 30] [--seconds 10] [--clients 8] [--batch 250] [--nonce-base N]
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import time
from pathlib import Path

from ledger.crypto import read_key_file
from ledger.genesis import Genesis
from ledger.records import Record
from tests.bench.cluster_bench import Saturation, cpu_seconds, light_latencies, percentile


def make_records(cluster: Path, count: int, nonce_base: int) -> list[object]:
    genesis = Genesis.load(cluster / "genesis.json")
    key = read_key_file(cluster / "clients" / "demo.pem")
    now = time.time_ns() // 1_000_000
    pad = "x" * 110
    return [Record.create(key, chain=genesis.chain_id, type="sensor.reading",
                          subject=f"plant-{i % 20}/line-{i % 3}/temp",
                          payload={"v": i * 0.1, "unit": "C", "note": pad}, ts=now,
                          nonce=nonce_base + i).envelope
            for i in range(count)]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cluster", type=Path, required=True)
    p.add_argument("--urls", required=True)
    p.add_argument("--ca", type=Path)
    p.add_argument("--light", type=int, default=30)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--max-records", type=int, default=60_000)
    p.add_argument("--nonce-base", type=int, default=0)
    p.add_argument("--pids", default="",
                   help="the nodes' pids: report their CPU during the saturation window, "
                        "beside the whole machine's (same pid namespace)")
    args = p.parse_args()
    urls = args.urls.split(",")
    verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=str(args.ca))
                                     if args.ca else True)
    # (signing is the client's own CPU, before the clock starts; only what will be sent)
    items = make_records(args.cluster, args.light + (args.max_records if args.seconds > 0
                                                     else 0), args.nonce_base)
    out: dict[str, object] = {}
    if args.light:
        # every node in turn, so the figure is not one node's distance from the proposer
        light: list[float] = []
        per = max(1, args.light // len(urls))
        for i, url in enumerate(urls):
            light += light_latencies(url, items[i * per:(i + 1) * per], verify)
        out.update(light_p50_ms=statistics.median(light) * 1000,
                   light_p99_ms=percentile(light, 99) * 1000, light_n=len(light))
    if args.seconds > 0:
        rest = items[args.light:]
        batches = [rest[i:i + args.batch] for i in range(0, len(rest), args.batch)]
        pids = [int(x) for x in args.pids.split(",") if x]
        cpu0, m0 = sum(cpu_seconds(pid) for pid in pids), machine_cpu()
        start = time.perf_counter()
        load = Saturation(urls, batches, args.clients, verify, deadline=start + args.seconds)
        for t in load.start():
            t.join()
        node_cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
        m1 = machine_cpu()
        committed = sum(n for _, n, _ in load.timeline)
        end = max((t for t, _, _ in load.timeline), default=start + args.seconds)
        lat = [x for _, _, x in load.timeline]
        out.update(committed=committed, seconds=end - start,
                   throughput=committed / max(end - start, 1e-9), errors=load.errors[0],
                   sat_p50_ms=statistics.median(lat) * 1000 if lat else 0.0,
                   sat_p99_ms=percentile(lat, 99) * 1000,
                   ran_out=len(load.timeline) + load.errors[0] >= len(batches),
                   # the nodes' share of a saturated machine tells a latency-bound run (idle
                   # cores) from one starved by other processes (none idle)
                   node_cpu_s=node_cpu,
                   nodes_cores=node_cpu / ((m1[1] - m0[1]) / (os.cpu_count() or 1)),
                   machine_busy=(m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9),
                   node_cpu_ms_per_record=node_cpu / max(committed, 1) * 1e3)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
