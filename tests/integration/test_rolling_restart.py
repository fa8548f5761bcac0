"""Rolling restart with zero failed writes (issue 16): a real 4-node cluster under a
bounded write load through the SDK given all four URLs; each node in turn is stopped
(SIGTERM), started again, and waited for until ``/readyz`` says it is caught up. No write
may fail as the client sees it, and every acknowledged record must be committed exactly
once on every node, in identical blocks that audit."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from ledger.blocks import Block
from ledger.crypto import read_key_file
from node.client import AsyncLedgerClient, NodeError
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow

NODES = 4
WORKERS_PER_CLIENT = 3
MAX_RECORDS = 1500  # the load's bound, whatever happens
READY_TIMEOUT_S = 40.0


def wait_ready(c: Cluster, i: int, timeout: float = READY_TIMEOUT_S) -> tuple[float, int]:
    """Seconds until node i's /readyz answered 200, and how many 503s came before."""
    start = time.monotonic()
    not_ready = 0
    while time.monotonic() - start < timeout:
        if c.procs[i].poll() is not None:
            raise AssertionError(f"node{i} exited: {c.log(i)[-2000:]}")
        try:
            resp = httpx.get(f"{c.url(i)}/readyz", timeout=3)
            if resp.status_code == 200:
                return time.monotonic() - start, not_ready
            assert resp.status_code == 503, resp.text
            assert resp.json()["code"] == "not_ready", resp.text
            not_ready += 1
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"node{i} not ready in {timeout} s: {c.log(i)[-3000:]}")


def lag(c: Cluster, i: int) -> int:
    """How many heights node i is behind the highest other node (the others asked first,
    so a commit in between can only shrink the figure)."""
    others = max(c.height(j) for j in range(NODES) if j != i)
    return others - c.height(i)


def test_rolling_restart_loses_and_fails_no_write(tmp_path: Path) -> None:
    c = Cluster.create(tmp_path, NODES)
    key = read_key_file(tmp_path / "clients" / "demo.pem")
    urls = [c.url(i) for i in range(NODES)]
    acked: list[str] = []
    errors: list[str] = []
    resubmitted = 0
    submitted = 0
    restarts: list[tuple[int, float, int]] = []
    lags: list[tuple[int, int]] = []  # per restart: heights behind at /healthz, at /readyz

    async def load(client: AsyncLedgerClient, worker: str, done: asyncio.Event) -> None:
        nonlocal submitted, resubmitted
        n = 0
        while not done.is_set() and submitted < MAX_RECORDS:
            submitted += 1
            n += 1
            try:
                result = await client.write(type="sensor.reading", subject=f"roll-{worker}",
                                            payload={"n": n}, wait=True, timeout=30)
            except NodeError as exc:
                errors.append(f"{worker} #{n}: {exc}")
                continue
            if result.get("status") != "accepted" or type(result.get("height")) is not int:
                errors.append(f"{worker} #{n}: {result}")
                continue
            resubmitted += bool(result.get("resubmitted"))
            acked.append(result["id"])

    def restart_each() -> None:
        for i in range(NODES):
            time.sleep(1.0)  # writes flowing through every node first
            c.kill(i, signal.SIGTERM)
            time.sleep(1.0)  # the others commit without it meanwhile
            c.start(i)
            c.wait_healthy(i)  # what a probe of /healthz would call ready
            behind_when_healthy = lag(c, i)
            seconds, not_ready = wait_ready(c, i)
            lags.append((behind_when_healthy, lag(c, i)))
            restarts.append((i, seconds, not_ready))
        time.sleep(1.0)  # and through the restarted cluster

    async def run() -> None:
        done = asyncio.Event()
        # one client per node, each listing every URL from its own first: load on all four
        clients = [AsyncLedgerClient(urls[k:] + urls[:k], identity=key, timeout=30)
                   for k in range(NODES)]
        try:
            tasks = [asyncio.create_task(load(cl, f"c{k}w{w}", done))
                     for k, cl in enumerate(clients) for w in range(WORKERS_PER_CLIENT)]
            try:
                await asyncio.to_thread(restart_each)
            finally:
                done.set()
                await asyncio.gather(*tasks)
        finally:
            for cl in clients:
                await cl.close()

    started = time.monotonic()
    try:
        c.start_all()
        for i in range(NODES):
            wait_ready(c, i)
        asyncio.run(run())
        elapsed = time.monotonic() - started
        tip = max(c.height(i) for i in range(NODES))
        for i in range(NODES):
            c.wait_height(i, tip)
        # every node: the same blocks, each acknowledged record in them exactly once
        chains = []
        for i in range(NODES):
            blocks = [httpx.get(f"{c.url(i)}/v1/blocks/{h}", timeout=10,
                                headers={"Accept": "application/msgpack"}).content
                      for h in range(1, tip + 1)]
            chains.append(blocks)
        # byte-identical below the tip; the tip's hash the same (its certificate becomes
        # canonical when the next block commits)
        for chain in chains[1:]:
            assert chain[:-1] == chains[0][:-1], "the nodes' blocks differ"
            assert Block.from_wire(chain[-1]).hash == Block.from_wire(chains[0][-1]).hash
        counts = Counter(r.id.hex() for raw in chains[0] for r in Block.from_wire(raw).records)
        lost = [rid for rid in acked if counts[rid] == 0]
        twice = [rid for rid, n in counts.items() if n > 1]
        audit = subprocess.run(
            [sys.executable, "-m", "node.cli", "audit", "--node", urls[0], "--genesis",
             str(tmp_path / "genesis.json"), "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        print(f"\nrolling restart: {submitted} records submitted, {len(acked)} acknowledged "
              f"(committed), {len(errors)} client errors, {len(lost)} lost, {len(twice)} "
              f"committed twice, {resubmitted} acknowledged after a failover "
              f"resubmission; {tip} blocks; {elapsed:.1f} s; restarts (node, s to ready, "
              f"503s seen): {restarts}; heights behind the others when /healthz first "
              f"answered, and when /readyz did: {lags}")
        assert errors == [], errors[:5]
        assert lost == [] and twice == []
        assert len(acked) == submitted >= 100  # the load ran across every restart
        assert len(restarts) == NODES
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        c.stop_all()
