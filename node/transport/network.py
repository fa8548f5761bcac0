"""Persistent authenticated TCP links between validators, carrying opaque payloads.

One link per pair of validators: a node links with the validator keys the configuration
accepts (``set_peers``; at first genesis's validators), each named by a stable peer id, its
rank in the configuration history (``node.transport.peers.PeerDirectory``: a genesis
validator's id is its genesis index). A node dials the accepted peers ranked after it and
accepts links from those ranked before it (a node whose own key has no rank yet, a joining
validator still syncing, is dialed); a key with no rank in the node's history (one its
config names while it joins) is dialed, and its link taken when it dials. ``set_peers``
opens links to added keys and closes those to keys no longer accepted. Every link starts
with the handshake of ``node.transport.handshake`` (the dialer speaks first); only then do
payload frames flow, each a 4-byte big-endian length and the payload
(``node.transport.framing``).

Unauthenticated connections are bounded so that a flood of them cannot lock a validator
out (issue 11): the whole handshake must finish within ``handshake_timeout`` (2 s); at most
``max_pending_per_source`` handshakes per source address and ``max_pending_handshakes`` in
all are in progress. A new connection from a source at its limit replaces that source's
oldest pending handshake, and one arriving when the global limit is reached replaces the
oldest pending handshake of the source holding the most: an honest dialer, which sends its
hello as soon as it connects and finishes in one round trip, gets through when it shares
its address with a flooder of silent connections (a NAT, the same host), and a flood from
one source never displaces the handshakes of another. Not covered: a flooder on the
dialer's own address that sends well-formed hellos naming that validator (its key is
public) at more than ``max_pending_per_source`` per round trip evicts the honest
handshake every time (test_review_issue11). Nothing is read from an evicted connection.

An inbound link from a validator that is already linked replaces the old link once the new
connection has authenticated (a restarted validator must not wait for its stale half-open
link to time out). ``disconnect(peer, reason, backoff_s=...)`` backs a misbehaving
validator off: for that long its handshakes are refused and it is not dialed.

Each link has a bounded outbound queue drained by its own writer task: when the queue is
full the oldest frame is dropped and counted, so a slow or dead peer can neither exhaust
memory nor block ``broadcast``/``send``. A reader task per link hands each payload, in the
order the peer sent it, to ``on_message`` on the event loop; ``on_link(peer)``, if given,
is called as each link comes up, before its first frame (the node sends that peer what
gossip sent while the link was down could not reach it). Dialers reconnect forever with
jittered exponential backoff (0.1 s doubling to 1 s: a peer back from an outage is redialed
within a second) until ``stop()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Mapping

from ledger.crypto import PrivateKey
from ledger.genesis import Genesis
from node.transport.framing import (
    MAX_FRAME_LIMIT,
    FrameError,
    encode_frame,
    frame_header,
    read_frame,
)
from node.transport.handshake import (
    MAX_AUTH,
    MAX_HELLO,
    NONCE_SIZE,
    HandshakeError,
    Hello,
    check_hello,
    make_auth,
    parse_auth,
    verify_auth,
)
from node.transport.peers import PeerDirectory

Address = tuple[str, int]

STAT_KEYS = (
    "frames_in",  # payload frames received and handed to on_message
    "frames_out",  # payload frames handed to the socket
    "bytes_in",
    "bytes_out",
    "dropped_full_queue",  # oldest frames dropped because a peer's queue was full
    "rejected_handshakes",  # handshakes we refused (bad hello or signature, policy, timeout)
    "evicted_handshakes",  # pending inbound handshakes closed to make room for a newer one
    "failed_handshakes",  # handshakes the peer broke off (closed, reset)
    "dial_failures",  # outbound connection attempts that did not connect
    "connects",  # authenticated links established
    "disconnects",  # authenticated links ended, for any reason
    "protocol_errors",  # links closed because the peer broke the framing rules
    "handler_errors",  # exceptions raised by on_message or on_link (logged, link stays up)
)


class _Link:
    """One authenticated link: its stream, outbound queue and writer wake-up."""

    __slots__ = ("address", "outbound", "overflowing", "peer", "pubkey", "queue", "reader",
                 "wakeup", "writer")

    def __init__(self, peer: int, pubkey: bytes, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, address: str, outbound: bool) -> None:
        self.peer = peer
        self.pubkey = pubkey
        self.reader = reader
        self.writer = writer
        self.address = address
        self.outbound = outbound
        self.queue: collections.deque[bytes] = collections.deque()
        self.wakeup = asyncio.Event()
        self.overflowing = False


class _Pending:
    """An inbound connection whose handshake is in progress."""

    __slots__ = ("evicted", "named", "source", "started", "writer")

    def __init__(self, source: str, writer: asyncio.StreamWriter) -> None:
        self.source = source
        self.writer = writer
        self.started = time.monotonic()
        self.evicted = False
        #: its hello named a validator we accept (until then, anyone could be behind it)
        self.named = False


class PeerNetwork:
    """A node's links to the validators its configuration accepts (``set_peers``)."""

    #: frames a writer hands to the socket at once (then it waits for the socket to drain)
    write_batch_frames = 256
    write_batch_bytes = 1 << 20
    #: bytes a link's reader buffers before it stops reading from the socket
    stream_limit = 1 << 20
    #: frames the reader hands over before it yields to the rest of the event loop
    read_burst = 64
    #: inbound handshakes in progress at once, in all and per source address; a connection
    #: beyond either limit replaces the oldest pending handshake (of its own source, or of
    #: the source holding the most)
    max_pending_handshakes = 64
    max_pending_per_source = 8
    #: seconds a graceful close may take before the connection is aborted
    close_timeout = 1.0
    #: TCP keepalive and user timeout: a silently dead link is noticed within ~10-25 s when
    #: idle, and a link whose data goes unacknowledged for 8 s is closed and redialed. On a
    #: WAN a link that lived through an outage otherwise waits for TCP's doubling
    #: retransmission timer (after a 10 s outage, the next try comes up to ~8 s after the
    #: link is back): the WAN bed measured 6.3 s for a host to catch up after its link was
    #: down 10 s and 5-11 s for a 2/2 split to commit after healing (docs/wan.md). Not
    #: shorter: since Linux 5.11 a receiver holding its window at zero (a node too busy to
    #: read for that long) also ends the link after the user timeout.
    keepalive_idle = 10
    keepalive_interval = 5
    keepalive_count = 3
    user_timeout_ms = 8_000
    #: a link that lived this long resets the dial backoff (a flapping one keeps doubling)
    held_s = 10.0

    def __init__(self, *, genesis: Genesis, key: PrivateKey, listen: tuple[str, int],
                 peers: Mapping[int, tuple[str, int]],
                 on_message: Callable[[int, bytes], None],
                 on_link: Callable[[int], None] | None = None,
                 directory: PeerDirectory | None = None,
                 max_frame: int = 32 * 1024 * 1024, queue_limit: int = 1024,
                 ssl_server: ssl.SSLContext | None = None,
                 ssl_client: ssl.SSLContext | None = None,
                 logger: logging.Logger | None = None,
                 handshake_timeout: float = 2.0,
                 backoff_initial: float = 0.1, backoff_max: float = 1.0) -> None:
        if not 1 <= max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be in [1, {MAX_FRAME_LIMIT}], got {max_frame}")
        if queue_limit < 1:
            raise ValueError(f"queue_limit must be positive, got {queue_limit}")
        if handshake_timeout <= 0 or not 0 < backoff_initial <= backoff_max:
            raise ValueError("timeouts must be positive and backoff_initial <= backoff_max")
        if inspect.iscoroutinefunction(on_message):
            raise TypeError("on_message must be a plain function; it runs on the event loop")
        for index in peers:
            if not 0 <= index < len(genesis.validators):
                raise ValueError(f"peers: {index} is not a validator index of genesis")
        self.genesis = genesis
        self.key = key
        self.directory = (directory if directory is not None
                          else PeerDirectory(v.pubkey for v in genesis.validators))
        for v in genesis.validators:
            self.directory.add(v.pubkey, v.name)
        me = genesis.validators.by_key(key.public)
        self.name = me.name if me is not None else f"node {key.public.hex()[:12]}"
        self.listen = listen
        # accepted keys (not our own) -> where to dial them (None: they dial us, or no
        # address is known); at first genesis's validators at the ``peers`` addresses
        self._accepted: dict[bytes, Address | None] = {
            v.pubkey: (str(peers[v.index][0]), int(peers[v.index][1]))
            if v.index in peers else None
            for v in genesis.validators if v.pubkey != key.public}
        self.on_message = on_message
        self.on_link = on_link
        self.max_frame = max_frame
        self.queue_limit = queue_limit
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self.handshake_timeout = handshake_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log = logger or logging.getLogger("node.transport")
        self.port: int = listen[1]
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self._links: dict[int, _Link] = {}
        self._server: asyncio.Server | None = None
        self._dialers: dict[bytes, tuple[Address, asyncio.Task[None]]] = {}
        self._retired: set[asyncio.Task[None]] = set()  # dialers cancelled by set_peers
        self._own_rank = self.directory.rank(key.public)
        self._connections: set[asyncio.Task[object]] = set()
        self._pending: dict[str, collections.deque[_Pending]] = {}
        self._pending_count = 0
        self._backoff_until: dict[int, float] = {}
        self._flood_logged = -1e9
        self._started = False
        self._closing = False

    # -- public API ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listener (``.port`` is the bound port) and start the dialers."""
        if self._started:
            raise RuntimeError("PeerNetwork.start() called twice")
        self._started = True
        host, port = self.listen
        self._server = await asyncio.start_server(
            self._on_inbound, host, port, limit=self.stream_limit, ssl=self.ssl_server,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl_server else None,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self.log.info("%s: listening for peers on %s:%d%s", self.name, host, self.port,
                      " (TLS)" if self.ssl_server else "")
        self._sync_dialers(warn=True)

    @property
    def index(self) -> int | None:
        """Our own peer id, None while our key is not a validator of any configuration
        this node knows (then we dial only the keys the node config names)."""
        return self.directory.get(self.key.public)

    @property
    def dial_targets(self) -> dict[int, Address]:
        """Peer id -> address of the accepted peers this node dials (ranked after it)."""
        return {self.directory.add(k): a for k, a in self._accepted.items()
                if a is not None and self._dials(k)}

    def accepted(self) -> set[bytes]:
        """The keys this node links with (its own excluded)."""
        return set(self._accepted)

    def set_peers(self, peers: Mapping[bytes, Address | None]) -> None:
        """Link with exactly the keys of ``peers`` (our own is ignored), dialing those we
        dial (``_dials``) at their address (None: unknown). Keys new to the directory get
        an id, not a rank (``PeerDirectory.learn`` ranks the history's keys: call it
        first). Links to keys no longer in ``peers`` are closed and their dialers stop;
        new keys are dialed (or accepted) at once."""
        for pubkey in peers:
            self.directory.add(pubkey)
        accepted = {k: (None if a is None else (str(a[0]), int(a[1])))
                    for k, a in peers.items() if k != self.key.public}
        rank = self.directory.rank(self.key.public)
        if accepted == self._accepted and rank == self._own_rank:
            return  # (our own rank decides whom we dial: a joining node just ranked)
        self._own_rank = rank
        gone = set(self._accepted) - set(accepted)
        self._accepted = accepted
        for peer, link in list(self._links.items()):
            if link.pubkey in gone:
                self.log.info("%s: closing the link to %s: no longer a validator of the "
                              "configuration", self.name, self.directory.name(peer))
                link.writer.transport.abort()
        if self._started and not self._closing:
            self._sync_dialers(warn=True)

    def _dials(self, pubkey: bytes) -> bool:
        """We dial ``pubkey``: it is ranked after us, or it has no rank in our history (a
        key the node config names, accepted only while we are joining: we dial it, and
        take its link when it dials us)."""
        peer = self.directory.rank(pubkey)
        if peer is None:
            return True
        me = self.directory.rank(self.key.public)
        return me is not None and peer > me

    def _sync_dialers(self, warn: bool = False) -> None:
        """One dialer per accepted key we dial, at its current address; no other."""
        wanted: dict[bytes, Address] = {}
        for pubkey, address in self._accepted.items():
            if not self._dials(pubkey):
                continue
            if address is None:
                if warn:
                    self.log.warning("%s: no address for %s; it cannot be reached",
                                     self.name, self.directory.name(self.directory.add(pubkey)))
                continue
            wanted[pubkey] = address
        for pubkey, (address, task) in list(self._dialers.items()):
            if wanted.get(pubkey) != address:
                del self._dialers[pubkey]
                task.cancel()
                self._retired.add(task)
                task.add_done_callback(self._retired.discard)
        for pubkey, address in wanted.items():
            if pubkey not in self._dialers:
                peer = self.directory.add(pubkey)
                task = asyncio.create_task(self._dial_forever(pubkey, address),
                                           name=f"p2p-dial-{self.index}-{peer}")
                self._dialers[pubkey] = (address, task)

    async def stop(self) -> None:
        """Close the listener and every link, and wait for every task to end."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        while self._dialers or self._connections or self._retired:
            tasks: list[asyncio.Task[object]] = [
                *(t for _, t in self._dialers.values()), *self._retired, *self._connections]
            self._dialers.clear()
            self._retired.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._connections.difference_update(tasks)
        if self._server is not None:
            await self._server.wait_closed()
        self.log.info("%s: peer network stopped", self.name)

    def broadcast(self, payload: bytes) -> None:
        """Queue ``payload`` to every connected peer; never blocks."""
        data = self._check_payload(payload)
        for link in list(self._links.values()):
            self._enqueue(link, data)

    def send(self, peer: int, payload: bytes) -> bool:
        """Queue ``payload`` to validator ``peer``; False if it is not connected."""
        data = self._check_payload(payload)
        link = self._links.get(peer)
        if link is None or link.writer.transport.is_closing():
            return False
        self._enqueue(link, data)
        return True

    def disconnect(self, peer: int, reason: str, backoff_s: float = 0.0) -> None:
        """Drop the link to ``peer`` (it broke the protocol above the framing).

        With ``backoff_s`` > 0, for that many seconds (or longer, if an earlier backoff ends
        later) its inbound handshakes are refused and it is not dialed; otherwise it may
        reconnect after the usual reconnection delay.
        """
        if not 0 <= backoff_s < float("inf"):
            raise ValueError(f"backoff_s must be finite and >= 0, got {backoff_s!r}")
        if backoff_s > 0 and self.directory.key(peer) is not None and peer != self.index:
            until = time.monotonic() + backoff_s
            self._backoff_until[peer] = max(until, self._backoff_until.get(peer, until))
        link = self._links.get(peer)
        if link is None:
            return
        self.stats["protocol_errors"] += 1
        self.log.warning("%s: disconnecting %s: %s%s", self.name, self._who(peer), reason,
                         f" (backing off {backoff_s:g} s)" if backoff_s > 0 else "")
        link.writer.transport.abort()

    def backoff_remaining(self, peer: int) -> float:
        """Seconds ``peer`` stays backed off (0 if it is not)."""
        until = self._backoff_until.get(peer)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._backoff_until[peer]
            return 0.0
        return left

    def connected(self) -> list[int]:
        """Validator indexes with a live authenticated link, ascending."""
        return sorted(i for i, link in self._links.items()
                      if not link.writer.transport.is_closing())

    def queue_length(self, peer: int) -> int:
        """Frames waiting in the outbound queue to ``peer`` (0 if not connected)."""
        link = self._links.get(peer)
        return len(link.queue) if link is not None else 0

    # -- outbound queues ----------------------------------------------------------------

    def _check_payload(self, payload: bytes) -> bytes:
        data = payload if type(payload) is bytes else bytes(payload)
        if not 1 <= len(data) <= self.max_frame:
            raise ValueError(f"payload of {len(data)} bytes: must be 1..{self.max_frame}")
        return data

    def _enqueue(self, link: _Link, data: bytes) -> None:
        transport = link.writer.transport
        if (not link.queue and not transport.is_closing()
                and transport.get_write_buffer_size() == 0):
            # Nothing ahead of it (the writer task hands each batch it takes to the
            # transport at once, so an empty queue means every earlier frame is there, and
            # an empty buffer that the link is not backed up): hand it over now instead of
            # waking the writer task, a loop iteration later (see _write_loop).
            link.writer.writelines((frame_header(len(data)), data))
            self.stats["frames_out"] += 1
            self.stats["bytes_out"] += len(data)
            return
        if len(link.queue) >= self.queue_limit:
            link.queue.popleft()
            self.stats["dropped_full_queue"] += 1
            if not link.overflowing:
                link.overflowing = True
                self.log.warning("%s: queue to %s is full (%d frames); dropping the oldest",
                                 self.name, self._who(link.peer), self.queue_limit)
        link.queue.append(data)
        link.wakeup.set()

    async def _write_loop(self, link: _Link) -> None:
        queue, writer = link.queue, link.writer
        while True:
            if not queue:
                link.overflowing = False
                link.wakeup.clear()
                await link.wakeup.wait()
                continue
            chunks: list[bytes] = []
            frames = size = 0
            while queue and frames < self.write_batch_frames and size < self.write_batch_bytes:
                data = queue.popleft()
                chunks += (frame_header(len(data)), data)
                frames += 1
                size += len(data)
            writer.writelines(chunks)
            self.stats["frames_out"] += frames
            self.stats["bytes_out"] += size
            await writer.drain()

    async def _read_loop(self, link: _Link) -> None:
        peer = link.peer
        burst = 0
        while True:
            payload = await read_frame(link.reader, self.max_frame)
            if payload is None:
                return
            self.stats["frames_in"] += 1
            self.stats["bytes_in"] += len(payload)
            try:
                self.on_message(peer, payload)
            except Exception:
                self.stats["handler_errors"] += 1
                self.log.exception("%s: on_message failed for a frame from %s",
                                   self.name, self._who(link.peer))
            burst += 1
            if burst >= self.read_burst:  # buffered frames never starve the event loop
                burst = 0
                await asyncio.sleep(0)

    # -- connections --------------------------------------------------------------------

    async def _on_inbound(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.transport.abort()
            return
        pending = self._admit(writer)
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await self._connection(reader, writer, _peername(writer), expected=None,
                                   pending=pending)
        except asyncio.CancelledError:
            # Only stop() cancels this task, and it is the last thing the task does. Ending
            # normally matters: Python 3.11's streams report a cancelled client_connected_cb
            # task through the loop's exception handler as an error.
            pass
        finally:
            self._release(pending)
            if task is not None:
                self._connections.discard(task)

    def _admit(self, writer: asyncio.StreamWriter) -> _Pending:
        """Count a new inbound connection as pending, evicting the oldest pending handshake
        of its source (at ``max_pending_per_source``) or of the source holding the most (at
        ``max_pending_handshakes``); see ``_victim``. No await: the counts always hold."""
        pending = _Pending(_source(writer), writer)
        mine = self._pending.get(pending.source)
        if mine is not None and len(mine) >= self.max_pending_per_source:
            self._evict(_victim(mine))
        while self._pending_count >= self.max_pending_handshakes and self._pending:
            fullest = max(self._pending.values(), key=lambda q: (len(q), -q[0].started))
            self._evict(_victim(fullest))
        self._pending.setdefault(pending.source, collections.deque()).append(pending)
        self._pending_count += 1
        return pending

    def _release(self, pending: _Pending) -> None:
        queue = self._pending.get(pending.source)
        if queue is None or pending not in queue:
            return  # evicted, or released when its handshake ended
        queue.remove(pending)
        self._pending_count -= 1
        if not queue:
            del self._pending[pending.source]

    def _evict(self, pending: _Pending) -> None:
        self._release(pending)
        pending.evicted = True
        pending.writer.transport.abort()
        self.stats["evicted_handshakes"] += 1
        self._flood_log("%s: closed the pending handshake of %s (%.1f s old) for a newer "
                        "connection; %d pending from that source",
                        self.name, _peername(pending.writer),
                        time.monotonic() - pending.started, len(self._pending.get(
                            pending.source, ())))

    def _flood_log(self, msg: str, *args: object) -> None:
        """What a flood causes is logged once per 10 s as a warning, else at debug level."""
        level = logging.DEBUG
        if time.monotonic() - self._flood_logged > 10:
            level, self._flood_logged = logging.WARNING, time.monotonic()
        self.log.log(level, msg, *args)

    async def _dial_forever(self, pubkey: bytes, address: Address) -> None:
        index = self.directory.add(pubkey)
        delay = self.backoff_initial
        host, port = address
        where = f"{host}:{port}"
        failures = 0
        while True:
            uptime: float | None = None
            backed_off = self.backoff_remaining(index)
            if backed_off > 0:
                self.log.info("%s: not dialing validator %d for %.1f s (backed off)",
                              self.name, index, backed_off)
                await asyncio.sleep(backed_off)
                delay = self.backoff_initial
                continue
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    reader, writer = await asyncio.open_connection(
                        host, port, limit=self.stream_limit, ssl=self.ssl_client,
                        server_hostname=host if self.ssl_client else None,
                        ssl_handshake_timeout=self.handshake_timeout if self.ssl_client else None,
                    )
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                self.stats["dial_failures"] += 1
                failures += 1
                level = logging.INFO if failures == 1 else logging.DEBUG
                self.log.log(level, "%s: cannot reach validator %d at %s: %s (retrying)",
                             self.name, index, where, _reason(exc))
            else:
                failures = 0
                uptime = await self._connection(reader, writer, where, expected=pubkey)
            if uptime is not None and uptime >= self.held_s:
                delay = self.backoff_initial  # a link that held: start over quickly
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self.backoff_max)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          address: str, expected: bytes | None,
                          pending: _Pending | None = None) -> float | None:
        """Handshake, then carry the link until it ends; its uptime, or None if refused."""
        direction = "outbound" if expected is not None else "inbound"
        try:
            _tune_socket(writer, self)
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    if pending is not None:
                        peer = await self._accept_handshake(reader, writer, pending)
                    else:
                        assert expected is not None
                        peer = await self._dial_handshake(reader, writer, expected)
                if pending is not None and pending.evicted:
                    raise ConnectionResetError("evicted")
                link = self._register(peer, reader, writer, address, expected is not None)
            except (HandshakeError, FrameError, TimeoutError) as exc:
                if pending is not None and pending.evicted:
                    return None  # counted and logged by _evict
                reason = str(exc)
                if isinstance(exc, TimeoutError):
                    reason = f"handshake timed out after {self.handshake_timeout:g} s"
                self._refused(direction, address, reason, inbound=pending is not None)
                return None
            except (OSError, EOFError) as exc:  # closed or reset by the peer mid-handshake
                if pending is not None and pending.evicted:
                    return None
                self.stats["failed_handshakes"] += 1
                if pending is not None:
                    self._flood_log("%s: inbound handshake with %s failed: %s",
                                    self.name, address, _reason(exc))
                else:
                    self.log.info("%s: %s handshake with %s failed: %s", self.name,
                                  direction, address, _reason(exc))
                return None
            except Exception as exc:  # a bug here must not kill the listener or a dialer
                self.stats["failed_handshakes"] += 1
                self.log.exception("%s: %s handshake with %s failed: %s", self.name,
                                   direction, address, _reason(exc))
                return None
            finally:
                if pending is not None:
                    self._release(pending)
            return await self._run_link(link)
        finally:
            await self._close(writer)

    def _refused(self, direction: str, address: str, reason: str, *,
                 inbound: bool = False) -> None:
        """Count and log a refused handshake. Anyone can make us refuse inbound handshakes
        (a validator's key is public), so those are logged as a flood is."""
        self.stats["rejected_handshakes"] += 1
        if inbound:
            self._flood_log("%s: refused %s peer %s: %s", self.name, direction, address,
                            reason)
        else:
            self.log.warning("%s: refused %s peer %s: %s", self.name, direction, address,
                             reason)

    async def _dial_handshake(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter, expected: bytes) -> bytes:
        """The dialer's side: hello, check theirs, auth, verify theirs (see ``handshake``)."""
        g = self.genesis
        local_nonce = os.urandom(NONCE_SIZE)
        writer.write(encode_frame(Hello(g.chain_id, g.hash, self.key.public, local_nonce)
                                  .to_wire()))
        await writer.drain()
        data = await read_frame(reader, MAX_HELLO)
        if data is None:
            raise ConnectionResetError("closed by the peer before its hello")
        hello = Hello.from_wire(data)
        peer = check_hello(hello, g, self.key.public, self._accepted)
        if peer != expected:
            raise HandshakeError(f"dialed validator {self.directory.get(expected)} but "
                                 f"reached {self._who_key(peer)}")
        if hello.nonce == local_nonce:
            raise HandshakeError("the peer echoed our nonce")
        writer.write(encode_frame(make_auth(self.key, g.hash, local_nonce=local_nonce,
                                            remote_nonce=hello.nonce,
                                            remote_pubkey=peer)))
        await writer.drain()
        data = await read_frame(reader, MAX_AUTH)
        if data is None:
            raise ConnectionResetError("closed by the peer before its signature")
        verify_auth(g.hash, parse_auth(data), local_nonce=local_nonce, remote_nonce=hello.nonce,
                    local_pubkey=self.key.public, remote_pubkey=peer)
        return peer

    async def _accept_handshake(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter, pending: _Pending) -> bytes:
        """The listener's side: nothing is sent, drawn or verified until the dialer's hello
        names a validator we accept; we sign only after its signature verified."""
        g = self.genesis
        data = await read_frame(reader, MAX_HELLO)
        if data is None:
            raise ConnectionResetError("closed by the peer before its hello")
        hello = Hello.from_wire(data)
        peer = check_hello(hello, g, self.key.public, self._accepted)
        if self.directory.rank(peer) is not None and self._dials(peer):
            raise HandshakeError(f"{self._who_key(peer)} is ranked after us; we dial it, "
                                 "not it us")
        backed_off = self.backoff_remaining(self.directory.add(peer))
        if backed_off > 0:
            raise HandshakeError(f"{self._who_key(peer)} is backed off for another "
                                 f"{backed_off:.1f} s")
        pending.named = True
        local_nonce = os.urandom(NONCE_SIZE)
        if hello.nonce == local_nonce:
            raise HandshakeError("the peer echoed our nonce")
        writer.write(encode_frame(Hello(g.chain_id, g.hash, self.key.public, local_nonce)
                                  .to_wire()))
        await writer.drain()
        data = await read_frame(reader, MAX_AUTH)
        if data is None:
            raise ConnectionResetError("closed by the peer before its signature")
        verify_auth(g.hash, parse_auth(data), local_nonce=local_nonce, remote_nonce=hello.nonce,
                    local_pubkey=self.key.public, remote_pubkey=peer)
        writer.write(encode_frame(make_auth(self.key, g.hash, local_nonce=local_nonce,
                                            remote_nonce=hello.nonce,
                                            remote_pubkey=peer)))
        await writer.drain()
        return peer

    def _register(self, pubkey: bytes, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter, address: str, outbound: bool) -> _Link:
        # No await between this check and the insertion: one link per pair, always.
        if self._closing:
            raise HandshakeError("the node is stopping")
        peer = self.directory.add(pubkey)
        if pubkey not in self._accepted:  # the configuration moved on during the handshake
            raise HandshakeError(f"{self._who(peer)} is no longer accepted")
        if self.backoff_remaining(peer) > 0:  # backed off while its handshake ran
            raise HandshakeError(f"{self._who(peer)} is backed off")
        existing = self._links.get(peer)
        if existing is not None and not existing.writer.transport.is_closing():
            if outbound or existing.outbound:  # cannot happen: one dialer per pair
                raise HandshakeError(f"already linked to {self._who(peer)}; keeping that link")
            # It just proved its key over our fresh nonce, so it is that validator, dialing
            # again: the old link is stale (say it restarted and the old one is half-open).
            self.log.info("%s: %s connected again from %s; replacing its link from %s",
                          self.name, self._who(peer), address, existing.address)
            existing.writer.transport.abort()
        link = _Link(peer, pubkey, reader, writer, address, outbound)
        self._links[peer] = link
        return link

    async def _run_link(self, link: _Link) -> float:
        started = time.monotonic()
        self.stats["connects"] += 1
        self.log.info("%s: connected to %s at %s (%s)", self.name, self._who(link.peer),
                      link.address, "outbound" if link.outbound else "inbound")
        name = f"{self.index}-{link.peer}"
        reader = asyncio.create_task(self._read_loop(link), name=f"p2p-read-{name}")
        writer = asyncio.create_task(self._write_loop(link), name=f"p2p-write-{name}")
        if self.on_link is not None:
            try:
                self.on_link(link.peer)
            except Exception:  # as on_message: logged, the link stays up
                self.stats["handler_errors"] += 1
                self.log.exception("%s: on_link failed for %s", self.name,
                                   self._who(link.peer))
        reason, level = "the node is stopping", logging.INFO
        try:
            done, _ = await asyncio.wait((reader, writer), return_when=asyncio.FIRST_COMPLETED)
            reason, level = self._end_reason(reader if reader in done else writer)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            if self._links.get(link.peer) is link:
                del self._links[link.peer]
            link.queue.clear()
            self.stats["disconnects"] += 1
            self.log.log(level, "%s: disconnected from %s: %s", self.name,
                         self._who(link.peer), reason)
        return time.monotonic() - started

    def _end_reason(self, task: asyncio.Task[None]) -> tuple[str, int]:
        if task.cancelled():
            return "cancelled", logging.INFO
        exc = task.exception()
        if exc is None:
            return "closed by the peer", logging.INFO
        if isinstance(exc, FrameError):
            self.stats["protocol_errors"] += 1
            return f"protocol violation: {exc}", logging.WARNING
        if isinstance(exc, OSError | EOFError):
            return f"connection lost: {_reason(exc)}", logging.INFO
        self.log.error("%s: link task failed", self.name, exc_info=exc)
        return f"internal error: {_reason(exc)}", logging.ERROR

    def _who(self, peer: int) -> str:
        return self.directory.name(peer)

    def _who_key(self, pubkey: bytes) -> str:
        peer = self.directory.get(pubkey)
        return self._who(peer) if peer is not None else f"key {pubkey.hex()[:12]}…"

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        if self._closing or transport.get_write_buffer_size() > 0:
            transport.abort()  # a peer that does not read would keep a graceful close open
        else:
            writer.close()
        try:
            async with asyncio.timeout(self.close_timeout):
                await writer.wait_closed()
        except asyncio.CancelledError:
            transport.abort()
            raise
        except Exception:
            transport.abort()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _victim(queue: collections.deque[_Pending]) -> _Pending:
    """The handshake to evict from a source's queue (oldest first): one that has not named
    a validator yet if there is one (a silent connection), else the oldest."""
    return next((p for p in queue if not p.named), queue[0])


def _source(writer: asyncio.StreamWriter) -> str:
    """The address a connection comes from, without its port (the unit of per-source
    limits)."""
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and name:
        return str(name[0])
    return str(name)


def _peername(writer: asyncio.StreamWriter) -> str:
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)


def _tune_socket(writer: asyncio.StreamWriter, net: PeerNetwork) -> None:
    """TCP keepalive and user timeout, so a link to a vanished host does not linger."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", net.keepalive_idle),
                        ("TCP_KEEPINTVL", net.keepalive_interval),
                        ("TCP_KEEPCNT", net.keepalive_count),
                        ("TCP_USER_TIMEOUT", net.user_timeout_ms)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)
