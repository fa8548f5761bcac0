"""A living consortium on four real `ledger node run` processes under continuous load, in one
test, driven by the CLI the way an operator drives it (issue 13; SPEC sections 8 and 9).

`ledger cluster init` makes the chain: three organisations, each with an admin key under
clients/, any two of which change the configuration. Every change below is `ledger config
show` -> edit -> `ledger config propose --config NEW.json` -> `ledger config approve` by two
admins (and, for a new validator, its own node.pem: the join) -> `ledger config submit --wait`:

1. add an organisation (newco, with the member gw that writes the load) and a member of an
   existing one (supplier/lab); on the way, one approval is refused at submission
   `approvals_insufficient`, a non-admin's approval is refused (the file unchanged), and once
   applied the proposal is refused as stale;
2. revoke the demo key: its next record is refused `unauthorized` on every node (the time from
   the decision to the refusal is printed), `config show --version 0` still lists it, its
   earlier record still audits and its receipt (no config_proof step) still verifies with
   `ledger verify` at the end, as does a late record's (six steps);
3. rotate supplier/lab's key (the new one from `ledger keygen`): the old key is then
   `unauthorized`, the new one accepted;
4. add a 5th validator made with `ledger node init` on new ports: it catches up over the
   validators' HTTP API before its change is submitted (not a validator yet), then its
   signatures appear in certificates;
5. remove node 0: the chain goes on without it, node 0 keeps answering reads and, its links
   closed, follows the chain over the validators' HTTP API (its height keeps growing);
6. change a power (node1 to 3 of 6), then SIGKILL node 2 right after: it restarts with the
   new configuration (and still refuses the revoked key). Node 3, down during changes 4 to
   6, catches up through all three and votes (the chain needs it for a quorum).

The load (newco/gw, a member that stays authorised) runs in a thread through it all; at the
end `ledger audit` passes, every acknowledged record is on the chain exactly once and all
nodes hold identical blocks up to a common height."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from ledger.crypto import PrivateKey, read_key_file
from ledger.encoding import packb
from ledger.records import Record
from tests.integration.cluster_util import ROOT, Cluster, free_base_port

pytestmark = pytest.mark.slow

MSGPACK = {"Content-Type": "application/msgpack"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ledger(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def ok(*args: str | Path) -> str:
    res = ledger(*args)
    assert res.returncode == 0, f"ledger {' '.join(map(str, args))}: {res.stdout}{res.stderr}"
    return res.stdout


class Load:
    """Records signed by ``key`` to the ``targets`` nodes, a few per second, until stopped
    (at most 2000). Before the key is a member they are refused: only records answered
    ``accepted`` count as acknowledged."""

    def __init__(self, cluster: Cluster, chain: str, key: PrivateKey) -> None:
        self.cluster, self.chain, self.key = cluster, chain, key
        self.targets = [1, 2]
        self.acknowledged: list[str] = []
        self.where: dict[str, tuple[int, int]] = {}
        self.refused: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        n = 0
        with httpx.Client(timeout=5) as http:
            while not self.stop.wait(0.15) and n < 2000:
                n += 1
                rec = Record.create(self.key, chain=self.chain, type="sensor.reading",
                                    subject=f"newco/load/{n % 7}", payload={"n": n},
                                    ts=now_ms(), nonce=n)
                target = self.targets[n % len(self.targets)]
                try:
                    resp = http.post(f"{self.cluster.url(target)}/v1/records",
                                     content=packb([rec.envelope]), headers=MSGPACK)
                except httpx.HTTPError:
                    continue  # a node being killed: not acknowledged
                if resp.status_code != 202:
                    self.refused[f"http {resp.status_code}"] += 1
                    continue
                result = resp.json()["results"][0]
                if result["status"] == "accepted":
                    self.acknowledged.append(rec.id.hex())
                    self.where[rec.id.hex()] = (target, n)
                else:
                    self.refused[str(result.get("error"))] += 1


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    base = free_base_port(5)  # the 5th node's ports too
    out = ok("cluster", "init", tmp_path / "c", "--nodes", "4", "--base-port", str(base))
    assert "demo-org-admin.pem" in out and "carrier-admin.pem" in out
    c = Cluster(tmp_path / "c", 4, base)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def status(cluster: Cluster, i: int) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{cluster.url(i)}/v1/status", timeout=5).json()
    return doc


def until(cond: Callable[[], Any], what: str, cluster: Cluster, node: int,
          timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not in {timeout} s; node{node}: {cluster.log(node)[-3000:]}")


def signers(cluster: Cluster, node: int, height: int) -> set[int]:
    block = httpx.get(f"{cluster.url(node)}/v1/blocks/{height}", timeout=5).json()
    return {s["validator"] for s in block["cert"]["signatures"]}


def test_a_living_consortium_under_load(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    d, clients = cluster.dir, cluster.dir / "clients"
    genesis = d / "genesis.json"
    chain = json.loads(genesis.read_text())["chain_id"]
    admins = {org: clients / f"{org}-admin.pem" for org in ("demo-org", "supplier", "carrier")}
    heights: dict[str, int] = {}

    def change(name: str, edit: Callable[[dict[str, Any]], None], approvers: tuple[str, str],
               expect: list[str], joiners: tuple[Path, ...] = (), node: int = 1,
               half_way: Callable[[Path, str], None] | None = None) -> float:
        """One configuration change the operator's way; returns when ``show`` started.
        ``half_way`` runs after the first approval (with the proposal and that output)."""
        began = time.monotonic()
        url = cluster.url(node)
        doc = json.loads(ok("config", "show", "--node", url))
        edit(doc)
        new, proposal = tmp_path / f"{name}.json", tmp_path / f"{name}-proposal.json"
        new.write_text(json.dumps(doc, indent=2))
        out = ok("config", "propose", "--node", url, "--config", new, "--out", proposal)
        for line in expect:
            assert line in out, out
        for n, org in enumerate(approvers):
            out = ok("config", "approve", proposal, "--identity", admins[org], "--node", url)
            if n == 0 and half_way is not None:
                half_way(proposal, out)
        for pem in joiners:
            assert "joins missing from new validator key(s)" in out, out
            out = ok("config", "approve", proposal, "--identity", pem, "--node", url)
            assert "join signed" in out, out
        assert ": enough" in out and "joins missing" not in out, out
        rid, _, height = ok("config", "submit", proposal, "--node", url, "--identity",
                            admins[approvers[0]], "--wait", "--timeout", "90").split()
        assert len(rid) == 64
        heights[name] = int(height)
        print(f"change {name}: committed at height {height} "
              f"({time.monotonic() - began:.1f} s from show to committed)")
        return began

    demo_signer = read_key_file(clients / "demo.pem")

    def demo_refused(i: int) -> bool:
        rec = Record.create(demo_signer, chain=chain, type="sensor.reading",
                            subject="plant-1/s1", payload={"node": i}, ts=now_ms(), nonce=i)
        resp = httpx.post(f"{cluster.url(i)}/v1/records", content=packb([rec.envelope]),
                          headers=MSGPACK, timeout=10)
        result = resp.json()["results"][0]
        return bool((result["status"], result.get("error")) == ("rejected", "unauthorized"))

    # before any change: the demo key writes a record (its receipt is verified at the end);
    # the load's key (newco/gw, made with keygen) is not a member yet
    demo = clients / "demo.pem"
    early = ok("submit", "--node", cluster.url(0), "--identity", demo, "--type",
               "sensor.reading", "--subject", "plant-1/s1", "--payload", '{"v": 1}',
               "--wait").split()[0]
    gw_pem, lab_pem, lab2_pem = tmp_path / "gw.pem", tmp_path / "lab.pem", tmp_path / "lab2.pem"
    gw, lab, lab2 = (ok("keygen", p).split()[-1] for p in (gw_pem, lab_pem, lab2_pem))
    load = Load(cluster, chain, read_key_file(gw_pem))
    load.thread.start()
    try:
        # 1. an organisation with a member (the load's writer) and a member of supplier
        def onboard(doc: dict[str, Any]) -> None:
            doc["organizations"].append({"name": "newco", "members": [
                {"name": "gw", "pubkey": gw, "roles": ["writer"]}]})
            for org in doc["organizations"]:
                if org["name"] == "supplier":
                    org["members"].append({"name": "lab", "pubkey": lab, "roles": ["writer"]})

        def one_approval(proposal: Path, out: str) -> None:
            assert "approvals: 1 organisation(s) (demo-org); 2 of 3 needed" in out, out
            assert "already approved" in ok("config", "approve", proposal, "--identity",
                                            admins["demo-org"], "--node", cluster.url(2))
            assert len(json.loads(proposal.read_text())["approvals"]) == 1
            # one organisation is below the threshold: refused at admission, with the code
            short = ledger("config", "submit", proposal, "--node", cluster.url(0),
                           "--identity", demo, "--wait")
            assert short.returncode == 1, short.stdout + short.stderr
            assert short.stderr.startswith("rejected: approvals_insufficient:"), short.stderr
            # not an admin: refused by approve, the file unchanged
            before = proposal.read_bytes()
            notadmin = ledger("config", "approve", proposal, "--identity", demo, "--node",
                              cluster.url(0))
            assert notadmin.returncode == 2 and "governance role" in notadmin.stderr, notadmin
            assert proposal.read_bytes() == before

        change("onboard", onboard, ("demo-org", "supplier"),
               ["+ organisation newco", f"+ member newco/gw ({gw[:8]}): writer",
                f"+ member supplier/lab ({lab[:8]}): writer"], half_way=one_approval)
        # applied: approving the same proposal again is refused as stale
        stale = ledger("config", "approve", tmp_path / "onboard-proposal.json", "--identity",
                       admins["carrier"], "--node", cluster.url(1))
        assert stale.returncode == 2 and "stale proposal" in stale.stderr, stale
        until(lambda: len(load.acknowledged) >= 3, "the new member's load is accepted",
              cluster, 1)
        assert load.refused["unauthorized"] > 0  # it was refused before the change
        ok("submit", "--node", cluster.url(2), "--identity", lab_pem, "--type",
           "sensor.reading", "--subject", "supplier/lab", "--payload", "1", "--wait")

        # 2. revoke the demo key: timed from the decision (config show) to its next refusal
        demo_key = read_key_file(demo).public.hex()

        def revoke(doc: dict[str, Any]) -> None:
            for org in doc["organizations"]:
                org["members"] = [m for m in org["members"] if m["pubkey"] != demo_key]

        decided = change("revoke", revoke, ("carrier", "demo-org"),
                         [f"- member demo-org/demo ({demo_key[:8]}): revoked"])
        late = ledger("submit", "--node", cluster.url(3), "--identity", demo, "--type",
                      "sensor.reading", "--subject", "plant-1/s1", "--payload", "2")
        refused_after = time.monotonic() - decided
        assert late.returncode == 1, late.stdout + late.stderr
        assert late.stderr.startswith("rejected: unauthorized:"), late.stderr
        print(f"revocation: decision (config show) -> demo key refused {refused_after:.1f} s")
        revoked_at = heights["revoke"]
        for i in range(4):  # every node: the new configuration, and the key refused
            cluster.wait_height(i, revoked_at)
            config = httpx.get(f"{cluster.url(i)}/v1/config", timeout=5).json()
            assert (config["version"], config["height"]) == (2, revoked_at + 1), config
            assert status(cluster, i)["config_version"] == 2
            assert demo_refused(i), f"node{i} admits the revoked key"
        members = [m["pubkey"] for o in json.loads(ok("config", "show", "--node",
                                                      cluster.url(0)))["organizations"]
                   for m in o["members"]]
        assert demo_key not in members and gw in members
        first = json.loads(ok("config", "show", "--node", cluster.url(0), "--version", "0"))
        assert "chain_id" not in first
        assert demo_key in [m["pubkey"] for o in first["organizations"] for m in o["members"]]

        # 3. rotate supplier/lab's key: the old one is refused, the new one accepted
        def rotate(doc: dict[str, Any]) -> None:
            for org in doc["organizations"]:
                for m in org["members"]:
                    if m["pubkey"] == lab:
                        m["pubkey"] = lab2

        change("rotate", rotate, ("supplier", "carrier"),
               [f"+ member supplier/lab ({lab2[:8]}): writer",
                f"- member supplier/lab ({lab[:8]}): revoked"])
        old = ledger("submit", "--node", cluster.url(2), "--identity", lab_pem, "--type",
                     "sensor.reading", "--subject", "supplier/lab", "--payload", "2")
        assert old.returncode == 1 and old.stderr.startswith("rejected: unauthorized:"), old
        ok("submit", "--node", cluster.url(1), "--identity", lab2_pem, "--type",
           "sensor.reading", "--subject", "supplier/lab", "--payload", "3", "--wait")

        # 4. a 5th validator: `ledger node init` on new ports, started as a follower, then
        # added by a change carrying its join signature. Node 3 is down from here through
        # change 6.
        new_dir = d / "node4"
        api, p2p = f"127.0.0.1:{cluster.base_port + 4}", f"127.0.0.1:{cluster.base_port + 104}"
        made = ledger("node", "init", new_dir, "--genesis", genesis, "--api", api, "--p2p", p2p)
        assert made.returncode == 0, made.stderr
        new_key = made.stdout.strip()
        assert new_key == read_key_file(new_dir / "node.pem").public.hex()
        entry = json.loads(made.stderr.strip().splitlines()[-1])
        assert entry == {"name": "node4", "pubkey": new_key, "power": 1, "p2p": p2p,
                         "api": f"http://{api}"}
        again = ledger("node", "init", new_dir, "--genesis", genesis, "--api", api, "--p2p", p2p)
        assert again.returncode != 0 and "already holds a node" in again.stderr
        cluster.start(4)
        cluster.wait_healthy(4)
        assert status(cluster, 4)["validator"] is False
        # no validator links with it yet: it follows the chain over the validators' HTTP
        # API (node.follow) and catches up *before* its change is submitted
        until(lambda: (s := status(cluster, 4))["validator"] is False
              and s["height"] >= cluster.height(1) - 2 and s["height"] > revoked_at,
              "node4 catches up over HTTP before its change", cluster, 4)
        assert status(cluster, 4)["validator"] is False
        assert "following http://" in cluster.log(4)
        print(f"node4 followed over HTTP to {status(cluster, 4)['height']} of "
              f"{cluster.height(1)} before its change")
        cluster.kill(3, signal.SIGTERM)

        change("add-node4", lambda doc: doc["validators"].append(entry),
               ("demo-org", "carrier"), [f"+ validator node4 ({new_key[:8]}) power 1"],
               joiners=(new_dir / "node.pem",))
        added_at = heights["add-node4"]
        until(lambda: status(cluster, 4)["height"] >= added_at + 2, "node4 catches up",
              cluster, 4)
        until(lambda: status(cluster, 4)["validator"] is True, "node4 votes", cluster, 4)
        until(lambda: any(4 in signers(cluster, 1, h)
                          for h in range(added_at + 1, cluster.height(1) + 1)),
              "node4's signature in a certificate", cluster, 4)

        # 5. remove node 0: the chain goes on without it; it keeps answering reads
        zero_key = json.loads(genesis.read_text())["validators"][0]["pubkey"]
        change("remove-node0", lambda doc: doc["validators"].pop(0), ("supplier", "demo-org"),
               [f"- validator node0 ({zero_key[:8]}) power 1"], node=4)
        removed_at = heights["remove-node0"]
        cluster.wait_height(0, removed_at)
        until(lambda: cluster.height(1) >= removed_at + 3, "the chain goes on", cluster, 1)
        until(lambda: 0 not in status(cluster, 1)["peers"], "node0's link closes", cluster, 1)
        zero = status(cluster, 0)
        assert zero["validator"] is False and zero["height"] >= removed_at
        assert httpx.get(f"{cluster.url(0)}/v1/blocks/1", timeout=5).status_code == 200
        assert httpx.get(f"{cluster.url(0)}/v1/records/{early}", timeout=5).json()[
            "status"] == "committed"
        # its links are gone: a write there could never commit, so it is refused at once
        until(lambda: not status(cluster, 0)["peers"], "node0 has no link", cluster, 0)
        stray = Record.create(load.key, chain=chain, type="sensor.reading", subject="stray",
                              payload={}, ts=now_ms(), nonce=10**9)
        refused = httpx.post(f"{cluster.url(0)}/v1/records", content=packb([stray.envelope]),
                             headers=MSGPACK, timeout=5)
        assert (refused.status_code, refused.json()["code"]) == (503, "not_a_validator"), \
            refused.text
        # unlinked, it keeps following the chain over HTTP as a read replica
        followed_from = cluster.height(0)
        until(lambda: cluster.height(0) >= max(followed_from + 2, removed_at + 3),
              "node0 keeps following after its removal", cluster, 0)
        assert status(cluster, 0)["validator"] is False
        print(f"node0, removed at {removed_at}, followed from {followed_from} to "
              f"{cluster.height(0)} (tip {cluster.height(1)})")

        # 6. node1's power becomes 3 (of 6); node2 is SIGKILLed right after the change
        def power(doc: dict[str, Any]) -> None:
            for v in doc["validators"]:
                if v["name"] == "node1":
                    v["power"] = 3

        load.targets = [1]  # no record acknowledged by node2 lost in its SIGKILL
        change("power", power, ("carrier", "supplier"), ["~ validator node1", "power 1 -> 3"],
               node=2)
        powered_at = heights["power"]
        cluster.kill(2)
        # node1 (3) and node4 (1) are 4 of 6: no quorum until node3, down during the last
        # three changes, has caught up through them and votes
        cluster.start(3)
        until(lambda: cluster.height(1) >= powered_at + 3, "the chain goes on (node2 down, "
              "node3 back)", cluster, 3, timeout=60)
        assert status(cluster, 3)["validator"] is True
        assert httpx.get(f"{cluster.url(3)}/v1/config", timeout=5).json()["version"] == 6
        cluster.start(2)
        cluster.wait_healthy(2)
        assert demo_refused(2)
        config = httpx.get(f"{cluster.url(2)}/v1/config", timeout=5).json()
        assert (config["version"], config["height"]) == (6, powered_at + 1)
        assert [(v["name"], v["power"]) for v in config["config"]["validators"]] == [
            ("node1", 3), ("node2", 1), ("node3", 1), ("node4", 1)]
        load.targets = [1, 2]
        until(lambda: status(cluster, 2)["height"] >= cluster.height(1) - 1,
              "node2 catches up after its restart", cluster, 2)
    finally:
        load.stop.set()
        load.thread.join(timeout=10)

    # the end: every acknowledged record is on the chain once, the nodes agree, audit passes
    def committed(rid: str) -> bool:
        doc = httpx.get(f"{cluster.url(1)}/v1/records/{rid}", timeout=5).json()
        return bool(doc.get("status") == "committed")

    assert len(load.acknowledged) > 30, (len(load.acknowledged), load.refused)
    until(lambda: all(committed(rid) for rid in load.acknowledged[-5:]),
          "the load's last records commit", cluster, 1)
    tip = cluster.height(1)  # every acknowledged record is below it: the others get there
    for i in (2, 3, 4):
        cluster.wait_height(i, tip)
    changes_done = time.monotonic() - started
    res = ledger("audit", "--node", cluster.url(1), "--genesis", genesis, "-q")
    assert res.returncode == 0, res.stdout + res.stderr
    starts = ", ".join(str(h + 1) for h in heights.values())
    assert f"7 configuration versions followed (from heights 1, {starts})" in res.stdout, \
        res.stdout
    zero_tip = min(tip, cluster.height(0))  # node0 follows as a reader
    on_chain: Counter[str] = Counter()
    with httpx.Client(timeout=5) as http:
        for h in range(1, tip + 1):
            raw = {i: http.get(f"{cluster.url(i)}/v1/blocks/{h}",
                               headers={"Accept": "application/msgpack"}).content
                   for i in ((0, 1, 2, 3, 4) if h <= zero_tip else (1, 2, 3, 4))}
            # the same header and records everywhere; below a node's own tip the same bytes,
            # the certificate too (a proposal carries the previous block's certificate,
            # docs/protocol.md): only a tip's certificate is the node's own
            bodies = {packb(msgpack.unpackb(b)[:2]) for b in raw.values()}
            whole = {b for i, b in raw.items() if h < (zero_tip if i == 0 else tip)}
            assert len(bodies) == 1 and len(whole) <= 1, (
                f"height {h} (tip {tip}, node0's {zero_tip}): blocks differ: "
                + ", ".join(f"node{i} {b.hex()[-16:]}" for i, b in raw.items()))
        for h in range(1, tip + 1):
            on_chain.update(r["id"] for r in http.get(f"{cluster.url(1)}/v1/blocks/{h}")
                            .json()["records"])
    bad = [rid for rid in load.acknowledged if on_chain[rid] != 1]
    assert not bad, [(on_chain[r], load.where[r]) for r in bad[:5]]
    assert on_chain[early] == 1

    # the revoked demo key's early record (before any change) and the load's last one
    # (after all six): their receipts verify against genesis alone, following the changes
    for rid, node, steps in ((early, 3, 0), (load.acknowledged[-1], 0 if zero_tip >= tip
                                               else 4, 6)):
        receipt = tmp_path / f"receipt-{rid}.json"
        receipt.write_bytes(httpx.get(f"{cluster.url(node)}/v1/records/{rid}/receipt",
                                      timeout=5).content)
        assert len(json.loads(receipt.read_text())["config_proof"]) == steps
        out = ok("verify", receipt, "--genesis", genesis)
        assert out.startswith(f"valid: record {rid}"), out
        assert ("followed 6 configuration changes to version 6" in out) == (steps == 6), out
    print(f"{len(load.acknowledged)} acknowledged load records on {tip} blocks "
          f"(refused: {dict(load.refused)}); node0 (following) at {zero_tip}; heights {heights}; "
          f"{changes_done:.1f} s to the last catch-up, {time.monotonic() - started:.1f} s in all")
