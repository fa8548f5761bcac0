"""`make bench`: a local cluster against the signature-verification bound.

Starts an N-node cluster, pre-signs R records (~150-byte payloads), measures one core's
PyNaCl verify rate v, then reports: light-load submit->commit latency (one record in flight),
saturated throughput with C concurrent clients sending batches with wait=commit (and its
latency p50/p99), `ledger audit` records/s, peak RSS per node and store bytes per record.
Each figure is printed beside its bound: throughput / (cores x v / nodes), audit / (cores x v).
Writes bench-results/cluster_bench.json and a PNG of throughput and latency over the run.

With ``--sealed`` (what `make bench` runs) the same run is then repeated on a fresh cluster
with every record sealed (SPEC section 10: the same payloads, each submitted as
``[envelope, salt, payload_bytes]``), written to cluster_bench_sealed.json, and the sealed
throughput is printed as a ratio of the inline one (target >= 0.9).

With ``--no-compact`` the nodes send whole proposals (``LEDGER_COMPACT_PROPOSALS=0``), the
peer protocol before compact proposals: the bytes each node hands its peer links per
committed record (``ledger_peer_bytes_sent_total``, by frame kind) compare the two.

    python -m tests.bench.cluster_bench [--nodes 4] [--records 40000] [--batch 250] [--clients 4]
                                        [--sealed [--repeat N]] [--no-compact] [--profile]
                                        [--perf]

Besides records/s it prints the bytes each record's item carries (what a submission and the
record's gossip send: the envelope, or ``[envelope, salt, payload]``) and the node CPU per
record split into user and system time: sealed items are larger but sealed envelopes (what
proposals and blocks carry) smaller, so records/s and bytes/s are both reported.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from tqdm import tqdm

from ledger.crypto import PrivateKey, read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.records import Record, SealedPayload, seal_record
from tests.bench.audit_bench import compile_tree, verify_rate
from tests.integration.cluster_util import ROOT, Cluster

CONSENSUS: dict[str, object] = {"create_empty_blocks": False, "max_block_records": 10_000,
             "timeout_commit_ms": 20}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    return sum(cpu_times(pid))


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    """A process's peak (or, with field="VmRSS", current) resident memory in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb(pid: int) -> float:
    return peak_rss_mb(pid, "VmRSS")


def loop_lag_buckets(url: str) -> list[tuple[float, int]]:
    """A node's event-loop lag histogram (cumulative counts by upper bound) from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return [(float(m.group(1)), int(m.group(2))) for m in re.finditer(
        r'^ledger_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\d+)$', text, re.M)]


def payload_pairs(url: str) -> dict[str, int]:
    """How a node came by the sealed payload pairs it holds (``ledger_payload_pairs_total``
    by ``how``: with the record at admission, healed by a resubmission, fetched from a
    peer after a commit that lacked them, ...)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        r'^ledger_payload_pairs_total\{how="([^"]+)"\} (\d+)$', text, re.M)}


def labelled_counter(url: str, name: str, label: str) -> dict[str, int]:
    """A node's counter ``name`` by the value of ``label``, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {m.group(1): int(m.group(2)) for m in re.finditer(
        rf'^{name}{{{label}="([^"]+)"}} (\d+)$', text, re.M)}


def bytes_sent(url: str) -> dict[str, int]:
    """Bytes a node handed its peer links, by frame kind (``ledger_peer_bytes_sent_total``)."""
    return labelled_counter(url, "ledger_peer_bytes_sent_total", "kind")


def counter_delta(before: list[dict[str, int]], after: list[dict[str, int]]) -> dict[str, int]:
    """What the nodes' counters grew by, summed over the nodes, by label."""
    out: dict[str, int] = {}
    for b, a in zip(before, after, strict=True):
        for k, v in a.items():
            out[k] = out.get(k, 0) + v - b.get(k, 0)
    return out


