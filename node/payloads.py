"""Sealed payloads on the peer links (SPEC section 10): fetching the (salt, payload) pairs a
node lacks, serving them, and scrubbing the store after a redaction.

A node normally gets a sealed record's pair with the record (API submission, record gossip)
and keeps it in its mempool until the block commits (``Store.append(..., payloads=)``). It
commits a sealed record *without* its pair when it took the record from a proposal or a block
response without having seen the gossip (a node catching up by block sync, a lost frame).
``PayloadSync`` then asks its peers, on its own frame channel ``PAYLOADS`` (2):

- ``WANT`` (kind 0): ``bytes([PAYLOADS, WANT]) + packb([id: bin(32), ...])``, 1..``MAX_WANT``
  ids; a peer answers every WANT it serves with exactly one
- ``HAVE`` (kind 1): ``bytes([PAYLOADS, HAVE]) + packb([[id, salt, payload_bytes], ...])``,
  the pairs it holds of those ids (possibly none), as many as fit in one frame. Both parse
  with ``ledger.encoding.split_batch`` (only bins are built).

Serving reads ``store.payloads`` in a worker thread (the store never holds a redacted id's
pair; ids redacted while the read ran are filtered out on the loop), within per-peer budgets
(requests and bytes per second, one serve at a time, none while the link's queue is backed
up): a request beyond them is not answered (the asker times out and asks another peer). A
HAVE is taken only from a peer asked, for the ids asked; its pairs go to
``store.put_payloads`` in a worker thread (each checked against its record's digest); a pair
that does not match is misbehaviour.

The fetcher pages through ``store.missing_payloads`` with a cursor, asks the connected peers
in turn for up to ``MAX_WANT`` ids at a time, and backs off per id (doubling, up to
``RETRY_MAX_S``) when the peers that answered did not have it (asks that only timed out —
a busy peer — are repeated after ``RETRY_FIRST_S``, without doubling): ids nobody holds
are retried slowly, never in a hot loop. A commit that left pairs missing wakes it.

Scrubbing: a redaction block's commit clears its pairs and leaves the store's costly part
(SQLite: rebuilding ``sealed``, O(the pairs held), so that no copy of a cleared cell stays in
the file) pending, durably; ``redacted_ids`` starts a task that runs ``store.scrub`` in a
worker, and the bytes are gone from the files when it completes. A scrub that rebuilds runs
at once after a quiet spell, but never sooner than ``SCRUB_REBUILD_INTERVAL_S`` (or
``SCRUB_REBUILD_SPACING`` times the last rebuild's duration, if longer) after the last
rebuild ended: redactions one per block (an organisation's admin may approve its own) cost
every validator one rebuild per interval, not one per block. A redaction that commits while
the task waits or runs gets its rebuild when the interval ends (the task loops).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ledger.encoding import packb, split_batch, split_bin_array
from ledger.errors import LedgerError
from ledger.records import SealedPayload, new_pair
from ledger.store.base import PayloadsPut
from node.peer_guard import TokenBucket

if TYPE_CHECKING:
    from node.runtime import Node

PAYLOADS = 2  # the frame channel (runtime.CONSENSUS = 0, runtime.RECORDS = 1)
WANT, HAVE = 0, 1
MAX_WANT = 256  # ids in one WANT
ID_SIZE = 32
FRAME_OVERHEAD = 64  # a HAVE's bytes beyond its items' (channel, kind, array headers)
ITEM_OVERHEAD = 16  # one [id, salt, payload] item's headers
# Serving, per peer: WANTs and bytes per second (with bursts), one at a time, none while the
# link's queue holds more than SERVE_MAX_QUEUED frames.
SERVE_WANTS_PER_S, SERVE_WANTS_BURST = 8.0, 16.0
SERVE_BYTES_PER_S, SERVE_BYTES_BURST = 16.0 * 2**20, 32.0 * 2**20
SERVE_MAX_QUEUED = 8
# Fetching: how long to wait for a HAVE; how long a commit's pairs get to arrive by gossip
# before they are asked for; the per-id backoff when no peer had a pair; the idle re-scan.
FETCH_TIMEOUT_S = 5.0
SETTLE_S = 0.5
RETRY_FIRST_S, RETRY_MAX_S = 2.0, 300.0
IDLE_S = 60.0
PAGE = 1024  # missing ids read per store query
MAX_TRIES_KEPT = 100_000  # ids with a backoff remembered (beyond: the oldest are forgotten)
REDACTED_KEPT = 100_000  # ids redacted while running, filtered out of answers being built
# Misbehaviour weights (runtime.MISBEHAVIOUR_LIMIT is 100).
MISMATCH_WEIGHT = 50.0
UNASKED_WEIGHT = 2.0
OVER_RATE_WEIGHT = 1.0
# Scrubbing after a redaction: retried with a doubling pause while readers block it; a
# scrub that rebuilds ``sealed`` starts no sooner than the larger of SCRUB_REBUILD_INTERVAL_S
# and SCRUB_REBUILD_SPACING times the last rebuild's duration after that rebuild ended (the
# rebuilds hold the writer at most ~1/SCRUB_REBUILD_SPACING of the time).
SCRUB_FIRST_S, SCRUB_MAX_S = 0.2, 30.0
SCRUB_REBUILD_INTERVAL_S = 30.0
SCRUB_REBUILD_SPACING = 50.0
SCRUB_WAIT_SLICE_S = 0.5  # the wait for the interval, in slices (a stopping node ends it)

log = logging.getLogger("ledger.node")


def want_frame(ids: Sequence[bytes]) -> bytes:
    return bytes([PAYLOADS, WANT]) + packb(list(ids))


def have_frame(items: Iterable[tuple[bytes, SealedPayload]]) -> bytes:
    return bytes([PAYLOADS, HAVE]) + packb([[rid, p.salt, p.payload] for rid, p in items])


def parse_want(body: bytes) -> list[bytes]:
    """The ids of a WANT's body (after the channel and kind bytes); LedgerError if it is
    not an array of 1..MAX_WANT 32-byte bins."""
    ids = split_bin_array(body, "payload request", MAX_WANT)
    if not ids or any(len(i) != ID_SIZE for i in ids):
        raise LedgerError(f"payload request: 1..{MAX_WANT} ids of {ID_SIZE} bytes expected")
    return ids


def parse_have(body: bytes) -> dict[bytes, SealedPayload]:
    """The pairs of a HAVE's body; LedgerError if it is not an array of [id, salt, payload]."""
    pairs: dict[bytes, SealedPayload] = {}
    for item in split_batch(body, "payload answer", len(body)):
        if isinstance(item, bytes) or len(item[0]) != ID_SIZE:
            raise LedgerError("payload answer: items must be [id(32), salt, payload]")
        rid, salt, payload = item
        pairs[rid] = new_pair(salt, payload)
    return pairs


