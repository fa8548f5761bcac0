"""``ledger witness`` against a real 4-node cluster made by ``ledger cluster init --witnesses
2``: it cosigns and the nodes list its cosignatures; killed with SIGKILL between saving and
posting, then restarted against a node serving a forked chain (built from the cluster's own
validator keys, same genesis), it refuses with ``height N:`` and posts nothing there;
restarted against the honest nodes it posts the saved cosignature; following (SSE), it
cosigns a new block and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ledger.blocks import Block
from ledger.crypto import PrivateKey, read_key_file
from ledger.genesis import Genesis
from node.client import LedgerClient
from node.witnesscli import WitnessState
from tests.factory import Fixture
from tests.inprocess import InProcessApi
from tests.integration.cluster_util import ROOT, Cluster
from tests.unit.test_log_proofs import served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path_factory.mktemp("witness"), witnesses=2,
                       consensus={"timeout_propose_ms": 500, "timeout_commit_ms": 50,
                                  "create_empty_blocks": False})
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def witness(c: Cluster, *args: str, env: dict[str, str] | None = None, key: int = 0,
            faulty: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = ["tests.faulty_witness"] if faulty else ["node.cli", "witness"]
    return subprocess.run(
        [sys.executable, "-m", *command, "--genesis", str(c.dir / "genesis.json"),
         "--identity", str(c.dir / "witnesses" / f"witness{key}.pem"),
         "--state", str(c.dir / f"witness{key}.state"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, check=False)


def cosigners(url: str, height: int) -> set[str]:
    doc = httpx.get(f"{url}/v1/log/checkpoint", params={"height": height}, timeout=10).json()
    return {w["pubkey"] for w in doc.get("witnesses", [])}


def submit(client: LedgerClient, n: int) -> int:
    height = 0
    for i in range(n):
        height = client.write(type="sensor.reading", subject="plant/w", payload={"i": i},
                              wait=True)["height"]
    return height


def forked_node(c: Cluster, common: int, extra: int) -> InProcessApi:
    """An in-process node of the cluster's chain (its genesis, its validator keys, its demo
    writer) holding the cluster's blocks 1..common, then ``extra`` blocks of another
    history."""
    genesis = Genesis.load(c.dir / "genesis.json")
    keys = [read_key_file(c.dir / f"node{i}" / "node.pem") for i in range(c.nodes)]
    writer = read_key_file(c.dir / "clients" / "demo.pem")
    fx = Fixture(genesis, keys, writer, PrivateKey.generate(), PrivateKey.generate())
    api = InProcessApi(fx)
    with LedgerClient(c.url(0)) as client:
        for height in range(1, common + 1):
            data = client.block_bytes(height)
            assert data is not None
            block = Block.from_wire(data)
            api.service.append(block)
            api.service.builder.blocks.append(block)
    api.nonce = 10**9
    for _ in range(extra):
        block = api.service.builder.block([api.record(), api.record()])
        api.service.append(block)
        api.service.builder.blocks.append(block)
    return api


def test_witness_cosigns_survives_sigkill_and_refuses_a_fork(cluster: Cluster) -> None:
    started = time.monotonic()
    c = cluster
    me = read_key_file(c.dir / "witnesses" / "witness0.pem").public.hex()
    nodes = [c.url(0), c.url(1)]
    with LedgerClient(c.url(0), identity=read_key_file(c.dir / "clients" / "demo.pem")) as client:
        first = submit(client, 3)
        # 1. --once: cosigns to the tip, every node it follows lists the cosignature
        done = witness(c, "--node", nodes[0], "--node", nodes[1], "--once")
        assert done.returncode == 0, done.stderr
        assert f"ok: cosigned to height {first}" in done.stdout
        for url in nodes:
            assert me in cosigners(url, first)
        # 2. new blocks; killed with SIGKILL right after saving, before posting
        tip = submit(client, 2)
        for i in range(c.nodes):
            c.wait_height(i, tip)
        killed = witness(c, "--node", nodes[0], "--node", nodes[1], "--once",
                         env={"LEDGER_WITNESS_CRASH": "after_save"}, faulty=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    state = WitnessState.from_bytes((c.dir / "witness0.state").read_bytes(),
                                    Genesis.load(c.dir / "genesis.json"), bytes.fromhex(me))
    assert state.height == tip and state.cosigned[-1].height == tip
    for url in nodes:
        assert me not in cosigners(url, tip)  # saved, never posted

    # 3. restarted against a node serving another history from height first+1: refused there
    fork = forked_node(c, first, tip - first + 2)
    with served(fork) as url:
        refused = witness(c, "--node", url, "--once")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith(f"height {first + 1}: {url} serves a block that is not "
                                     "the one this witness verified and cosigned"), refused.stderr
    assert all(not fork.store.cosignatures(h) for h in range(1, fork.store.height + 1))
    # ... and with the honest node and the forked one together: the same refusal
    with served(fork) as url:
        refused = witness(c, "--node", nodes[0], "--node", url, "--once")
    assert refused.returncode == 1 and refused.stderr.startswith(f"height {first + 1}: ")

    # 4. restarted against the honest nodes: the saved cosignatures are posted
    again = witness(c, "--node", nodes[0], "--node", nodes[1], "--once")
    assert again.returncode == 0, again.stderr
    for url in nodes:
        assert me in cosigners(url, tip)
    assert time.monotonic() - started < 90


def test_witness_follows_new_blocks_and_stops_on_sigterm(cluster: Cluster) -> None:
    c = cluster
    me = read_key_file(c.dir / "witnesses" / "witness1.pem").public.hex()
    with LedgerClient(c.url(0), identity=read_key_file(c.dir / "clients" / "demo.pem")) as client:
        submit(client, 1)
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "witness", "--node", c.url(2), "--node",
             c.url(3), "--genesis", str(c.dir / "genesis.json"), "--identity",
             str(c.dir / "witnesses" / "witness1.pem"), "--state",
             str(c.dir / "witness1.state")],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            tip = submit(client, 2)
            c.wait_height(2, tip)
            c.wait_height(3, tip)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(
                    me in cosigners(c.url(i), tip) for i in (2, 3)):
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.2)
            assert me in cosigners(c.url(2), tip) and me in cosigners(c.url(3), tip)
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert f"witness: stopped at height {tip}" in out
