"""Chaos on the WAN bed (issue 16): a 4-validator TLS cluster on tests/wan/bed.py under a
bounded load from the client namespace, with a seeded schedule of faults — a host's link
down then up, packet-loss bursts, one host's clock skewed (libfaketime), one host's node
SIGKILLed and restarted. Afterwards: every acknowledged record is on the chain exactly once,
every node holds the same blocks, and ``ledger audit`` passes against each node (run from
the client namespace, pinned to the common tip with ``--checkpoint``).

The pieces (:class:`AckedLoad`, :func:`verify_chain`, :func:`start_node`) are shared with
the Twins run (tests/wan/twins.py); tests/wan/test_chaos.py runs a short schedule and
``make wan`` a long one (tests/bench/wan_chaos.py).

The clock skew is libfaketime (Debian's ``faketime`` package) preloaded into the skewed
node's process, whose every clock then runs ``skew`` seconds ahead from its start (the
monotonic clock too, by a constant: libfaketime cannot leave it alone without breaking
``time.sleep``, and a constant offset changes no interval). :func:`faketime_env` raises
:class:`FaketimeMissing` (what to install) when the library is absent, and
:func:`measure_skew` checks that a Python started the same way in that host really sees it.
"""

from __future__ import annotations

import glob
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ledger.blocks import Block
from tests.bench.cluster_bench import post_records
from tests.wan.bed import Bed
from tests.wan.cluster import WanCluster, _env
from tests.wan.load import make_records

# Consensus for the chaos and Twins runs: cluster_bench's (no empty blocks, large blocks)
# with timeouts that suit a 10-20 ms one-way WAN on a busy 2-core machine.
CONSENSUS: dict[str, object] = {
    "create_empty_blocks": False, "max_block_records": 10_000, "timeout_commit_ms": 20,
    "timeout_propose_ms": 1000, "timeout_propose_delta_ms": 300,
    "timeout_prevote_ms": 500, "timeout_prevote_delta_ms": 200,
    "timeout_precommit_ms": 500, "timeout_precommit_delta_ms": 200,
    "resend_ms": 500, "sync_retry_ms": 300}

FAKETIME_LIBRARY = "/usr/lib/*/faketime/libfaketime.so.1"
# Seconds a starting node may take to serve: five fresh processes importing the server on a
# 2-core machine other jobs load (load averages of 20-30 seen) took over 60 s.
HEALTHY_S = 180.0


class FaketimeMissing(RuntimeError):
    """libfaketime is not installed: the clock-skew fault cannot run."""


def faketime_env(skew_s: float) -> dict[str, str]:
    """Environment that runs a process with its clocks ``skew_s`` seconds ahead (behind
    when negative) from its start, by preloading libfaketime."""
    found = sorted(glob.glob(FAKETIME_LIBRARY))
    if not found:
        raise FaketimeMissing(
            "the chaos run skews one host's clock with libfaketime, which is not installed "
            f"(no {FAKETIME_LIBRARY}): install Debian's faketime package "
            "(`apt-get install faketime`); `make test` and `make wan` install it when run as "
            "root with apt-get")
    return {"LD_PRELOAD": found[0], "FAKETIME": f"{skew_s:+.0f}"}


def measure_skew(bed: Bed, host: str, env: dict[str, str]) -> float:
    """Seconds between ``time.time()`` in a Python started in ``host`` with ``env`` (as
    the skewed node is) and ours."""
    before = time.time()
    done = bed.run(host, [sys.executable, "-c", "import time; print(time.time())"],
                   env={**_env(), **env}, timeout=60)
    after = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"python under {env} failed: {done.stderr[-2000:]}")
    return float(done.stdout.strip()) - (before + after) / 2


def start_node(c: WanCluster, i: int, env: dict[str, str] | None = None,
               directory: Path | None = None, host: str | None = None,
               key: Any = None) -> subprocess.Popen[bytes]:
    """``ledger node run`` for node ``i`` (or ``directory`` on ``host``) like
    :meth:`WanCluster.start`, with ``env`` added to its environment; kept in ``c.procs``
    under ``key`` (default ``i``)."""
    directory = directory or c.dir / f"node{i}"
    host = host or f"node{i}"
    log = open(c.dir / f"{directory.name}.log", "ab")  # noqa: SIM115 - the process owns it
    proc: subprocess.Popen[bytes] = c.bed.popen(
        host, [sys.executable, "-m", "node.cli", "node", "run", str(directory)],
        stdout=log, stderr=subprocess.STDOUT,
        env={"PYTHONUNBUFFERED": "1", **_env(), **(env or {})})
    c.procs[i if key is None else key] = proc
    return proc


