"""Chaos on real processes: a 4-node cluster under continuous load from several clients,
with SIGKILL + restart, SIGSTOP/SIGCONT pauses, loss of quorum and its return, and network
partitions (isolate one node, isolate the proposer, split 2/2, heal) through the nodes'
fault-injecting transport (``LEDGER_TEST_PARTITION_FILE``).

Checked: every acknowledged record is on the chain exactly once; all nodes hold the same
blocks; no block commits while fewer than 2f+1 validators are reachable; after each heal a
block commits within 5 s; the chain passes ``ledger audit``. Each run prints its seed and
fault schedule.

    python -m tests.chaos.chaos --seconds 1800 --seed 7      # a long run (make soak)
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ledger.blocks import Block
from ledger.crypto import read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.records import Record
from tests.integration.cluster_util import ROOT, Cluster

RECOVERY_BOUND_S = 5.0
CONSENSUS = {"timeout_propose_ms": 400, "timeout_propose_delta_ms": 200,
             "timeout_prevote_ms": 200, "timeout_prevote_delta_ms": 100,
             "timeout_precommit_ms": 200, "timeout_precommit_delta_ms": 100,
             "timeout_commit_ms": 50, "resend_ms": 300, "sync_retry_ms": 200,
             "create_empty_blocks": False}


@dataclass
class Report:
    seed: int
    schedule: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    errors: int = 0
    recoveries: list[float] = field(default_factory=list)
    faults: int = 0

    def line(self, text: str) -> None:
        self.schedule.append(text)
        print(f"[chaos seed={self.seed}] {text}", flush=True)


class Load:
    """Client threads submitting batches with wait=commit to random nodes."""

    def __init__(self, c: Cluster, report: Report, clients: int = 3) -> None:
        self.c, self.report = c, report
        self.genesis = Genesis.load(c.dir / "genesis.json")
        self.key = read_key_file(c.dir / "clients" / "demo.pem")
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.nonce = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(clients)]

    def _batch(self) -> list[Record]:
        with self.lock:
            start = self.nonce
            self.nonce += 5
        now = time.time_ns() // 1_000_000
        return [Record.create(self.key, chain=self.genesis.chain_id, type="sensor.reading",
                              subject=f"chaos/{n % 11}", payload={"n": n}, ts=now, nonce=n)
                for n in range(start, start + 5)]

    def _run(self, i: int) -> None:
        rng = random.Random(self.report.seed * 100 + i)
        with httpx.Client(timeout=15) as http:
            while not self.stop.is_set():
                recs = self._batch()
                url = self.c.url(rng.randrange(self.c.nodes))
                try:
                    resp = http.post(f"{url}/v1/records", content=packb([r.envelope for r in recs]),
                                     params={"wait": "commit", "timeout": "10"},
                                     headers={"Content-Type": "application/msgpack"})
                except httpx.HTTPError:
                    self.report.errors += 1
                    time.sleep(0.2)
                    continue
                if resp.status_code == 202:
                    with self.lock:
                        self.report.acked.update(
                            r["id"] for r in resp.json()["results"] if "height" in r)
                else:
                    self.report.errors += 1

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


class Chaos:
    def __init__(self, directory: Path, seed: int) -> None:
        self.c = Cluster.create(directory, consensus=CONSENSUS)
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.partition_file = directory / "partition.json"
        self.partition_file.write_text("{}")
        self.env = {"LEDGER_TEST_PARTITION_FILE": str(self.partition_file)}
        self.paused: set[int] = set()

    # -- observation ------------------------------------------------------------------

    def height(self, i: int) -> int:
        try:
            return int(httpx.get(f"{self.c.url(i)}/v1/status", timeout=2).json()["height"])
        except (httpx.HTTPError, ValueError, KeyError):
            return -1

    def max_height(self, nodes: list[int]) -> int:
        return max(self.height(i) for i in nodes)

    def expect_no_commit(self, live: list[int], seconds: float, why: str) -> None:
        time.sleep(0.7)  # let a block already in flight land
        before = self.max_height(live)
        time.sleep(seconds)
        after = self.max_height(live)
        if after != before:
            raise AssertionError(f"a block committed with {why}: height {before} -> {after}")

    def expect_recovery(self, nodes: list[int], what: str) -> None:
        start = time.monotonic()
        base = self.max_height(nodes)
        while time.monotonic() - start < RECOVERY_BOUND_S:
            if self.max_height(nodes) > base:
                took = time.monotonic() - start
                self.report.recoveries.append(took)
                self.report.line(f"  recovered after {what}: a block committed in {took:.2f} s")
                return
            time.sleep(0.05)
        raise AssertionError(f"no block within {RECOVERY_BOUND_S} s after {what}")

    # -- faults -------------------------------------------------------------------------

    def partition(self, groups: list[list[int]]) -> None:
        self.partition_file.write_text(json.dumps({"groups": groups}))

    def heal(self) -> None:
        self.partition_file.write_text("{}")

    def fault(self) -> None:
        c, rng = self.c, self.rng
        kind = rng.choice(["kill", "pause", "quorum", "isolate", "isolate_proposer", "split"])
        self.report.faults += 1
        nodes = list(range(c.nodes))
        if kind == "kill":
            i = rng.randrange(c.nodes)
            self.report.line(f"SIGKILL node{i}, restart after a pause")
            c.kill(i)
            time.sleep(rng.uniform(0.5, 2))
            c.start(i, self.env)
            c.wait_healthy(i)
            self.expect_recovery(nodes, f"restarting node{i}")
        elif kind == "pause":
            i = rng.randrange(c.nodes)
            self.report.line(f"SIGSTOP node{i} for a while, then SIGCONT")
            c.procs[i].send_signal(signal.SIGSTOP)
            time.sleep(rng.uniform(1, 3))
            c.procs[i].send_signal(signal.SIGCONT)
            self.expect_recovery(nodes, f"resuming node{i}")
        elif kind == "quorum":
            a, b = rng.sample(nodes, 2)
            live = [i for i in nodes if i not in (a, b)]
            self.report.line(f"loss of quorum: SIGSTOP node{a} and node{b}")
            for i in (a, b):
                c.procs[i].send_signal(signal.SIGSTOP)
            try:
                self.expect_no_commit(live, 2.0, "2 of 4 validators stopped")
            finally:
                for i in (a, b):
                    c.procs[i].send_signal(signal.SIGCONT)
            self.report.line("  quorum back")
            self.expect_recovery(nodes, "quorum returned")
        elif kind in ("isolate", "isolate_proposer"):
            if kind == "isolate":
                i = rng.randrange(c.nodes)
            else:
                status = httpx.get(f"{c.url(0)}/v1/status", timeout=5).json()
                i = (status["height"] + 1 + status["round"]) % c.nodes
            self.report.line(f"partition: isolate node{i}"
                             + (" (the current proposer)" if kind == "isolate_proposer" else ""))
            self.partition([[i], [j for j in nodes if j != i]])
            time.sleep(rng.uniform(1, 3))
            self.heal()
            self.report.line("  heal")
            self.expect_recovery(nodes, f"healing node{i}'s isolation")
        else:
            shuffled = nodes[:]
            rng.shuffle(shuffled)
            groups = [shuffled[:2], shuffled[2:]]
            self.report.line(f"partition: split {groups[0]} / {groups[1]}")
            self.partition(groups)
            try:
                self.expect_no_commit(nodes, 2.0, "the network split 2/2")
            finally:
                self.heal()
            self.report.line("  heal")
            self.expect_recovery(nodes, "healing the 2/2 split")

    # -- the run ------------------------------------------------------------------------

    def run(self, seconds: float) -> Report:
        c = self.c
        self.report.line(f"cluster {c.dir}, {c.nodes} nodes, faults for {seconds:.0f} s")
        c.start_all(env={i: self.env for i in range(c.nodes)})
        load = Load(c, self.report)
        load.start()
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(self.rng.uniform(0.5, 1.5))
                self.fault()
        finally:
            self.heal()
            for i in range(c.nodes):
                if c.procs[i].poll() is None:
                    c.procs[i].send_signal(signal.SIGCONT)
            load.join()
        self.verify()
        return self.report

    def verify(self) -> None:
        c = self.c
        top = max(self.height(i) for i in range(c.nodes))
        for i in range(c.nodes):
            c.wait_height(i, top, timeout=30)
        # Blocks are hash-linked: one block hash at the same height means one history.
        tips = {Block.from_wire(httpx.get(f"{c.url(i)}/v1/blocks/{top}", timeout=10,
                                          headers={"Accept": "application/msgpack"}).content).hash
                for i in range(c.nodes)}
        assert len(tips) == 1, f"nodes hold different blocks at height {top}"
        with httpx.Client(timeout=10, headers={"Accept": "application/msgpack"}) as http:
            blocks = [Block.from_wire(http.get(f"{c.url(0)}/v1/blocks/{h}").content)
                      for h in range(1, top + 1)]
        for prev, block in itertools.pairwise(blocks):
            assert block.header.prev_hash == prev.hash, f"broken link at {block.height}"
        ids = [r.id.hex() for b in blocks for r in b.records]
        assert len(ids) == len(set(ids)), "a record is on the chain twice"
        missing = self.report.acked - set(ids)
        assert not missing, f"{len(missing)} acknowledged records are not on the chain"
        res = subprocess.run(
            [sys.executable, "-m", "node.cli", "audit", "--node", c.url(0), "--genesis",
             str(c.dir / "genesis.json"), "-q"], cwd=ROOT, capture_output=True, text=True,
            timeout=300)
        assert res.returncode == 0, res.stderr
        r = self.report
        worst = max(r.recoveries, default=0.0)
        r.line(f"ok: {len(r.acked)} records acknowledged, all on the chain once; {top} blocks "
               f"identical on {c.nodes} nodes; {r.faults} faults; recovery max {worst:.2f} s; "
               f"audit passed")

    def close(self) -> None:
        self.heal()
        self.c.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description="chaos on a real 4-node cluster")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chaos = Chaos(Path(tmp), args.seed)
        try:
            chaos.run(args.seconds)
        finally:
            chaos.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
