"""Four real nodes in one event loop (issue 12, "build apart from run").

Each is a ``node.runtime.Node`` built from its parts — the real ``ConsensusCore``, mempool
and a ``SqliteStore`` in ``tmp_path`` — and started without an API over the in-memory
transport of ``tests/memnet.py``: no sockets, no processes. The tests check that the nodes
commit identical blocks, that a node's signing state is durably written before any
proposal or vote it signs leaves it (and that the check notices a runtime that broadcasts
first), and that a node stopped and built again from its files resumes and catches up.

The signing-order check reads a journal per validator, in the order things happened:
``("persist", state)`` once ``Node.persist_signing_state`` has returned (the file written
and fsynced), and ``("send", message)`` as a frame carrying a proposal or vote signed by
that validator is handed to the network (``MemNet.tap``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.consensus import (
    NO_RESERVATION,
    Action,
    Broadcast,
    CommitBlock,
    Message,
    PersistState,
    Proposal,
    SignedVote,
    SigningState,
    decode_message,
    in_reservation,
)
from ledger.crypto import write_key_file
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from ledger.records import Record
from ledger.store import SqliteStore
from node.config import NodeConfig
from node.files import SlotFile, read_slots
from node.runtime import CONSENSUS, GroupCommit, Node
from tests.factory import ChainBuilder, make_fixture
from tests.memnet import MemNet

FX = make_fixture()
N = len(FX.genesis.validators)
# Short timeouts: the nodes share one loop and nothing is slow but the fsyncs. Small sync
# batches: a node ten heights behind catches up over several requests.
TIMEOUTS = {"timeout_propose_ms": 300, "timeout_commit_ms": 30, "resend_ms": 300,
            "sync_retry_ms": 200, "sync_batch": 4}
WAIT_S = 60.0  # bound on any one wait; generous for a busy 2-core machine
_nonces = itertools.count(1)

Journal = list[tuple[str, Any]]


class SigningOrderViolation(AssertionError):
    """A signed message left a node before a signing state covering it was on disk."""


def signed_step(message: Message) -> tuple[int, int, int] | None:
    """(height, round, step) of a proposal or vote, None for other messages."""
    if isinstance(message, Proposal):
        return message.height, message.round, 0
    if isinstance(message, SignedVote):
        return message.vote.height, message.vote.round, message.vote.kind
    return None


def signer(message: Message) -> int | None:
    if isinstance(message, Proposal):
        return message.proposer
    if isinstance(message, SignedVote):
        return message.validator
    return None


def check_signing_order(journal: Journal) -> tuple[int, int]:
    """Every signed message sent must be covered by a signing state written before it:
    one whose ``last_signed`` is at or above the message's (height, round, step) and whose
    own messages include it, or the newest one written to the file (not in a block's
    transaction: a store may be lost, the file is kept), if it reserves that step
    (``SigningState.reserved``: a restart refuses the step); and no two different messages
    are signed for one step (across restarts: the journal spans them). Returns the number
    of sends checked and how many of them only a reservation covered; raises
    SigningOrderViolation at the first that is not covered."""
    highest: tuple[int, int, int] = (-1, -1, -1)
    reserved: tuple[int, int, int] = NO_RESERVATION
    persisted: set[bytes] = set()
    signed: dict[tuple[int, int, int], bytes] = {}
    checked = by_reservation = 0
    grouped = False
    for i, (kind, item) in enumerate(journal):
        if kind == "grouped":
            grouped = True
            continue
        if kind == "persist":
            state: SigningState = item
            highest = max(highest, state.last_signed)
            if not grouped:  # a row of the store does not survive its loss: the file's
                reserved = state.reserved
            grouped = False
            persisted.update(m.sig for m in state.messages)
            continue
        step = signed_step(item)
        assert step is not None
        if signed.setdefault(step, item.sig) != item.sig:
            raise SigningOrderViolation(f"entry {i}: a second, different message for {step}")
        if step > highest and in_reservation(step, reserved):
            checked += 1
            by_reservation += 1
            continue
        if step > highest or item.sig not in persisted:
            raise SigningOrderViolation(
                f"entry {i}: {type(item).__name__} at {step} sent, but the signing state "
                f"on disk covers only up to {highest}"
                + ("" if item.sig in persisted else " and does not hold it"))
        checked += 1
    return checked, by_reservation


class RecordingNode(Node):
    """A node that notes, in ``journal``, each signing state once it is durably written."""

    journal: Journal | None = None

    async def persist_signing_state(self, state: SigningState,
                                    commit: CommitBlock | None = None) -> None:
        await super().persist_signing_state(state, commit)
        if self.journal is not None:
            if commit is not None:  # in the block's transaction: the store's row only
                self.journal.append(("grouped", None))
            self.journal.append(("persist", state))


class BroadcastFirst(RecordingNode):
    """A broken runtime: each signing state is written only after the broadcast that
    should have followed it."""

    held: PersistState | None = None

    async def _execute(self, action: Action | GroupCommit) -> None:
        if isinstance(action, PersistState):
            self.held = action
            return
        await super()._execute(action)
        if isinstance(action, Broadcast) and self.held is not None:
            held, self.held = self.held, None
            await super()._execute(held)


class Cluster:
    """N nodes' files under ``root``, one MemNet, and the journals."""

    def __init__(self, root: Path, kinds: dict[int, type[RecordingNode]] | None = None,
                 *, empty_blocks: bool = True) -> None:
        doc = json.loads(FX.genesis.raw)
        doc["consensus"] = TIMEOUTS | {"create_empty_blocks": empty_blocks}
        self.genesis = Genesis.from_bytes(json.dumps(doc, indent=2).encode())
        (root / "genesis.json").write_bytes(self.genesis.raw)
        self.kinds = kinds or {}
        self.configs: list[NodeConfig] = []
        for i in range(N):
            d = root / f"node{i}"
            d.mkdir()
            write_key_file(d / "node.pem", FX.validator_keys[i])
            self.configs.append(NodeConfig(
                dir=d, index=i, api=("127.0.0.1", 0), p2p=("127.0.0.1", 0),
                genesis_path=root / "genesis.json", key_path=d / "node.pem",
                store_path=d / "chain.db"))
        self.net = MemNet(N)
        self.net.tap = self._tap
        self.journals: dict[int, Journal] = {i: [] for i in range(N)}
        self.nodes: dict[int, RecordingNode] = {}

    def _tap(self, src: int, dst: int, payload: bytes) -> None:
        if payload[0] != CONSENSUS:
            return
        try:
            message = decode_message(payload[1:])
        except LedgerError:
            return  # a block response (its own layout): nothing signed by the sender
        if signer(message) == src:
            self.journals[src].append(("send", message))

    def from_parts(self, i: int) -> RecordingNode:
        """Node ``i`` built from parts: genesis and key in hand, a fresh SqliteStore."""
        cls = self.kinds.get(i, RecordingNode)
        cfg = self.configs[i]
        node = cls(cfg, self.genesis, FX.validator_keys[i],
                   SqliteStore(cfg.store_path, genesis_hash=self.genesis.hash))
        node.journal = self.journals[i]
        return node

    def from_files(self, i: int) -> RecordingNode:
        """Node ``i`` as ``ledger node run`` builds it: genesis, key, store, signing state
        and evidence read from its files."""
        node = self.kinds.get(i, RecordingNode).from_config(self.configs[i])
        assert isinstance(node, RecordingNode)
        node.journal = self.journals[i]
        return node

    async def start(self, node: RecordingNode) -> None:
        await node.start(self.net.factory, api=False)
        self.nodes[node.config.index] = node

    async def stop(self, i: int) -> None:
        await self.nodes.pop(i).stop()

    async def stop_all(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes.values()))
        self.nodes.clear()

    def errors(self) -> list[BaseException]:
        return [e for t in self.net.transports.values() for e in t.errors]