def histogram_quantile(q: float, before: list[tuple[float, int]],
                       after: list[tuple[float, int]]) -> float:
    """The q-quantile of what a cumulative histogram counted between two scrapes,
    interpolated linearly within its bucket (as Prometheus does); 0 with no samples."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0
    if total == 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0
    for le, cum in counts:
        if cum >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(cum - below, 1)
        lower, below = le, cum
    return lower


def tenths(timeline: list[tuple[float, int, float]],
           start: float) -> list[tuple[float, float, int]]:
    """The run cut into tenths by records committed: (from, to, records) for each."""
    ordered = sorted(timeline)
    total = sum(n for _, n, _ in ordered)
    cuts, done, t_prev, n_seg, tenth = [], 0, start, 0, 1
    for t, n, _ in ordered:
        done += n
        n_seg += n
        if done >= total * tenth / 10 and t > t_prev:
            cuts.append((t_prev, t, n_seg))
            t_prev, n_seg, tenth = t, 0, tenth + 1
    return cuts


def rate_by_tenth(timeline: list[tuple[float, int, float]], start: float) -> list[float]:
    """Committed records/s in each tenth of the run (by records): flat if the cost per
    record does not grow with the chain."""
    return [n / (t1 - t0) for t0, t1, n in tenths(timeline, start)]


def cpu_by_tenth(timeline: list[tuple[float, int, float]], start: float,
                 cpu: list[tuple[float, float]], nodes: int) -> list[float]:
    """Node CPU µs per record per node in each tenth of the run, from ``cpu``'s samples
    (time, all nodes' CPU seconds so far) interpolated at the tenths' edges: flat if the
    cost per record does not grow with the chain, whatever else shares the machine."""
    def at(t: float) -> float:
        k = bisect.bisect_left(cpu, (t,))
        if k == 0:
            return cpu[0][1]
        if k == len(cpu):
            return cpu[-1][1]
        (ta, ca), (tb, cb) = cpu[k - 1], cpu[k]
        return ca + (cb - ca) * (t - ta) / max(tb - ta, 1e-9)
    return [(at(t1) - at(t0)) / max(n, 1) / nodes * 1e6
            for t0, t1, n in tenths(timeline, start)] if cpu else []


def post_records(http: httpx.Client, url: str, items: list[object],
                 timeout: float) -> httpx.Response:
    """POST a batch to ``url``/v1/records, waiting for its commit."""
    return http.post(f"{url}/v1/records", content=packb(items),
                     params={"wait": "commit", "timeout": str(int(timeout))},
                     headers={"Content-Type": "application/msgpack"})


def light_latencies(url: str, items: list[object], verify: ssl.SSLContext | bool = True,
                    timeout: float = 30) -> list[float]:
    """Light load: submit->commit seconds of each item, one record in flight, on a warm
    connection (a client keeps its connection: the TCP and TLS handshakes, two round trips
    on a WAN, are not part of a commit's latency)."""
    light = []
    with httpx.Client(timeout=timeout * 2, verify=verify) as http:
        http.get(f"{url}/healthz").raise_for_status()
        for one in items:
            t0 = time.perf_counter()
            post_records(http, url, [one], timeout).raise_for_status()
            light.append(time.perf_counter() - t0)
    return light


class Saturation:
    """Saturation: ``clients`` threads sending ``batches`` with wait=commit (batch j to node
    j mod len(urls)), closed loop, until the batches run out or ``deadline``
    (time.perf_counter()) passes. ``timeline``: (commit time, records, latency) per batch."""

    def __init__(self, urls: list[str], batches: list[list[object]], clients: int,
                 verify: ssl.SSLContext | bool = True, deadline: float | None = None) -> None:
        self.urls, self.batches, self.clients = urls, batches, clients
        self.verify, self.deadline = verify, deadline
        self.lock = threading.Lock()
        self.timeline: list[tuple[float, int, float]] = []
        self.errors = [0]  # requests that failed
        self.refused: Counter[str] = Counter()  # records not committed, by error code

    def client(self, k: int) -> None:
        with httpx.Client(timeout=300, verify=self.verify) as http:
            for j in range(k, len(self.batches), self.clients):
                if self.deadline is not None and time.perf_counter() >= self.deadline:
                    return
                t0 = time.perf_counter()
                try:
                    resp = post_records(http, self.urls[j % len(self.urls)], self.batches[j],
                                        240)
                except httpx.HTTPError:
                    self.errors[0] += 1
                    continue
                t1 = time.perf_counter()
                if resp.status_code != 202:
                    self.errors[0] += 1
                    continue
                results = resp.json()["results"]
                done = sum(1 for x in results if "height" in x)
                with self.lock:
                    self.refused.update(str(x.get("error", x.get("status"))) for x in results
                                        if "height" not in x)
                    self.timeline.append((t1, done, t1 - t0))

    def start(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.client, args=(k,))
                   for k in range(self.clients)]
        for t in threads:
            t.start()
        return threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--batch", type=int, default=250,
                        help="records per request (in flight: batch x clients)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--light", type=int, default=50, help="single-record submissions")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy every node during the saturation phase, sampling the "
                             "GIL's holder only (where Python code runs; collapsed stacks in "
                             "OUT/profile-node{i}.txt; the sealed run's in "
                             "OUT/profile-sealed-node{i}.txt)")
    parser.add_argument("--perf", action="store_true",
                        help="perf record (Linux perf: on-CPU samples, native code and kernel "
                             "included) every node during the saturation phase "
                             "(OUT/perf-node{i}.data, OUT/perf-sealed-node{i}.data)")
    parser.add_argument("--sealed", action="store_true",
                        help="then run again with every record sealed (same payloads) and "
                             "print the sealed/inline throughput ratio")
    parser.add_argument("--no-compact", action="store_true",
                        help="whole proposals, as before compact proposals (the nodes run "
                             "with LEDGER_COMPACT_PROPOSALS=0)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --sealed: this many inline/sealed pairs, each on fresh "
                             "clusters, interleaved; prints every ratio and their median")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.no_compact:  # the node processes inherit it
        os.environ["LEDGER_COMPACT_PROPOSALS"] = "0"
    ratios: list[float] = []
    for k in range(args.repeat if args.sealed else 1):
        if args.repeat > 1:
            print(f"== pair {k + 1} of {args.repeat} ==", flush=True)
        inline = run(args, sealed=False)
        if not args.sealed:
            break
        sealed = run(args, sealed=True)
        ratio = sealed["throughput_records_per_s"] / inline["throughput_records_per_s"]
        ratios.append(ratio)
        sealed["throughput_of_inline"] = ratio
        (args.out / "cluster_bench_sealed.json").write_text(json.dumps(sealed, indent=2))
        print(f"sealed records: {sealed['throughput_records_per_s']:,.0f} records/s = "
              f"{ratio:.2f} of the inline run's {inline['throughput_records_per_s']:,.0f} "
              f"(target >= 0.90); light p50 {sealed['light_p50_ms']:.1f} ms vs "
              f"{inline['light_p50_ms']:.1f} ms; node CPU per record "
              f"{sealed['node_cpu_us_per_record']:.0f} us vs "
              f"{inline['node_cpu_us_per_record']:.0f} us", flush=True)
    if len(ratios) > 1:
        print("sealed/inline throughput by pair: " + ", ".join(f"{r:.2f}" for r in ratios)
              + f"; median {statistics.median(ratios):.2f} (target >= 0.90)")


