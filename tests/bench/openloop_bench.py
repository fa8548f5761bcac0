"""`make bench`: the open-loop latency-throughput curve of a local cluster.

A closed-loop client (send, wait, send again) slows down when the cluster does, so the
records it would have sent during a stall are never sent and never counted as late
(coordinated omission). Here records *arrive* on a schedule that does not care: a seeded
Poisson process at a fixed rate, and each record's latency runs from its intended arrival
time to the acknowledgement that it committed (``wait=commit``), however long the client
took to get it onto the wire.

Starts an N-node cluster (``cluster_bench``'s consensus settings), measures the closed-loop
maximum (``--closed-clients`` x ``--closed-batch`` records in flight, as ``cluster_bench``
does), then runs one open-loop phase at each of ``--loads`` (fractions of that maximum;
default 10, 25, 50, 75, 90%), each at most ``--seconds`` long and ``--max-records`` records,
once per ``--windows`` entry. Records due at the same moment share a request: the sender sends
at most one request per window and caps it at ``--max-batch`` records, and every record still
counts from its own intended time. A short window is a population of independent
submitters; a long one, a gateway that batches for them. When the sender falls behind its
schedule (a window, or every connection busy) the lateness of each send against its intended
time is reported, not hidden.

Per phase: offered and committed rate, latency p50/p99/p99.9, errors, send lateness, the
client's CPU, the nodes' CPU, blocks and records per block, and the nodes' own
admitted->committed p50. Writes bench-results/openloop_bench.json and openloop_bench.png
(p50/p99/p99.9 against committed rate, log latency, one curve per window, beside the
closed-loop maximum).

    python -m tests.bench.openloop_bench [--nodes 4] [--loads 0.1,0.25,0.5,0.75,0.9]
        [--windows 5,50] [--seconds 15] [--max-records 20000] [--closed-records 20000]
        [--procs 1] [--timeout-commit-ms MS] [--max-rate R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import re
import resource
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.crypto import read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from tests.bench.cluster_bench import (
    CONSENSUS,
    cpu_seconds,
    histogram_quantile,
    percentile,
    presign,
)
from tests.integration.cluster_util import ROOT, Cluster

LOADS = (0.10, 0.25, 0.50, 0.75, 0.90)
TARGET_P99_AT_50_MS = 100.0
TARGET_P50_AT_10_MS = 10.0


# -- the pure parts ---------------------------------------------------------------------

def poisson_schedule(rate: float, count: int, seed: int,
                     duration: float | None = None) -> list[float]:
    """Intended arrival times (seconds from the phase start) of a Poisson process of
    ``rate`` records/s: exponential gaps from a seeded generator, at most ``count``
    arrivals and none after ``duration``."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    while len(out) < count:
        t += rng.expovariate(rate)
        if duration is not None and t > duration:
            break
        out.append(t)
    return out


def due(schedule: Sequence[float], start: int, now: float, cap: int) -> int:
    """The end of the batch that starts at ``start``: every record due by ``now``
    (at least the first), at most ``cap``."""
    end = start + 1
    while end < len(schedule) and end - start < cap and schedule[end] <= now:
        end += 1
    return end


@dataclass
class Outcome:
    """One record: intended arrival, when its request went out and came back (seconds from
    the phase start), and whether the answer gave it a height (else ``error`` says why)."""

    intended: float
    sent: float = math.nan
    acked: float = math.nan
    error: str | None = "not sent"

    @property
    def latency(self) -> float:
        """Intended arrival to the commit acknowledgement: what a user waits, including
        any time the record spent waiting for the client."""
        return self.acked - self.intended

    @property
    def lateness(self) -> float:
        return self.sent - self.intended


def summarize(outcomes: Sequence[Outcome], target_rate: float) -> dict[str, Any]:
    """A phase's figures (latencies and lateness in ms, rates in records/s)."""
    ok = [o for o in outcomes if o.error is None]
    lat = [o.latency * 1000 for o in ok]
    late = [o.lateness * 1000 for o in outcomes if not math.isnan(o.sent)]
    span = max((o.intended for o in outcomes), default=0.0)
    # Committed rate over the window from the phase start to the last acknowledgement: a
    # cluster that keeps up finishes a latency after the last arrival, one that does not
    # stretches the window.
    end = max([span, *(o.acked for o in ok)])
    errors = Counter(o.error for o in outcomes if o.error is not None)
    return {
        "target_rate": target_rate,
        "records": len(outcomes),
        "offered_rate": len(outcomes) / span if span > 0 else 0.0,
        "committed": len(ok),
        "committed_rate": len(ok) / end if end > 0 else 0.0,
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "p999_ms": percentile(lat, 99.9), "max_ms": max(lat, default=0.0),
        "errors": sum(errors.values()), "errors_by_kind": dict(errors),
        "lateness_p50_ms": percentile(late, 50), "lateness_p99_ms": percentile(late, 99),
        "lateness_max_ms": max(late, default=0.0),
    }


