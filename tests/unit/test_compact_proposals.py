"""Compact proposals (issue 17): a proposal names its records by id to peers that read the
compact form; a validator rebuilds it from its mempool, fetches what it lacks within a
bounded wait, and drops it if it still lacks some (its propose timeout prevotes nil).

The wire form first (pure: ``ledger.consensus.messages``), then four real nodes in one loop
over ``tests/memnet.py`` (the harness of ``test_runtime_inprocess``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import msgpack
import nacl.bindings
import pytest

import node.runtime as runtime
from ledger import merkle
from ledger.blocks import PREVOTE, Block, build_header, sign_certificate
from ledger.consensus import Proposal, SignedVote, decode_message, encode_message
from ledger.consensus.messages import (
    RecordsRequest,
    RecordsResponse,
    UndecodedCompactProposal,
    decode_frame,
    encode_compact_proposal,
    encode_records_request,
    encode_records_response,
)
from ledger.crypto import PrivateKey
from ledger.encoding import BatchItem, packb
from ledger.errors import DecodeError
from ledger.records import Record, seal_record
from node.runtime import CONSENSUS, FEATURES, MAX_GOSSIP_TASKS, Node, RecordFetch
from tests.unit.test_runtime_inprocess import (
    FX,
    Cluster,
    N,
    RecordingNode,
    committed,
    new_record,
    run,
    same_blocks,
    until,
)

RESPONSE = bytes([CONSENSUS, 0x92, 7])  # a RecordsResponse frame starts so
ED25519_L = 2**252 + 27742317777372353535851937790883648493  # the group order


def signed_proposal(records: list[Record], round: int = 0) -> Proposal:
    g = FX.genesis
    header = build_header(chain=g.chain_id, height=1, time_ms=1_700_000_000_000,
                          prev_hash=g.hash, records=records, log=merkle.CompactRange(),
                          proposer=0, validators_hash=g.config.validators.hash)
    return Proposal.sign(g.chain_id, round, -1, header, tuple(records), 0,
                         FX.validator_keys[0])


# -- the wire form ------------------------------------------------------------------------

def test_a_compact_proposal_rebuilds_the_byte_identical_proposal_and_block() -> None:
    records = [new_record() for _ in range(60)]
    p = signed_proposal(records)
    carried = {r.id for r in records[::7]}  # the proposer thinks a peer may lack these
    body = encode_compact_proposal(p, lambda r: r.id in carried)
    full = encode_message(p)
    frame = decode_frame(body)
    assert isinstance(frame, UndecodedCompactProposal)
    assert (frame.height, frame.round, frame.proposer, frame.sig) == (1, 0, 0, p.sig)
    slots = frame.slots()
    assert [s.id if isinstance(s, Record) else s for s in slots] == [r.id for r in records]
    assert {s.id for s in slots if isinstance(s, Record)} == carried
    held = {r.id: r for r in records}  # a validator's mempool
    rebuilt = frame.assemble(tuple(s if isinstance(s, Record) else held[s] for s in slots))
    assert rebuilt == p
    assert encode_message(rebuilt) == full  # the very frame a whole proposal is
    cert = sign_certificate(FX.genesis.chain_id, p.header, 0,
                            dict(enumerate(FX.validator_keys[:3])))
    assert (Block(rebuilt.header, rebuilt.records, cert).to_wire()
            == Block(p.header, p.records, cert).to_wire())
    assert rebuilt.block_hash == p.block_hash
    # the signature covers the header, not the form: it verifies on the rebuilt proposal
    assert FX.validator_keys[0].public and rebuilt.sign_bytes() == p.sign_bytes()
    # 32 bytes (plus a 2-byte header) per record named, against its whole envelope
    named = len(records) - len(carried)
    assert len(full) - len(body) >= named * (min(len(r.envelope) for r in records) - 34)
    # what a tap or a test decodes it to: the signed part, no records
    shell = decode_message(body)
    assert isinstance(shell, Proposal) and shell.records == () and shell.sig == p.sig


def test_record_requests_and_responses_round_trip_and_are_strict() -> None:
    ids = tuple(os.urandom(32) for _ in range(3))
    req = decode_frame(encode_records_request(RecordsRequest(5, ids)))
    assert req == RecordsRequest(5, ids)
    record, pair = seal_record(FX.writer, chain=FX.genesis.chain_id, type="t", subject="s",
                               payload={"a": 1}, ts=1, nonce=1)
    items = (new_record().envelope, (record.envelope, pair.salt, pair.payload))
    resp = decode_frame(encode_records_response(RecordsResponse(5, items)))
    assert resp == RecordsResponse(5, items)
    with pytest.raises(DecodeError):  # an id is 32 bytes
        decode_frame(packb([6, [5, [os.urandom(31)]]]))
    with pytest.raises(DecodeError):  # a sealed item is [envelope, salt, payload]
        decode_frame(packb([7, [5, [[b"e", b"s"]]]]))
    with pytest.raises(DecodeError):  # not consensus messages
        decode_message(encode_records_request(RecordsRequest(5, ids)))
    # a compact proposal naming a record by a 31-byte "id" is a malformed envelope
    p = signed_proposal([new_record()])
    bad = decode_frame(packb([5, [*encode_compact_obj(p)[:5], [os.urandom(31)],
                                  *encode_compact_obj(p)[6:]]]))
    assert isinstance(bad, UndecodedCompactProposal)
    with pytest.raises(DecodeError):
        bad.slots()


def encode_compact_obj(p: Proposal) -> list[object]:
    return [p.chain, p.height, p.round, p.pol_round, p.header.to_obj(),
            [r.id for r in p.records], p.proposer, p.sig, None]


# -- four nodes ---------------------------------------------------------------------------

def compact_cluster(tmp_path: Path, *, fetch_ms: int = 150) -> Cluster:
    """Nodes that inline nothing (every record is named: the rebuild is what is tested)."""
    cluster = Cluster(tmp_path)
    for cfg in cluster.configs:
        cfg.compact_fetch_ms, cfg.compact_inline_ms = fetch_ms, 0
    return cluster


async def linked(cluster: Cluster) -> list[RecordingNode]:
    """Start the cluster's nodes; return them once each has every peer's hello."""
    for i in range(N):
        await cluster.start(cluster.from_parts(i))
    nodes = list(cluster.nodes.values())
    await until(lambda: all(len(n.peer_features) == N - 1 for n in nodes), "hellos")
    return nodes


def records_response(payload: bytes) -> bool:
    return payload[:3] == RESPONSE


def test_four_nodes_commit_identical_blocks_from_compact_proposals(tmp_path: Path) -> None:
    cluster = compact_cluster(tmp_path)

    async def body() -> None:
        nodes = await linked(cluster)
        records = [new_record() for _ in range(120)]
        for k in range(4):  # every node admits (and gossips) some
            results = await nodes[k].submit([r.envelope for r in records[k::4]])
            assert [r.status for r in results] == ["accepted"] * 30
        await committed(nodes, records)
        same_blocks(nodes)
        rebuilt = sum(n.metrics.compact_proposals.get("rebuilt", 0) for n in nodes)
        assert rebuilt >= 1
        assert sum(n.metrics.compact_proposals.get("dropped", 0) for n in nodes) == 0
        held = sum(n.metrics.compact_records.get("held", 0)
                   + n.metrics.compact_records.get("waited", 0) for n in nodes)
        assert held >= 120  # each committed record was named to (at least) three nodes
        sent = [n.metrics.peer_bytes_sent for n in nodes]
        assert sum(s.get("compact_proposal", 0) for s in sent) > 0
        text = nodes[0].metrics_text()
        assert 'ledger_peer_bytes_sent_total{kind="vote"}' in text
        assert "ledger_compact_records_total" in text

    run(cluster, body)


def test_a_validator_fetches_records_it_lacks_with_their_pairs(tmp_path: Path) -> None:
    cluster = compact_cluster(tmp_path, fetch_ms=2000)

    async def body() -> None:
        nodes = await linked(cluster)
        sealed = [seal_record(FX.writer, chain=FX.genesis.chain_id, type="sensor.reading",
                              subject="oven", payload={"recipe": k},
                              ts=time.time_ns() // 1_000_000, nonce=9_000_000 + k)
                  for k in range(20)]
        plain = [new_record() for _ in range(20)]
        items: list[BatchItem] = [*((r.envelope, p.salt, p.payload) for r, p in sealed),
                                  *(r.envelope for r in plain)]
        # node 0 alone holds them (no gossip): every other node must fetch them
        results = await nodes[0].submit(items, gossip=False)
        assert [r.status for r in results] == ["accepted"] * 40
        records = [r for r, _ in sealed] + plain
        await committed(nodes, records)
        same_blocks(nodes)
        want = {r.id: p for r, p in sealed}
        for n in nodes[1:]:
            assert n.metrics.compact_records.get("fetched", 0) >= 40
            assert n.store.payloads(want) == want  # the pairs came with the records
            assert n.payload_sync.fetched == 0
        served = sum(n.metrics.peer_bytes_sent.get("records_response", 0) for n in nodes)
        assert served > 0

    run(cluster, body)


def test_a_validator_that_cannot_fetch_a_missing_record_prevotes_nil_and_the_round_goes_on(
        tmp_path: Path) -> None:
    """Node 3 gets no RecordsResponse at all; the records are held by nodes 0-2 only. Each
    proposal naming them is dropped by node 3 when its bounded wait ends, and it prevotes
    nil; the other three are a quorum and commit the height, and node 3 then takes the
    block by block sync."""
    cluster = compact_cluster(tmp_path, fetch_ms=100)
    cluster.net.drop = lambda src, dst, payload: dst == 3 and records_response(payload)  # type: ignore[method-assign]

    async def body() -> None:
        nodes = await linked(cluster)
        records = [new_record() for _ in range(10)]
        for k in range(3):
            results = await nodes[k].submit([r.envelope for r in records], gossip=False)
            assert [r.status for r in results] == ["accepted"] * 10
        height = await committed(nodes, records)  # node 3 too, by block sync
        same_blocks(nodes)
        assert nodes[3].metrics.compact_proposals.get("dropped", 0) >= 1
        # it voted for no block it could not rebuild: any prevote it sent at that height
        # is nil (often it sends none: the three others commit before its propose timeout)
        block = nodes[0].store.block(height)
        assert block is not None
        prevotes = [m.vote for kind, m in cluster.journals[3] if kind == "send"
                    and isinstance(m, SignedVote) and m.vote.kind == PREVOTE
                    and m.vote.height == height]
        assert all(v.block_hash is None for v in prevotes), prevotes

    run(cluster, body)


def test_when_two_validators_cannot_fetch_the_round_fails_and_a_later_round_commits(
        tmp_path: Path) -> None:
    """Nodes 2 and 3 get no RecordsResponse; the records are held by nodes 0 and 1 only. A
    round proposed by 0 or 1 has no quorum (2 and 3 prevote nil) and ends; the chain goes
    on in later rounds (other proposers, other blocks). Once responses flow again the
    records commit too."""
    cluster = compact_cluster(tmp_path, fetch_ms=100)
    blocked = [True]
    cluster.net.drop = lambda src, dst, payload: (  # type: ignore[method-assign]
        blocked[0] and dst in (2, 3) and records_response(payload))

    async def body() -> None:
        nodes = await linked(cluster)
        records = [new_record() for _ in range(10)]
        for k in (0, 1):
            results = await nodes[k].submit([r.envelope for r in records], gossip=False)
            assert [r.status for r in results] == ["accepted"] * 10
        start = min(n.store.height for n in nodes)

        def later_round_committed() -> bool:
            top = min(n.store.height for n in nodes)
            return any((b := nodes[0].store.block(h)) is not None and b.cert is not None
                       and b.cert.round > 0 for h in range(start + 1, top + 1))

        await until(later_round_committed, "a height committed in a round after a failed one")
        # the two that could not rebuild a proposal prevoted nil in a failed round
        top = min(n.store.height for n in nodes)
        failed = {(h, r) for h in range(start + 1, top + 1)
                  if (b := nodes[0].store.block(h)) is not None and b.cert is not None
                  for r in range(b.cert.round)}
        for i in (2, 3):
            nil = {(m.vote.height, m.vote.round) for kind, m in cluster.journals[i]
                   if kind == "send" and isinstance(m, SignedVote)
                   and m.vote.kind == PREVOTE and m.vote.block_hash is None}
            assert nil & failed, (i, failed)
        assert all(nodes[0].store.locate(r.id) is None for r in records)
        assert all(nodes[i].metrics.compact_proposals.get("dropped", 0) >= 1 for i in (2, 3))
        blocked[0] = False
        await committed(nodes, records)
        same_blocks(nodes)

    run(cluster, body)


def test_a_peer_that_does_not_say_it_reads_compact_proposals_gets_whole_ones(
        tmp_path: Path) -> None:
    """A node from before compact proposals sends no hello (here: a node configured off);
    its peers send it whole proposals, and it sends them whole ones."""
    cluster = compact_cluster(tmp_path)
    cluster.configs[3].compact_proposals = False
    to_3: list[int] = []

    def tap(src: int, dst: int, payload: bytes) -> None:
        if dst == 3 and payload[0] == CONSENSUS:
            to_3.append(payload[2])
        if src == 3 and payload[0] == FEATURES:
            to_3.append(-1)

    cluster.net.tap = tap

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        records = [new_record() for _ in range(30)]
        results = await nodes[0].submit([r.envelope for r in records])
        assert [r.status for r in results] == ["accepted"] * 30
        await committed(nodes, records)
        same_blocks(nodes)
        assert 1 in to_3 and 5 not in to_3 and -1 not in to_3
        assert nodes[3].metrics.peer_bytes_sent.get("compact_proposal", 0) == 0
        assert all(3 not in n.peer_features for n in nodes[:3])

    run(cluster, body)


def test_a_node_only_takes_records_responses_it_asked_for(tmp_path: Path) -> None:
    """Checked on a node that is built but not started (no task could take anything)."""
    cluster = compact_cluster(tmp_path)
    node: Node = cluster.from_parts(1)
    try:
        r = new_record()
        frame = bytes([CONSENSUS]) + encode_records_response(RecordsResponse(99, (r.envelope,)))
        node.on_frame(0, frame)  # nobody asked: dropped unread, not misbehaviour
        assert not node._tasks and len(node.mempool) == 0 and not node.misbehaviour
        node.on_frame(0, bytes([FEATURES]) + packb(["compact-proposals/1", "later/2"]))
        assert node.peer_features[0] == {"compact-proposals/1", "later/2"}
        node.on_frame(2, bytes([FEATURES]) + b"\xc1")  # a malformed hello: scored
        assert node.misbehaviour.get(2) == 1 and 2 not in node.peer_features
    finally:
        node.store.close()


def other_signature(key: PrivateKey, message: bytes) -> bytes:
    """A second valid Ed25519 signature of ``message`` (a random nonce instead of RFC
    8032's derived one): what a client that signs one body twice could produce."""
    h = hashlib.sha512(key.seed()).digest()
    a = bytearray(h[:32])
    a[0] &= 248
    a[31] &= 127
    a[31] |= 64
    r = int.from_bytes(os.urandom(64), "little") % ED25519_L
    big_r = nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(r.to_bytes(32, "little"))
    k = int.from_bytes(hashlib.sha512(big_r + key.public + message).digest(), "little")
    s = (r + k * int.from_bytes(a, "little")) % ED25519_L
    return big_r + s.to_bytes(32, "little")


def test_an_id_held_with_another_envelope_is_fetched_again_from_the_proposer(
        tmp_path: Path) -> None:
    """An id is sha256(body): a client that signed one body twice left node 0 one
    envelope and the others another. Whoever proposes it, the others' rebuild misses the
    header's records_root, so they fetch every named record from the proposer and vote for
    its block: the record commits, the nodes agree."""
    cluster = compact_cluster(tmp_path, fetch_ms=2000)

    async def body() -> None:
        nodes = await linked(cluster)
        first = new_record()
        sig = other_signature(FX.writer, first.sign_bytes())
        second = Record.from_wire(packb([first.body_bytes, sig]))
        assert second.id == first.id and second.envelope != first.envelope
        assert second.has_valid_signature()
        assert [r.status for r in await nodes[0].submit([first.envelope], gossip=False)] == [
            "accepted"]
        for n in nodes[1:]:
            assert [r.status for r in await n.submit([second.envelope], gossip=False)] == [
                "accepted"]
        await committed(nodes, [first])
        same_blocks(nodes)
        assert sum(n.metrics.compact_proposals.get("refetched", 0) for n in nodes) >= 1

    run(cluster, body)


def test_a_peer_asked_once_gets_one_response_taken(tmp_path: Path) -> None:
    """A response answers one request (``_serve_records`` sends one frame per request): a
    peer asked once that sends the same response over and over gets one taken, not one
    admission task per frame (those bypass MAX_GOSSIP_TASKS: unbounded decoding and
    signature checks on a burst)."""
    cluster = compact_cluster(tmp_path)
    node: Node = cluster.from_parts(1)

    async def body() -> None:
        r = new_record()
        fetch = RecordFetch(1, {r.id})
        fetch.asked.add(0)
        fetch.requested.add(r.id)
        node._unanswered[0] = 1  # what _ask_records notes
        node._fetches[0] = [fetch]
        frame = bytes([CONSENSUS]) + encode_records_response(RecordsResponse(1, (r.envelope,)))
        for _ in range(4 * MAX_GOSSIP_TASKS):
            node.on_frame(0, frame)
        spawned = len(node._tasks)
        for task in list(node._tasks):
            task.cancel()
        await asyncio.gather(*node._tasks, return_exceptions=True)
        assert spawned == 1

    try:
        asyncio.run(body())
    finally:
        node.store.close()


class _Sent:
    """A transport that records what it sends (two linked peers)."""

    max_frame = 1 << 24

    def __init__(self) -> None:
        self.frames: list[tuple[int, bytes]] = []

    def connected(self) -> list[int]:
        return [0, 2]

    def send(self, peer: int, frame: bytes) -> bool:
        self.frames.append((peer, frame))
        return True


def test_a_compact_proposal_naming_more_records_than_a_block_holds_is_not_fetched(
        tmp_path: Path) -> None:
    """A (Byzantine) proposer names more ids than a block may hold: fetching them would
    send an honest peer a records request over the block limits, which it scores as
    misbehaviour (20 a time): the proposer would get honest validators backed off by each
    other. The proposal is refused as over the block limits, nothing is asked."""
    cluster = compact_cluster(tmp_path, fetch_ms=100)
    node: Node = cluster.from_parts(1)
    sent = _Sent()
    node.transport = sent  # type: ignore[assignment]
    node.peer_features[2] = frozenset({"compact-proposals/1"})
    limit = node.core.config.max_block_records
    kind, fields = msgpack.unpackb(
        encode_compact_proposal(signed_proposal([new_record()]), lambda _: False))
    fields[5] = [os.urandom(32) for _ in range(limit + 1)]
    frame = decode_frame(packb([kind, fields]))
    assert isinstance(frame, UndecodedCompactProposal)

    async def body() -> None:
        node.peer_backlog += 1
        await node._rebuild_proposal(0, frame)

    try:
        asyncio.run(body())
        oversized = [peer for peer, f in sent.frames if f[:3] == bytes([CONSENSUS, 0x92, 6])
                     and len(decode_frame(f[1:]).ids) > limit]  # type: ignore[union-attr]
        assert oversized == []
        assert node.misbehaviour.get(0) and node.peer_backlog == 0
    finally:
        node.store.close()


def test_a_records_response_nobody_asked_for_is_not_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dropped unread: decoding one of 8 MB of empty items took ~1.8 s of the event loop's
    CPU here, and an unasked response costs the peer no score, so any peer could stall a
    validator's loop at will."""
    cluster = compact_cluster(tmp_path)
    node: Node = cluster.from_parts(1)
    decoded: list[bytes] = []

    def counting(body: bytes) -> object:
        decoded.append(body)
        return decode_frame(body)

    monkeypatch.setattr(runtime, "decode_frame", counting)
    try:
        frame = bytes([CONSENSUS]) + encode_records_response(
            RecordsResponse(1, tuple(b"" for _ in range(1000))))
        node.on_frame(0, frame)
        assert decoded == [] and not node._tasks and not node.misbehaviour
    finally:
        node.store.close()
