"""A hostile validator-keyed peer floods real nodes with garbage and far-future messages:
the nodes drop it all, stay healthy and keep committing with bounded memory."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from ledger.blocks import Vote
from ledger.client import LedgerClient
from ledger.consensus import SignedVote, encode_message
from ledger.crypto import read_key_file
from ledger.genesis import Genesis
from node.transport import PeerNetwork
from tests.integration.cluster_util import Cluster

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_floods_from_a_hostile_peer_are_dropped(tmp_path_factory: pytest.TempPathFactory) -> None:
    c = Cluster.create(tmp_path_factory.mktemp("peers"),
                       consensus={"create_empty_blocks": False})
    genesis = Genesis.load(c.dir / "genesis.json")
    key3 = read_key_file(c.dir / "node3" / "node.pem")
    for i in range(3):  # node3 is played by the attacker below
        c.start(i)
    for i in range(3):
        c.wait_healthy(i)
    rss_before = max(rss_mb(c.procs[i].pid) for i in range(3))

    async def attack() -> int:
        net = PeerNetwork(genesis=genesis, key=key3, listen=("127.0.0.1", c.base_port + 103),
                          peers={}, on_message=lambda peer, data: None)
        await net.start()
        deadline = time.monotonic() + 20
        while len(net.connected()) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(net.connected()) == 3, "the honest nodes did not connect to the attacker"
        sent = 0
        for k in range(6000):
            vote = SignedVote.sign(Vote(genesis.chain_id, 1, 10**6 + k, 0, None), 3, key3)
            net.broadcast(bytes([0]) + encode_message(vote))          # far-future heights
            net.broadcast(bytes([0]) + os.urandom(64))                # garbage messages
            net.broadcast(bytes([7]) + b"unknown channel")
            net.broadcast(bytes([1]) + b"\x91\xc4\x03bad")            # garbage records
            sent += 4
            if k % 200 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(2)
        await net.stop()
        return sent

    try:
        sent = asyncio.run(attack())
        assert sent == 24000
        key = read_key_file(c.dir / "clients" / "demo.pem")
        with LedgerClient(c.url(1), identity=key) as client:
            result = client.write(type="sensor.reading", subject="after-flood", payload=1,
                                  wait=True, timeout=60)
        assert result["status"] == "accepted" and result["height"] >= 1
        for i in range(3):
            assert c.procs[i].poll() is None, c.log(i)[-2000:]
            assert "dropped a malformed message from validator 3" in c.log(i)
            assert "disconnecting validator 3" in c.log(i)
            assert "Traceback" not in c.log(i)
        rss_after = max(rss_mb(c.procs[i].pid) for i in range(3))
        assert rss_after < rss_before + 150, (rss_before, rss_after)
    finally:
        c.stop_all()