@dataclass
class AckedLoad:
    """Closed-loop clients in the client namespace: each posts batches of ``batch`` signed
    records with wait=commit, to the nodes in turn (a failed request moves on to the next
    node; its records are not counted), until stopped or ``records`` were sent. ``acked``:
    every record id a node answered with a height, with that height."""

    c: WanCluster
    urls: list[str]
    clients: int = 3
    batch: int = 20
    records: int = 10_000_000  # a cap: the run stops the load
    nonce_base: int = 1_000_000
    acked: dict[str, int] = field(default_factory=dict)
    ack_times: dict[int, float] = field(default_factory=dict)  # height -> first ack (wall)
    errors: int = 0
    requests: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, k: int) -> None:
        with httpx.Client(timeout=20, verify=self.c.verify()) as http:
            node = k
            for j in range(k, self.records // self.batch, self.clients):
                if self.stop.is_set():
                    return
                url = self.urls[node % len(self.urls)]
                node += 1
                # signed when sent (tests/wan/load.py's records; nonces never reused)
                items = make_records(self.c.dir, self.batch, self.nonce_base + j * self.batch)
                try:
                    resp = post_records(http, url, items, 10)
                except httpx.HTTPError:
                    with self.lock:
                        self.errors += 1
                    time.sleep(0.2)
                    continue
                with self.lock:
                    self.requests += 1
                    if resp.status_code != 202:
                        self.errors += 1
                        continue
                    now = time.time()
                    for r in resp.json()["results"]:
                        if "height" in r:
                            self.acked[r["id"]] = int(r["height"])
                            self.ack_times.setdefault(int(r["height"]), now)

    def start(self) -> None:
        """Start the client threads from inside the client namespace (a thread inherits
        its creator's network namespace)."""
        def spawn() -> None:
            for k in range(self.clients):
                t = threading.Thread(target=self._client, args=(k,), daemon=True,
                                     name=f"acked-load-{k}")
                t.start()
                self.threads.append(t)
        self.c.bed.call("client", spawn)

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=40)


def status(c: WanCluster, i: int, tries: int = 6) -> dict[str, Any]:
    """Node ``i``'s ``/v1/status`` from the client host, retried (a busy machine can make
    one request time out)."""
    for attempt in range(tries):
        try:
            out: dict[str, Any] = c.get(i, "/v1/status", timeout=10)
            return out
        except httpx.HTTPError:
            if attempt == tries - 1:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def fetch_blocks(c: WanCluster, i: int, top: int) -> list[Block]:
    """Blocks 1..top from node ``i`` (msgpack, one connection, from the client host)."""
    def fetch() -> list[Block]:
        with httpx.Client(verify=c.verify(), timeout=20,
                          headers={"Accept": "application/msgpack"}) as http:
            out = []
            for h in range(1, top + 1):
                r = http.get(f"{c.url(i)}/v1/blocks/{h}")
                r.raise_for_status()
                out.append(Block.from_wire(r.content))
            return out
    return c.bed.call("client", fetch)


def audit(c: WanCluster, i: int, top: int, tip_hash: str) -> subprocess.CompletedProcess[str]:
    """``ledger audit`` of node ``i`` from the client host: every block from 1, at least
    ``top`` of them, block ``top`` being ``tip_hash``."""
    argv = [sys.executable, "-m", "node.cli", "audit", "--node", c.url(i), "--genesis",
            str(c.dir / "genesis.json"), "--min-height", str(top), "--checkpoint",
            f"{top}:{tip_hash}", "--workers", "1", "-q"]
    if c.ca:
        argv += ["--ca", str(c.ca)]
    return c.bed.run("client", argv, env=_env(), timeout=600)


