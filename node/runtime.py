"""The node process: one queue of inputs -> consensus core -> actions executed in order.

Inputs are peer messages (from the transport), timer firings, and "records available"
nudges from the API. Each is handed to the pure core, and its actions are executed one
after the other, awaiting each: ``PersistState`` is written and fsynced before the
``Broadcast`` that follows it; ``CommitBlock`` is durable in SQLite before any client
waiting on one of its records is told (see ``ledger/consensus/core.py`` for the order).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgpack
import uvicorn

from ledger.blocks import Block
from ledger.consensus import (
    Action,
    BlockResponse,
    Broadcast,
    CommitBlock,
    ConsensusCore,
    Event,
    Message,
    MessageReceived,
    PersistState,
    Proposal,
    RecordEvidence,
    RecordsAvailable,
    ScheduleTimeout,
    SendTo,
    SigningState,
    Start,
    Tick,
    TimeoutFired,
    decode_message,
    encode_message,
)
from ledger.crypto import read_key_file
from ledger.encoding import packb
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from ledger.records import Record
from ledger.store import SqliteStore
from ledger.store.check import check_recent
from node.config import ConfigError, NodeConfig
from node.faults import TestFaults
from node.mempool import AdmitResult, Mempool
from node.metrics import Metrics
from node.tls import client_context, server_context
from node.transport import PeerNetwork

CONSENSUS, RECORDS = 0, 1  # frame channels on the peer links
MAX_PEER_BACKLOG = 20_000  # peer messages waiting for the core; beyond it they are dropped
MAX_GOSSIP_TASKS = 64  # record batches from peers being admitted at once

log = logging.getLogger("ledger.node")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically: write a temp file, fsync it, rename, fsync the folder."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Node:
    """A validator: store, mempool, consensus core, peer links and the HTTP API."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.genesis = Genesis.load(config.genesis_path)
        passphrase = os.environ.get("LEDGER_KEY_PASSPHRASE")
        self.key = read_key_file(config.key_path, passphrase.encode() if passphrase else None)
        validator = self.genesis.validators.by_key(self.key.public)
        if validator is None:
            raise ConfigError(f"{config.key_path}: key is not a validator of this genesis")
        if validator.index != config.index:
            raise ConfigError(f"{config.key_path} is validator {validator.index}, "
                              f"config says {config.index}")
        self.name = validator.name
        self.store = SqliteStore(config.store_path, genesis_hash=self.genesis.hash)
        check_recent(self.store, self.genesis)  # refuse to serve a corrupted store
        self.mempool = Mempool(self.genesis, self.store, max_records=config.mempool_records)
        persisted = None
        if config.signing_state_path.exists():
            persisted = SigningState.from_wire(config.signing_state_path.read_bytes())
        self.core = ConsensusCore(self.genesis, self.store, self.mempool, key=self.key,
                                  config=config.consensus_config(self.genesis),
                                  persisted=persisted, verify=self.mempool.verify)
        self.metrics = Metrics()
        self.faults = TestFaults.from_env(self.key)
        self.faults.index = config.index
        self.evidence: deque[dict[str, Any]] = deque(maxlen=1000)
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.waiters: dict[bytes, list[asyncio.Future[int]]] = {}
        self.subscribers: set[asyncio.Queue[int]] = set()
        self.admitted_at: dict[bytes, float] = {}
        self.transport: PeerNetwork | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self.peer_backlog = 0  # peer messages queued for the core (bounded)
        self.dropped_peer_messages = 0

    # -- consensus loop -------------------------------------------------------------------

    async def consensus_loop(self) -> None:
        """Feed events to the core, one at a time, executing its actions in order."""
        await self._handle(Start(now_ms()))
        while True:
            event = await self.events.get()
            await self._handle(event)

    async def _handle(self, event: Event) -> None:
        if isinstance(event, MessageReceived):
            self.peer_backlog -= 1
        self.core.handle(Tick(now_ms()))
        for action in self.core.handle(event):
            await self._execute(action)
        self.metrics.height = self.store.height
        self.metrics.round = self.core.round

    async def _execute(self, action: Action) -> None:
        if isinstance(action, PersistState):
            await asyncio.to_thread(write_durably, self.config.signing_state_path,
                                    action.state.to_wire())
            self.faults.crash_point("after_persist")
        elif isinstance(action, Broadcast):
            for peers, message in self.faults.outgoing(action.message, self.connected_peers()):
                self.send_frame(bytes([CONSENSUS]) + encode_message(message), peers)
        elif isinstance(action, SendTo):
            self.send_frame(bytes([CONSENSUS]) + encode_message(action.message), [action.peer])
        elif isinstance(action, ScheduleTimeout):
            self._schedule(action)
        elif isinstance(action, CommitBlock):
            self.faults.crash_point("before_commit")
            await asyncio.to_thread(self.store.append, action.block, action.last_cert)
            self.faults.crash_point("after_commit")
            self._on_committed(action.block)
        elif isinstance(action, RecordEvidence):
            self.evidence.append(evidence_json(action.first, action.second))
            log.warning("evidence of equivocation: %s", self.evidence[-1]["kind"])

    def _schedule(self, t: ScheduleTimeout) -> None:
        loop = asyncio.get_running_loop()
        event = TimeoutFired(t.height, t.round, t.kind)

        def fire() -> None:
            self._timers.discard(handle)
            self.events.put_nowait(event)

        handle = loop.call_later(t.delay_ms / 1000, fire)
        self._timers.add(handle)

    def _on_committed(self, block: Block) -> None:
        self.mempool.remove_committed(block)
        now = time.monotonic()
        for r in block.records:
            started = self.admitted_at.pop(r.id, None)
            if started is not None:
                self.metrics.observe_commit_latency(now - started)
            for fut in self.waiters.pop(r.id, []):
                if not fut.done():
                    fut.set_result(block.height)
        self.metrics.records_committed += len(block.records)
        self.metrics.height = block.height
        for q in list(self.subscribers):
            try:
                q.put_nowait(block.height)
            except asyncio.QueueFull:  # a slow subscriber never slows the node
                self.subscribers.discard(q)
        log.info("committed height %d (%d records) %s", block.height, len(block.records),
                 block.hash.hex()[:16])

    # -- peer frames ----------------------------------------------------------------------

    def send_frame(self, frame: bytes, peers: list[int] | None = None) -> None:
        """Send to ``peers`` (None: every connected validator)."""
        if self.transport is None:
            return
        if peers is None and self.faults.partition_file is None:
            self.transport.broadcast(frame)
            return
        for peer in self.connected_peers() if peers is None else peers:
            if not self.faults.blocked(peer):
                self.transport.send(peer, frame)

    def _disconnect(self, peer: int, reason: str) -> None:
        if self.transport is not None:
            self.transport.disconnect(peer, reason)

    def on_frame(self, peer: int, payload: bytes) -> None:
        """Called by the transport on the event loop for every frame from a peer."""
        if not payload or self.faults.blocked(peer):
            return
        channel, body = payload[0], payload[1:]
        if channel == CONSENSUS:
            try:
                message = decode_message(body, self.mempool.known)
            except LedgerError as exc:
                log.warning("dropped a malformed message from validator %d: %s", peer, exc)
                self._disconnect(peer, "sent a malformed consensus message")
                return
            if self.peer_backlog >= MAX_PEER_BACKLOG:
                self.dropped_peer_messages += 1  # consensus re-sends; memory stays bounded
                return
            self.peer_backlog += 1
            unverified = self._unverified_records(message)
            if unverified:
                verifying = asyncio.ensure_future(
                    self._verify_then_queue(peer, message, unverified))
                self._tasks.add(verifying)
                verifying.add_done_callback(self._tasks.discard)
            else:
                self.events.put_nowait(MessageReceived(peer, message))
        elif channel == RECORDS:
            try:
                envelopes = msgpack.unpackb(body, raw=False)
                if not isinstance(envelopes, list) or not all(
                        isinstance(e, bytes) for e in envelopes):
                    raise ValueError("expected an array of bin")
            except Exception as exc:
                log.warning("dropped malformed records from validator %d: %s", peer, exc)
                self._disconnect(peer, "sent malformed record gossip")
                return
            if len(self._tasks) >= MAX_GOSSIP_TASKS:
                self.dropped_peer_messages += 1
                return
            task = asyncio.ensure_future(self.submit(envelopes, gossip=False))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            log.warning("dropped a frame on unknown channel %d from validator %d", channel, peer)
            self._disconnect(peer, f"sent a frame on unknown channel {channel}")

    def _unverified_records(self, message: Message) -> list[Record]:
        """Records of a proposal or synced block for a height still to decide that this
        node has not admitted (so their signatures are not in the verified cache)."""
        if isinstance(message, Proposal):
            height, records = message.height, message.records
        elif isinstance(message, BlockResponse):
            height, records = message.block.height, message.block.records
        else:
            return []
        if height < self.core.height:
            return []
        pending = self.mempool.pending
        return [r for r in records if r.id not in pending]

    async def _verify_then_queue(self, peer: int, message: Message,
                                 records: list[Record]) -> None:
        """Verify signatures in a worker thread, filling the cache block validation asks,
        so the consensus loop never waits on them; then hand the message to the core."""
        verify = self.mempool.verify
        await asyncio.to_thread(
            lambda: [verify(r.body.signer, r.sign_bytes(), r.sig) for r in records])
        self.events.put_nowait(MessageReceived(peer, message))

    # -- submission (API and gossip) ------------------------------------------------------

    async def submit(self, envelopes: Sequence[bytes], *, gossip: bool = True) -> list[AdmitResult]:
        """Admit a batch: signature checks in a worker thread, state checks here."""
        checked = await asyncio.to_thread(self.mempool.precheck, envelopes)
        results = self.mempool.admit(checked, now_ms())
        accepted = [r.record for r in results if r.status == "accepted" and r.record]
        if accepted:
            started = time.monotonic()
            for r in accepted:
                self.admitted_at[r.id] = started
            if gossip:
                self.send_frame(bytes([RECORDS]) + packb([r.envelope for r in accepted]))
            self.events.put_nowait(RecordsAvailable())
        self.metrics.mempool = len(self.mempool)
        return results

    def wait_for(self, record_id: bytes) -> asyncio.Future[int]:
        """A future resolved with the height once ``record_id`` is committed."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        loc = self.store.locate(record_id)
        if loc is not None:
            fut.set_result(loc.height)
        else:
            self.waiters.setdefault(record_id, []).append(fut)
        return fut

    def forget_waiters(self, ids: Sequence[bytes]) -> None:
        """Drop the finished (timed-out) futures of ``ids``."""
        for rid in ids:
            pending = [f for f in self.waiters.get(rid, []) if not f.done()]
            if pending:
                self.waiters[rid] = pending
            else:
                self.waiters.pop(rid, None)

    def connected_peers(self) -> list[int]:
        return self.transport.connected() if self.transport is not None else []

    # -- running ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run transport, consensus and the API until ``stop`` is set."""
        from node.api import create_app, guarded_protocol

        peers = {i: a for i, a in self.config.peers.items() if i != self.config.index}
        for v in self.genesis.validators:
            if v.index != self.config.index and v.index not in peers and v.p2p:
                from node.config import parse_address

                peers[v.index] = parse_address(v.p2p, f"genesis validator {v.index} p2p")
        cfg = self.config
        ssl_server = ssl_client = None
        if cfg.tls_cert is not None and cfg.tls_key is not None and cfg.tls_ca is not None:
            ssl_server = server_context(cfg.tls_cert, cfg.tls_key)
            ssl_client = client_context(cfg.tls_ca)
        tls = ssl_server is not None
        self.transport = PeerNetwork(genesis=self.genesis, key=self.key, listen=cfg.p2p,
                                     peers=peers, on_message=self.on_frame,
                                     ssl_server=ssl_server, ssl_client=ssl_client)
        await self.transport.start()
        app = create_app(self)
        # Everything built so far lives as long as the node: keep the cyclic collector from
        # re-scanning it, and collect young objects less often (the hot path makes many
        # short-lived, acyclic ones); full collections were latency outliers under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        host, port = self.config.api
        server = _Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            http=guarded_protocol(cfg.api_connections_per_source, cfg.api_header_timeout),
            ssl_certfile=str(cfg.tls_cert) if tls else None,
            ssl_keyfile=str(cfg.tls_key) if tls else None))
        tasks = [asyncio.create_task(self.consensus_loop(), name="consensus"),
                 asyncio.create_task(server.serve(), name="api")]
        log.info("node %s (validator %d) serving %s://%s:%d, peers on %s:%d", self.name,
                 self.config.index, "https" if tls else "http", host, port, *self.config.p2p)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        for t in done:
            if t is not stopper and t.exception() is not None:
                log.error("%s stopped: %r", t.get_name(), t.exception())
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(tasks[1], timeout=5)
        tasks[0].cancel()
        stopper.cancel()
        for handle in self._timers:
            handle.cancel()
        await self.transport.stop()
        self.store.close()
        log.info("node %s stopped", self.name)


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handlers: the node owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def evidence_json(first: Any, second: Any) -> dict[str, Any]:
    """A JSON view of two conflicting signed messages."""
    from ledger.consensus import Proposal

    def view(m: Any) -> dict[str, Any]:
        if isinstance(m, Proposal):
            return {"kind": "proposal", "validator": m.proposer, "height": m.height,
                    "round": m.round, "block_hash": m.block_hash.hex()}
        v = m.vote
        return {"kind": "prevote" if v.kind == 1 else "precommit", "validator": m.validator,
                "height": v.height, "round": v.round,
                "block_hash": v.block_hash.hex() if v.block_hash else None}

    a, b = view(first), view(second)
    return {"kind": a["kind"], "validator": a["validator"], "height": a["height"],
            "round": a["round"], "first": a["block_hash"], "second": b["block_hash"]}
