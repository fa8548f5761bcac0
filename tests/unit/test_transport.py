"""The validators' peer transport: real sockets on 127.0.0.1, one event loop per test."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ledger.crypto import PrivateKey
from ledger.encoding import packb
from ledger.genesis import Genesis
from node.transport import PeerNetwork
from node.transport.framing import HEADER, encode_frame, read_frame
from node.transport.handshake import (
    PROTOCOL,
    Hello,
    make_auth,
    parse_auth,
    verify_auth,
)
from tests.factory import make_fixture

FX = make_fixture()
G = FX.genesis
KEYS = FX.validator_keys
HOST = "127.0.0.1"

pytestmark = pytest.mark.timeout(60)


@dataclass
class Node:
    """A PeerNetwork with an inbox of what it received, per peer, in arrival order, and
    the peers whose links came up (``on_link``), in order."""

    net: PeerNetwork
    inbox: defaultdict[int, list[bytes]]
    links: list[int]


class Cluster:
    """Starts networks and stops them all at teardown."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.extra: list[PeerNetwork] = []

    async def start(self, index: int, peers: dict[int, int] | None = None, *,
                    key: PrivateKey | None = None, genesis: Genesis = G, port: int = 0,
                    **kw: Any) -> Node:
        inbox: defaultdict[int, list[bytes]] = defaultdict(list)

        links: list[int] = []

        def on_message(peer: int, payload: bytes) -> None:
            inbox[peer].append(payload)

        def on_link(peer: int) -> None:
            assert peer in net.connected()  # a link is usable as it is announced
            links.append(peer)

        net = PeerNetwork(genesis=genesis, key=key or KEYS[index], listen=(HOST, port),
                          peers={i: (HOST, p) for i, p in (peers or {}).items()},
                          on_message=on_message, on_link=on_link, **kw)
        node = Node(net, inbox, links)
        await net.start()
        if key is None and genesis is G:
            self.nodes[index] = node
        self.extra.append(net)
        return node

    async def mesh(self, indexes: Iterable[int] = range(4), **kw: Any) -> dict[int, Node]:
        """Start in descending index order: each node dials only the higher (started) ones."""
        out: dict[int, Node] = {}
        for i in sorted(indexes, reverse=True):
            out[i] = await self.start(i, {j: out[j].net.port for j in out}, **kw)
        await until(lambda: all(n.net.connected() == sorted(set(out) - {i})
                                for i, n in out.items()))
        return out

    async def stop_all(self) -> None:
        for net in self.extra:
            await net.stop()


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        await c.stop_all()


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# -- a hand-written peer that speaks (or breaks) the protocol over a raw socket -------------


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.nonce = os.urandom(32)

    @classmethod
    async def connect(cls, port: int, rcvbuf: int | None = None) -> RawPeer:
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection(HOST, port)
            return cls(reader, writer)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(self, payload: bytes) -> None:
        await self.send(encode_frame(payload))

    async def frame(self) -> bytes | None:
        return await asyncio.wait_for(read_frame(self.reader, 64 << 20), 5)

    async def hello(self, key: PrivateKey, *, genesis_hash: bytes = G.hash,
                    chain: str = G.chain_id) -> Hello | None:
        """Send our hello (the dialer speaks first); the node's hello, or None if it closed
        the connection instead of answering."""
        await self.send_frame(Hello(chain, genesis_hash, key.public, self.nonce).to_wire())
        data = await self.frame()
        return None if data is None else Hello.from_wire(data)

    async def authenticate(self, key: PrivateKey) -> None:
        """The dialer's side of the handshake: hello, our signature, then the node's."""
        theirs = await self.hello(key)
        assert theirs is not None
        await self.send_frame(make_auth(key, G.hash, local_nonce=self.nonce,
                                        remote_nonce=theirs.nonce, remote_pubkey=theirs.pubkey))
        sig = parse_auth(await self.frame() or b"")
        verify_auth(G.hash, sig, local_nonce=self.nonce, remote_nonce=theirs.nonce,
                    local_pubkey=key.public, remote_pubkey=theirs.pubkey)

    async def closed_by_node(self, timeout: float = 3.0) -> bool:
        """True once the node closes the connection (frames it sends first are skipped)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest_asyncio.fixture
async def raw_peers() -> AsyncIterator[list[RawPeer]]:
    peers: list[RawPeer] = []
    try:
        yield peers
    finally:
        for p in peers:
            await p.close()


# -- the tests ----------------------------------------------------------------------------


def test_hello_bytes_are_the_documented_array() -> None:
    nonce = bytes(range(32))
    hello = Hello(G.chain_id, G.hash, KEYS[0].public, nonce)
    assert hello.to_wire() == packb([PROTOCOL, G.chain_id, G.hash, KEYS[0].public, nonce])
    assert Hello.from_wire(hello.to_wire()) == hello
    sig = parse_auth(make_auth(KEYS[0], G.hash, local_nonce=nonce, remote_nonce=b"r" * 32,
                               remote_pubkey=KEYS[1].public))
    message = b"ledger.p2p.v1\x00" + packb([G.hash, b"r" * 32, nonce, KEYS[0].public,
                                            KEYS[1].public])
    assert KEYS[0].sign(message) == sig


def test_a_key_that_is_not_a_validator_makes_a_follower_that_dials_no_one() -> None:
    """A joining node's key is in no configuration it knows yet: it has no rank, dials
    nobody and is dialed by the validators once they accept its key."""
    net = PeerNetwork(genesis=G, key=FX.outsider, listen=(HOST, 0),
                      peers={i: (HOST, 1000 + i) for i in range(4)},
                      on_message=lambda p, b: None)
    assert net.index is None and net.dial_targets == {}
    assert net.accepted() == {k.public for k in KEYS}


@pytest.mark.asyncio
async def test_full_mesh_delivers_broadcast_and_send_in_order(cluster: Cluster) -> None:
    nodes = await cluster.mesh()
    for i, node in nodes.items():
        assert node.net.connected() == [j for j in range(4) if j != i]
    for k in range(200):
        for i, node in nodes.items():
            node.net.broadcast(f"{i}:{k}".encode())
        if k % 50 == 0:
            await asyncio.sleep(0)
    await until(lambda: all(len(n.inbox[j]) == 200 for i, n in nodes.items()
                            for j in nodes if j != i))
    for i, node in nodes.items():
        assert i not in node.inbox
        for j in nodes:
            if j != i:
                assert node.inbox[j] == [f"{j}:{k}".encode() for k in range(200)]

    assert nodes[0].net.send(3, b"direct") is True
    assert nodes[3].net.send(1, b"back") is True
    await until(lambda: nodes[3].inbox[0][-1:] == [b"direct"]
                and nodes[1].inbox[3][-1:] == [b"back"])
    assert nodes[1].inbox[0][-1] != b"direct" and nodes[2].inbox[0][-1] != b"direct"
    assert nodes[0].net.send(0, b"self") is False
    assert nodes[0].net.stats["frames_out"] == 3 * 200 + 1
    assert nodes[3].net.stats["frames_in"] == 3 * 200 + 1
    with pytest.raises(ValueError):
        nodes[0].net.send(1, b"")
    with pytest.raises(ValueError):
        nodes[0].net.broadcast(b"")


@pytest.mark.asyncio
async def test_large_payloads_arrive_intact(cluster: Cluster) -> None:
    nodes = await cluster.mesh([0, 1])
    big = [os.urandom(5 * 1024 * 1024), os.urandom(3 * 1024 * 1024 + 7)]
    for payload in big:
        assert nodes[0].net.send(1, payload)
    nodes[1].net.broadcast(big[1])
    await until(lambda: len(nodes[1].inbox[0]) == 2 and len(nodes[0].inbox[1]) == 1, 10)
    assert nodes[1].inbox[0] == big
    assert nodes[0].inbox[1] == [big[1]]


@pytest.mark.asyncio
async def test_a_key_outside_the_validator_set_is_refused(
        cluster: Cluster, raw_peers: list[RawPeer], caplog: pytest.LogCaptureFixture) -> None:
    node = await cluster.start(3)
    raw = await RawPeer.connect(node.net.port)
    raw_peers.append(raw)
    with caplog.at_level(logging.WARNING, "node.transport"):
        # The node closes without a word (no hello, no nonce, no signature) for an unknown key.
        assert await raw.hello(FX.outsider) is None
    assert node.net.stats["rejected_handshakes"] == 1
    assert node.net.connected() == []
    assert "not a validator" in caplog.text


@pytest.mark.asyncio
async def test_a_wrong_genesis_hash_is_refused(cluster: Cluster,
                                               raw_peers: list[RawPeer]) -> None:
    node = await cluster.start(3)
    raw = await RawPeer.connect(node.net.port)
    raw_peers.append(raw)
    assert await raw.hello(KEYS[0], genesis_hash=bytes(32)) is None
    assert node.net.stats["rejected_handshakes"] == 1

    # A whole node built on another genesis (same keys, other chain) never links either.
    other = make_fixture(chain="other-chain").genesis
    stranger = await cluster.start(0, {3: node.net.port}, genesis=other,
                                   key=KEYS[0], backoff_max=0.2)
    # The node refuses its hello without answering; the stranger sees the link closed.
    await until(lambda: stranger.net.stats["failed_handshakes"] >= 2
                and node.net.stats["rejected_handshakes"] >= 3)
    assert node.net.connected() == [] and stranger.net.connected() == []


@pytest.mark.asyncio
async def test_a_replayed_handshake_signature_is_refused(
        cluster: Cluster, raw_peers: list[RawPeer], caplog: pytest.LogCaptureFixture) -> None:
    node = await cluster.start(3)
    # A genuine session of validator 0, recorded by an eavesdropper.
    genuine = await RawPeer.connect(node.net.port)
    raw_peers.append(genuine)
    theirs = await genuine.hello(KEYS[0])
    assert theirs is not None
    captured_auth = make_auth(KEYS[0], G.hash, local_nonce=genuine.nonce,
                              remote_nonce=theirs.nonce, remote_pubkey=KEYS[3].public)
    await genuine.send_frame(captured_auth)
    assert await genuine.frame() is not None  # the node's signature, sent after ours verified
    await until(lambda: node.net.connected() == [0])
    await genuine.close()
    await until(lambda: node.net.connected() == [])

    # The attacker replays the same hello and signature; the node chose a fresh nonce.
    replay = await RawPeer.connect(node.net.port)
    raw_peers.append(replay)
    replay.nonce = genuine.nonce
    with caplog.at_level(logging.WARNING, "node.transport"):
        fresh = await replay.hello(KEYS[0])
        assert fresh is not None and fresh.nonce != theirs.nonce
        await replay.send_frame(captured_auth)
        # Closed without the node's signature: an unauthenticated peer never obtains one.
        assert await replay.frame() is None
    assert node.net.connected() == []
    assert node.net.stats["rejected_handshakes"] == 1
    assert "signature does not verify" in caplog.text


@pytest.mark.asyncio
async def test_garbage_and_oversized_frames_drop_only_that_peer(
        cluster: Cluster, raw_peers: list[RawPeer]) -> None:
    nodes = await cluster.mesh([1, 2, 3], max_frame=1 << 20)
    target = nodes[3].net

    garbage = await RawPeer.connect(target.port)  # garbage instead of a hello
    raw_peers.append(garbage)
    await garbage.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await garbage.closed_by_node()
    junk_hello = await RawPeer.connect(target.port)  # a well-framed hello that is not msgpack
    raw_peers.append(junk_hello)
    await junk_hello.send_frame(b"\xc1\xc1\xc1")
    assert await junk_hello.closed_by_node()
    assert target.stats["rejected_handshakes"] == 2

    # After authenticating: an announced frame beyond max_frame, then a zero-length frame.
    for bad in (HEADER.pack((1 << 20) + 1), HEADER.pack(0)):
        raw = await RawPeer.connect(target.port)
        raw_peers.append(raw)
        await raw.authenticate(KEYS[0])
        await until(lambda: 0 in target.connected())
        await raw.send(bad)
        assert await raw.closed_by_node()
        await until(lambda: 0 not in target.connected())
    assert target.stats["protocol_errors"] == 2
    assert target.stats["disconnects"] == 2

    # Opaque garbage inside a well-formed frame is just a payload for the layer above.
    raw = await RawPeer.connect(target.port)
    raw_peers.append(raw)
    await raw.authenticate(KEYS[0])
    await raw.send_frame(b"\x00\xff garbage")
    await until(lambda: nodes[3].inbox[0] == [b"\x00\xff garbage"])

    # The node keeps working with the others.
    nodes[1].net.broadcast(b"still here")
    await until(lambda: nodes[3].inbox[1] == [b"still here"]
                and nodes[2].inbox[1] == [b"still here"])
    assert target.connected() == [0, 1, 2]


@pytest.mark.asyncio
async def test_a_silent_peer_is_dropped_after_the_handshake_timeout(
        cluster: Cluster, raw_peers: list[RawPeer], caplog: pytest.LogCaptureFixture) -> None:
    node = await cluster.start(3, handshake_timeout=0.3)
    raw = await RawPeer.connect(node.net.port)
    raw_peers.append(raw)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "node.transport"):
        assert await raw.closed_by_node(timeout=3)
    assert 0.25 < time.monotonic() - started < 2
    assert node.net.stats["rejected_handshakes"] == 1
    assert "timed out" in caplog.text


@pytest.mark.asyncio
async def test_policy_one_link_per_pair(cluster: Cluster, raw_peers: list[RawPeer]) -> None:
    nodes = await cluster.mesh([1, 3])
    # An inbound link from a higher index is refused: the lower node dials it.
    higher = await RawPeer.connect(nodes[1].net.port)
    raw_peers.append(higher)
    assert await higher.hello(KEYS[3]) is None
    assert nodes[1].net.stats["rejected_handshakes"] == 1
    # A second connection claiming a linked validator's key but not proving it (hello, then
    # a bad signature) leaves the live link alone; the existing link keeps working.
    dup = await RawPeer.connect(nodes[3].net.port)
    raw_peers.append(dup)
    assert await dup.hello(KEYS[1]) is not None
    await dup.send_frame(make_auth(KEYS[2], G.hash, local_nonce=dup.nonce,
                                   remote_nonce=bytes(32), remote_pubkey=KEYS[3].public))
    assert await dup.closed_by_node()
    assert nodes[3].net.stats["rejected_handshakes"] == 1
    assert nodes[3].net.connected() == [1]
    assert nodes[3].net.send(1, b"ok")
    await until(lambda: nodes[1].inbox[3] == [b"ok"])


@pytest.mark.asyncio
async def test_the_dialer_checks_it_reached_the_key_it_dialed(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    two = await cluster.start(2)
    with caplog.at_level(logging.WARNING, "node.transport"):
        zero = await cluster.start(0, {1: two.net.port}, backoff_max=0.2)  # 1's address is 2's
        await until(lambda: zero.net.stats["rejected_handshakes"] >= 2)
    assert zero.net.connected() == [] and two.net.connected() == []
    assert "dialed validator 1 but reached validator 2" in caplog.text


@pytest.mark.asyncio
async def test_a_restarted_peer_is_reconnected_and_messages_flow(cluster: Cluster) -> None:
    nodes = await cluster.mesh()
    port = nodes[1].net.port
    await nodes[1].net.stop()
    await until(lambda: all(n.net.connected() == [j for j in (0, 2, 3) if j != i]
                            for i, n in nodes.items() if i != 1))
    assert nodes[0].net.send(1, b"lost") is False
    await asyncio.sleep(0.3)  # node 0's dialer is backing off meanwhile

    again = await cluster.start(1, {2: nodes[2].net.port, 3: nodes[3].net.port}, port=port)
    nodes[1] = again
    await until(lambda: all(n.net.connected() == [j for j in range(4) if j != i]
                            for i, n in nodes.items()))
    nodes[0].net.send(1, b"hello again")
    again.net.broadcast(b"back")
    await until(lambda: again.inbox[0] == [b"hello again"]
                and all(nodes[i].inbox[1][-1:] == [b"back"] for i in (0, 2, 3)))
    assert nodes[0].net.stats["disconnects"] == 1
    assert nodes[0].net.stats["dial_failures"] >= 1
    # each link coming up was announced (on_link), the one to node 1 twice
    assert nodes[0].links.count(1) == 2 and sorted(again.links) == [0, 2, 3]
    assert nodes[0].net.stats["handler_errors"] == again.net.stats["handler_errors"] == 0


@pytest.mark.asyncio
async def test_a_peer_that_never_reads_only_loses_its_oldest_frames(
        cluster: Cluster, raw_peers: list[RawPeer]) -> None:
    limit = 8
    nodes = await cluster.mesh([2, 3], queue_limit=limit)
    net = nodes[3].net
    stuck = await RawPeer.connect(net.port, rcvbuf=4096)  # authenticates, then never reads
    raw_peers.append(stuck)
    await stuck.authenticate(KEYS[0])
    await until(lambda: net.connected() == [0, 2])

    payload = b"x" * 65536
    slowest = 0.0
    for k in range(600):  # ~39 MB: far beyond what the socket buffers can hold
        started = time.perf_counter()
        net.broadcast(payload[:-8] + k.to_bytes(8, "big"))
        slowest = max(slowest, time.perf_counter() - started)
        assert net.queue_length(0) <= limit
        await asyncio.sleep(0)
    assert slowest < 0.25  # never blocks on the stuck peer (it would block forever)
    assert net.stats["dropped_full_queue"] > 0
    assert net.queue_length(0) == limit
    assert net.connected() == [0, 2]  # slow is not dead

    # The healthy peer is unaffected: the last frames arrive, in order.
    await until(lambda: nodes[2].inbox[3][-1:] == [payload[:-8] + (599).to_bytes(8, "big")], 10)
    seq = [int.from_bytes(p[-8:], "big") for p in nodes[2].inbox[3]]
    assert seq == sorted(seq)

    await stuck.close()
    await until(lambda: net.connected() == [2])
    assert net.queue_length(0) == 0 and net.send(0, b"gone") is False


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ledger-p2p")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.asyncio
async def test_links_over_tls(cluster: Cluster, tmp_path: Path,
                              raw_peers: list[RawPeer]) -> None:
    cert, key = _self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    nodes = await cluster.mesh([0, 1, 2], ssl_server=server, ssl_client=client)
    big = os.urandom(2 * 1024 * 1024)
    nodes[0].net.broadcast(big)
    nodes[2].net.send(1, b"over tls")
    await until(lambda: nodes[1].inbox[0] == [big] and nodes[2].inbox[0] == [big]
                and nodes[1].inbox[2] == [b"over tls"])
    # A plaintext client cannot even start the handshake.
    plain = await RawPeer.connect(nodes[2].net.port)
    raw_peers.append(plain)
    await plain.send_frame(Hello(G.chain_id, G.hash, KEYS[0].public, plain.nonce).to_wire())
    assert await plain.closed_by_node()
    assert nodes[2].net.connected() == [0, 1]


@pytest.mark.asyncio
async def test_unauthenticated_connections_are_capped(cluster: Cluster,
                                                      raw_peers: list[RawPeer]) -> None:
    node = await cluster.start(3, handshake_timeout=10)
    node.net.max_pending_handshakes = 2
    node.net.max_pending_per_source = 2
    for _ in range(3):
        raw_peers.append(await RawPeer.connect(node.net.port))
        await asyncio.sleep(0.05)
    # The third connection replaced the oldest pending one, which was closed unread.
    assert await raw_peers[0].closed_by_node()
    assert not await raw_peers[1].closed_by_node(timeout=0.1)
    assert node.net.stats["evicted_handshakes"] == 1
    await raw_peers[2].authenticate(KEYS[0])  # a pending slot still completes normally
    await until(lambda: node.net.connected() == [0])
    assert node.net.stats["rejected_handshakes"] == 0


# -- flood resistance, replacement and backoff (issue 11, item 6) --------------------------


async def _connect_from(source: str, port: int) -> RawPeer:
    """A raw connection to 127.0.0.1 whose source address is ``source`` (any 127.x works on
    Linux loopback), to play a second host."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (HOST, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return RawPeer(reader, writer)


