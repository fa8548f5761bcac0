"""Four real `ledger node run` processes follow a configuration change (SPEC section 9): a
change approved by two of three governing organisations revokes the demo key; its next
record is refused ``unauthorized`` on every node, its earlier receipts still verify (with
``config_proof``), the chain goes on, a node SIGKILLed and restarted comes back with the new
configuration, and ``ledger audit`` passes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.config import CONFIG_TAG, CONFIG_TYPE, approval_message
from ledger.crypto import PrivateKey, read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.receipts import verify_receipt
from ledger.records import Record
from tests.factory import seeded_key
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow

ADMINS = [seeded_key(f"cluster-admin-{i}") for i in range(3)]
SPARE = seeded_key("cluster-spare")
CONFIG_KEYS = ("validators", "organizations", "policies", "governance", "witnesses",
               "read_policies")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path)
    doc = json.loads((tmp_path / "genesis.json").read_text())
    doc["organizations"][0]["members"].append(
        {"name": "spare", "pubkey": SPARE.public.hex(), "roles": ["writer"]})
    doc["organizations"] += [
        {"name": f"org{i}", "members": [
            {"name": f"admin{i}", "pubkey": k.public.hex(), "roles": ["admin"]}]}
        for i, k in enumerate(ADMINS)]
    (tmp_path / "genesis.json").write_text(json.dumps(doc, indent=2))
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def post(url: str, recs: list[Record]) -> list[dict[str, Any]]:
    resp = httpx.post(f"{url}/v1/records", content=packb([r.envelope for r in recs]),
                      params={"wait": "commit", "timeout": "60"},
                      headers={"Content-Type": "application/msgpack"}, timeout=90)
    assert resp.status_code == 202, resp.text
    results: list[dict[str, Any]] = resp.json()["results"]
    return results


def reading(key: PrivateKey, chain: str, nonce: int) -> Record:
    return Record.create(key, chain=chain, type="sensor.reading", subject="plant-1/s1",
                         payload={"v": nonce}, ts=now_ms(), nonce=nonce)


def revoke(genesis: Genesis, demo: PrivateKey) -> Record:
    """The ledger.config record dropping ``demo`` from the configuration, approved by the
    admins of org0 and org1 (the default threshold: 2 of 3)."""
    doc = json.loads(genesis.raw)
    new = {k: doc[k] for k in CONFIG_KEYS if k in doc}
    for org in new["organizations"]:
        org["members"] = [m for m in org["members"] if m["pubkey"] != demo.public.hex()]
    change = packb({"version": 1, "prev": genesis.hash, **new})
    msg = approval_message(genesis.hash, change, CONFIG_TAG)
    return Record.create(ADMINS[0], chain=genesis.chain_id, type=CONFIG_TYPE, subject="config",
                         payload={"change": change, "joins": [],
                                  "approvals": [[k.public, k.sign(msg)] for k in ADMINS[:2]]},
                         ts=now_ms(), nonce=1)


def test_a_revoked_key_is_refused_on_every_node_and_history_still_verifies(
        cluster: Cluster) -> None:
    genesis = Genesis.load(cluster.dir / "genesis.json")
    demo = read_key_file(cluster.dir / "clients" / "demo.pem")
    early = [reading(demo, genesis.chain_id, n) for n in range(1, 4)]
    assert all(r["status"] == "accepted" for r in post(cluster.url(0), early))

    [result] = post(cluster.url(1), [revoke(genesis, demo)])
    assert result["status"] == "accepted", result
    change_height = result["height"]
    for i in range(4):
        cluster.wait_height(i, change_height)
        config = httpx.get(f"{cluster.url(i)}/v1/config", timeout=5).json()
        assert (config["version"], config["height"]) == (1, change_height + 1)
        assert httpx.get(f"{cluster.url(i)}/v1/status", timeout=5).json()[
            "config_version"] == 1

    for i in range(4):  # refused at admission on every node, at once
        [late] = post(cluster.url(i), [reading(demo, genesis.chain_id, 100 + i)])
        assert (late["status"], late["error"]) == ("rejected", "unauthorized"), late
    [spare] = post(cluster.url(2), [reading(SPARE, genesis.chain_id, 1)])
    assert spare["status"] == "accepted" and spare["height"] > change_height

    # SIGKILL a node right after the change and restart it: it has the new configuration
    cluster.kill(3)
    cluster.start(3)
    cluster.wait_healthy(3)
    assert httpx.get(f"{cluster.url(3)}/v1/config", timeout=5).json()["version"] == 1
    [after] = post(cluster.url(3), [reading(demo, genesis.chain_id, 200)])
    assert after["error"] == "unauthorized"

    for rid, steps in ((early[0].id.hex(), 0), (spare["id"], 1)):
        receipt = httpx.get(f"{cluster.url(3)}/v1/records/{rid}/receipt", timeout=5).json()
        assert len(receipt["config_proof"]) == steps
        assert verify_receipt(receipt, genesis).record.id.hex() == rid
    res = subprocess.run([sys.executable, "-m", "node.cli", "audit", "--node", cluster.url(0),
                          "--genesis", str(cluster.dir / "genesis.json"), "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

    # `ledger config show`: the configuration in force, without the revoked key; version 0
    def show(*extra: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "node.cli", "config", "show", "--node",
                              cluster.url(2), *extra], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        doc: dict[str, Any] = json.loads(out.stdout)
        assert "chain_id" not in doc
        return doc

    members = [m["pubkey"] for o in show()["organizations"] for m in o["members"]]
    assert demo.public.hex() not in members
    old = [m["pubkey"] for o in show("--version", "0")["organizations"] for m in o["members"]]
    assert demo.public.hex() in old
