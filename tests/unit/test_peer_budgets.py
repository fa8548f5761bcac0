"""The node's per-peer defences against a Byzantine validator (issue 11 item 2), in process.

A ``node.runtime.Node`` for validator 0 of the test fixture runs on a real SQLite store,
without sockets: frames go straight into ``on_frame`` and what it sends goes to a fake
transport. Each test is one mechanism: block serving (rate, one serve at a time, stored
bytes off the loop), block responses (solicited only; sizes and certificate before
records), the misbehaviour score (disconnect with backoff, frames of a backed-off peer
dropped before decoding), proposals' budget, evidence (deduplicated and persisted).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from ledger.blocks import Block, BlockShell, Certificate, peek_cert_obj, peek_header
from ledger.consensus import (
    BlockRequest,
    BlockResponse,
    RecordEvidence,
    SendTo,
    Start,
    encode_message,
)
from ledger.consensus.messages import (
    UndecodedBlockResponse,
    decode_frame,
    encode_block_response,
)
from ledger.crypto import write_key_file
from ledger.encoding import packb
from ledger.errors import BlockError, CertificateError
from ledger.store import MemoryStore
from node import runtime
from node.config import NodeConfig
from node.peer_guard import EvidenceLog, ProposalBudget, Scores, SyncRequests, TokenBucket
from node.runtime import CONSENSUS, Node
from tests.factory import ChainBuilder
from tests.unit.consensus_helpers import FX
from tests.unit.consensus_helpers import Node as CoreNode

MiB = 2**20


class FakeTransport:
    """What the runtime calls on a PeerNetwork, recorded."""

    max_frame = 32 * MiB

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.disconnects: list[tuple[int, str, float]] = []

    def send(self, peer: int, payload: bytes) -> bool:
        self.sent.append((peer, payload))
        return True

    def broadcast(self, payload: bytes) -> None:
        for peer in (1, 2, 3):
            self.send(peer, payload)

    def disconnect(self, peer: int, reason: str, backoff_s: float = 0.0) -> None:
        self.disconnects.append((peer, reason, backoff_s))

    def connected(self) -> list[int]:
        return [1, 2, 3]

    def queue_length(self, peer: int) -> int:
        return 0


def make_node(directory: Path, blocks: int = 0, records: int = 2) -> Node:
    """Validator 0 of the fixture, with ``blocks`` committed blocks, over a fake transport."""
    directory.mkdir(parents=True, exist_ok=True)
    FX.write_genesis(directory)
    write_key_file(directory / "node.pem", FX.validator_keys[0])
    (directory / "config.json").write_text(json.dumps({
        "index": 0, "api": "127.0.0.1:1", "p2p": "127.0.0.1:2", "genesis": "genesis.json",
        "key": "node.pem", "store": "chain.db"}))
    node = Node.from_config(NodeConfig.load(directory))
    builder = ChainBuilder(FX, node.store)
    for _ in range(blocks):
        builder.add(records)
    node.core = type(node.core)(node.genesis, node.store, node.mempool, key=node.key,
                                config=node.core.config, verify=node.mempool.verify)
    node.transport = FakeTransport()  # type: ignore[assignment]
    return node


async def pump(node: Node) -> None:
    """Hand every queued event to the core and let spawned tasks finish."""
    for _ in range(50):
        while not node.events.empty():
            await node._handle(node.events.get_nowait())
        pending = [t for t in node._tasks if not t.done()]
        if not pending and node.events.empty():
            return
        await asyncio.sleep(0.01)


def frame(message: Any) -> bytes:
    return bytes([CONSENSUS]) + encode_message(message)


def transport(node: Node) -> FakeTransport:
    assert isinstance(node.transport, FakeTransport)
    return node.transport


# -- block serving ----------------------------------------------------------------------------

def test_20_block_requests_are_served_once_at_a_time_within_the_rate(tmp_path: Path) -> None:
    node = make_node(tmp_path, blocks=40)

    async def go() -> float:
        worst = 0.0
        for _ in range(20):
            node.on_frame(2, frame(BlockRequest(1)))
            started = time.perf_counter()
            await node._handle(node.events.get_nowait())
            worst = max(worst, time.perf_counter() - started)
        await pump(node)
        return worst

    worst = asyncio.run(go())
    print(f"20 BlockRequest frames: worst event {worst * 1000:.1f} ms on the loop")
    served = [p for peer, p in transport(node).sent if peer == 2]
    # one serve (16 blocks) while it was under way; the other 19 requests were dropped
    assert len(served) == node.core.config.sync_batch
    heights = [decode_frame(p[1:]) for p in served]
    assert [f.header.height for f in heights if isinstance(f, UndecodedBlockResponse)] \
        == list(range(1, 17))
    # the frames are the stored bytes, and decode to what the store holds
    first = decode_frame(served[1][1:])
    assert isinstance(first, UndecodedBlockResponse)
    response = first.decode()
    assert response.block == node.store.block(2)
    assert response.last_cert == node.store.block(1).cert


def test_block_serving_is_rate_limited_per_peer(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(runtime, "SERVE_BLOCKS_BURST", 20.0)
    monkeypatch.setattr(runtime, "SERVE_BLOCKS_PER_S", 0.001)
    node = make_node(tmp_path, blocks=40)

    async def go() -> None:
        for start in (1, 17, 33):
            node.on_frame(2, frame(BlockRequest(start)))
            await pump(node)
        node.on_frame(3, frame(BlockRequest(1)))  # another peer has its own budget
        await pump(node)

    asyncio.run(go())
    to_2 = [p for peer, p in transport(node).sent if peer == 2]
    to_3 = [p for peer, p in transport(node).sent if peer == 3]
    assert len(to_2) == 20 and len(to_3) == 16
    assert node.misbehaviour.get(2, 0) >= 1  # the request over the rate was reported


def test_block_frames_respect_the_byte_budget_and_frame_limit(tmp_path: Path) -> None:
    node = make_node(tmp_path, blocks=5, records=20)
    one = len(node.block_frames(1, 2, 10 * MiB, 32 * MiB)[0])
    assert len(node.block_frames(1, 6, 10 * MiB, 32 * MiB)) == 5
    assert len(node.block_frames(1, 6, 2 * one + 500, 32 * MiB)) == 2  # + a last_cert
    assert len(node.block_frames(1, 6, 1, 32 * MiB)) == 1  # at least one
    assert node.block_frames(1, 6, 10 * MiB, one - 1) == []


# -- block responses ----------------------------------------------------------------------

def garbage_block(height: int, records: int = 2000, size: int = 500) -> bytes:
    """Block bytes with a plausible header, envelopes that are not records, a bad cert."""
    node = CoreNode(0)
    header, _ = node.value([])
    header = type(header)(**{**header.__dict__, "height": height, "record_count": records})
    cert = Certificate(height, 0, header.hash, ((0, bytes(64)), (1, bytes(64)), (2, bytes(64))))
    return packb([header.to_obj(), [bytes([i % 256]) * size for i in range(records)],
                  cert.to_obj()])


def test_an_unsolicited_block_response_is_dropped_before_anything_is_decoded(
        tmp_path: Path, monkeypatch: Any) -> None:
    node = make_node(tmp_path)
    decoded: list[int] = []
    monkeypatch.setattr(BlockShell, "from_wire", lambda data: decoded.append(1))

    async def go() -> None:
        for height in (1, 100):
            node.on_frame(2, bytes([CONSENSUS]) + packb([4, [garbage_block(height), None]]))
        await pump(node)

    asyncio.run(go())
    # the one far ahead counts as misbehaviour; the next height might be an honest offer
    assert decoded == [] and node.misbehaviour == {2: 1} and node.events.empty()


def test_a_garbage_block_response_fails_its_certificate_before_records_are_decoded(
        tmp_path: Path, monkeypatch: Any) -> None:
    node = make_node(tmp_path)
    decoded: list[int] = []
    real = BlockShell.decode
    monkeypatch.setattr(BlockShell, "decode", lambda self, known=None: (decoded.append(1),
                                                                         real(self, known))[1])
    data = packb([4, [garbage_block(1), None]])
    print(f"garbage block response: {len(data) / MiB:.1f} MiB")

    async def go() -> None:
        node.sync_requests.asked_for(2, 1, time.monotonic())
        node.on_frame(2, bytes([CONSENSUS]) + data)
        await pump(node)
        node.sync_requests.asked_for(2, 1, time.monotonic())
        node.on_frame(2, bytes([CONSENSUS]) + data)
        await pump(node)

    asyncio.run(go())
    assert decoded == [] and node.store.height == 0
    # 60 points each: the second one went past the limit; the peer is backed off
    assert transport(node).disconnects and transport(node).disconnects[0][0] == 2
    assert transport(node).disconnects[0][2] == runtime.MISBEHAVIOUR_BACKOFF_S
    assert node.backed_off(2)


def test_a_solicited_valid_block_response_is_committed(tmp_path: Path) -> None:
    source = make_node(tmp_path / "a", blocks=3)
    node = make_node(tmp_path / "b")
    frames = source.block_frames(1, 4, 10 * MiB, 32 * MiB)

    async def go() -> None:
        node.on_frame(2, frames[0])
        await pump(node)  # not asked for: dropped
        assert node.store.height == 0
        await node._execute(SendTo(2, BlockRequest(1)))
        for f in frames:
            node.on_frame(2, f)
        await pump(node)
        for _ in range(20):  # NEW_HEIGHT timeouts commit the next synced blocks
            await asyncio.sleep(0.02)
            await pump(node)

    asyncio.run(go())
    assert node.store.height == 3
    assert node.store.block_bytes(2) == source.store.block_bytes(2)


def test_block_shell_checks_sizes_and_certificate_without_decoding_records() -> None:
    b = ChainBuilder(FX, MemoryStore(FX.genesis.hash))
    block = b.add(3)
    data = block.to_wire()
    shell = BlockShell.from_wire(data)
    kw = {"max_records": 10, "max_bytes": 10 * MiB}
    shell.check(FX.genesis.chain_id, FX.genesis.validators, **kw)
    assert shell.decode() == block == Block.from_wire(data)
    assert peek_header(data) == block.header
    assert Certificate.from_obj(peek_cert_obj(data)) == block.cert
    with pytest.raises(BlockError):
        shell.check(FX.genesis.chain_id, FX.genesis.validators, max_records=2,
                    max_bytes=10 * MiB)
    with pytest.raises(BlockError):
        shell.check(FX.genesis.chain_id, FX.genesis.validators, max_records=10, max_bytes=10)
    forged = BlockShell(shell.header, shell.envelopes,
                        Certificate(1, 0, block.hash, ((0, bytes(64)),) * 1))
    with pytest.raises(CertificateError):
        forged.check(FX.genesis.chain_id, FX.genesis.validators, **kw)
    short = BlockShell(shell.header, shell.envelopes[:2], shell.cert)
    with pytest.raises(BlockError):
        short.check(FX.genesis.chain_id, FX.genesis.validators, **kw)
    # the serving path's frame is the encoding of the decoded response
    assert encode_block_response(data, None) == encode_message(BlockResponse(block, None))


# -- misbehaviour, backoff, proposals --------------------------------------------------------

def test_a_future_round_vote_flood_gets_the_peer_disconnected_and_then_costs_nothing(
        tmp_path: Path) -> None:
    node = make_node(tmp_path)
    helper = CoreNode(0)
    votes = [frame(helper.prevote(1, r, None)) for r in range(1, 12_001)]

    async def go() -> float:
        await node._handle(Start(0))
        started = time.perf_counter()
        for v in votes:
            node.on_frame(1, v)
            while not node.events.empty():
                await node._handle(node.events.get_nowait())
        return time.perf_counter() - started

    elapsed = asyncio.run(go())
    print(f"12,000 future-round votes through the runtime: {elapsed * 1000:.0f} ms")
    assert [d[0] for d in transport(node).disconnects] == [1]
    assert node.backed_off(1)
    assert len(node.core.votes.speakers) <= 4
    assert node.dropped_peer_messages > 11_000  # dropped before decoding


def test_more_than_two_distinct_proposals_per_round_are_not_decoded(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    helper = CoreNode(0)
    proposals = [frame(helper.proposal(0)) for _ in range(5)]

    async def go() -> None:
        for p in proposals:
            node.on_frame(1, p)
        node.on_frame(1, proposals[0])  # a repeat is fine
        await pump(node)

    asyncio.run(go())
    assert node.proposal_budget.seen[(1, 1, 0)].__len__() == 2
    assert node.misbehaviour[1] >= 3
    assert len(node.core.evidence) == 1


def test_evidence_is_deduplicated_persisted_and_reloaded(tmp_path: Path,
                                                         monkeypatch: Any) -> None:
    monkeypatch.setattr(runtime, "EVIDENCE_FLUSH_S", 0.01)
    node = make_node(tmp_path)
    helper = CoreNode(0)
    a = helper.prevote(1, 0, None)
    b = helper.prevote(1, 0, b"\x01" * 32)

    async def go() -> None:
        for _ in range(3):
            await node._execute(RecordEvidence(a, b))
        await asyncio.sleep(0.1)
        await pump(node)

    asyncio.run(go())
    assert len(node.evidence) == 1
    node.store.close()
    again = Node.from_config(NodeConfig.load(tmp_path))
    assert list(again.evidence) == list(node.evidence)
    assert again.evidence[0]["validator"] == 1 and again.evidence[0]["kind"] == "prevote"


# -- the pieces ---------------------------------------------------------------------------

def test_token_bucket_refills_and_may_go_into_debt() -> None:
    bucket = TokenBucket(rate=10, burst=20)
    assert bucket.take(20, now=100.0) and not bucket.take(1, now=100.0)
    assert bucket.take(5, now=100.5)
    bucket.spend(100, now=100.5)
    assert not bucket.take(1, now=105.0) and bucket.take(1, now=111.0)


def test_scores_decay_and_report_the_crossing_once() -> None:
    scores = Scores(limit=10, decay_per_s=1)
    assert not scores.add(1, 6, now=0) and not scores.add(1, 6, now=5)  # 1 + 6
    assert scores.add(1, 6, now=5)
    assert scores.score(1, now=5) == 0


def test_sync_requests_accept_each_asked_height_once_within_the_window() -> None:
    asked = SyncRequests(batch=4, window_s=10)
    assert not asked.answer(2, 5, now=0)
    asked.asked_for(2, 5, now=0)
    assert asked.answer(2, 5, now=1) and not asked.answer(2, 5, now=1)
    assert asked.answer(2, 8, now=1) and not asked.answer(2, 9, now=1)
    assert not asked.answer(3, 6, now=1) and not asked.answer(2, 6, now=11)


def test_proposal_budget() -> None:
    budget = ProposalBudget(per_round=2, max_keys=3)
    assert all(budget.allow(1, 5, 0, s, lowest=5) for s in (b"a", b"b", b"a"))
    assert not budget.allow(1, 5, 0, b"c", lowest=5)
    assert budget.allow(1, 9, 0, b"c", lowest=5)  # not tracked: the core ignores records
    assert budget.allow(1, 6, 1, b"x", lowest=5) and budget.allow(2, 6, 1, b"x", lowest=5)
    assert budget.allow(1, 5, 2, b"y", lowest=5)
    assert not budget.allow(1, 5, 3, b"z", lowest=5)  # keys are bounded, per peer
    assert budget.allow(3, 5, 3, b"z", lowest=5)  # (one peer's keys do not bound another's)
    assert not budget.allow(2, 6, 2, b"u", lowest=5) or not budget.allow(2, 6, 3, b"v",
                                                                          lowest=5)
    assert budget.allow(1, 6, 1, b"x", lowest=6)  # pruned when the height moves


def test_evidence_log_dedups_caps_prunes_and_round_trips() -> None:
    def e(v: int, h: int, r: int = 0) -> dict[str, Any]:
        return {"kind": "prevote", "validator": v, "height": h, "round": r,
                "first": None, "second": "ab"}

    log = EvidenceLog(maxlen=3, window=10)
    assert log.record(e(1, 1)) and not log.record(e(1, 1))
    for h in (2, 3, 4):
        log.record(e(1, h))
    assert [x["height"] for x in log] == [2, 3, 4] and log.record(e(1, 1))
    assert [x["height"] for x in log] == [3, 4, 1]
    assert log.prune(14) and [x["height"] for x in log] == [4]
    log = EvidenceLog([e(1, 1), e(2, 20)], maxlen=10, window=10)
    assert log.prune(25) and [x["validator"] for x in log] == [2]
    assert not log.prune(25)
    assert list(EvidenceLog.from_bytes(log.to_bytes())) == list(log)


def test_transport_refuses_a_backed_off_validator_until_the_backoff_ends() -> None:
    from node.transport import PeerNetwork
    from node.transport.handshake import HandshakeError

    net = PeerNetwork(genesis=FX.genesis, key=FX.validator_keys[0], listen=("127.0.0.1", 0),
                      peers={}, on_message=lambda peer, data: None)
    peer = FX.genesis.validators[1].pubkey
    net.disconnect(1, "flooding", backoff_s=30)
    with pytest.raises(HandshakeError, match="backed off"):
        net._register(peer, None, None, "127.0.0.1:1", False)  # type: ignore[arg-type]
    net._backoff_until[1] = time.monotonic() - 1  # the backoff ended
    assert net.backoff_remaining(1) == 0
    net.disconnect(2, "no backoff")
    assert 2 not in net._backoff_until


def test_record_gossip_of_empty_maps_builds_nothing_and_gets_the_peer_backed_off(
        tmp_path: Path) -> None:
    """A RECORDS frame is split like an API batch: 4 MiB of empty maps builds no dicts."""
    import tracemalloc

    from node.runtime import RECORDS

    node = make_node(tmp_path)
    body = b"\xdd" + (4 * MiB).to_bytes(4, "big") + b"\x80" * (4 * MiB)
    tracemalloc.start()
    try:
        node.on_frame(1, bytes([RECORDS]) + body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # O(body): the frame is sliced (copied) on its way in; msgpack.unpackb would have built
    # 4 million dicts (~260 MB).
    assert peak < 3 * len(body)
    assert [d[0] for d in transport(node).disconnects] == [1]
    assert not node._tasks  # nothing was handed to admission


def test_a_proposal_over_the_block_limits_is_dropped_undecoded(tmp_path: Path) -> None:
    """A proposal frame larger than any valid block is refused before its records are
    decoded (they would be decoded in a worker thread, but not even there)."""
    from ledger.consensus.messages import UndecodedProposal

    node = make_node(tmp_path)
    cfg = node.core.config
    frame = UndecodedProposal(1, 0, 1, b"\0" * 64, None)
    too_big = cfg.max_block_bytes + cfg.max_block_records * 8 + 128 * 1024
    assert not node._admit_proposal(1, frame, too_big)
    assert node.misbehaviour == {1: 1}  # scored, not yet disconnected