def item(record: Record, pair: SealedPayload | None) -> object:
    """What a batch carries for ``record``: its envelope, or ``[envelope, salt, payload]``."""
    return record.envelope if pair is None else [record.envelope, pair.salt, pair.payload]


def presign(key: PrivateKey, chain_id: str, count: int, *, sealed: bool = False,
            first_nonce: int = 0) -> tuple[list[Record], list[object]]:
    """``count`` signed sensor readings (~150-byte payloads, nonces from ``first_nonce``)
    and what a batch carries for each (``item``); sealed with ``sealed``."""
    now = time.time_ns() // 1_000_000
    pad = "x" * 110
    make = seal_record if sealed else Record.create
    made = [make(key, chain=chain_id, type="sensor.reading",
                 subject=f"plant-{i % 20}/line-{i % 3}/temp",
                 payload={"v": i * 0.1, "unit": "C", "note": pad}, ts=now, nonce=i)
            for i in tqdm(range(first_nonce, first_nonce + count), unit="rec",
                          desc="signing", file=sys.stderr, mininterval=1)]
    records: list[Record] = [m[0] if isinstance(m, tuple) else m for m in made]
    items = [item(m[0], m[1]) if isinstance(m, tuple) else m.envelope for m in made]
    return records, items


def run(args: argparse.Namespace, *, sealed: bool) -> dict[str, object]:
    """One run on a fresh cluster; prints and writes its report and returns it."""
    cores = os.cpu_count() or 1
    name = "cluster_bench_sealed" if sealed else "cluster_bench"
    print(f"== {'sealed' if sealed else 'inline'} records ==", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster.create(Path(tmp), nodes=args.nodes, consensus=CONSENSUS)
        for i in range(args.nodes):  # records are signed before the run with one ts: a
            # run longer than the default 10-minute window (5M records) would be refused
            config = c.dir / f"node{i}" / "config.json"
            config.write_text(json.dumps({**json.loads(config.read_text()),
                                          "max_clock_skew_ms": 12 * 3600 * 1000}))
        c.start_all()
        try:
            genesis = Genesis.load(c.dir / "genesis.json")
            key = read_key_file(c.dir / "clients" / "demo.pem")
            v = verify_rate()
            print(f"pre-signing {args.records + args.light} records ...", flush=True)
            records, items = presign(key, genesis.chain_id, args.records + args.light,
                                     sealed=sealed)
            envelope_bytes = sum(len(r.envelope) for r in records) / len(records)
            # what a submission (and the record's gossip) carries per record: the envelope,
            # or [envelope, salt, payload] (msgpack, array and bin headers included)
            item_bytes = sum(len(packb(x)) for x in items) / len(items)

            # Light load: one record in flight.
            light = light_latencies(c.url(0), items[args.records:])

            # Saturation: clients send batches with wait=commit.
            batches = [items[i:i + args.batch] for i in range(0, args.records, args.batch)]
            load = Saturation([c.url(i) for i in range(args.nodes)], batches, args.clients)
            lock, timeline, errors = load.lock, load.timeline, load.errors

            # Reads during saturation: GET /v1/records/{id} of committed records, one at a
            # time, every node in turn (a read must not wait for the writer's commit).
            reads: list[float] = []
            read_ids = [r.id.hex() for r in records[args.records:]]

            def reader() -> None:
                with httpx.Client(timeout=30) as http:
                    for k in range(1_000_000):
                        if not any(t.is_alive() for t in threads):
                            return
                        t0 = time.perf_counter()
                        resp = http.get(f"{c.url(k % args.nodes)}/v1/records/"
                                        f"{read_ids[k % len(read_ids)]}")
                        if resp.status_code == 200:
                            reads.append(time.perf_counter() - t0)
                        time.sleep(0.01)

            lag_before = [loop_lag_buckets(c.url(i)) for i in range(args.nodes)]
            sent_before = [bytes_sent(c.url(i)) for i in range(args.nodes)]
            compact_before = [labelled_counter(c.url(i), "ledger_compact_records_total", "how")
                              for i in range(args.nodes)]
            outcomes_before = [labelled_counter(c.url(i), "ledger_compact_proposals_total",
                                                "outcome") for i in range(args.nodes)]
            spies = (start_profilers(c, args.out, "sealed-" if sealed else "") if args.profile
                     else [])
            spies += (start_perf(c, args.out, "sealed-" if sealed else "") if args.perf
                      else [])
            cpu_before = [cpu_times(p.pid) for p in c.procs.values()]
            start = time.perf_counter()
            threads = load.start()
            read_thread = threading.Thread(target=reader)
            read_thread.start()
            memory: list[tuple[float, list[float]]] = []  # (time, RSS MB of each node)
            cpu_seen = [(start, sum(map(sum, cpu_before)))]  # (time, all nodes' CPU s)
            with tqdm(total=args.records, unit="rec", desc="committing", file=sys.stderr,
                      mininterval=1) as bar:
                while any(t.is_alive() for t in threads):
                    memory.append((time.perf_counter() - start,
                                   [rss_mb(p.pid) for p in c.procs.values()]))
                    cpu_seen.append((time.perf_counter(),
                                     sum(cpu_seconds(p.pid) for p in c.procs.values())))
                    with lock:
                        bar.update(sum(n for _, n, _ in timeline) - bar.n)
                    time.sleep(1)
            cpu_seen.append((time.perf_counter(),
                             sum(cpu_seconds(p.pid) for p in c.procs.values())))
            # Until the last batch's answer (its records committed), not until this loop
            # next woke: a 1 s poll made a 6 s run read as 6 or 7 s, ±15% in the figure.
            with lock:
                last = max((t for t, _, _ in timeline), default=time.perf_counter())
            elapsed = last - start
            lag_after = [loop_lag_buckets(c.url(i)) for i in range(args.nodes)]
            sent = counter_delta(sent_before, [bytes_sent(c.url(i)) for i in range(args.nodes)])
            compact_how = counter_delta(compact_before, [
                labelled_counter(c.url(i), "ledger_compact_records_total", "how")
                for i in range(args.nodes)])
            compact_outcomes = counter_delta(outcomes_before, [
                labelled_counter(c.url(i), "ledger_compact_proposals_total", "outcome")
                for i in range(args.nodes)])
            pairs_how = [payload_pairs(c.url(i)) for i in range(args.nodes)]
            read_thread.join(60)
            cpu_after = [cpu_times(p.pid) for p in c.procs.values()]
            cpu_user = sum(a[0] - b[0] for a, b in zip(cpu_after, cpu_before, strict=True))
            cpu_used = cpu_user + sum(a[1] - b[1]
                                      for a, b in zip(cpu_after, cpu_before, strict=True))
            stop_profilers(spies)
            committed = sum(n for _, n, _ in timeline)
            throughput = committed / elapsed
            sat = [lat for _, _, lat in timeline]

            # The audit is measured on a settled cluster: every node at the same tip.
            deadline = time.monotonic() + 60
            while (len({c.height(i) for i in range(args.nodes)}) > 1
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            time.sleep(1)
            # The figure includes start-up: records / the whole command's wall time
            # (interpreter, imports, genesis, workers, the audit, exit), as audit_bench
            # measures it; the command's own "verified in" (after start-up) is kept beside.
            compile_tree(ROOT)  # as an installed package has its bytecode
            began = time.monotonic()
            audit = subprocess.run(
                [sys.executable, "-m", "node.cli", "audit", "--node", c.url(1), "--genesis",
                 str(c.dir / "genesis.json"), "-q"], cwd=ROOT, capture_output=True, text=True)
            audit_wall = time.monotonic() - began
            m = re.search(r"(\d+) records verified in ([\d.]+) s", audit.stdout)
            audit_rate = int(m.group(1)) / audit_wall if m else 0.0
            audit_core_rate = int(m.group(1)) / float(m.group(2)) if m else 0.0
            rss = [peak_rss_mb(c.procs[i].pid) for i in range(args.nodes)]
            live = [sum(p.stat().st_size for p in (c.dir / f"node{i}").glob("chain.db*"))
                    for i in range(args.nodes)]
            total_records = committed + args.light
        finally:
            c.stop_all()
        # At rest: the nodes have stopped, so SQLite has folded its WAL into chain.db.
        store = [sum(p.stat().st_size for p in (c.dir / f"node{i}").glob("chain.db*"))
                 for i in range(args.nodes)]

    bound = cores * v / args.nodes
    report = {
        "sealed": sealed, "nodes": args.nodes, "cores": cores, "records": args.records,
        "batch": args.batch,
        "clients": args.clients, "verify_rate_one_core": v,
        "throughput_records_per_s": throughput, "throughput_bound": bound,
        "throughput_of_bound": throughput / bound, "errors": errors[0],
        "records_refused": dict(load.refused),
        "node_cpu_us_per_record": cpu_used / max(committed, 1) / args.nodes * 1e6,
        "node_cpu_user_us_per_record": cpu_user / max(committed, 1) / args.nodes * 1e6,
        "light_p50_ms": statistics.median(light) * 1000,
        "light_p99_ms": percentile(light, 99) * 1000,
        "saturation_p50_ms": statistics.median(sat) * 1000 if sat else 0.0,
        "saturation_p99_ms": percentile(sat, 99) * 1000,
        "read_during_saturation_p50_ms": statistics.median(reads) * 1000 if reads else 0.0,
        "read_during_saturation_p99_ms": percentile(reads, 99) * 1000 if reads else 0.0,
        "reads_during_saturation": len(reads),
        "loop_lag_p50_ms": [histogram_quantile(0.5, b, a) * 1000
                            for b, a in zip(lag_before, lag_after, strict=True)],
        "loop_lag_p99_ms": [histogram_quantile(0.99, b, a) * 1000
                            for b, a in zip(lag_before, lag_after, strict=True)],
        "audit_records_per_s": audit_rate, "audit_of_bound": audit_rate / (cores * v),
        "audit_after_startup_records_per_s": audit_core_rate,
        "peak_rss_mb": rss, "store_bytes_per_record": max(store) / total_records,
        "store_bytes_per_record_live": max(live) / total_records,
        "envelope_bytes": envelope_bytes, "item_bytes": item_bytes,
        "throughput_item_bytes_per_s": throughput * item_bytes,
        "node_cpu_busy_of_cores": cpu_used / (elapsed * cores),
        "throughput_by_tenth": rate_by_tenth(timeline, start),
        "node_cpu_us_per_record_by_tenth": cpu_by_tenth(timeline, start, cpu_seen,
                                                         args.nodes),
        "payload_pairs_by_how": pairs_how,
        "compact_proposals": not args.no_compact,
        # bytes all nodes handed their peer links while saturated, per committed record
        "peer_bytes_per_record": sum(sent.values()) / max(committed, 1),
        "peer_bytes_per_record_by_kind": {k: v / max(committed, 1)
                                          for k, v in sorted(sent.items())},
        "compact_records_by_how": compact_how,
        "compact_proposals_by_outcome": compact_outcomes,
        "load_average": os.getloadavg(),
        "rss_mb_over_time": memory,
    }
    if errors[0] or load.refused:
        print(f"NOT ALL COMMITTED: {errors[0]} requests failed; records refused: "
              + (", ".join(f"{k} {n:,}" for k, n in sorted(load.refused.items())) or "none"))
    print(f"PyNaCl verify, one core (v):      {v:10,.0f} /s")
    print(f"throughput:                       {throughput:10,.0f} records/s = "
          f"{report['throughput_of_bound']:.2f} of C x v / n = {bound:,.0f}; "
          f"{throughput * item_bytes / 1024:,.0f} KiB/s of items ({item_bytes:.0f} bytes "
          f"each, envelope {envelope_bytes:.0f})")
    print(f"node CPU per record per node:     {report['node_cpu_us_per_record']:10,.0f} us "
          f"({report['node_cpu_user_us_per_record']:.0f} user; one signature check: "
          f"{1e6 / v:.0f} us; load average "
          + ", ".join(f"{x:.1f}" for x in report["load_average"]) + ")")
    print(f"peer bytes sent per record:       {report['peer_bytes_per_record']:10,.0f} "
          f"({'compact' if report['compact_proposals'] else 'whole'} proposals; all nodes: "
          + ", ".join(f"{k} {x:,.0f}" for k, x in report["peer_bytes_per_record_by_kind"].items()
                      if x >= 0.5) + ")")
    if compact_how:
        print("compact proposals' records, by how: "
              + ", ".join(f"{k} {n:,}" for k, n in sorted(compact_how.items()))
              + "; proposals, by outcome: "
              + ", ".join(f"{k} {n:,}" for k, n in sorted(compact_outcomes.items())))
    print(f"latency, light load:              p50 {report['light_p50_ms']:.1f} ms, "
          f"p99 {report['light_p99_ms']:.1f} ms")
    print(f"latency, saturation (per batch):  p50 {report['saturation_p50_ms']:.0f} ms, "
          f"p99 {report['saturation_p99_ms']:.0f} ms")
    print(f"GET /v1/records/{{id}}, saturated: p50 "
          f"{report['read_during_saturation_p50_ms']:.1f} ms, p99 "
          f"{report['read_during_saturation_p99_ms']:.1f} ms "
          f"({report['reads_during_saturation']} reads; target p99 <= 20 ms)")
    print("event-loop lag, saturated:        p50 "
          + ", ".join(f"{x:.1f}" for x in report["loop_lag_p50_ms"]) + " ms, p99 "
          + ", ".join(f"{x:.1f}" for x in report["loop_lag_p99_ms"]) + " ms (per node)")
    print(f"ledger audit:                     {audit_rate:10,.0f} records/s = "
          f"{report['audit_of_bound']:.2f} of C x v (start-up included; "
          f"{report['audit_after_startup_records_per_s']:,.0f}/s after it)")
    print(f"peak RSS per node:                {', '.join(f'{x:.0f}' for x in rss)} MB")
    print(f"store bytes per record:           {report['store_bytes_per_record']:.0f} at rest, "
          f"{report['store_bytes_per_record_live']:.0f} with the WAL "
          f"(envelope {envelope_bytes:.0f})")
    print(f"nodes' CPU use while saturated:   {report['node_cpu_busy_of_cores']:.0%} of "
          f"{cores} cores")
    if sealed:
        print("payload pairs, by how (per node): "
              + "; ".join(", ".join(f"{k} {n}" for k, n in sorted(d.items())) or "none"
                          for d in pairs_how))
    print("throughput by tenth of the run:   "
          + ", ".join(f"{x:,.0f}" for x in report["throughput_by_tenth"]))
    print("node CPU per record, by tenth:    "
          + ", ".join(f"{x:.0f}" for x in report["node_cpu_us_per_record_by_tenth"]) + " us")
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
    plot(timeline, start, memory, args.out / f"{name}.png")
    print(f"results: {args.out / f'{name}.json'}, {args.out / f'{name}.png'}")
    return report


def start_profilers(c: Cluster, out: Path, prefix: str) -> list[subprocess.Popen[bytes]]:
    """py-spy (a dev dependency) sampling each node process, written on SIGINT."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    return [subprocess.Popen([spy, "record", "--format", "raw", "--rate", "200", "--gil",
                              "--nonblocking", "-o", str(out / f"profile-{prefix}node{i}.txt"),
                              "-p", str(proc.pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, proc in c.procs.items()]


def start_perf(c: Cluster, out: Path, prefix: str) -> list[subprocess.Popen[bytes]]:
    """Linux perf sampling each node process's CPU (``perf report -i FILE --sort dso``:
    where the CPU went by library: sqlite, the interpreter, libsodium, the kernel)."""
    return [subprocess.Popen(["perf", "record", "-F", "499", "-g", "-q", "-p", str(proc.pid),
                              "-o", str(out / f"perf-{prefix}node{i}.data")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i, proc in c.procs.items()]


def stop_profilers(spies: list[subprocess.Popen[bytes]]) -> None:
    for spy in spies:
        spy.send_signal(signal.SIGINT)
    for spy in spies:
        spy.wait(timeout=60)


def plot(timeline: list[tuple[float, int, float]], start: float,
         memory: list[tuple[float, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline.sort()
    times = [t - start for t, _, _ in timeline]
    cumulative, total = [], 0
    for _, n, _ in timeline:
        total += n
        cumulative.append(total)
    fig, (a, b, m) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    a.plot(times, cumulative)
    a.set_ylabel("records committed")
    a.set_title("ledger cluster benchmark")
    b.plot(times, [lat * 1000 for _, _, lat in timeline], ".", markersize=3)
    b.set_ylabel("batch submit->commit (ms)")
    for i in range(len(memory[0][1]) if memory else 0):
        m.plot([t for t, _ in memory], [mb[i] for _, mb in memory], label=f"node{i}")
    m.set_ylabel("RSS (MB)")
    m.legend(loc="lower right", fontsize="small")
    m.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
