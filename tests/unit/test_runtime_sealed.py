"""Sealed payloads between four real nodes in one event loop (``tests/memnet.py``): pairs
travel with record gossip and are stored in each block's own write; a proposal's sealed
records all have their pair in the proposer's mempool; a node that missed the gossip asks
its peers on the PAYLOADS channel (``node.payloads``) and gets every pair; answers that do
not match, or requests over the limits, are misbehaviour."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from pathlib import Path

from ledger.consensus import Proposal, decode_message
from ledger.consensus.messages import UndecodedCompactProposal, decode_frame
from ledger.encoding import packb
from ledger.errors import LedgerError
from ledger.records import Record, SealedPayload, seal_record
from node.payloads import MAX_WANT, PAYLOADS, have_frame, want_frame
from node.runtime import CONSENSUS, RECORDS
from tests.unit.test_runtime_inprocess import FX, Cluster, N, committed, run, until

_nonces = itertools.count(5_000_000)


def sealed(count: int) -> list[tuple[Record, SealedPayload]]:
    out = []
    for _ in range(count):
        nonce = next(_nonces)
        out.append(seal_record(FX.writer, chain=FX.genesis.chain_id, type="sensor.reading",
                               subject="oven", payload={"recipe": f"secret {nonce}"},
                               ts=time.time_ns() // 1_000_000, nonce=nonce))
    return out


def items(pairs: list[tuple[Record, SealedPayload]]) -> list[tuple[bytes, bytes, bytes]]:
    return [(r.envelope, p.salt, p.payload) for r, p in pairs]


def test_pairs_reach_every_node_with_gossip_and_proposals_hold_theirs(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    tap = cluster.net.tap
    checked: list[int] = []
    unheld: list[str] = []

    def proposals_hold_their_pairs(src: int, dst: int, payload: bytes) -> None:
        assert tap is not None
        tap(src, dst, payload)
        if payload[0] != CONSENSUS or src not in cluster.nodes:
            return
        try:
            message = decode_message(payload[1:])
            frame = decode_frame(payload[1:])
        except LedgerError:
            return
        node = cluster.nodes[src]
        # a fresh proposal (no polka round: not a re-proposal of a valid value; not yet
        # committed by its proposer): built by reap, in whatever round a busy machine
        # reaches
        if (not isinstance(message, Proposal) or message.pol_round != -1
                or message.height <= node.store.height):
            return
        records = message.records
        if isinstance(frame, UndecodedCompactProposal):  # named by id: the proposer's
            records = tuple(s if isinstance(s, Record) else node.pending(s) or s
                            for s in frame.slots())
            assert all(isinstance(r, Record) for r in records), "named, not pending"
        for r in records:
            assert isinstance(r, Record)
            if r.body.sealed:
                checked.append(1)
                if node.pending_pair(r.id) is None:
                    unheld.append(r.id.hex())

    cluster.net.tap = proposals_hold_their_pairs

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        batch = sealed(30)
        results = await nodes[0].submit(items(batch[:20]))
        results += await nodes[2].submit(items(batch[20:]))
        assert [r.status for r in results] == ["accepted"] * 30
        assert nodes[0].pending_pair(batch[0][0].id) == batch[0][1]
        await committed(nodes, [r for r, _ in batch])
        want = {r.id: p for r, p in batch}
        for n in nodes:
            assert n.store.payloads(want) == want
            assert n.store.missing_payloads() == []
            assert n.payload_sync.fetched == 0  # all came with the gossip

    run(cluster, body)
    assert checked and unheld == []


def test_a_node_that_missed_the_gossip_fetches_the_pairs_from_its_peers(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.net.drop = lambda src, dst, payload: dst == 3 and payload[0] == RECORDS  # type: ignore[method-assign]
    # node 3 reads whole proposals only (as a node from before compact proposals): a compact
    # one would fetch the records it missed, pairs and all, from the proposer
    cluster.configs[3].compact_proposals = False

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        reasons: list[str] = []
        for n in nodes:
            scored = n._misbehaved

            def note(peer: int, reason: str, weight: float, scored=scored) -> None:  # type: ignore[no-untyped-def]
                reasons.append(reason)
                scored(peer, reason, weight)

            n._misbehaved = note  # type: ignore[method-assign]
        batch = sealed(300)  # more than one WANT's worth
        for start in range(0, 300, 100):
            results = await nodes[0].submit(items(batch[start:start + 100]))
            assert [r.status for r in results] == ["accepted"] * 100
        await committed(nodes, [r for r, _ in batch])
        want = {r.id: p for r, p in batch}
        late = nodes[3]
        try:
            await until(lambda: late.store.payloads(want) == want, "node 3 to fetch the pairs")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: it holds {len(late.store.payloads(want))} of 300, "
                                 f"backing off {len(late.payload_sync.tries)}; {reasons}"
                                 ) from exc
        assert late.payload_sync.fetched == 300
        assert 'ledger_payload_pairs_total{how="fetched"} 300' in late.metrics_text()
        assert late.store.missing_payloads() == []
        # the next scan finds nothing below the tip missing: later scans start there
        late.payload_sync.nudge()
        await until(lambda: late.payload_sync.floor == late.store.log.size - 1,
                    "node 3's scan floor to reach the tip")
        assert sum(n.payload_sync.served for n in nodes[:3]) >= 300
        assert sum(n.metrics.payload_pairs.get("served", 0) for n in nodes[:3]) >= 300
        # (a loaded machine may make consensus score a peer; payloads never do here)
        assert not [r for r in reasons if "payload" in r], reasons

    run(cluster, body)


def test_bad_payload_frames_are_misbehaviour_and_unasked_answers_are_not_taken(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.net.drop = lambda src, dst, payload: dst == 3 and payload[0] == RECORDS  # type: ignore[method-assign]
    # node 3 reads whole proposals only (as a node from before compact proposals): a compact
    # one would fetch the records it missed, pairs and all, from the proposer
    cluster.configs[3].compact_proposals = False

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        fetcher = nodes[3]._payload_fetch  # node 3 lacks the pair and does not fetch it
        assert fetcher is not None
        fetcher.cancel()
        (rec, pair), = sealed(1)
        assert [r.status for r in await nodes[0].submit(items([(rec, pair)]))] == ["accepted"]
        await committed(nodes, [rec])
        node = nodes[1]
        # A HAVE nobody asked for: not taken, not misbehaviour (it may be late).
        node.on_frame(0, have_frame([(rec.id, SealedPayload(os.urandom(32), b"\x01"))]))
        assert not node.misbehaviour
        # A WANT of more than MAX_WANT ids: malformed (disconnects the sender).
        node.on_frame(2, want_frame([os.urandom(32) for _ in range(MAX_WANT + 1)]))
        assert node.misbehaviour.get(2) == 1
        # An answer, asked for, whose pair does not match: misbehaviour, nothing stored.
        lost = node.store.payloads([rec.id])
        assert lost == {rec.id: pair}
        other = nodes[3]
        future: asyncio.Future[set[bytes]] = asyncio.get_running_loop().create_future()
        other.payload_sync.waiting[0] = ({rec.id}, future)
        other.on_frame(0, have_frame([(rec.id, SealedPayload(pair.salt, b"\xc0"))]))
        assert await asyncio.wait_for(future, 10) == set()
        assert other.misbehaviour.get(0) == 1 and other.store.payloads([rec.id]) == {}
        future = asyncio.get_running_loop().create_future()
        other.payload_sync.waiting[1] = ({rec.id}, future)
        other.on_frame(1, have_frame([(rec.id, pair)]))  # the right one is stored
        assert await asyncio.wait_for(future, 10) == {rec.id}
        assert other.store.payloads([rec.id]) == {rec.id: pair}
        # An unknown kind on the channel, and an unknown channel: dropped, lightly scored.
        node.on_frame(0, bytes([PAYLOADS, 9]) + b"x")
        node.on_frame(0, bytes([7]) + b"a newer peer's channel")
        assert node.misbehaviour.get(0) == 1
        assert node.scores.score(0, time.monotonic()) < 10

    run(cluster, body)


def test_redacted_ids_are_never_served_nor_asked_for_and_the_scrub_retries(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.net.drop = lambda src, dst, payload: dst == 3 and payload[0] == RECORDS  # type: ignore[method-assign]
    # node 3 reads whole proposals only (as a node from before compact proposals): a compact
    # one would fetch the records it missed, pairs and all, from the proposer
    cluster.configs[3].compact_proposals = False

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        fetcher = nodes[3]._payload_fetch
        assert fetcher is not None
        fetcher.cancel()
        (rec, pair), = sealed(1)
        assert [r.status for r in await nodes[0].submit(items([(rec, pair)]))] == ["accepted"]
        await committed(nodes, [rec])
        scrubs: list[bool] = []

        def scrub(rebuild: bool = True) -> bool:  # readers block the first two checkpoints
            scrubs.append(len(scrubs) >= 2)
            return scrubs[-1]

        nodes[0].store.scrub = scrub  # type: ignore[method-assign]
        # As on a redaction's commit (the store deleted the pair; here it still holds it,
        # so what keeps it from leaving is the node's own filter).
        for n in nodes[:3]:
            n.payload_sync.redacted_ids([rec.id])
        assert await nodes[3].payload_sync.fetch([rec.id]) == set()
        assert nodes[3].store.payloads([rec.id]) == {}
        assert sum(n.payload_sync.served for n in nodes[:3]) == 0
        await until(lambda: scrubs == [False, False, True], "the scrub to be retried")
        nodes[3].payload_sync.redacted_ids([rec.id])  # and the asker does not ask again
        sent: list[bytes] = []
        cluster.net.tap = lambda src, dst, payload: sent.append(payload) if src == 3 else None
        assert await nodes[3].payload_sync.fetch([rec.id]) == set()
        assert not [p for p in sent if p[0] == PAYLOADS]

    run(cluster, body)


def test_ids_nobody_has_are_retried_with_a_doubling_backoff_not_in_a_hot_loop() -> None:
    from node.payloads import RETRY_FIRST_S, RETRY_MAX_S, PayloadSync

    sync = PayloadSync(None, 101.0)  # type: ignore[arg-type]
    asked: list[list[bytes]] = []

    async def nobody_has(ids: list[bytes]) -> set[bytes]:  # every peer answered, without
        asked.append(ids)
        sync.answered = True
        return set()

    sync.fetch = nobody_has  # type: ignore[method-assign]
    ids = [os.urandom(32) for _ in range(MAX_WANT + 10)]

    async def body() -> None:
        await sync._fetch_due(ids)
        assert [len(a) for a in asked] == [MAX_WANT, 10]  # at most MAX_WANT per WANT
        await sync._fetch_due(ids)  # again at once: all are backing off, none asked
        assert len(asked) == 2
        first = {rid: due for rid, (_, due) in sync.tries.items()}
        for rid in ids:  # as if their time had come: asked again, the backoff doubled
            failed, _ = sync.tries[rid]
            sync.tries[rid] = (failed, 0.0)
        await sync._fetch_due(ids)
        assert len(asked) == 4
        for rid in ids:
            failed, due = sync.tries[rid]
            assert failed == 2 and due - first[rid] >= RETRY_FIRST_S * 0.9
        sync.tries[ids[0]] = (40, 0.0)
        await sync._fetch_due(ids[:1])
        assert sync.tries[ids[0]][1] - time.monotonic() <= RETRY_MAX_S

        async def no_answer(ids: list[bytes]) -> set[bytes]:  # every ask timed out
            asked.append(ids)
            return set()

        sync.fetch = no_answer  # type: ignore[method-assign]
        fresh = [os.urandom(32) for _ in range(3)]
        for _ in range(3):  # a busy peer is not "nobody has it": no doubling
            for rid in fresh:
                sync.tries[rid] = (sync.tries.get(rid, (0, 0.0))[0], 0.0)
            await sync._fetch_due(fresh)
        for rid in fresh:
            failed, due = sync.tries[rid]
            assert failed == 0 and due - time.monotonic() <= RETRY_FIRST_S

    asyncio.run(body())


def test_gossip_of_a_sealed_record_without_its_matching_pair_is_misbehaviour(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        node = cluster.nodes[1]
        (a, _), (b, pb) = sealed(2)
        frame = bytes([RECORDS]) + packb([a.envelope, [b.envelope, pb.salt, b"\xc0"]])
        node.on_frame(2, frame)
        await until(lambda: node.misbehaviour.get(2) == 1, "the gossip to be judged")
        assert node.pending(a.id) is None and node.pending(b.id) is None

    run(cluster, body)


def test_a_pair_of_good_msgpack_under_another_digest_gossiped_to_a_peer_is_refused_there(
        tmp_path: Path) -> None:
    """The peer checks the pair itself (the fast verdict says "no", the rule names the
    fault): a well-formed payload that is not the one the digest covers, or the right one
    with another salt, is refused at that peer (misbehaviour), nothing pending."""
    cluster = Cluster(tmp_path)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        node = cluster.nodes[1]
        (a, pa), (b, pb) = sealed(2)
        frame = bytes([RECORDS]) + packb([[a.envelope, pa.salt, packb({"v": 2})],
                                          [b.envelope, bytes(32), pb.payload]])
        node.on_frame(2, frame)
        await until(lambda: node.misbehaviour.get(2) == 1, "the gossip to be judged")
        assert node.pending(a.id) is None and node.pending(b.id) is None

    run(cluster, body)