def verify_chain(c: WanCluster, nodes: list[int], acked: dict[str, int],
                 say: Callable[[str], None] = print, timeout: float = 90) -> dict[str, Any]:
    """All ``nodes`` reach a common tip and hold the same block there (blocks are hash-
    linked: one history); every acknowledged record is on it exactly once, in the block
    its acknowledgement named; ``ledger audit`` passes against each node, pinned to that
    tip. Raises AssertionError otherwise; returns the figures."""
    deadline = time.monotonic() + timeout
    top = -1
    while time.monotonic() < deadline:
        heights = [int(status(c, i)["height"]) for i in nodes]
        top = max(heights)
        if min(heights) == top:
            time.sleep(1.0)  # nothing in flight: the load has stopped
            if [int(status(c, i)["height"]) for i in nodes] == heights:
                break
        time.sleep(0.3)
    else:
        raise AssertionError(f"nodes did not reach a common tip in {timeout} s: "
                             f"{[int(status(c, i)['height']) for i in nodes]}")
    tips = {i: status(c, i)["last_block_hash"] for i in nodes}
    assert len(set(tips.values())) == 1, f"nodes hold different blocks at height {top}: {tips}"
    blocks = fetch_blocks(c, nodes[0], top)
    assert blocks[-1].hash.hex() == tips[nodes[0]]
    for prev, block in itertools.pairwise(blocks):
        assert block.header.prev_hash == prev.hash, f"broken link at {block.height}"
    where: dict[str, list[int]] = {}
    for b in blocks:
        for r in b.records:
            where.setdefault(r.id.hex(), []).append(b.height)
    twice = {k: v for k, v in where.items() if len(v) > 1}
    assert not twice, f"{len(twice)} records are on the chain more than once"
    lost = sorted(set(acked) - set(where))
    assert not lost, f"{len(lost)} acknowledged records are not on the chain: {lost[:5]}"
    moved = {k: (h, where[k][0]) for k, h in acked.items() if where[k][0] != h}
    assert not moved, f"acknowledged at one height, on the chain at another: {moved}"
    for i in nodes:
        res = audit(c, i, top, tips[i])
        assert res.returncode == 0, f"audit of node{i} failed: {res.stdout}{res.stderr}"
    say(f"verified: {len(acked)} acknowledged records, 0 lost, none twice; {top} blocks, tip "
        f"{tips[nodes[0]][:16]} identical on {len(nodes)} nodes; audit passed against each")
    return {"height": top, "tip": tips[nodes[0]], "records_on_chain": len(where),
            "blocks": blocks}


@dataclass
class Fault:
    at: float  # seconds after the load started
    text: str


@dataclass
class ChaosReport:
    seed: int
    skew_host: str = ""
    skew_s: float = 0.0
    measured_skew_s: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    acknowledged: int = 0
    acknowledged_after_faults: int = 0  # after the last fault ended: the cluster is live
    lost: int = 0
    errors: int = 0
    height: int = 0
    records_on_chain: int = 0
    skewed_blocks: int = 0
    skewed_block_lead_s: float = 0.0
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["faults"] = [{"at_s": round(f.at, 2), "fault": f.text} for f in self.faults]
        return out


