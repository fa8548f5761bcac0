"""Sealed payloads on a real 4-node cluster (SPEC section 10, issue 15), in one test:

1. 1000 sealed records, each payload holding a unique marker, submitted to node 0 only (five
   posts), reach the
   ``payloads`` table of every node (read from each node's SQLite file, read-only);
2. node 3 is killed, its store, signing state and evidence wiped, and restarted: it catches
   up by block sync and fetches every pair from its peers (the time is printed);
3. a redaction of them (signed by the records' writer, approved by its organisation's admin)
   commits: afterwards the marker appears in no node's database file or WAL, and
   ``ledger audit`` passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ledger.crypto import read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.records import seal_record
from ledger.store import SqliteStore
from tests.factory import redaction_record
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow

MSGPACK = {"Content-Type": "application/msgpack"}
RECORDS = 1000
BATCH = 200  # records per POST (each a block or more)
WAIT_S = 60.0  # bound on any one wait (a busy 2-core machine)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> float:
    """Poll ``condition`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - started


def store_path(c: Cluster, i: int) -> Path:
    return c.dir / f"node{i}" / "chain.db"


def held(c: Cluster, i: int, ids: list[bytes]) -> int:
    """How many of ``ids`` have their pair in node ``i``'s store (opened read-only)."""
    path = store_path(c, i)
    if not path.exists():
        return 0
    store = SqliteStore(path, readonly=True)
    try:
        return len(store.payloads(ids))
    finally:
        store.close()


def files_holding(c: Cluster, marker: bytes) -> list[str]:
    """The node store files (database, WAL) whose bytes contain ``marker``."""
    out = []
    for i in range(c.nodes):
        for suffix in ("", "-wal"):
            path = Path(str(store_path(c, i)) + suffix)
            if path.exists() and marker in path.read_bytes():
                out.append(f"node{i}/{path.name}")
    return out


def test_sealed_payloads_reach_every_node_survive_a_wipe_and_vanish_on_redaction(
        tmp_path: Path) -> None:
    c = Cluster.create(tmp_path / "c", 4)
    genesis = Genesis.load(c.dir / "genesis.json")
    writer = read_key_file(c.dir / "clients" / "demo.pem")
    admin = read_key_file(c.dir / "clients" / "demo-org-admin.pem")
    marker = b"SEALED-MARKER-" + os.urandom(8).hex().encode()
    try:
        c.start_all()
        sealed = [seal_record(writer, chain=genesis.chain_id, type="sensor.reading",
                              subject=f"oven/{i % 5}",
                              payload={"recipe": (marker + b"-%d" % i).decode(),
                                       "yield": i}, ts=now_ms(), nonce=i + 1)
                  for i in range(RECORDS)]
        ids = [r.id for r, _ in sealed]
        for start in range(0, RECORDS, BATCH):
            body = packb([[r.envelope, p.salt, p.payload] for r, p in sealed[start:start + BATCH]])
            resp = httpx.post(f"{c.url(0)}/v1/records?wait=commit&timeout=60", content=body,
                              headers=MSGPACK, timeout=90)
            assert resp.status_code == 202, resp.text
            assert {r["status"] for r in resp.json()["results"]} == {"accepted"}
        spread = until(lambda: all(held(c, i, ids) == RECORDS for i in range(4)),
                       "every node to hold every pair")
        print(f"\n{RECORDS} sealed records to node0: every node held every pair "
              f"{spread:.1f} s after the commit")

        # node 3: killed, wiped, restarted; it catches up by block sync with the pairs
        c.kill(3)
        for name in ("chain.db", "chain.db-wal", "chain.db-shm", "signing_state.bin",
                     "evidence.json"):
            (c.dir / "node3" / name).unlink(missing_ok=True)
        tip = c.height(0)
        started = time.monotonic()
        c.start(3)
        c.wait_healthy(3)
        c.wait_height(3, tip, timeout=WAIT_S)
        blocks_s = time.monotonic() - started
        until(lambda: held(c, 3, ids) == RECORDS, "node 3 to fetch every pair")
        pairs_s = time.monotonic() - started
        print(f"node3 wiped: {tip} blocks synced in {blocks_s:.1f} s, all {RECORDS} pairs "
              f"held {pairs_s:.1f} s after its restart")
        assert "Traceback" not in c.log(3)

        # the redaction: every payload bytes gone from every node's files
        assert files_holding(c, marker), "the marker should be on disk before the redaction"
        redaction = redaction_record(genesis.config, writer, ids, approvers=[admin],
                                     nonce=RECORDS + 1, ts=now_ms(), reason="erasure request")
        resp = httpx.post(f"{c.url(1)}/v1/records?wait=commit&timeout=60",
                          content=packb([redaction.envelope]), headers=MSGPACK, timeout=90)
        assert resp.status_code == 202, resp.text
        result = resp.json()["results"][0]
        assert result["status"] == "accepted", result
        redacted_at = result["height"]
        for i in range(4):
            c.wait_height(i, redacted_at)
        scrubbed = until(lambda: not files_holding(c, marker),
                         f"the marker to leave every node's files ({files_holding(c, marker)})")
        print(f"redaction at height {redacted_at}: the marker left every .db and -wal "
              f"{scrubbed:.1f} s after every node committed it")
        assert all(held(c, i, ids) == 0 for i in range(4))
        for i in range(4):
            assert "redacted payloads scrubbed" in c.log(i), c.log(i)[-2000:]
        audit = subprocess.run(
            [sys.executable, "-m", "node.cli", "audit", "--node", c.url(3), "--genesis",
             str(c.dir / "genesis.json")], cwd=ROOT, capture_output=True, text=True,
            timeout=120)
        assert audit.returncode == 0, audit.stdout + audit.stderr
    finally:
        c.stop_all()