def new_record() -> Record:
    nonce = next(_nonces)
    return Record.create(FX.writer, chain=FX.genesis.chain_id, type="sensor.reading",
                         subject="plant-7/line-3/temp", payload={"v": nonce, "unit": "C"},
                         ts=time.time_ns() // 1_000_000, nonce=nonce)


async def submit(node: Node, count: int) -> list[Record]:
    records = [new_record() for _ in range(count)]
    results = await node.submit([r.envelope for r in records])
    assert [r.status for r in results] == ["accepted"] * count, results
    return records


async def committed(nodes: list[RecordingNode], records: list[Record]) -> int:
    """Wait until every record is committed on every node (in its store); the highest
    height holding one."""
    def heights() -> list[int | None]:
        return [None if (loc := n.store.locate(r.id)) is None else loc.height
                for n in nodes for r in records]

    await until(lambda: None not in heights(), f"{len(records)} records on {len(nodes)} nodes")
    return max(h for h in heights() if h is not None)


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def same_blocks(nodes: list[RecordingNode]) -> int:
    """Every node holds the same block (header and records; each keeps the commit
    certificate it gathered, which may hold other precommits) at every height up to the
    lowest tip; that tip."""
    top = min(n.store.height for n in nodes)
    for h in range(1, top + 1):
        blocks = [n.store.block(h) for n in nodes]
        assert all(b is not None for b in blocks)
        assert len({(b.hash, tuple(r.id for r in b.records)) for b in blocks if b}) == 1, (
            f"height {h}: the nodes hold different blocks")
    return top


def run(cluster: Cluster, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await body()
        finally:
            await cluster.stop_all()

    asyncio.run(main())
    assert cluster.errors() == []


def kinds_sent(journal: Journal) -> set[int]:
    return {s[2] for k, m in journal if k == "send" and (s := signed_step(m)) is not None}


# -- the tests ----------------------------------------------------------------------------

def test_four_nodes_commit_identical_blocks_and_persist_before_signing(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        records = [r for i, n in enumerate(nodes) for r in await submit(n, 10 + i)]
        height = await committed(nodes, records)
        await until(lambda: min(n.store.height for n in nodes) >= height + 2, "more heights")
        assert same_blocks(nodes) >= height
        ids = {r.id for n in nodes[:1] for h in range(1, n.store.height + 1)
               for r in n.store.block(h).records}  # type: ignore[union-attr]
        assert {r.id for r in records} <= ids

    run(cluster, body)
    reserved_sends = 0
    for i in range(N):
        journal = cluster.journals[i]
        checked, by_reservation = check_signing_order(journal)
        assert checked > 0
        reserved_sends += by_reservation
        assert kinds_sent(journal) == {0, 1, 2}  # proposals, prevotes and precommits
        # The file holds the last state the journal saw written (stop() copies it there
        # when a block's transaction kept it: GroupCommit).
        last = [s for k, s in journal if k == "persist"][-1]
        assert read_slots(cluster.configs[i].signing_state_path).payload == last.to_wire()
    # round-0 proposals left with no write of their own, covered by the reservation of the
    # state their proposer wrote at the height before (one a height, bar rounds > 0)
    assert reserved_sends > 0


def test_the_check_catches_a_runtime_that_broadcasts_before_persisting(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, kinds={0: BroadcastFirst})

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        await until(lambda: min(n.store.height for n in nodes) >= N + 1, f"height {N + 1}")
        same_blocks(nodes)

    run(cluster, body)
    with pytest.raises(SigningOrderViolation, match="sent, but the signing state"):
        check_signing_order(cluster.journals[0])
    for i in range(1, N):
        assert check_signing_order(cluster.journals[i])[0] > 0


def test_a_node_stopped_and_built_again_from_its_files_resumes_and_catches_up(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        first = await submit(cluster.nodes[0], 20)
        await committed(list(cluster.nodes.values()), first)

        kept = cluster.nodes[3].store.height
        await cluster.stop(3)  # a clean stop: the store is closed, the node is gone
        assert cluster.net.transports.keys() == {0, 1, 2}
        stopped_at = max(n.store.height for n in cluster.nodes.values())
        second = await submit(cluster.nodes[1], 20)  # three of four keep committing
        behind = await committed(list(cluster.nodes.values()), second)
        await until(lambda: cluster.nodes[0].store.height >= stopped_at + 10,
                    "ten heights without node 3")

        again = cluster.from_files(3)
        assert again.store.height == kept  # what it had committed is kept
        # a clean stop wrote its state without the reservation it did not use: the node
        # built again refuses nothing beyond what it signed (its next round-0 proposal)
        assert again.core.last_signed[0] >= 1
        assert not again.core.refused > again.core.last_signed
        await cluster.start(again)
        await until(lambda: again.store.height >= cluster.nodes[0].store.height - 1,
                    "node 3 to catch up")
        assert again.store.height >= behind
        await committed([again], second)
        # ... and it takes part again: it signs precommits of heights after its restart.
        restarted = again.store.height
        third = await submit(again, 10)
        await committed(list(cluster.nodes.values()), third)
        await until(lambda: any(
            k == "send" and isinstance(m, SignedVote) and m.vote.kind == 2
            and m.vote.height > restarted for k, m in cluster.journals[3]), "node 3 to sign")
        same_blocks(list(cluster.nodes.values()))

    run(cluster, body)
    for i in range(N):
        assert check_signing_order(cluster.journals[i])[0] > 0


class GatedNode(RecordingNode):
    """Its signing-state writes wait for ``gate`` once ``hold`` is set."""

    hold = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def persist_signing_state(self, state: SigningState,
                                    commit: CommitBlock | None = None) -> None:
        if self.hold:
            self.waiting.set()
            await self.gate.wait()
        await super().persist_signing_state(state, commit)


def test_stop_lets_the_event_under_way_finish_then_closes_everything(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, kinds={0: GatedNode})

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        node = cluster.nodes[0]
        assert isinstance(node, GatedNode)
        await until(lambda: node.store.height >= 2, "height 2")
        closed: list[bool] = []
        close = node.store.close
        node.store.close = lambda: (closed.append(True), close())[-1]  # type: ignore[method-assign]
        node._persist_evidence()  # a flush pending (due in a second) when it stops
        assert not node.evidence_path.exists()
        node.hold = True
        await asyncio.wait_for(node.waiting.wait(), WAIT_S)  # mid-event: a write under way
        writes = sum(k == "persist" for k, _ in cluster.journals[0])
        serving = asyncio.create_task(node.serve())
        stopping = asyncio.create_task(cluster.stop(0))
        await asyncio.sleep(0.3)
        assert not stopping.done()  # it waits for the write, it does not cut it short
        node.gate.set()
        await asyncio.wait_for(stopping, WAIT_S)
        await asyncio.wait_for(serving, WAIT_S)  # serve() returns once the loop has ended
        # the write under way, then the clean stop's: the same state without the reservation
        # of a proposal it did not sign (Node._final_signing_state)
        states = [s for k, s in cluster.journals[0] if k == "persist"]
        assert len(states) == writes + 2
        assert states[-1].last_signed == states[-2].last_signed
        assert states[-2].reserved > states[-1].reserved == NO_RESERVATION
        assert closed == [True]
        assert node.evidence_path.exists()  # the pending flush was written, not lost
        assert 0 not in cluster.net.transports and not node._timers and not node._tasks
        assert node._consensus is not None and node._consensus.done()
        await node.stop()  # a second stop does nothing
        assert closed == [True]
        with pytest.raises(RuntimeError, match="starts once"):
            await node.start(cluster.net.factory, api=False)
        others = list(cluster.nodes.values())  # the three others go on without it
        height = min(n.store.height for n in others)
        await until(lambda: min(n.store.height for n in others) >= height + 2, "3 nodes on")

    run(cluster, body)
    for i in range(N):
        check_signing_order(cluster.journals[i])


def test_four_nodes_stopped_right_after_starting_stop(tmp_path: Path) -> None:
    """A stop a fraction of a second after the start hung forever before: the sealed-payload
    loop (``PayloadSync.run``) kept turning after its cancellation was swallowed, and stop
    awaited it without a bound."""
    for attempt in range(3):
        (tmp_path / str(attempt)).mkdir()
        cluster = Cluster(tmp_path / str(attempt))

        async def body(cluster: Cluster = cluster) -> None:
            for i in range(N):
                await cluster.start(cluster.from_parts(i))
            await asyncio.sleep(0.1)
            nodes = list(cluster.nodes.values())
            await asyncio.wait_for(cluster.stop_all(), WAIT_S)
            assert all(n._payload_fetch is not None and n._payload_fetch.done()
                       for n in nodes)

        asyncio.run(body())
        assert cluster.errors() == []


def test_a_partition_without_quorum_stalls_and_heals_over_a_lossy_network(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    cluster.net.loss = 0.05  # of every frame, throughout

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        await until(lambda: min(n.store.height for n in nodes) >= 2, "height 2")
        cluster.net.partition([0, 1], [2, 3])  # two of four: no side has a quorum
        await asyncio.sleep(0.2)  # what was in flight lands
        stalled = max(n.store.height for n in nodes)
        records = await submit(cluster.nodes[0], 10)
        await asyncio.sleep(1.0)
        assert max(n.store.height for n in nodes) == stalled
        cluster.net.heal()
        await committed(nodes, records)
        assert same_blocks(nodes) > stalled

    run(cluster, body)
    assert cluster.net.stats["dropped"] > 0 and cluster.net.stats["partitioned"] > 0
    for i in range(N):
        check_signing_order(cluster.journals[i])


def test_a_record_admitted_while_unlinked_reaches_the_peers_once_they_link(
        tmp_path: Path) -> None:
    """A record a node admitted while it had no link (say, just restarted) is gossiped to
    each peer when its link comes up (the gossip at admission reached nobody). On a chain
    without empty blocks nothing else would carry it: the others would never start the
    height, and the record would wait for its node's turn to propose forever."""
    cluster = Cluster(tmp_path, empty_blocks=False)

    # node 1's consensus frames are lost: its own proposals cannot carry the records
    cluster.net.drop = lambda src, dst, payload: src == 1 and payload[0] == CONSENSUS

    async def body() -> None:
        alone = cluster.from_parts(1)
        await cluster.start(alone)
        records = await submit(alone, 3)  # linked to nobody: its gossip goes nowhere
        for i in (0, 2, 3):
            await cluster.start(cluster.from_parts(i))
        await committed([cluster.nodes[i] for i in (0, 2, 3)], records)

    run(cluster, body)


def test_a_crash_after_a_group_commit_restarts_from_the_state_kept_with_the_block(
        tmp_path: Path) -> None:
    """What a crash right after a ``GroupCommit`` leaves: the file holds the prevote's
    state, the store block 1 and, in its transaction, the precommit's. The node built from
    its files takes the precommit's (it never signs at or below it again) and copies it
    into the file, so replacing the store afterwards cannot lose it."""
    cluster = Cluster(tmp_path)
    cfg = cluster.configs[0]
    key = FX.validator_keys[0].public

    def at(step: int) -> SigningState:
        return SigningState(1, (1, 0, step), 0, -1, None, -1, None)

    SlotFile(cfg.signing_state_path).write(at(1).to_wire())
    with SqliteStore(cfg.store_path, genesis_hash=cluster.genesis.hash) as store:
        builder = ChainBuilder(dataclasses.replace(FX, genesis=cluster.genesis), store)
        store.append(builder.block([builder.record()]), signing_state=(key, at(2).to_wire()))
    node = Node.from_config(cfg)
    try:
        assert node.store.height == 1
        assert node.core.last_signed == (1, 0, 2)
        assert read_slots(cfg.signing_state_path).payload == at(2).to_wire()
    finally:
        node.store.close()


class FailingNode(RecordingNode):
    """Its signing-state file writes fail (a full or failing disk) once ``fail`` is set."""

    fail = False

    async def persist_signing_state(self, state: SigningState,
                                    commit: CommitBlock | None = None) -> None:
        if self.fail and commit is None:
            raise OSError(28, "No space left on device")
        await super().persist_signing_state(state, commit)


def test_a_consensus_loop_ended_by_a_failed_write_is_not_a_clean_stop(tmp_path: Path) -> None:
    """A write that fails ends the consensus loop (nothing it would cover is sent); the
    stop that follows is not clean: the core is ahead of what was written, and a stop that
    took it for clean wrote again (``Node._final_signing_state``) on the disk that just
    failed, and raised before closing the transport and the store."""
    cluster = Cluster(tmp_path, kinds={0: FailingNode})

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        node = cluster.nodes[0]
        assert isinstance(node, FailingNode)
        await until(lambda: node.store.height >= 2, "height 2")
        closed: list[bool] = []
        close = node.store.close
        node.store.close = lambda: (closed.append(True), close())[-1]  # type: ignore[method-assign]
        writes = sum(k == "persist" for k, _ in cluster.journals[0])
        node.fail = True
        loop = node._consensus
        assert loop is not None
        await asyncio.wait_for(asyncio.wait([loop]), WAIT_S)  # the next write fails
        assert isinstance(loop.exception(), OSError)
        await cluster.stop(0)  # does not raise
        assert closed == [True] and 0 not in cluster.net.transports
        assert sum(k == "persist" for k, _ in cluster.journals[0]) == writes

    run(cluster, body)