def schedule(seed: int, seconds: float, nodes: int = 4) -> tuple[list[tuple[float, str, Any]],
                                                                 int, float]:
    """The seeded fault schedule over ``seconds``: (time, kind, argument) in time order,
    the skewed node and its skew. Every kind happens at least once; the run is cut in
    slots, each fault lasting within its slot (never two at once, so a quorum of 3 is
    always reachable between faults: the faults test recovery, not the loss of quorum)."""
    rng = random.Random(seed)
    skewed = rng.randrange(nodes)
    skew = rng.uniform(20, 90)  # ahead: its blocks come from the future (behind is benign)
    kinds = ["link", "burst", "kill"]
    slots = max(3, int(seconds // 12))
    kinds += [rng.choice(["link", "burst", "kill"]) for _ in range(slots - 3)]
    rng.shuffle(kinds)
    slot = seconds / slots
    out: list[tuple[float, str, Any]] = []
    for k, kind in enumerate(kinds):
        at = k * slot + rng.uniform(0.1, 0.3) * slot
        host = rng.randrange(nodes)
        if kind == "link":
            out.append((at, "link", (host, rng.uniform(0.25, 0.45) * slot)))
        elif kind == "burst":
            out.append((at, "burst", (host, rng.uniform(0.3, 0.6),
                                      rng.uniform(0.2, 0.4) * slot)))
        else:
            out.append((at, "kill", (host, rng.uniform(0.5, 2.0))))
    return out, skewed, skew


def run_chaos(directory: Path, seed: int, seconds: float, delay_ms: float = 10,
              say: Callable[[str], None] = print, clients: int = 3,
              batch: int = 20) -> ChaosReport:
    """The chaos run: a bed of node0..node3 + client at ``delay_ms`` one-way (1 ms jitter),
    one node's clock skewed, load for ``seconds`` with the seeded faults, then the checks."""
    report = ChaosReport(seed)
    plan, skewed, skew = schedule(seed, seconds)
    env = faketime_env(skew)
    report.skew_host, report.skew_s = f"node{skewed}", round(skew, 1)

    def line(text: str) -> None:
        say(f"[wan-chaos seed={seed}] {text}")

    with Bed(["node0", "node1", "node2", "node3", "client"], seed=seed) as bed:
        bed.shape("*", delay_ms=delay_ms, jitter_ms=1)
        c = WanCluster(bed, directory / "cluster", consensus=CONSENSUS)
        report.measured_skew_s = round(measure_skew(bed, f"node{skewed}", env), 2)
        if abs(report.measured_skew_s - skew) > 5:
            raise AssertionError(f"libfaketime did not skew the clock: asked {skew:+.1f} s, "
                                 f"Python saw {report.measured_skew_s:+.2f} s")
        line(f"node{skewed}'s clock runs {skew:+.1f} s off (libfaketime; Python in its "
             f"namespace sees {report.measured_skew_s:+.2f} s); one-way delay {delay_ms} ms")
        envs = {i: env if i == skewed else {} for i in range(4)}
        for i in range(4):
            start_node(c, i, envs[i])
        for i in range(4):
            c.wait_healthy(i, HEALTHY_S)
        load = AckedLoad(c, c.urls(), clients=clients, batch=batch)
        load.start()
        t0 = time.monotonic()

        def at(t: float) -> None:
            time.sleep(max(0.0, t0 + t - time.monotonic()))

        def note(text: str) -> None:
            f = Fault(time.monotonic() - t0, text)
            report.faults.append(f)
            line(f"t={f.at:6.2f} s  {text}")

        try:
            for when, kind, arg in plan:
                at(when)
                if kind == "link":
                    host, down_s = arg
                    bed.down(f"node{host}")
                    note(f"node{host}'s link down")
                    time.sleep(down_s)
                    bed.up(f"node{host}")
                    note(f"node{host}'s link up (down {down_s:.1f} s)")
                elif kind == "burst":
                    host, loss, burst_s = arg
                    bed.burst(f"node{host}", loss, burst_s)
                    note(f"node{host}: {loss:.0%} packet loss for {burst_s:.1f} s")
                    time.sleep(burst_s)
                else:
                    host, pause = arg
                    c.procs[host].kill()
                    c.procs[host].wait()
                    note(f"node{host} SIGKILLed")
                    time.sleep(pause)
                    start_node(c, host, envs[host])
                    note(f"node{host} restarted"
                         + (f" (clock still {skew:+.0f} s)" if host == skewed else ""))
                    c.wait_healthy(host, HEALTHY_S)
                    note(f"node{host} serves again")
            with load.lock:
                after_faults = len(load.acked)
            at(max(seconds, time.monotonic() - t0 + 3))
        finally:
            load.join()
        report.seconds = round(time.monotonic() - t0, 1)
        report.acknowledged, report.errors = len(load.acked), load.errors
        report.acknowledged_after_faults = report.acknowledged - after_faults
        line(f"load stopped after {report.seconds} s: {report.acknowledged} records "
             f"acknowledged in {load.requests} requests, {load.errors} failed requests")
        bed.shape("*", delay_ms=0)  # the checks read every block: no need to wait on a WAN
        checked = verify_chain(c, list(range(4)), load.acked, line)
        report.height, report.records_on_chain = checked["height"], checked["records_on_chain"]
        by_skewed = [b for b in checked["blocks"] if b.header.proposer == skewed]
        report.skewed_blocks = len(by_skewed)
        if by_skewed:
            # a block's time is its proposer's clock; compare with when it was acknowledged
            first_ack = load.ack_times
            leads = [b.header.time_ms / 1000 - first_ack[b.height] for b in by_skewed
                     if b.height in first_ack]
            if leads:
                report.skewed_block_lead_s = round(sorted(leads)[len(leads) // 2], 1)
        line(f"node{skewed} proposed {report.skewed_blocks} blocks; their time runs "
             f"{report.skewed_block_lead_s:+.1f} s from the clients' clock (median), and the "
             f"chain took them (block times only have to increase)")
        report.lost = 0  # verify_chain raised otherwise
    return report


def main_json(report: ChaosReport) -> str:
    return json.dumps(report.as_json())