async def _silent_flood(ports: Callable[[], list[int]], per_port: int, stop: asyncio.Event,
                        opened: list[int]) -> None:
    """Hold ``per_port`` silent connections to each port, reopening each one the node closes
    after a short pause (bounded: at most per_port / 0.05 connections per second and port)."""

    async def slot(index: int) -> None:
        while not stop.is_set():
            port = ports()[index % len(ports())]
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            opened[0] += 1
            async def until_closed(r: asyncio.StreamReader = reader) -> None:
                with contextlib.suppress(OSError):
                    while await r.read(4096):  # whatever the node says, say nothing
                        pass

            closed = asyncio.ensure_future(until_closed())
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait((closed, stopped), return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                stopped.cancel()
                writer.transport.abort()
            await asyncio.sleep(0.05)

    await asyncio.gather(*(slot(k) for k in range(per_port * len(ports()))))


@pytest.mark.asyncio
async def test_a_restarted_peer_links_up_while_every_port_is_flooded(cluster: Cluster) -> None:
    nodes = await cluster.mesh()
    stop, opened = asyncio.Event(), [0]
    flood = asyncio.create_task(_silent_flood(
        lambda: [n.net.port for n in nodes.values()], 100, stop, opened))
    try:
        await asyncio.sleep(1.0)  # 400 silent connections, every pending slot taken
        port = nodes[1].net.port
        await nodes[1].net.stop()
        started = time.monotonic()
        nodes[1] = await cluster.start(1, {2: nodes[2].net.port, 3: nodes[3].net.port},
                                       port=port)
        await until(lambda: all(n.net.connected() == [j for j in range(4) if j != i]
                                for i, n in nodes.items()), timeout=20)
        linked = time.monotonic() - started
        nodes[1].net.broadcast(b"back")
        await until(lambda: all(nodes[i].inbox[1][-1:] == [b"back"] for i in (0, 2, 3)))
    finally:
        stop.set()
        await flood
    evicted = sum(n.net.stats.get("evicted_handshakes", 0) for n in nodes.values())
    print(f"linked in {linked:.2f} s under a flood of {opened[0]} silent connections "
          f"({evicted} pending handshakes evicted)")
    assert evicted > 0 and opened[0] > 400


@pytest.mark.asyncio
async def test_the_listener_says_nothing_before_the_dialers_hello(
        cluster: Cluster, raw_peers: list[RawPeer]) -> None:
    node = await cluster.start(3)
    raw = await RawPeer.connect(node.net.port)
    raw_peers.append(raw)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await raw.reader.read(1)
    theirs = await raw.hello(KEYS[0])  # now it answers, with a fresh nonce
    assert theirs is not None and theirs.pubkey == KEYS[3].public


@pytest.mark.asyncio
async def test_no_signature_work_before_a_hello_names_an_accepted_validator(
        cluster: Cluster, raw_peers: list[RawPeer], monkeypatch: pytest.MonkeyPatch) -> None:
    import node.transport.network as network

    calls = {"verify": 0, "sign": 0}
    real_verify, real_make = verify_auth, make_auth

    def counting_verify(*a: Any, **kw: Any) -> None:
        calls["verify"] += 1
        real_verify(*a, **kw)

    def counting_make(*a: Any, **kw: Any) -> bytes:
        calls["sign"] += 1
        return real_make(*a, **kw)

    monkeypatch.setattr(network, "verify_auth", counting_verify)
    monkeypatch.setattr(network, "make_auth", counting_make)
    node = await cluster.start(2, handshake_timeout=0.5)
    node.net.disconnect(0, "misbehaved", backoff_s=30)
    hellos: list[tuple[PrivateKey, bytes, str]] = [
        (FX.outsider, G.hash, G.chain_id), (KEYS[3], G.hash, G.chain_id),  # unknown, higher
        (KEYS[0], G.hash, G.chain_id),  # backed off
        (KEYS[1], bytes(32), G.chain_id), (KEYS[1], G.hash, "other")]  # other chain
    for key, genesis_hash, chain in hellos:
        raw = await RawPeer.connect(node.net.port)
        raw_peers.append(raw)
        assert await raw.hello(key, genesis_hash=genesis_hash, chain=chain) is None
    silent = await RawPeer.connect(node.net.port)
    raw_peers.append(silent)
    assert await silent.closed_by_node(timeout=3)
    garbage = await RawPeer.connect(node.net.port)
    raw_peers.append(garbage)
    await garbage.send(HEADER.pack(4000))  # beyond MAX_HELLO: refused before the body
    assert await garbage.closed_by_node()
    assert calls == {"verify": 0, "sign": 0}
    assert node.net.stats["rejected_handshakes"] == len(hellos) + 2
    # A hello naming an accepted validator with a bad signature costs one verification
    # and obtains no signature.
    bad = await RawPeer.connect(node.net.port)
    raw_peers.append(bad)
    assert await bad.hello(KEYS[1]) is not None
    await bad.send_frame(packb([bytes(64)]))
    assert await bad.frame() is None
    assert calls == {"verify": 1, "sign": 0}


@pytest.mark.asyncio
async def test_pending_handshakes_are_bounded_per_source(cluster: Cluster,
                                                         raw_peers: list[RawPeer]) -> None:
    node = await cluster.start(3, handshake_timeout=10)
    net = node.net
    net.max_pending_per_source, net.max_pending_handshakes = 3, 5
    other = [await _connect_from("127.0.0.2", net.port) for _ in range(2)]
    raw_peers.extend(other)
    flood = []
    for _ in range(12):  # one source floods: it only ever replaces its own
        flood.append(await RawPeer.connect(net.port))
        await asyncio.sleep(0.02)
    raw_peers.extend(flood)
    for raw in flood[:-3]:
        assert await raw.closed_by_node(timeout=2)
    for raw in [*other, *flood[-3:]]:
        assert not await raw.closed_by_node(timeout=0.05)
    assert net.stats["evicted_handshakes"] == 9
    # The other host's pending handshake completes; an honest dialer sharing the flooder's
    # address replaces the flooder's oldest silent connection and links too.
    await other[0].authenticate(KEYS[0])
    honest = await RawPeer.connect(net.port)
    raw_peers.append(honest)
    await honest.authenticate(KEYS[1])
    await until(lambda: net.connected() == [0, 1])
    assert await flood[-3].closed_by_node(timeout=2)
    # At the global limit, a newcomer replaces the oldest of the source holding the most.
    more = [await _connect_from("127.0.0.3", net.port) for _ in range(3)]
    raw_peers.extend(more)
    assert not await other[1].closed_by_node(timeout=0.1)
    for raw in more:
        assert not await raw.closed_by_node(timeout=0.05)
    assert await flood[-2].closed_by_node(timeout=2)


@pytest.mark.asyncio
async def test_a_validator_connecting_again_replaces_its_stale_link(
        cluster: Cluster, raw_peers: list[RawPeer]) -> None:
    node = await cluster.start(3)
    stale = await RawPeer.connect(node.net.port)  # a half-open link: never closed by "us"
    raw_peers.append(stale)
    await stale.authenticate(KEYS[0])
    await until(lambda: node.net.connected() == [0])
    fresh = await RawPeer.connect(node.net.port)  # validator 0 restarted and dials again
    raw_peers.append(fresh)
    await fresh.authenticate(KEYS[0])
    assert await stale.closed_by_node()
    assert node.net.connected() == [0]
    assert node.net.send(0, b"to the new link")
    assert await fresh.frame() == b"to the new link"
    assert node.net.stats["connects"] == 2


@pytest.mark.asyncio
async def test_disconnect_with_backoff_refuses_and_stops_dialing_for_that_long(
        cluster: Cluster, raw_peers: list[RawPeer], caplog: pytest.LogCaptureFixture) -> None:
    nodes = await cluster.mesh([0, 1, 2], backoff_initial=0.05, backoff_max=0.2)
    with pytest.raises(ValueError):
        nodes[1].net.disconnect(0, "x", backoff_s=-1)
    with caplog.at_level(logging.INFO, "node.transport"):
        # Node 1 backs off 0 (which dials it) and 2 (which it dials) for 1.5 s.
        nodes[1].net.disconnect(0, "flooded us", backoff_s=1.5)
        nodes[1].net.disconnect(2, "flooded us", backoff_s=1.5)
        started = time.monotonic()
        await until(lambda: nodes[1].net.connected() == [])
        await asyncio.sleep(1.0)
        assert nodes[1].net.connected() == [] and 0 < nodes[1].net.backoff_remaining(0) < 1
        assert nodes[0].net.stats["failed_handshakes"] >= 2  # 0 kept trying, was refused
        assert nodes[2].net.stats["connects"] == 2  # nobody dialed 2 from node 1 meanwhile
        await until(lambda: nodes[1].net.connected() == [0, 2], timeout=5)
    assert time.monotonic() - started >= 1.4
    assert "is backed off" in caplog.text and "not dialing validator 2" in caplog.text
    assert nodes[1].net.backoff_remaining(0) == 0


@pytest.mark.asyncio
async def test_silent_connections_to_a_tls_port_neither_linger_nor_block_a_dialer(
        cluster: Cluster, tmp_path: Path, raw_peers: list[RawPeer]) -> None:
    cert, key = _self_signed(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    one = await cluster.start(1, ssl_server=server, ssl_client=client, handshake_timeout=1)
    for _ in range(20):  # silent TCP clients: they never start TLS
        raw_peers.append(await RawPeer.connect(one.net.port))
    started = time.monotonic()
    zero = await cluster.start(0, {1: one.net.port}, ssl_server=server, ssl_client=client)
    await until(lambda: zero.net.connected() == [1] and one.net.connected() == [0])
    assert time.monotonic() - started < 2
    assert zero.net.send(1, b"over tls, past the silent ones")
    await until(lambda: one.inbox[0] == [b"over tls, past the silent ones"])
    for raw in raw_peers:  # the TLS handshake timeout (= handshake_timeout) closes them
        assert await raw.closed_by_node(timeout=3)
    assert time.monotonic() - started < 4


@pytest.mark.asyncio
async def test_a_frame_to_an_idle_link_goes_to_the_socket_without_the_writer_task(
        cluster: Cluster) -> None:
    """A frame sent to a link with nothing queued and nothing buffered is handed to the
    transport at once (one loop iteration sooner than the writer task, and not after
    whatever the sender's task does before it yields); frames sent while one is buffered
    queue behind it, and the peer reads every frame in the order sent, whichever path it
    took, and every link's sockets have Nagle off."""
    nodes = await cluster.mesh([0, 1])
    net = nodes[0].net
    link = net._links[1]
    sock = link.writer.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    woken: list[int] = []
    real_set = link.wakeup.set

    def counting_set() -> None:
        woken.append(len(link.queue))
        real_set()

    link.wakeup.set = counting_set  # type: ignore[method-assign]
    assert net.send(1, b"first")  # idle link: straight to the transport
    assert not woken and not link.queue
    transport = link.writer.transport
    real_size = transport.get_write_buffer_size
    transport.get_write_buffer_size = lambda: 1  # type: ignore[method-assign]  # as if buffered
    try:
        assert net.send(1, b"second")  # queued behind it, for the writer task
        assert woken == [1] and len(link.queue) == 1
    finally:
        transport.get_write_buffer_size = real_size  # type: ignore[method-assign]
    net.broadcast(b"third")  # the queue is not empty: behind "second", never before it
    assert len(link.queue) == 2
    await until(lambda: nodes[1].inbox[0] == [b"first", b"second", b"third"])
    for k in range(50):
        net.send(1, f"{k}".encode())
        if k % 7 == 0:
            await asyncio.sleep(0)
    await until(lambda: len(nodes[1].inbox[0]) == 53)
    assert nodes[1].inbox[0][3:] == [f"{k}".encode() for k in range(50)]
    assert net.stats["frames_out"] == 53