def fit_answer(pairs: Iterable[tuple[bytes, SealedPayload]], limit: int
               ) -> list[tuple[bytes, SealedPayload]]:
    """As many of ``pairs`` as fit in a HAVE frame of at most ``limit`` bytes, in order."""
    out, size = [], FRAME_OVERHEAD
    for rid, p in pairs:
        size += ITEM_OVERHEAD + len(rid) + p.size
        if size > limit:
            break
        out.append((rid, p))
    return out


class PayloadSync:
    """A node's part in moving sealed payloads between peers (see the module docstring)."""

    def __init__(self, node: Node, malformed: float) -> None:
        self.node = node
        self.malformed = malformed  # the misbehaviour weight of an undecodable frame
        self.wake = asyncio.Event()
        # id -> (failed rounds, monotonic time before which it is not asked again)
        self.tries: OrderedDict[bytes, tuple[int, float]] = OrderedDict()
        # peer -> (ids asked, the future its HAVE resolves with the ids stored)
        self.waiting: dict[int, tuple[set[bytes], asyncio.Future[set[bytes]]]] = {}
        self.serving: set[int] = set()
        self.buckets: dict[int, tuple[TokenBucket, TokenBucket]] = {}
        self.redacted: set[bytes] = set()
        self._redacted_order: deque[bytes] = deque()
        self.rotation = 0
        self.answered = False  # a HAVE came back for the WANTs of the current ``fetch``
        self.fetched = 0  # pairs stored from peers' answers (a statistic)
        #: log index at or below which no pair is missing (``run``)
        self.floor = -1
        self.served = 0  # pairs sent to peers
        self._scrub: asyncio.Task[None] | None = None
        self._scrub_again = False
        #: when the last rebuild may be followed by the next (``clock`` time), if one ran
        self.rebuild_after: float | None = None
        # the scrub task's clock and sleep (a test drives them)
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # -- frames -------------------------------------------------------------------------

    def on_frame(self, peer: int, body: bytes) -> None:
        """A frame on the PAYLOADS channel (``body`` after the channel byte), on the loop."""
        node = self.node
        kind, rest = (body[0], body[1:]) if body else (-1, b"")
        if kind == WANT:
            try:
                ids = parse_want(rest)
            except LedgerError as exc:
                node._misbehaved(peer, f"sent a malformed payload request ({exc})",
                                 self.malformed)
                return
            self._serve(peer, ids)
        elif kind == HAVE:
            waiting = self.waiting.get(peer)
            if waiting is None:
                return  # late (its request timed out) or never asked: not taken
            asked, future = waiting
            del self.waiting[peer]
            node.spawn(self._take(peer, rest, asked, future))
        else:
            log.debug("dropped a payload frame of unknown kind %d from validator %d",
                      kind, peer)

    def _serve(self, peer: int, ids: list[bytes]) -> None:
        node = self.node
        transport = node.transport
        if transport is None or peer in self.serving or node.backed_off(peer):
            return
        if transport.queue_length(peer) > SERVE_MAX_QUEUED:
            return
        now = time.monotonic()
        wants, nbytes = self.buckets.setdefault(peer, (
            TokenBucket(SERVE_WANTS_PER_S, SERVE_WANTS_BURST),
            TokenBucket(SERVE_BYTES_PER_S, SERVE_BYTES_BURST)))
        budget = min(transport.max_frame, int(nbytes.available(now)))
        if budget <= FRAME_OVERHEAD or not wants.take(1, now):
            node._misbehaved(peer, "payload requests over the rate", OVER_RATE_WEIGHT)
            return
        self.serving.add(peer)
        node.spawn(self._serve_task(peer, ids, budget, nbytes))

    async def _serve_task(self, peer: int, ids: list[bytes], budget: int,
                          nbytes: TokenBucket) -> None:
        try:
            held = await asyncio.to_thread(self.node.store.payloads, ids)
            # a redaction that committed while the read ran: its pairs are not sent
            items = fit_answer(((rid, held[rid]) for rid in ids
                                if rid in held and rid not in self.redacted), budget)
            frame = have_frame(items)
            nbytes.spend(len(frame), time.monotonic())
            self.served += len(items)
            self.node.metrics.count_payload_pairs("served", len(items))
            self.node.send_frame(frame, [peer])
        except LedgerError as exc:
            log.error("cannot serve payloads to validator %d: %s", peer, exc)
        finally:
            self.serving.discard(peer)

    async def _take(self, peer: int, body: bytes, asked: set[bytes],
                    future: asyncio.Future[set[bytes]]) -> None:
        """A HAVE from ``peer``: parse it, keep the pairs asked for (store checks each)."""
        def put() -> tuple[PayloadsPut, int]:
            pairs = parse_have(body)
            unasked = len(pairs.keys() - asked)
            return self.node.store.put_payloads(
                {rid: p for rid, p in pairs.items() if rid in asked}), unasked

        stored: set[bytes] = set()
        try:
            result, unasked = await asyncio.to_thread(put)
        except LedgerError as exc:
            log.warning("dropped a malformed payload answer from validator %d: %s", peer, exc)
            self.node._misbehaved(peer, "sent a malformed payload answer", self.malformed)
        else:
            stored = set(result.stored)
            self.fetched += len(stored)
            self.node.metrics.count_payload_pairs("fetched", len(stored))
            self.node.metrics.count_payload_pairs("mismatched", len(result.mismatched))
            self.answered = True
            if result.mismatched:
                log.warning("validator %d sent %d payloads that do not match their records' "
                            "digests", peer, len(result.mismatched))
                self.node._misbehaved(peer, "sent payloads that do not match their digests",
                                      MISMATCH_WEIGHT)
            if unasked:
                self.node._misbehaved(peer, "sent payloads not asked for", UNASKED_WEIGHT)
        finally:
            if not future.done():
                future.set_result(stored)

    # -- fetching -----------------------------------------------------------------------

    def nudge(self) -> None:
        """A commit left pairs missing (or peers changed): look soon."""
        self.wake.set()

    async def run(self) -> None:
        """Fetch missing pairs until cancelled (``Node.stop``).

        A scan starts at ``floor``: below it every sealed record's pair was held or
        redacted when a scan last ended, and stays so (a pair leaves the store only with a
        redaction, which also ends its being missing), so an idle node does not re-read
        the whole ``sealed`` table every IDLE_S."""
        cursor = self.floor
        top = self.node.store.log.size - 1  # what this scan covers at least
        seen: set[bytes] = set()  # the ids this scan found missing
        first: int | None = None  # the lowest log index this scan found missing
        while not self.node.stopping:  # also ends a loop whose cancellation was swallowed
            if not self.node.connected_peers():  # nobody to ask: not a failed attempt
                await asyncio.sleep(1.0)
                continue
            try:
                missing = await asyncio.to_thread(self.node.store.missing_payloads,
                                                  cursor, PAGE)
            except LedgerError as exc:
                log.error("cannot list missing payloads: %s", exc)
                missing = []
            if missing:
                cursor = missing[-1][0]
                first = missing[0][0] if first is None else first
                seen.update(rid for _, rid in missing)
                await self._fetch_due([rid for _, rid in missing])
                await asyncio.sleep(0)  # the next page at once; a full scan ends on empty
                continue
            # a full scan: forget the backoff of ids no longer missing (healed by gossip or
            # a resubmission, redacted), else their retry times would keep waking the scan
            for rid in [r for r in self.tries if r not in seen]:
                del self.tries[rid]
            self.floor = max(self.floor, top if first is None else first - 1)
            cursor, seen, first = self.floor, set(), None
            await self._idle()
            top = self.node.store.log.size - 1

    async def _idle(self) -> None:
        """Wait for a nudge or the earliest retry (IDLE_S at most), then let gossip settle."""
        now = time.monotonic()
        due = min((t for _, t in self.tries.values()), default=now + IDLE_S)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout=max(SETTLE_S, min(
                due - now, IDLE_S)))
        self.wake.clear()
        await asyncio.sleep(SETTLE_S)

    async def _fetch_due(self, ids: list[bytes]) -> None:
        now = time.monotonic()
        due = [rid for rid in ids if self.tries.get(rid, (0, 0.0))[1] <= now]
        for start in range(0, len(due), MAX_WANT):
            chunk = due[start:start + MAX_WANT]
            self.answered = False
            got = await self.fetch(chunk)
            now = time.monotonic()
            for rid in chunk:
                if rid in got:
                    self.tries.pop(rid, None)
                    continue
                # a peer answered without it: back off (doubling); only timeouts (a busy
                # peer, a late answer): asked again after RETRY_FIRST_S, no doubling
                failed = self.tries.pop(rid, (0, 0.0))[0] + (1 if self.answered else 0)
                self.tries[rid] = (failed, now + min(RETRY_MAX_S,
                                                     RETRY_FIRST_S * 2 ** max(failed - 1, 0)))
                while len(self.tries) > MAX_TRIES_KEPT:
                    self.tries.popitem(last=False)

    async def fetch(self, ids: list[bytes]) -> set[bytes]:
        """Ask the connected peers in turn for ``ids`` until each is stored or every peer
        was asked; the ids stored."""
        got: set[bytes] = set()
        peers = self.node.connected_peers()
        if not peers:
            return got
        self.rotation += 1
        for k in range(len(peers)):
            remaining = [rid for rid in ids if rid not in got and rid not in self.redacted]
            if not remaining:
                break
            peer = peers[(self.rotation + k) % len(peers)]
            if peer in self.waiting or self.node.backed_off(peer):
                continue
            future: asyncio.Future[set[bytes]] = asyncio.get_running_loop().create_future()
            self.waiting[peer] = (set(remaining), future)
            self.node.send_frame(want_frame(remaining), [peer])
            try:
                got |= await asyncio.wait_for(asyncio.shield(future), FETCH_TIMEOUT_S)
            except TimeoutError:
                pass
            finally:
                if self.waiting.get(peer, (None, None))[1] is future:
                    del self.waiting[peer]
        return got

    # -- redaction ------------------------------------------------------------------------

    def redacted_ids(self, ids: Iterable[bytes]) -> None:
        """A redaction of ``ids`` committed (the store cleared their pairs in the same
        write): forget them everywhere here, never send them, and scrub the store (the
        bytes leave its files when the scrub completes)."""
        for rid in ids:
            self.tries.pop(rid, None)
            for asked, _ in self.waiting.values():
                asked.discard(rid)
            if rid not in self.redacted:
                self.redacted.add(rid)
                self._redacted_order.append(rid)
        while len(self._redacted_order) > REDACTED_KEPT:
            self.redacted.discard(self._redacted_order.popleft())
        if self._scrub is not None and not self._scrub.done():
            self._scrub_again = True
            return
        self._scrub = self.node.spawn(self._scrub_task())

    async def _scrub_task(self) -> None:
        """``store.scrub()`` in a worker until it completes (readers may block it), with a
        doubling pause; once more if another redaction committed meanwhile. A scrub that
        rebuilds waits for ``rebuild_after``; the others (the WAL only) do not."""
        store = self.node.store
        pause = SCRUB_FIRST_S
        while True:
            if store.rebuild_pending() and self.rebuild_after is not None:
                wait = self.rebuild_after - self.clock()
                if wait > 0:
                    log.info("redacted payloads: the store's rebuild waits %.1f s (one per "
                             "%.0f s at most)", wait, SCRUB_REBUILD_INTERVAL_S)
                while wait > 0:  # in slices: a stopping node does not wait for it
                    if self.node.stopping:
                        return  # the store keeps it pending: its next open rebuilds
                    await self.sleep(min(wait, SCRUB_WAIT_SLICE_S))
                    wait = self.rebuild_after - self.clock()
            # a redaction committed after this line sets it again: the loop comes back
            self._scrub_again = False
            rebuild = store.rebuild_pending()  # one committed later waits for the interval
            if rebuild and self.rebuild_after is not None and self.clock() < self.rebuild_after:
                continue  # committed since the check above (a worker's append): it waits too
            started = self.clock()
            try:
                done = await asyncio.to_thread(store.scrub, rebuild)
            except LedgerError as exc:
                log.error("scrubbing the store after a redaction failed: %s", exc)
                done = False
            finally:
                if rebuild:  # paid (or tried): the next one waits, measured from its end
                    ended = self.clock()
                    self.rebuild_after = ended + max(
                        SCRUB_REBUILD_INTERVAL_S, SCRUB_REBUILD_SPACING * (ended - started))
            if done and not self._scrub_again:
                log.info("redacted payloads scrubbed from the store's files")
                return
            if not done and not store.rebuild_pending():  # readers held the WAL back
                await self.sleep(pause)
                pause = min(SCRUB_MAX_S, pause * 2)
