"""Validators join, leave and change power on four real `ledger node run` processes under a
light load (issue 13, SPEC sections 8 and 9): a 5th node made with `ledger node init` follows
the chain, is added by an approved change carrying its join signature, catches up and signs
certificates; node 0 is removed (the chain goes on without it, it keeps answering reads and
its links close); a validator's power changes and a node SIGKILLed right after that change
comes back with it; node 3, down during all three changes, catches up through them and
votes (the chain needs it). `ledger audit` passes, the validators hold identical blocks and
every acknowledged record is on the chain once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.config import CONFIG_TAG, CONFIG_TYPE, JOIN_TAG, Config, approval_message, parse_change
from ledger.crypto import PrivateKey, read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.records import Record
from node.cluster import init_cluster
from tests.factory import config_doc, seeded_key
from tests.integration.cluster_util import ROOT, Cluster, free_base_port

pytestmark = pytest.mark.slow

ADMINS = [seeded_key(f"validators-admin-{i}") for i in range(3)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Load:
    """Records from the demo key to the given nodes, a few per second, until stopped."""

    def __init__(self, cluster: Cluster, chain: str, key: PrivateKey) -> None:
        self.cluster, self.chain, self.key = cluster, chain, key
        self.targets = [1, 2]
        self.acknowledged: list[str] = []
        self.where: dict[str, tuple[int, int, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        with httpx.Client(timeout=5) as http:
            while not self.stop.wait(0.15) and n < 2000:
                n += 1
                rec = Record.create(self.key, chain=self.chain, type="sensor.reading",
                                    subject=f"load/{n % 7}", payload={"n": n}, ts=now_ms(),
                                    nonce=n)
                target = self.targets[n % len(self.targets)]
                try:
                    resp = http.post(f"{self.cluster.url(target)}/v1/records",
                                     content=packb([rec.envelope]),
                                     headers={"Content-Type": "application/msgpack"})
                except httpx.HTTPError:
                    continue  # a node being killed: not acknowledged
                if resp.status_code == 202 and resp.json()["results"][0]["status"] == "accepted":
                    self.acknowledged.append(rec.id.hex())
                    self.where[rec.id.hex()] = (target, n, time.monotonic())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    base = free_base_port(5)  # the 5th node's ports too
    init_cluster(tmp_path, 4, base)
    doc = json.loads((tmp_path / "genesis.json").read_text())
    doc["organizations"] += [
        {"name": f"org{i}", "members": [
            {"name": f"admin{i}", "pubkey": k.public.hex(), "roles": ["admin"]}]}
        for i, k in enumerate(ADMINS)]
    (tmp_path / "genesis.json").write_text(json.dumps(doc, indent=2))
    c = Cluster(tmp_path, 4, base)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def status(cluster: Cluster, i: int) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{cluster.url(i)}/v1/status", timeout=5).json()
    return doc


def change(genesis: Genesis, config: Config, doc: dict[str, Any],
           joiners: tuple[PrivateKey, ...] = ()) -> tuple[Record, Config]:
    """A ledger.config record making ``doc`` the configuration after ``config``, approved
    by two of the three admins, with the join signatures of ``joiners``."""
    raw = packb({"version": config.version + 1, "prev": config.id, **doc})
    approve = approval_message(genesis.hash, raw, CONFIG_TAG)
    join = approval_message(genesis.hash, raw, JOIN_TAG)
    record = Record.create(ADMINS[0], chain=genesis.chain_id, type=CONFIG_TYPE,
                           subject="config", ts=now_ms(), nonce=config.version + 1,
                           payload={"change": raw,
                                    "approvals": [[k.public, k.sign(approve)]
                                                  for k in ADMINS[:2]],
                                    "joins": [[k.public, k.sign(join)] for k in joiners]})
    return record, parse_change(config, raw)


def commit(cluster: Cluster, node: int, record: Record) -> int:
    resp = httpx.post(f"{cluster.url(node)}/v1/records", content=packb([record.envelope]),
                      params={"wait": "commit", "timeout": "60"},
                      headers={"Content-Type": "application/msgpack"}, timeout=90)
    assert resp.status_code == 202, resp.text
    [result] = resp.json()["results"]
    assert result["status"] == "accepted", result
    return int(result["height"])


def signers(cluster: Cluster, node: int, height: int) -> set[int]:
    block = httpx.get(f"{cluster.url(node)}/v1/blocks/{height}", timeout=5).json()
    return {s["validator"] for s in block["cert"]["signatures"]}


def until(cond: Any, what: str, cluster: Cluster, node: int, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not in {timeout} s; node{node}: {cluster.log(node)[-3000:]}")


def test_a_validator_joins_one_leaves_and_powers_change(cluster: Cluster) -> None:
    genesis = Genesis.load(cluster.dir / "genesis.json")
    load = Load(cluster, genesis.chain_id, read_key_file(cluster.dir / "clients" / "demo.pem"))
    load.thread.start()
    try:
        # a 5th node directory, made with the real CLI, started as a follower
        new_dir = cluster.dir / "node4"
        api, p2p = f"127.0.0.1:{cluster.base_port + 4}", f"127.0.0.1:{cluster.base_port + 104}"
        made = subprocess.run([sys.executable, "-m", "node.cli", "node", "init", str(new_dir),
                               "--genesis", str(cluster.dir / "genesis.json"), "--api", api,
                               "--p2p", p2p], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert made.returncode == 0, made.stderr
        new_key = read_key_file(new_dir / "node.pem")
        assert made.stdout.strip() == new_key.public.hex()
        again = subprocess.run([sys.executable, "-m", "node.cli", "node", "init", str(new_dir),
                                "--genesis", str(cluster.dir / "genesis.json"), "--api", api,
                                "--p2p", p2p], cwd=ROOT, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode != 0 and "already holds a node" in again.stderr
        cluster.start(4)
        cluster.wait_healthy(4)
        follower = status(cluster, 4)
        assert follower["validator"] is False and follower["peers"] == []
        cluster.kill(3, signal.SIGTERM)  # down during the three changes

        # change 1: add node4 (with its join signature); it syncs and signs certificates
        doc = config_doc(genesis)
        doc["validators"].append({"name": "node4", "pubkey": new_key.public.hex(), "power": 1,
                                  "p2p": p2p, "api": f"http://{api}"})
        record, v1 = change(genesis, genesis.config, doc, (new_key,))
        added_at = commit(cluster, 1, record)
        until(lambda: status(cluster, 4)["height"] >= added_at + 2, "node4 catches up",
              cluster, 4)
        until(lambda: status(cluster, 4)["validator"] is True, "node4 votes", cluster, 4)
        until(lambda: any(4 in signers(cluster, 1, h)
                          for h in range(added_at + 1, cluster.height(1) + 1)),
              "node4's signature in a certificate", cluster, 4)
        assert status(cluster, 4)["config_version"] == 1

        # change 2: remove node0; the chain goes on, node0 keeps serving reads
        doc["validators"] = [v for v in doc["validators"] if v["name"] != "node0"]
        record, v2 = change(genesis, v1, doc)
        removed_at = commit(cluster, 4, record)
        cluster.wait_height(0, removed_at)
        until(lambda: cluster.height(1) >= removed_at + 3, "the chain goes on", cluster, 1)
        until(lambda: 0 not in status(cluster, 1)["peers"], "node0's link closes", cluster, 1)
        zero = status(cluster, 0)
        assert zero["validator"] is False and zero["height"] >= removed_at
        assert httpx.get(f"{cluster.url(0)}/v1/blocks/1", timeout=5).status_code == 200
        after = [httpx.get(f"{cluster.url(1)}/v1/blocks/{h}", timeout=5).json()
                 for h in range(removed_at + 1, cluster.height(1) + 1)]
        assert {b["header"]["validators_hash"] for b in after} == {v2.validators.hash.hex()}

        # change 3: node1's power becomes 3 (of 6): then node2 SIGKILLed right after it
        for v in doc["validators"]:
            if v["name"] == "node1":
                v["power"] = 3
        load.targets = [1]  # no record acknowledged by node2 lost in its SIGKILL
        record, v3 = change(genesis, v2, doc)
        powered_at = commit(cluster, 2, record)
        cluster.kill(2)
        # node1 (3) and node4 (1) are 4 of 6: no quorum until node3, down during all three
        # changes, has caught up through them and votes
        cluster.start(3)
        until(lambda: cluster.height(1) >= powered_at + 3, "the chain goes on (node2 down, "
              "node3 back)", cluster, 3, timeout=60)
        assert httpx.get(f"{cluster.url(3)}/v1/config", timeout=5).json()["version"] == 3
        assert status(cluster, 3)["validator"] is True
        cluster.start(2)
        cluster.wait_healthy(2)
        config = httpx.get(f"{cluster.url(2)}/v1/config", timeout=5).json()
        assert (config["version"], config["height"]) == (3, powered_at + 1)
        assert [v["power"] for v in config["config"]["validators"]] == [3, 1, 1, 1]
        until(lambda: status(cluster, 2)["height"] >= cluster.height(1) - 1,
              "node2 catches up after its restart", cluster, 2)
    finally:
        load.stop.set()
        load.thread.join(timeout=10)

    def committed(rid: str) -> bool:
        doc = httpx.get(f"{cluster.url(1)}/v1/records/{rid}", timeout=5).json()
        return bool(doc.get("status") == "committed")

    assert len(load.acknowledged) > 20
    until(lambda: all(committed(rid) for rid in load.acknowledged[-5:]),
          "the load's last records commit", cluster, 1)
    tip = cluster.height(1)  # every acknowledged record is below it: the others get there
    for i in (2, 3, 4):
        cluster.wait_height(i, tip)
    res = subprocess.run([sys.executable, "-m", "node.cli", "audit", "--node", cluster.url(1),
                          "--genesis", str(cluster.dir / "genesis.json"), "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    on_chain: Counter[str] = Counter()
    for h in range(1, tip + 1):
        blocks = [httpx.get(f"{cluster.url(i)}/v1/blocks/{h}", timeout=5).json()
                  for i in (1, 2, 3, 4)]
        assert len({b["hash"] for b in blocks}) == 1, f"height {h}: differs"
        on_chain.update(r["id"] for r in blocks[0]["records"])
        if h > powered_at:  # certified by the re-weighted set
            assert blocks[0]["header"]["validators_hash"] == v3.validators.hash.hex()
    # every acknowledged record is on the chain exactly once
    bad = [rid for rid in load.acknowledged if on_chain[rid] != 1]
    assert not bad, [(on_chain[r], load.where[r], httpx.get(
        f"{cluster.url(1)}/v1/records/{r}", timeout=5).json().get("status")) for r in bad[:5]]