def curve(phases: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """The latency-throughput curve: committed rate and p50/p99/p99.9 per phase, by rate."""
    ordered = sorted(phases, key=lambda p: p["committed_rate"])
    return {"rate": [p["committed_rate"] for p in ordered],
            "p50_ms": [p["p50_ms"] for p in ordered],
            "p99_ms": [p["p99_ms"] for p in ordered],
            "p999_ms": [p["p999_ms"] for p in ordered]}


# -- the load generator -----------------------------------------------------------------

class HttpError(Exception):
    """A request that got no well-formed answer (connection refused, reset, timed out)."""


class Pool:
    """Keep-alive HTTP/1.1 connections to one node: the least a client can spend per
    request (httpx costs ~1-2 ms of CPU each, which on a 2-core machine is taken from the
    nodes being measured). Enough for our own node's answers: Content-Length bodies."""

    IDLE_S = 2.0  # uvicorn closes a keep-alive connection idle for 5 s

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port or 80)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def post(self, target: str, body: bytes, timeout: float) -> tuple[int, bytes]:
        """POST ``body`` to ``target`` (path and query): (status, response body)."""
        try:
            return await asyncio.wait_for(self._post(target, body), timeout)
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as exc:
            raise HttpError(type(exc).__name__) from exc

    async def _post(self, target: str, body: bytes) -> tuple[int, bytes]:
        request = (f"POST {target} HTTP/1.1\r\nHost: {self.host}\r\n"
                   f"Content-Type: application/msgpack\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        now = time.monotonic()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.IDLE_S:
                try:
                    return await self._exchange(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass  # closed by the server meanwhile: submitting again is harmless
            else:
                writer.close()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, request)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        request: bytes) -> tuple[int, bytes]:
        try:
            writer.write(request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split()[1])
            fields = {k.strip().lower(): v.strip()
                      for k, _, v in (line.partition(":") for line in head[1:] if line)}
            data = await reader.readexactly(int(fields.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if fields.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append((reader, writer, time.monotonic()))
        return status, data

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class Sender:
    """How one client process sends its share of a phase."""

    urls: list[str]
    window: float = 0.002  # at most one request per window (s)
    max_batch: int = 100
    per_node: int = 48  # requests in flight per node (a node admits 64 per source)
    timeout: float = 30.0  # wait=commit timeout (s)
    requests: int = field(default=0)


async def drive(sender: Sender, items: Sequence[object], schedule: Sequence[float],
                t0: float) -> list[Outcome]:
    """Send ``items[i]`` at ``t0 + schedule[i]`` (``time.monotonic``), batching what is due
    at once; returns every record's outcome. Bounded: every request times out."""
    loop = asyncio.get_running_loop()
    outcomes = [Outcome(t) for t in schedule]
    nodes = len(sender.urls)
    inflight = [0] * nodes
    slots = asyncio.Semaphore(sender.per_node * nodes)
    tasks: set[asyncio.Task[None]] = set()
    pools = [Pool(url) for url in sender.urls]
    target = f"/v1/records?wait=commit&timeout={sender.timeout:g}"

    async def send(node: int, lo: int, hi: int) -> None:
        error: str | None = None
        results: list[dict[str, Any]] = []
        try:
            status, data = await pools[node].post(target, packb(list(items[lo:hi])),
                                                  sender.timeout + 15)
            if status == 202:
                results = json.loads(data)["results"]
            else:
                error = f"http {status}"
        except HttpError as exc:
            error = str(exc)
        finally:
            inflight[node] -= 1
            slots.release()
        acked = time.monotonic() - t0
        for k in range(lo, hi):
            o = outcomes[k]
            o.acked = acked
            if error is not None:
                o.error = error
            else:
                r = results[k - lo] if k - lo < len(results) else {}
                o.error = None if "height" in r else str(r.get("error", "no height"))

    try:
        i, last, k = 0, -math.inf, 0
        while i < len(schedule):
            wake = max(schedule[i], last + sender.window)
            now = time.monotonic() - t0
            if wake > now:
                await asyncio.sleep(wake - now)
                continue
            await slots.acquire()  # every connection busy: the wait shows as lateness
            now = time.monotonic() - t0
            end = due(schedule, i, now, sender.max_batch)
            node = min(range(nodes), key=lambda n: (inflight[n], (n - k) % nodes))
            inflight[node] += 1
            k += 1
            for o in outcomes[i:end]:
                o.sent = now
            task = loop.create_task(send(node, i, end))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sender.requests += 1
            last, i = now, end
        if tasks:
            await asyncio.gather(*tasks)
    finally:
        for pool in pools:
            pool.close()
    return outcomes


def _new_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _child(sender: Sender, items: Sequence[object], schedule: Sequence[float], t0: float,
           out: Any) -> None:
    _new_loop()
    outcomes = asyncio.run(drive(sender, items, schedule, t0))
    out.put(([(o.intended, o.sent, o.acked, o.error) for o in outcomes], sender.requests))


def run_phase(sender: Sender, items: Sequence[object], schedule: Sequence[float],
              procs: int) -> tuple[list[Outcome], int, float]:
    """Run one phase from ``procs`` client processes (record i from process i % procs;
    1: in this process). Returns the outcomes in schedule order, the request count and
    the client CPU seconds."""
    t0 = time.monotonic() + 0.5  # time for the processes to start
    cpu0 = _cpu_self_and_children()
    if procs <= 1:
        outcomes = asyncio.run(drive(sender, items, schedule, t0))
        return outcomes, sender.requests, _cpu_self_and_children() - cpu0
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    share = Sender(sender.urls, sender.window * procs, sender.max_batch,
                   max(1, sender.per_node // procs), sender.timeout)
    children = [ctx.Process(target=_child, daemon=True,
                            args=(share, items[p::procs], schedule[p::procs], t0, queue))
                for p in range(procs)]
    merged: list[Outcome] = []
    requests = 0
    try:
        for child in children:
            child.start()
        bound = schedule[-1] + sender.timeout + 60 if schedule else 60
        for _ in children:
            rows, n = queue.get(timeout=bound)
            merged.extend(Outcome(*row) for row in rows)
            requests += n
        for child in children:
            child.join(30)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
                child.join()
    merged.sort(key=lambda o: o.intended)
    return merged, requests, _cpu_self_and_children() - cpu0


def _cpu_self_and_children() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


async def closed_loop(urls: list[str], items: Sequence[object], clients: int,
                      batch: int, timeout: float = 240) -> tuple[float, int, float]:
    """``clients`` clients each sending ``batch`` records with wait=commit and the next
    batch on the answer, to the nodes in turn: (committed records/s, committed, seconds)."""
    batches = [items[i:i + batch] for i in range(0, len(items), batch)]
    committed = [0]
    pools = [Pool(url) for url in urls]
    target = f"/v1/records?wait=commit&timeout={timeout:g}"

    async def client(k: int) -> None:
        for j in range(k, len(batches), clients):
            status, data = await pools[j % len(urls)].post(target, packb(list(batches[j])),
                                                           timeout + 15)
            if status == 202:
                committed[0] += sum(1 for x in json.loads(data)["results"] if "height" in x)

    try:
        start = time.monotonic()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.monotonic() - start
    finally:
        for pool in pools:
            pool.close()
    return committed[0] / elapsed, committed[0], elapsed


# -- the run ----------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--loads", default=",".join(str(x) for x in LOADS),
                        help="fractions of the closed-loop maximum, comma-separated")
    parser.add_argument("--seconds", type=float, default=15,
                        help="length of each open-loop phase (at most)")
    parser.add_argument("--max-records", type=int, default=20_000,
                        help="records per open-loop phase (at most)")
    parser.add_argument("--closed-records", type=int, default=20_000,
                        help="records for the closed-loop maximum")
    parser.add_argument("--closed-clients", type=int, default=4)
    parser.add_argument("--closed-batch", type=int, default=250)
    parser.add_argument("--max-rate", type=float, default=0.0,
                        help="use this maximum (records/s) instead of measuring it")
    parser.add_argument("--windows", default="5,50",
                        help="ms, comma-separated: one curve each; the sender sends at most "
                             "one request per window, carrying what is due by then")
    parser.add_argument("--max-batch", type=int, default=100, help="records per request")
    parser.add_argument("--per-node", type=int, default=48,
                        help="requests in flight per node (a node allows 64 per source)")
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--timeout", type=float, default=30, help="wait=commit timeout (s)")
    parser.add_argument("--timeout-commit-ms", type=int, default=None,
                        help="the cluster's timeout_commit_ms (default: cluster_bench's)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args)
    (args.out / "openloop_bench.json").write_text(json.dumps(report, indent=2))
    plot(report, args.out / "openloop_bench.png")
    print(f"results: {args.out / 'openloop_bench.json'}, {args.out / 'openloop_bench.png'}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    loads = [float(x) for x in args.loads.split(",") if x.strip()]
    windows = [float(x) for x in args.windows.split(",") if x.strip()]
    consensus = dict(CONSENSUS)
    if args.timeout_commit_ms is not None:
        consensus["timeout_commit_ms"] = args.timeout_commit_ms
    cores = os.cpu_count() or 1
    phases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster.create(Path(tmp), nodes=args.nodes, consensus=consensus)
        try:
            for i in range(args.nodes):
                c.start(i)
            for i in range(args.nodes):  # a node starts slowly on a busy machine
                c.wait_healthy(i, timeout=120)
            urls = [c.url(i) for i in range(args.nodes)]
            genesis = Genesis.load(c.dir / "genesis.json")
            key = read_key_file(c.dir / "clients" / "demo.pem")
            nonce = 0
            if args.max_rate:
                max_rate, closed = args.max_rate, {"given": args.max_rate}
            else:
                print(f"pre-signing {args.closed_records} records ...", flush=True)
                _, items = presign(key, genesis.chain_id, args.closed_records)
                nonce += len(items)
                print(f"closed loop: {args.closed_clients} clients x {args.closed_batch} "
                      f"records, {len(items)} records ...", flush=True)
                _new_loop()
                max_rate, done, secs = asyncio.run(closed_loop(
                    urls, items, args.closed_clients, args.closed_batch))
                closed = {"records_per_s": max_rate, "committed": done, "seconds": secs,
                          "clients": args.closed_clients, "batch": args.closed_batch}
                print(f"closed-loop maximum: {max_rate:,.0f} records/s", flush=True)
            for w, window in enumerate(windows):
                for n, load in enumerate(loads):
                    rate = load * max_rate
                    schedule = poisson_schedule(rate, args.max_records,
                                                args.seed + 100 * w + n, args.seconds)
                    # signed while the cluster is idle, so it costs the phase nothing
                    _, items = presign(key, genesis.chain_id, len(schedule),
                                       first_nonce=nonce)
                    nonce += len(items)
                    settle(c)
                    print(f"open loop, window {window:g} ms, at {load:.0%}: {rate:,.0f} "
                          f"records/s, {len(schedule)} records ...", flush=True)
                    sender = Sender(urls, window / 1000, args.max_batch, args.per_node,
                                    args.timeout)
                    phase = {"window_ms": window, "load": load,
                             **measure(c, sender, items, schedule, rate, args.procs, cores)}
                    phases.append(phase)
                    print(row(phase), flush=True)
        finally:
            c.stop_all()
    report: dict[str, Any] = {
        "nodes": args.nodes, "cores": cores, "consensus": consensus,
        "closed_loop": closed, "closed_loop_max": max_rate,
        "windows_ms": windows, "max_batch": args.max_batch, "procs": args.procs,
        "seconds": args.seconds, "max_records": args.max_records, "seed": args.seed,
        "phases": phases,
        "curves": {f"{window:g}": curve([p for p in phases if p["window_ms"] == window])
                   for window in windows}}
    print_table(report)
    return report


def measure(c: Cluster, sender: Sender, items: Sequence[object], schedule: Sequence[float],
            rate: float, procs: int, cores: int) -> dict[str, Any]:
    """One open-loop phase and what the nodes did meanwhile."""
    urls = sender.urls
    h0 = c.height(0)
    hist0 = commit_latency_buckets(urls)
    node_cpu0 = [cpu_seconds(p.pid) for p in c.procs.values()]
    wall0 = time.monotonic()
    outcomes, requests, client_cpu = run_phase(sender, items, schedule, procs)
    wall = time.monotonic() - wall0
    node_cpu = sum(cpu_seconds(p.pid) - b
                   for p, b in zip(c.procs.values(), node_cpu0, strict=True))
    blocks = c.height(0) - h0
    hist1 = commit_latency_buckets(urls)
    return {**summarize(outcomes, rate), "requests": requests,
            "records_per_request": len(outcomes) / max(requests, 1),
            "client_cpu_of_core": client_cpu / wall,
            "nodes_cpu_of_cores": node_cpu / wall / cores,
            "node_cpu_us_per_record": node_cpu / max(len(outcomes), 1) / c.nodes * 1e6,
            "node_commit_p50_ms": histogram_quantile(0.5, hist0, hist1) * 1000,
            "node_commit_p99_ms": histogram_quantile(0.99, hist0, hist1) * 1000,
            "blocks": blocks, "records_per_block": len(outcomes) / max(blocks, 1),
            "block_interval_ms": schedule[-1] / max(blocks, 1) * 1000 if schedule else 0.0}


def commit_latency_buckets(urls: Sequence[str]) -> list[tuple[float, int]]:
    """The nodes' ``ledger_commit_latency_seconds`` histograms (admitted at a node ->
    committed there), summed: cumulative counts by upper bound."""
    total: dict[float, int] = {}
    for url in urls:
        with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
            text = resp.read().decode()
        for m in re.finditer(r'^ledger_commit_latency_seconds_bucket\{le="([^"]+)"\} (\d+)$',
                             text, re.M):
            total[float(m.group(1))] = total.get(float(m.group(1)), 0) + int(m.group(2))
    return sorted(total.items())


def settle(c: Cluster, timeout: float = 30) -> None:
    """Wait (bounded) until every node is at the same height, then a moment of quiet."""
    deadline = time.monotonic() + timeout
    while len({c.height(i) for i in range(c.nodes)}) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)


HEADER = (f"{'win ms':>6} {'load':>5} {'offered/s':>10} {'committed/s':>11} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'errors':>6} {'late p99':>9} "
          f"{'rec/req':>7} {'rec/blk':>7} {'node p50':>8} {'client':>6} {'nodes':>6} "
          f"{'us/rec':>6}")


def row(p: dict[str, Any]) -> str:
    return (f"{p['window_ms']:>6g} {p['load']:>5.0%} {p['offered_rate']:>10,.0f} "
            f"{p['committed_rate']:>11,.0f} {p['p50_ms']:>8.1f} {p['p99_ms']:>8.1f} "
            f"{p['p999_ms']:>9.1f} {p['errors']:>6} {p['lateness_p99_ms']:>9.1f} "
            f"{p['records_per_request']:>7.1f} {p['records_per_block']:>7.1f} "
            f"{p['node_commit_p50_ms']:>8.1f} {p['client_cpu_of_core']:>6.0%} "
            f"{p['nodes_cpu_of_cores']:>6.0%} {p['node_cpu_us_per_record']:>6,.0f}")


def print_table(report: dict[str, Any]) -> None:
    print(f"closed-loop maximum: {report['closed_loop_max']:,.0f} records/s")
    print(HEADER)
    for p in report["phases"]:
        print(row(p))
    print("(latency: intended arrival -> commit acknowledged; late: send - intended; "
          "node p50: admitted at a node -> committed there, from /metrics, bucket-"
          "interpolated; client: client CPU of one core; nodes: node CPU of all cores; "
          "us/rec: node CPU per record per node)")
    for window in report["windows_ms"]:
        by_load = {round(p["load"], 2): p for p in report["phases"]
                   if p["window_ms"] == window}
        if 0.5 in by_load:
            p99 = by_load[0.5]["p99_ms"]
            print(f"window {window:g} ms: p99 at 50%: {p99:.1f} ms (target <= "
                  f"{TARGET_P99_AT_50_MS:.0f}: "
                  f"{'met' if p99 <= TARGET_P99_AT_50_MS else 'missed'})")
        if 0.1 in by_load:
            p50 = by_load[0.1]["p50_ms"]
            print(f"window {window:g} ms: p50 at 10%: {p50:.1f} ms (target <= "
                  f"{TARGET_P50_AT_10_MS:.0f}: "
                  f"{'met' if p50 <= TARGET_P50_AT_10_MS else 'missed'})")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {"p50_ms": "tab:blue", "p99_ms": "tab:orange", "p999_ms": "tab:red"}
    styles = ["o-", "s--", "^:", "d-."]
    for w, (window, cv) in enumerate(report["curves"].items()):
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            ax.plot(cv["rate"], cv[key], styles[w % len(styles)], color=colours[key],
                    label=f"{label}, window {window} ms")
    for p in report["phases"]:
        ax.annotate(f"{p['load']:.0%}", (p["committed_rate"], p["p50_ms"]),
                    textcoords="offset points", xytext=(0, -12), ha="center",
                    fontsize="x-small")
    ax.axvline(report["closed_loop_max"], color="grey", linestyle="--",
               label=f"closed-loop max {report['closed_loop_max']:,.0f}/s")
    ax.plot([0.5 * report["closed_loop_max"]], [TARGET_P99_AT_50_MS], "k^",
            label="target p99 at 50%")
    ax.plot([0.1 * report["closed_loop_max"]], [TARGET_P50_AT_10_MS], "kv",
            label="target p50 at 10%")
    ax.set_yscale("log")
    ax.set_xlabel("committed records/s")
    ax.set_ylabel("latency from intended arrival (ms)")
    ax.set_title(f"open-loop latency, {report['nodes']} nodes on {report['cores']} cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
