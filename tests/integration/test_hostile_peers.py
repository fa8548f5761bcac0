"""A hostile validator-keyed peer floods real nodes with garbage and far-future messages:
the nodes drop it all, stay healthy and keep committing with bounded memory."""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import threading
import time

import httpx
import pytest

from ledger.blocks import Vote
from ledger.consensus import SignedVote, encode_message
from ledger.crypto import read_key_file
from ledger.genesis import Genesis
from node.client import LedgerClient
from node.transport import PeerNetwork
from tests.integration.cluster_util import Cluster, rss_mb

pytestmark = pytest.mark.slow


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


class SilentFlood:
    """Keeps ``per_port`` silent TCP connections open to each of ``ports`` on 127.0.0.1.

    Runs its own event loop in a thread. A connection the node closes is reopened after
    ``reconnect_s`` (bounded: at most ``per_port / reconnect_s`` connections per second and
    port), as an attacker who wants to hold every handshake slot would do. It sends nothing.
    """

    def __init__(self, ports: list[int], per_port: int = 200, reconnect_s: float = 0.5) -> None:
        self.ports = ports
        self.per_port = per_port
        self.reconnect_s = reconnect_s
        self.opened = 0
        self.open_now = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SilentFlood:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the flood did not stop"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        slots = [asyncio.create_task(self._slot(port)) for port in self.ports
                 for _ in range(self.per_port)]
        await self._stop.wait()
        for task in slots:
            task.cancel()
        await asyncio.gather(*slots, return_exceptions=True)

    async def _slot(self, port: int) -> None:
        await asyncio.sleep(random.uniform(0, self.reconnect_s))
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(self.reconnect_s)
                continue
            self.opened += 1
            self.open_now += 1
            try:
                while await reader.read(4096):  # whatever the node says, say nothing
                    pass
            except OSError:
                pass
            finally:
                self.open_now -= 1
                writer.transport.abort()
            await asyncio.sleep(self.reconnect_s)


def _log_time(line: str) -> float:
    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


def _linking_after_listen(c: Cluster, i: int) -> float:
    """From node ``i``'s log: seconds from its last "listening for peers" to its last link."""
    lines = c.log(i).splitlines()
    start = max(k for k, line in enumerate(lines) if "listening for peers" in line)
    links = [line for line in lines[start:] if ": connected to validator" in line]
    assert len(links) == c.nodes - 1, links
    return _log_time(links[-1]) - _log_time(lines[start])


def _restart_and_time_link(c: Cluster, i: int, budget: float) -> tuple[float | None, float | None]:
    """Kill and restart node ``i``; seconds from the start of its process until it links to
    all peers, and until a record written through it commits (None: not within ``budget``
    seconds)."""
    c.kill(i)
    c.start(i)
    started = time.monotonic()
    deadline = started + budget
    linked = committed = None
    while time.monotonic() < deadline and linked is None:
        try:
            peers = httpx.get(f"{c.url(i)}/v1/status", timeout=2).json()["peers"]
            if len(peers) == c.nodes - 1:
                linked = time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    if linked is None:
        return None, None
    key = read_key_file(c.dir / "clients" / "demo.pem")
    with LedgerClient(c.url(i), identity=key) as client:
        try:
            result = client.write(type="sensor.reading", subject=f"restart-{started}", payload=1,
                                  wait=True, timeout=max(1.0, deadline - time.monotonic()))
            if result["status"] == "accepted":
                committed = time.monotonic() - started
        except Exception:  # a timeout: not committed within the budget
            pass
    return linked, committed


def test_a_restarted_validator_links_up_while_peer_ports_are_flooded(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    c = Cluster.create(tmp_path_factory.mktemp("silent"),
                       consensus={"create_empty_blocks": False})
    try:
        c.start_all()
        quiet = _restart_and_time_link(c, 1, budget=30)
        quiet_listen = _linking_after_listen(c, 1)
        p2p = [c.base_port + 100 + i for i in range(c.nodes)]
        with SilentFlood(p2p) as flood:
            time.sleep(3)  # the flood holds every port's handshake slots
            held = flood.open_now
            flooded = _restart_and_time_link(c, 1, budget=30)
            flooded_listen = _linking_after_listen(c, 1) if flooded[0] is not None else None
        print(f"\nrestart without flood: linked {quiet[0]} s after the process started "
              f"({quiet_listen:.2f} s after it listened), committed {quiet[1]} s; "
              f"with {flood.per_port} silent connections per port ({held} open, "
              f"{flood.opened} opened): linked {flooded[0]} s ({flooded_listen} s after it "
              f"listened), committed {flooded[1]} s")
        assert quiet[0] is not None and quiet[1] is not None
        assert flooded[0] is not None, "the restarted validator stayed isolated"
        assert flooded[1] is not None, "nothing committed through the restarted validator"
        for i in range(c.nodes):
            assert c.procs[i].poll() is None, c.log(i)[-2000:]
            assert "Traceback" not in c.log(i)
    finally:
        c.stop_all()
