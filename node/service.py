"""What the HTTP API needs from a node, and nothing more (node/api.py depends on this, never on
``node.runtime``).

- ``NodeService``: the protocol ``create_app`` takes. ``node.runtime.Node`` provides it; so does
  ``LocalService`` below (a store and a mempool, no consensus), which renders the OpenAPI
  description (``node.apidoc``) and, with a way to commit blocks, runs the in-process API
  tests (``tests/inprocess.py``).
- ``ReadStore``: the store's read methods the API calls (from its worker threads).
- ``Status``: one snapshot of the node for ``/v1/status``.
- ``CommitWaiters``: futures of ``wait=commit`` submissions, resolved when their records
  commit, forgotten when the request ends (answered or timed out).
- ``BlockFeed``: the ``/v1/events`` subscribers; a commit is published to each, and a
  subscriber too slow to take it is dropped (it resumes with ``Last-Event-ID``), so a slow
  client never slows the node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.blocks import Block
from ledger.config import REDACT_TYPE, ConfigHistory
from ledger.encoding import BatchItem
from ledger.genesis import Genesis
from ledger.merkle import CompactRange, NodeId
from ledger.records import Record, SealedPayload
from ledger.store import RecordLocation
from ledger.store.base import BlockStore, ConfigChange
from node.mempool import AdmitResult, Mempool
from node.metrics import Metrics

MAX_SUBSCRIBERS = 256  # concurrent event streams
SUBSCRIBER_QUEUE = 1000  # committed heights a subscriber may fall behind before it is dropped
EVIDENCE_SHOWN = 20  # evidence entries in /v1/status (the newest)


class NotAValidator(Exception):
    """This node cannot get a record committed: its key is not a validator of the height
    being decided and it has no peer link (a removed validator, or a joining one not yet
    added). ``/v1/records`` answers 503 ``not_a_validator`` rather than accept a record
    that would wait in its mempool for ever."""


class ReadStore(Protocol):
    """The store reads the API makes (``BlockStore``'s read half)."""

    @property
    def height(self) -> int: ...

    def tip_hash(self) -> bytes | None: ...

    def block_bytes(self, height: int) -> bytes | None: ...

    def block(self, height: int) -> Block | None: ...

    def header_cert(self, height: int) -> tuple[bytes, bytes] | None: ...

    def locate(self, record_id: bytes) -> RecordLocation | None: ...

    def envelope(self, record_id: bytes) -> bytes | None: ...

    def seen_ids(self, ids: Iterable[bytes]) -> set[bytes]: ...

    def subject_history(self, subject: str, after_seq: int = -1, limit: int = 100,
                        ) -> list[tuple[RecordLocation, bytes]]: ...

    def subject_history_desc(self, subject: str, before_seq: int | None = None,
                             limit: int = 100) -> list[tuple[RecordLocation, bytes]]: ...

    @property
    def history(self) -> ConfigHistory | None: ...

    def config_changes(self) -> list[ConfigChange]: ...

    @property
    def log(self) -> CompactRange: ...

    def log_nodes(self, ids: Iterable[NodeId]) -> Mapping[NodeId, bytes]: ...

    # witness cosignatures (SPEC section 11): the API checks them, the store keeps them
    def add_cosignature(self, height: int, pubkey: bytes, sig: bytes) -> bool: ...

    def cosignatures(self, height: int) -> list[tuple[bytes, bytes]]: ...

    def cosignatures_between(self, lo: int, hi: int) -> Iterator[tuple[int, bytes, bytes]]: ...

    def add_split_view(self, cosig_json: bytes) -> bool: ...

    def split_views(self) -> list[bytes]: ...

    # sealed payloads (SPEC section 10): what the read endpoints serve
    def payloads(self, ids: Iterable[bytes]) -> dict[bytes, SealedPayload]: ...

    def payloads_between(self, first_seq: int, count: int, limit: int | None = None,
                         ) -> list[tuple[int, bytes, SealedPayload]]: ...

    def redacted(self, ids: Iterable[bytes]) -> set[bytes]: ...

    def redacted_at(self, record_id: bytes) -> int | None: ...

    def redaction_heights(self, ids: Iterable[bytes]) -> dict[bytes, int]: ...


@dataclass(frozen=True)
class Status:
    """A node's view, taken at one moment on the event loop (``GET /v1/status``)."""

    height: int
    tip_hash: bytes | None
    round: int
    mempool: int
    index: int | None  # our index in the set of the height being decided; None: not in it
    peers: tuple[int, ...] = ()  # peer ids with a live authenticated link
    evidence: tuple[Mapping[str, Any], ...] = ()  # the newest EVIDENCE_SHOWN entries
    pubkey: bytes = b""  # this node's key (b"": a service without one)
    peer_keys: tuple[bytes, ...] = ()  # the keys of ``peers`` (empty: peers named by
    # genesis index)


class NodeStopping(Exception):
    """The node is stopping: a commit waited for will not be seen here (``wait=commit``
    answers 503 ``stopping``; the records may commit through the other nodes)."""


class CommitWaiters:
    """Futures of record ids, resolved with the height that commits them. On the loop."""

    def __init__(self) -> None:
        self._futures: dict[bytes, list[asyncio.Future[int]]] = {}
        self.closed = False

    def close(self) -> None:
        """The node is stopping: every future waited on, and any watched from now on,
        fails with NodeStopping (its request answers 503 at once, instead of being cut
        short by the server's shutdown with a bare 500)."""
        self.closed = True
        for futures in self._futures.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(NodeStopping("the node is stopping"))

    def __len__(self) -> int:
        """Ids waited on."""
        return len(self._futures)

    def watch(self, ids: Sequence[bytes]) -> list[asyncio.Future[int]]:
        """One future per id, resolved when it commits (see ``resolve``)."""
        loop = asyncio.get_running_loop()
        out: list[asyncio.Future[int]] = []
        for rid in ids:
            out.append(loop.create_future())
            if self.closed:
                out[-1].set_exception(NodeStopping("the node is stopping"))
            self._futures.setdefault(rid, []).append(out[-1])
        return out

    def resolve(self, record_id: bytes, height: int) -> None:
        """``record_id`` is committed at ``height``: its futures get the height."""
        for fut in self._futures.pop(record_id, []):
            if not fut.done():
                fut.set_result(height)

    def committed(self, block: Block) -> None:
        """Every record of ``block`` is committed."""
        for r in block.records:
            self.resolve(r.id, block.height)

    def forget(self, ids: Sequence[bytes]) -> None:
        """Drop the finished (timed-out, cancelled) futures of ``ids``."""
        for rid in ids:
            pending = [f for f in self._futures.get(rid, []) if not f.done()]
            if pending:
                self._futures[rid] = pending
            else:
                self._futures.pop(rid, None)

    async def wait(self, ids: Sequence[bytes], timeout: float,
                   committed: Callable[[Sequence[bytes]], Awaitable[Mapping[bytes, int]]],
                   ) -> dict[bytes, int]:
        """The heights of ``ids`` once all are committed; TimeoutError after ``timeout``.

        The futures are registered first, then ``committed(ids)`` (the caller's store
        lookup, in its own worker) names those already committed: a commit in between
        resolves its future as usual. The futures are forgotten however this ends."""
        futures = self.watch(ids)
        try:
            for rid, height in (await committed(ids)).items():
                self.resolve(rid, height)
            heights = await asyncio.wait_for(asyncio.gather(*futures), timeout)
        finally:
            self.forget(ids)
        return dict(zip(ids, heights, strict=True))


class Subscription:
    """One event stream's place in a ``BlockFeed``."""

    def __init__(self, feed: BlockFeed, queue_size: int) -> None:
        self._feed = feed
        self._queue: asyncio.Queue[int] = asyncio.Queue(maxsize=queue_size)

    @property
    def dropped(self) -> bool:
        """The feed dropped it (too slow) or it was closed."""
        return self not in self._feed._subscribers

    def offer(self, height: int) -> bool:
        """Queue ``height``; False if the queue is full."""
        try:
            self._queue.put_nowait(height)
        except asyncio.QueueFull:
            return False
        return True

    async def next(self, timeout: float) -> int | None:
        """The next published height, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout=timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Leave the feed."""
        self._feed._subscribers.discard(self)


class BlockFeed:
    """Committed heights, published to the ``/v1/events`` subscribers."""

    def __init__(self, max_subscribers: int = MAX_SUBSCRIBERS,
                 queue_size: int = SUBSCRIBER_QUEUE) -> None:
        self.max_subscribers, self.queue_size = max_subscribers, queue_size
        self._subscribers: set[Subscription] = set()
        self.dropped = 0  # subscribers dropped for being slow, since start

    def __len__(self) -> int:
        return len(self._subscribers)

    def full(self) -> bool:
        """No room for another subscriber."""
        return len(self._subscribers) >= self.max_subscribers

    def subscribe(self) -> Subscription:
        """A new subscriber (the caller checks ``full`` first and closes it when done)."""
        sub = Subscription(self, self.queue_size)
        self._subscribers.add(sub)
        return sub

    def publish(self, height: int) -> None:
        """Block ``height`` is committed: tell every subscriber, dropping those whose queue
        is full (a slow subscriber never slows the node)."""
        for sub in list(self._subscribers):
            if not sub.offer(height):
                self._subscribers.discard(sub)
                self.dropped += 1


class NodeService(Protocol):
    """What ``node.api.create_app`` uses of a node."""

    @property
    def genesis(self) -> Genesis: ...

    @property
    def name(self) -> str: ...

    @property
    def store(self) -> ReadStore:
        """Committed blocks and records (read from the API's worker threads)."""

    @property
    def feed(self) -> BlockFeed: ...

    @property
    def commits(self) -> CommitWaiters: ...

    def pending(self, record_id: bytes) -> Record | None:
        """A record admitted and not yet committed."""

    def pending_pair(self, record_id: bytes) -> SealedPayload | None:
        """The (salt, payload) pair of a pending sealed record (the caller applies the
        read policy)."""

    async def submit(self, items: Sequence[BatchItem]) -> list[AdmitResult]:
        """Admit a batch of envelopes, or ``(envelope, salt, payload)`` for sealed records
        (MempoolFull when it does not fit, NotAValidator when nothing admitted here could
        reach a validator), one result per item."""

    def status(self) -> Status:
        """A snapshot for ``/v1/status``."""

    def metrics_text(self) -> str:
        """``/metrics`` in the Prometheus text format."""

    @property
    def metrics(self) -> Metrics:
        """The counters ``metrics_text`` renders (the API counts cosignatures in them)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class LocalService:
    """A ``NodeService`` over a store and a real mempool, with no consensus and no peers:
    submissions are admitted (signature, authorisation, duplicates, nonces, clock) exactly
    as a node admits them; blocks get into the store by someone calling ``append`` (a
    test's certified blocks), which also does what a node does on commit."""

    genesis: Genesis
    store: BlockStore
    name: str = "local"
    index: int = 0
    mempool_records: int = 100_000
    round: int = 0
    evidence: list[Mapping[str, Any]] = field(default_factory=list)
    invalid_blocks: dict[str, int] = field(default_factory=dict)
    peers: tuple[int, ...] = ()
    feed: BlockFeed = field(default_factory=BlockFeed)
    commits: CommitWaiters = field(default_factory=CommitWaiters)
    metrics: Metrics = field(default_factory=Metrics)
    mempool: Mempool = field(init=False)

    def __post_init__(self) -> None:
        self.mempool = Mempool(self.genesis, self.store, max_records=self.mempool_records)

    def pending(self, record_id: bytes) -> Record | None:
        return self.mempool.get(record_id)

    def pending_pair(self, record_id: bytes) -> SealedPayload | None:
        return self.mempool.pair(record_id)

    async def submit(self, items: Sequence[BatchItem]) -> list[AdmitResult]:
        checked = await asyncio.to_thread(self.mempool.precheck, items)
        results = self.mempool.admit(checked, now_ms())
        self.metrics.mempool = len(self.mempool)
        heal = {r.id: r.pair for r in results
                if r.status == "duplicate" and r.id is not None and r.pair is not None}
        if heal:  # as a node does: a committed sealed record's pair, resubmitted
            await asyncio.to_thread(self.store.put_payloads, heal)
        return results

    def append(self, block: Block) -> None:
        """Store ``block`` with the mempool's pairs of its sealed records and do what a node
        does on commit: clear its records from the mempool, scrub the store after a
        redaction, resolve their waiters and publish the height."""
        self.store.append(block, payloads=self.mempool.pairs_for(block.records))
        self.mempool.remove_committed(block)
        if any(r.body.type == REDACT_TYPE for r in block.records):
            self.store.scrub()
        self.metrics.records_committed += len(block.records)
        self.metrics.height = block.height
        self.commits.committed(block)
        self.feed.publish(block.height)

    def status(self) -> Status:
        return Status(height=self.store.height, tip_hash=self.store.tip_hash(),
                      round=self.round, mempool=len(self.mempool), index=self.index,
                      peers=self.peers, evidence=tuple(self.evidence[-EVIDENCE_SHOWN:]))

    def metrics_text(self) -> str:
        self.metrics.mempool = len(self.mempool)
        self.metrics.round = self.round
        return self.metrics.render(len(self.peers), self.invalid_blocks)
