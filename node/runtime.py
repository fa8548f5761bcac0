"""The node process: one queue of inputs -> consensus core -> actions executed in order.

Inputs are peer messages (from the transport), timer firings, and "records available"
nudges from the API. Each is handed to the pure core, and its actions are executed one
after the other, awaiting each: ``PersistState`` is written and fsynced before the
``Broadcast`` that follows it; ``CommitBlock`` is durable in SQLite before any client
waiting on one of its records is told (see ``ledger/consensus/core.py`` for the order).

Built apart from run: ``Node.from_config`` reads the node's files, ``Node(...)`` takes ready
parts; ``start(transport, api=)`` starts the peer links (any ``Transport``; TCP by default),
the consensus loop and optionally the HTTP API; ``serve(stop)`` waits; ``stop()`` ends it all
cleanly. ``serve_forever`` (``ledger node run``) adds the process-wide parts: signals, uvloop
and GC tuning. ``tests/unit/test_runtime_inprocess.py`` runs four nodes in one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import uvicorn

from ledger.blocks import Block, Header, check_contents, peek_cert_obj, verify_block_cert
from ledger.config import REDACT_TYPE, ConfigHistory
from ledger.consensus import (
    NO_RESERVATION,
    Action,
    BlockRequest,
    BlockResponse,
    Broadcast,
    CommitBlock,
    ConsensusCore,
    Event,
    Message,
    MessageReceived,
    Misbehaviour,
    PersistState,
    Proposal,
    RecordEvidence,
    RecordsAvailable,
    ScheduleTimeout,
    SendTo,
    ServeBlocks,
    SignedVote,
    SigningState,
    Start,
    TimeoutFired,
    encode_message,
)
from ledger.consensus.messages import (
    RecordsRequest,
    RecordsResponse,
    UndecodedBlockResponse,
    UndecodedCompactProposal,
    UndecodedProposal,
    decode_frame,
    encode_block_response,
    encode_compact_proposal,
    encode_records_request,
    encode_records_response,
    peek_block_response,
)
from ledger.crypto import PrivateKey, read_key_file
from ledger.encoding import BatchItem, packb, split_batch, unpack_exact
from ledger.errors import BlockError, CertificateError, DecodeError, LedgerError
from ledger.genesis import Genesis
from ledger.merkle import leaf_hash
from ledger.records import Record, SealedPayload
from ledger.store import SqliteStore
from ledger.store.check import check_recent
from ledger.validation import block_redactions
from node.config import ConfigError, NodeConfig, parse_address
from node.files import SlotFile, read_slots, write_durably
from node.follow import Follower
from node.mempool import AdmitResult, Mempool, MempoolFull
from node.metrics import Metrics
from node.payloads import PAYLOADS, PayloadSync
from node.peer_guard import EvidenceLog, ProposalBudget, Scores, SyncRequests, TokenBucket
from node.readiness import ReadinessProbe
from node.service import EVIDENCE_SHOWN, BlockFeed, CommitWaiters, NotAValidator, Status
from node.threads import DurableThread, favour_the_loop
from node.tls import client_context, server_context
from node.trace import TRACE_DIR, trace
from node.transport import PeerNetwork
from node.transport.peers import PeerDirectory, accepted_peers

CONSENSUS, RECORDS = 0, 1  # frame channels on the peer links (PAYLOADS = 2: node.payloads)
# Channel 3: the features a node's peer protocol reads, ``packb([name, ...])``, sent as each
# link comes up (an older node drops it as an unknown channel). A proposal goes compact only
# to a peer whose hello named COMPACT_FEATURE; to any other, whole.
FEATURES = 3
COMPACT_FEATURE = "compact-proposals/1"
MAX_FEATURES = 64
# Record fetches (to rebuild a compact proposal) answered per peer: requests and bytes per
# second, with bursts; a request beyond them is not answered (the asker's wait ends).
RECORD_FETCHES_PER_S, RECORD_FETCHES_BURST = 50.0, 100.0
RECORD_FETCH_BYTES_PER_S, RECORD_FETCH_BYTES_BURST = 32.0 * 2**20, 64.0 * 2**20
RESPONSE_OVERHEAD, RESPONSE_ITEM_OVERHEAD = 64, 16
# Of a compact proposal's wait, the share spent waiting for record gossip being admitted
# before asking for what is still missing (what arrives by gossip is not sent twice).
GOSSIP_WAIT_SHARE = 2 / 3
MAX_PEER_BACKLOG = 20_000  # peer messages waiting for the core; beyond it they are dropped
MAX_GOSSIP_TASKS = 64  # record batches from peers being admitted at once
# a new link's pending records go in frames of at most so many records and bytes
GOSSIP_FRAME_RECORDS, GOSSIP_FRAME_BYTES = 2_000, 4 * 1024 * 1024
# ... sent once the link's queue holds at most this many frames, waiting 10 ms at a time, at
# most this many times per frame (then the rest waits for the next link)
GOSSIP_QUEUE_FRAMES, GOSSIP_DRAIN_WAITS = 4, 500

# A misbehaving peer (see Misbehaviour and _misbehaved): points decay at DECAY per second;
# past LIMIT the link is dropped and the validator refused for BACKOFF_S seconds.
MISBEHAVIOUR_LIMIT = 100.0
MISBEHAVIOUR_DECAY_PER_S = 10.0
MISBEHAVIOUR_BACKOFF_S = 30.0
MALFORMED = MISBEHAVIOUR_LIMIT + 1  # one undecodable frame is enough
# How long start() waits for the API to be listening before it logs that it serves.
API_START_S = 10.0

# Block serving, per peer: blocks and bytes per second (with bursts), one serve at a time,
# at most SERVE_BATCH_BYTES read per serve, none while the link's queue is backed up.
SERVE_BLOCKS_PER_S, SERVE_BLOCKS_BURST = 64.0, 64.0
SERVE_BYTES_PER_S, SERVE_BYTES_BURST = 16.0 * 2**20, 32.0 * 2**20
SERVE_BATCH_BYTES = 16 * 2**20
SERVE_MAX_QUEUED = 8
# Proposals from one peer (each may carry a whole block to decode): frames and bytes.
PROPOSALS_PER_S, PROPOSALS_BURST = 20.0, 40.0
PROPOSAL_BYTES_PER_S, PROPOSAL_BYTES_BURST = 32.0 * 2**20, 64.0 * 2**20
# A block's bytes beyond its records' (header, certificate, framing), to bound a response
# by what the block limits allow before decoding it.
BLOCK_OVERHEAD = 64 * 1024
RECORD_OVERHEAD = 8
# Record gossip whose sealed records lack their pair or carry one that does not match.
GOSSIP_PAIR_ERRORS = frozenset({"payload_missing", "payload_mismatch"})
GOSSIP_PAIR_WEIGHT = 20.0
# Evidence: kept (and persisted) for this many heights, at most this many pairs.
EVIDENCE_WINDOW = 10_000
EVIDENCE_MAX = 1000
EVIDENCE_FLUSH_S = 1.0
# Seconds ``stop()`` waits for the API server to close, for the consensus loop to finish
# the event it is executing (a block being appended), and for the node's other tasks
# (decoding, serving blocks, admitting gossip, writing evidence) before it cancels them.
STOP_API_S = 5.0
STOP_CONSENSUS_S = 10.0
STOP_TASKS_S = 2.0
# A PASSIVE WAL checkpoint from a worker thread this often (the store's commits never
# checkpoint: ``SqliteStore(autocheckpoint=False)``); one with nothing to copy costs no fsync.
CHECKPOINT_S = 1.0
# Work this small runs on the event loop instead of in a worker thread: at most this many
# records (a signature check each, ~50-90 us) in at most this many bytes. A thread hop costs
# 0.5-1.5 ms on a busy 2-core host (the pool's wake-up and the GIL), several times the work,
# and a light-load commit took ~5 such hops on its path (docs/performance.md, "Light-load
# latency, hop by hop"); big batches and proposals still go to a thread.
INLINE_RECORDS = 1
INLINE_BYTES = 16 * 1024

log = logging.getLogger("ledger.node")

_CONSENSUS_KINDS = {1: "proposal", 2: "vote", 3: "block_request", 4: "block_response",
                    5: "compact_proposal", 6: "records_request", 7: "records_response"}


def frame_kind(frame: bytes) -> str:
    """What a peer frame carries, for ``ledger_peer_bytes_sent_total`` (read from its first
    bytes: a consensus frame is ``packb([kind, payload])`` after the channel byte)."""
    channel = frame[0] if frame else -1
    if channel == CONSENSUS:
        kind = frame[2] if len(frame) > 2 and frame[1] == 0x92 else -1
        return _CONSENSUS_KINDS.get(kind, "consensus")
    return {RECORDS: "record_gossip", PAYLOADS: "payloads", FEATURES: "features"}.get(
        channel, "other")


@dataclasses.dataclass(eq=False)
class RecordFetch:
    """One compact proposal's records being fetched: the ids still wanted, what came back
    (by id, as the peers sent them: they take precedence over this node's own envelopes),
    an event set whenever some came, the peers asked and every id asked of them. With
    ``refetch``, the records this node holds do not count (its envelopes did not match)."""

    height: int
    ids: set[bytes]
    refetch: bool = False
    got: dict[bytes, Record] = dataclasses.field(default_factory=dict)
    event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    asked: set[int] = dataclasses.field(default_factory=set)
    requested: set[bytes] = dataclasses.field(default_factory=set)


class Hooks:
    """Where a test harness may inject faults into a running node (``tests/faults.py``,
    installed by ``tests/faulty_node.py``): a shipped node runs these no-ops and has no
    switch, in its environment or anywhere else, that makes it misbehave."""

    #: True when ``blocked`` may drop frames (a broadcast then goes peer by peer)
    filters_peers = False

    def crash_point(self, point: str) -> None:
        """A step of the persistence order was reached (``after_persist``,
        ``before_commit``, ``after_commit``, ``after_group_commit``, ``torn_persist``,
        ``after_reserved_send``: a proposal sent under the reservation of the newest state
        written, before any write of its own)."""

    def torn_write(self) -> int | None:
        """Before each signing-state file write: a byte count to tear that write at (write
        only that much of the slot, then ``crash_point("torn_persist")``), or None."""
        return None

    def outgoing(self, message: Message, peers: list[int]
                 ) -> list[tuple[list[int] | None, Message]]:
        """(peers or None for all, message) pairs to send for one broadcast."""
        return [(None, message)]

    def blocked(self, peer: int) -> bool:
        """True to drop frames to and from validator ``peer``."""
        return False


class Transport(Protocol):
    """What the node needs of its peer links (``PeerNetwork`` is the real one; a test may
    pass one that moves frames through queues, ``tests/memnet.py``). Frames from peers go to
    ``Node.on_frame(peer, payload)``, on the event loop; a link coming up is told to
    ``Node.on_link(peer)``, on the event loop, before any frame of that link."""

    #: the largest payload ``send``/``broadcast`` take
    max_frame: int

    async def start(self) -> None:
        """Begin linking with the peers."""

    async def stop(self) -> None:
        """Close every link and wait for the transport's tasks to end."""

    def set_peers(self, peers: Mapping[bytes, tuple[str, int] | None]) -> None:
        """Link with exactly these validator keys (at these addresses, None if unknown):
        called before ``start`` and whenever the configuration in force changes."""

    def broadcast(self, payload: bytes) -> None:
        """Queue ``payload`` to every connected peer; never blocks."""

    def send(self, peer: int, payload: bytes) -> bool:
        """Queue ``payload`` to peer id ``peer``; False if it is not connected."""
        ...

    def disconnect(self, peer: int, reason: str, backoff_s: float = 0.0) -> None:
        """Drop the link to ``peer`` and refuse it for ``backoff_s`` seconds."""

    def connected(self) -> list[int]:
        """Peer ids with a live link, ascending (``PeerDirectory``: a genesis validator's
        id is its genesis index)."""
        ...

    def queue_length(self, peer: int) -> int:
        """Frames waiting to go to ``peer``."""
        ...


#: Builds a node's transport once the node exists (it needs ``node.on_frame``).
TransportFactory = Callable[["Node"], Transport]


def peer_addresses(config: NodeConfig, genesis: Genesis) -> dict[int, tuple[str, int]]:
    """Where to reach each other genesis validator: the config's ``peers`` (environment
    overrides included), else the ``p2p`` address genesis lists for it."""
    peers = {i: a for i, a in config.peers.items() if i != config.index}
    for v in genesis.validators:
        if v.index != config.index and v.index not in peers and v.p2p:
            peers[v.index] = parse_address(v.p2p, f"genesis validator {v.index} p2p")
    return peers


def peer_map(config: NodeConfig, genesis: Genesis, history: ConfigHistory, tip: int,
             own: bytes) -> dict[bytes, tuple[str, int] | None]:
    """The validator keys a node at height ``tip`` links with (``accepted_peers``: the
    configuration in force and the next one), each with where to reach it: the node
    config's ``peers`` entry (or ``LEDGER_PEERS``) naming the key, or naming a genesis
    validator by genesis index, else the ``p2p`` address of the newest configuration listing
    the key (None when there is none, or it does not parse: that peer must dial us).
    While our own key is in neither configuration (a node joining, or removed), the keys
    the node config names (``peer_keys``) are added: validators it may sync from that it
    cannot know yet; and always those of them no configuration of ``history`` lists (a
    validator that slept through changes replacing every validator it knows)."""
    overrides = {genesis.validators[i].pubkey: a for i, a in config.peers.items()
                 if 0 <= i < len(genesis.validators)}
    # a key named in ``peers`` is where to reach that validator, whatever else holds
    # (its configuration may list no p2p, or one unreachable from this host)
    overrides.update(config.peer_keys)
    peers: dict[bytes, tuple[str, int] | None] = {}
    accepted = accepted_peers(history, tip)
    for pubkey, p2p in accepted.items():
        if pubkey == own:
            continue
        address = overrides.get(pubkey)
        if address is None and p2p:
            try:
                address = parse_address(p2p, f"validator {pubkey.hex()[:12]} p2p")
            except ConfigError as exc:
                log.warning("%s; that validator must dial this node", exc)
        peers[pubkey] = address
    # A key the node config names that our history does not list as a validator at all
    # (no rank) is a validator of a change we have not synced: linked with even while our
    # own key is in force, else a validator that was down while every validator it knows
    # was replaced could never catch up (they rank after it and wait for it to dial).
    known = {v.pubkey for _, c in history for v in c.validators}
    for pubkey, address in config.peer_keys.items():
        if pubkey != own and (own not in accepted or pubkey not in known):
            peers[pubkey] = peers.get(pubkey) or address
    return peers


def tls_contexts(config: NodeConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server, client) contexts for the peer links when the config names a certificate,
    its key and the CA; (None, None) otherwise (plain TCP)."""
    if config.tls_cert is None or config.tls_key is None or config.tls_ca is None:
        return None, None
    return server_context(config.tls_cert, config.tls_key), client_context(config.tls_ca)


def _tls(config: NodeConfig) -> bool:
    return None not in (config.tls_cert, config.tls_key, config.tls_ca)


def tcp_transport(node: Node) -> PeerNetwork:
    """The real transport: authenticated TCP (TLS when configured) links to the peers."""
    ssl_server, ssl_client = tls_contexts(node.config)
    return PeerNetwork(genesis=node.genesis, key=node.key, listen=node.config.p2p,
                       peers=peer_addresses(node.config, node.genesis),
                       directory=node.directory, on_message=node.on_frame,
                       on_link=node.on_link, ssl_server=ssl_server, ssl_client=ssl_client)


def tune_gc() -> None:
    """For a long-running node process: everything built so far lives as long as the node,
    so keep the cyclic collector from re-scanning it, and collect young objects less often
    (the hot path makes many short-lived, acyclic ones); full collections were latency
    outliers under load. Process-wide: the entry point calls it, not the node."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def evidence_path(config: NodeConfig) -> Path:
    """Where a node keeps the evidence it saw (beside its store)."""
    return config.store_path.with_name("evidence.json")


def load_evidence(path: Path) -> EvidenceLog:
    """The evidence kept at ``path``; none if it is absent or does not read (evidence is
    advisory: it never keeps a node from starting)."""
    empty = EvidenceLog(maxlen=EVIDENCE_MAX, window=EVIDENCE_WINDOW)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return empty
    except OSError as exc:
        log.warning("cannot read %s (%s); starting without evidence", path, exc)
        return empty
    try:
        return EvidenceLog.from_bytes(data, maxlen=EVIDENCE_MAX, window=EVIDENCE_WINDOW)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        log.warning("%s does not read (%s); starting without evidence", path, exc)
        return empty


def load_signing_state(path: Path, store: SqliteStore, pubkey: bytes) -> SigningState | None:
    """The newest signing state ``pubkey``'s validator persisted: of the state in its file
    (``SlotFile``, or the whole-file format of older nodes) and the one its store kept with
    a block (``GroupCommit``), the one with the higher ``last_signed`` (it grows with every
    write, so the higher one is the later). None if neither exists. A damaged file raises
    ``DecodeError``: a validator never starts from a guess."""
    try:
        found = read_slots(path)
    except ValueError as exc:
        raise DecodeError(f"{exc}: this validator's record of what it signed is lost; see "
                          f"docs/operations.md before starting it") from exc
    states = [] if found.payload is None else [SigningState.from_wire(found.payload)]
    row = store.signing_state(pubkey)
    if row is not None:
        states.append(SigningState.from_wire(row))
    # On a tie the file's (first): a clean stop's rewrite of the store's state without its
    # reservation (``Node._final_signing_state``), or the copy a start made.
    return max(states, key=lambda s: s.last_signed, default=None)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _item_bytes(item: BatchItem) -> int:
    return len(item) if isinstance(item, bytes) else sum(len(x) for x in item)


def small_work(count: int, size: int) -> bool:
    """``count`` records in ``size`` bytes are cheaper to check on the loop than the hop
    to a worker thread (``INLINE_RECORDS``, ``INLINE_BYTES``)."""
    return count <= INLINE_RECORDS and size <= INLINE_BYTES


def _traced(tag: str, height: int, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, tracing (when tracing) its start and end in the worker thread that runs it
    (``<tag>_thread_in``, ``<tag>_thread_out``): the hop's wait apart from the work."""
    if TRACE_DIR is None:
        return fn

    def run(*args: Any, **kwargs: Any) -> Any:
        trace(tag + "_thread_in", height)
        try:
            return fn(*args, **kwargs)
        finally:
            trace(tag + "_thread_out", height)

    return run


class GroupCommit:
    """A ``PersistState`` and the ``CommitBlock`` that follows it in one event's actions,
    written in one SQLite transaction (one fsync): see ``plan_durable_writes``."""

    __slots__ = ("commit", "persist")

    def __init__(self, persist: PersistState, commit: CommitBlock) -> None:
        self.persist = persist
        self.commit = commit


# what may run after a signing state that the core emitted before it (sends, timers)
_DEFERRABLE = (Broadcast, SendTo, ScheduleTimeout)


def plan_durable_writes(actions: Sequence[Action]) -> list[Action | GroupCommit]:
    """One event's actions with fewer durable writes and the same safety.

    The rule the core's order serves: a message signed at (height, round, step) leaves the
    node only once a signing state whose ``last_signed`` is at or above that step is
    durable. ``last_signed`` grows with every ``PersistState`` (one follows each signature)
    and each state holds the newest own messages. So within a run of actions that starts at
    a ``PersistState`` and holds only sends, timers and further ``PersistState``s:

    - only the run's last state is written, at the run's first one, before any send of the
      run (it covers every message signed in the run: a prevote and the precommit that
      follows it in the same event cost one write, not two);
    - if the run ends at a ``CommitBlock``, that state is written in the block's
      transaction (``GroupCommit``, one fsync for both), and the run's sends follow the
      commit. Nothing leaves the node earlier than before; sends and the commit's effects
      (clients told, blocks served) only wait for the one write. The run's precommit now
      also waits for the block's inserts (a few ms for a large block); it completed a
      quorum here, so others need it only if they lack another validator's precommit.
      A crash before the write leaves neither the block nor the state (the node restarts
      in the height it was in, with the previous state, and signed nothing more that left
      it); after it, both.

    A state written earlier than the core asked is only more conservative: on restart the
    node refuses to sign at or below it and re-sends its messages, as after a crash between
    a ``PersistState`` and its ``Broadcast``. A ``CommitBlock`` is never moved past anything
    but the run's sends and timers (never before another commit, never before a state of
    the next height: that state is written after the block, by its own run)."""
    out: list[Action | GroupCommit] = []
    i, n = 0, len(actions)
    while i < n:
        first = actions[i]
        if not isinstance(first, PersistState):
            out.append(first)
            i += 1
            continue
        last = first
        rest: list[Action] = []
        j = i + 1
        while j < n and isinstance(actions[j], (PersistState, *_DEFERRABLE)):
            action = actions[j]
            if isinstance(action, PersistState):
                last = action
            else:
                rest.append(action)
            j += 1
        commit = actions[j] if j < n else None
        if isinstance(commit, CommitBlock) and last.state.height == commit.block.height:
            out.append(GroupCommit(last, commit))
            j += 1
        else:
            out.append(last)
        out.extend(rest)
        i = j
    return out


class Node:
    """A validator (or a follower whose key is not in the set in force: it syncs, serves
    reads and votes from the first height whose configuration lists its key): store,
    mempool, consensus core, peer links and the HTTP API."""

    def __init__(self, config: NodeConfig, genesis: Genesis, key: PrivateKey,
                 store: SqliteStore, *, persisted: SigningState | None = None,
                 evidence: EvidenceLog | None = None) -> None:
        """A node from ready parts: no file, environment or database I/O here
        (``from_config`` does it), so a test can build one around its own parts."""
        self.config = config
        self.genesis = genesis
        self.key = key
        validator = genesis.validators.by_key(key.public)
        if (validator is not None and config.index is not None
                and validator.index != config.index):
            raise ConfigError(f"{config.key_path} is validator {validator.index}, "
                              f"config says {config.index}")
        self.store = store
        self.mempool = Mempool(genesis, store, max_records=config.mempool_records,
                               max_skew_ms=config.max_clock_skew_ms)
        history = store.history  # None: a store opened without genesis's configuration
        self.core = ConsensusCore(genesis, store, self.mempool, key=key,
                                  config=config.consensus_config(genesis),
                                  persisted=persisted, verify=self.mempool.verify,
                                  config_at=None if history is None else history.at)
        # peer ids: a key's rank in the configuration history (node.transport.peers)
        self.directory = (PeerDirectory.from_history(history) if history is not None
                          else PeerDirectory(v.pubkey for v in genesis.validators))
        self.name = self._own_name()
        self._peers_applied: dict[bytes, str] | None = None  # accepted_peers last applied
        self.metrics = Metrics()
        self.faults = Hooks()
        self._signing_file = SlotFile(config.signing_state_path)
        # the newest signing state, when only the store holds it (written with a block):
        # stop() copies it to the file, which a key's move to another machine takes
        self._newest_in_store: SigningState | None = None
        # the newest signing state written (or loaded): what a clean stop rewrites without
        # its reservation when nothing was signed under it (``_final_signing_state``)
        self._last_written: SigningState | None = persisted
        self._checkpoints: asyncio.Task[None] | None = None
        # the signing-state writes and block appends the consensus loop awaits (_durably)
        self._durable = DurableThread()
        self.evidence_path = evidence_path(config)
        self.evidence = evidence or EvidenceLog(maxlen=EVIDENCE_MAX, window=EVIDENCE_WINDOW)
        self._evidence_flush: asyncio.TimerHandle | None = None
        self.scores = Scores(MISBEHAVIOUR_LIMIT, MISBEHAVIOUR_DECAY_PER_S)
        self.backoff_until: dict[int, float] = {}  # validator -> monotonic end of backoff
        self.misbehaviour: dict[int, int] = {}  # validator -> misbehaviour reports (metrics)
        self.sync_requests = SyncRequests(self.core.config.sync_batch)
        self.proposal_budget = ProposalBudget(
            next_height=self.core.config.max_future_proposals_per_peer)
        self._proposal_buckets: dict[int, tuple[TokenBucket, TokenBucket]] = {}
        self._serve_buckets: dict[int, tuple[TokenBucket, TokenBucket]] = {}
        self._serving: set[int] = set()  # peers with a block serve under way
        # ids of queued proposals decoded without their records (heights the core does not
        # read records of): see _admit_proposal
        self._stripped: set[int] = set()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.commits = CommitWaiters()  # wait=commit submissions
        self.feed = BlockFeed()  # /v1/events subscribers
        self.admitted_at: dict[bytes, float] = {}
        self.transport: Transport | None = None
        # pending timers, each with the height it is for: those of a height the core has
        # left are cancelled (_drop_stale_timers), never delivered
        self._timers: dict[asyncio.TimerHandle, int] = {}
        self._timers_height = 0  # the core's height when stale timers were last dropped
        self._tasks: set[asyncio.Future[Any]] = set()
        self._gossiping: dict[int, asyncio.Task[None]] = {}  # on_link resends, by peer
        # start/serve/stop: the consensus loop and API server tasks, the API server, and
        # whether the loop is executing an event's actions (stop() lets it finish them)
        self._consensus: asyncio.Task[None] | None = None
        self._lag_probe: asyncio.Task[None] | None = None  # ledger_event_loop_lag_seconds
        # following the chain over validators' HTTP API while not a validator and unlinked
        self.follower = Follower(self)
        # the highest height each peer's consensus messages show it committed (by key),
        # and GET /readyz's check (node.readiness)
        self.heard_heights: dict[bytes, int] = {}
        self.readiness = ReadinessProbe(self)
        self._follow: asyncio.Task[None] | None = None
        self._api: asyncio.Task[None] | None = None
        self._server: _Server | None = None
        self._handling = False
        self._unflushed = False  # frames sent since the consensus loop last yielded
        self._stopping = False
        self._stopped = False
        self.peer_backlog = 0  # peer messages queued for the core (bounded)
        self.dropped_peer_messages = 0
        # sealed payloads: fetching missing pairs, serving them, scrubbing after redactions
        self.payload_sync = PayloadSync(self, MALFORMED)
        self._payload_fetch: asyncio.Task[None] | None = None
        self._unknown_channels: set[tuple[int, int]] = set()  # (peer, channel) logged
        # compact proposals (see _send_proposal, _rebuild_proposal): whether this node
        # speaks them, the features each peer's hello named, the fetches under way by peer
        # asked, the records of recent proposals this node does not hold pending (by id,
        # oldest first, bounded: what it answers fetches with beside its mempool), and the
        # record gossip being admitted (a proposal waits for it before fetching)
        self.compact = config.compact_proposals
        self.compact_fetch_s = config.compact_fetch_ms / 1000
        self.compact_inline_s = config.compact_inline_ms / 1000
        self.peer_features: dict[int, frozenset[str]] = {}
        self._fetches: dict[int, list[RecordFetch]] = {}
        self._unanswered: dict[int, int] = {}  # peer -> records requests sent, not answered
        self._recent: OrderedDict[bytes, Record] = OrderedDict()
        self._gossip_tasks: set[asyncio.Task[None]] = set()
        self._fetch_buckets: dict[int, tuple[TokenBucket, TokenBucket]] = {}

    # -- consensus loop -------------------------------------------------------------------

    async def consensus_loop(self) -> None:
        """Feed events to the core, one at a time, executing its actions in order, until
        ``stop()``: an event's actions are never cut short (``stop`` waits for them)."""
        event: Event = Start(now_ms())
        while not self._stopping:
            self._handling = True
            try:
                await self._handle(event)
            finally:
                self._handling = False
            if self._stopping:
                return
            await self._flush_sends()
            event = await self.events.get()

    async def _flush_sends(self) -> None:
        """Let the loop hand what was just sent to the sockets before going on. uvloop
        writes a transport's data at the end of the loop iteration that wrote it, and
        ``events.get()`` with events queued (votes that arrived during a write) does not
        suspend: without this, a vote would wait for the core to handle every queued event
        (a signature check each) before it left the node."""
        if self._unflushed:
            self._unflushed = False
            await asyncio.sleep(0)

    async def _handle(self, event: Event) -> None:
        if TRACE_DIR is not None:
            trace("ev:" + type(event).__name__, self.core.height,
                   type(event.message).__name__ if isinstance(event, MessageReceived)
                   else getattr(event, "kind", ""))
        if isinstance(event, TimeoutFired) and event.height < self.core.height:
            return  # queued before the core left its height: a no-op (_drop_stale_timers)
        if isinstance(event, MessageReceived):
            self.peer_backlog -= 1
            msg = event.message
            if id(msg) in self._stripped:
                self._stripped.discard(id(msg))
                if isinstance(msg, Proposal) and 0 <= msg.height - self.core.height <= 1:
                    return  # the core caught up meanwhile: it would read the (absent) records
        # the core's clock, as ``core.handle(Tick(now))`` sets it, without that call's pass
        # over every rule: the last event left the rules at their fixpoint and the clock
        # fires none (a Tick's actions were discarded here anyway); the event's own pass
        # below sees the new time. ~10 events per height: ~4% of a light height's CPU.
        self.core.now_ms = max(self.core.now_ms, now_ms())
        invalid = sum(self.core.invalid_blocks.values())
        actions = self.core.handle(event)
        if sum(self.core.invalid_blocks.values()) != invalid:
            log.warning("a block from validator %s is invalid, no vote for it: %s",
                        getattr(event, "peer", "?"), self.core.last_invalid)
        for action in plan_durable_writes(actions):
            await self._execute(action)
        self._drop_stale_timers()
        self.metrics.height = self.store.height
        self.metrics.round = self.core.round

    async def _execute(self, action: Action | GroupCommit) -> None:
        if TRACE_DIR is not None:
            trace("act:" + type(action).__name__, self.core.height,
                   type(getattr(action, "message", None)).__name__)
        if isinstance(action, PersistState):
            await self.persist_signing_state(action.state)
            self.faults.crash_point("after_persist")
        elif isinstance(action, GroupCommit):
            self.faults.crash_point("before_commit")
            await self.persist_signing_state(action.persist.state, commit=action.commit)
        elif isinstance(action, Broadcast):
            if isinstance(action.message, BlockRequest):
                for peer in self.connected_peers():
                    self.sync_requests.asked_for(peer, action.message.height, time.monotonic())
            for peers, message in self.faults.outgoing(action.message, self.connected_peers()):
                if isinstance(message, Proposal):
                    self._send_proposal(message, peers)
                else:
                    self.send_frame(bytes([CONSENSUS]) + encode_message(message), peers)
            sent = action.message
            if (isinstance(sent, Proposal) and sent.proposer == self.core.index
                    and self._last_written is not None
                    and (sent.height, sent.round, 0) > self._last_written.last_signed):
                self.faults.crash_point("after_reserved_send")
        elif isinstance(action, SendTo):
            if isinstance(action.message, BlockRequest):
                self.sync_requests.asked_for(action.peer, action.message.height,
                                             time.monotonic())
            self.send_frame(bytes([CONSENSUS]) + encode_message(action.message), [action.peer])
        elif isinstance(action, ServeBlocks):
            self._serve(action.peer, action.start, action.stop)
        elif isinstance(action, Misbehaviour):
            self._misbehaved(action.peer, action.reason, action.weight)
        elif isinstance(action, ScheduleTimeout):
            self._schedule(action)
        elif isinstance(action, CommitBlock):
            self.faults.crash_point("before_commit")
            await self._commit_block(action)
        elif isinstance(action, RecordEvidence):
            entry = evidence_json(action.first, action.second)
            # the index is that height's (sets change): name the key too
            validators = self.core.validators_at(entry["height"])
            if 0 <= entry["validator"] < len(validators):
                entry["pubkey"] = validators[entry["validator"]].pubkey.hex()
            if self.evidence.record(entry):
                log.warning("evidence of equivocation by validator %d: %s at height %d",
                            entry["validator"], entry["kind"], entry["height"])
                self._persist_evidence()

    async def _commit_block(self, action: CommitBlock,
                            state: SigningState | None = None) -> None:
        """Append the block (with ``state``, this validator's signing state, in the same
        transaction: group commit), then tell clients, peers' feeds and the evidence log."""
        block = action.block
        # the pairs of its sealed records this node holds (its mempool's), kept in the
        # block's own write; a sealed record committed without one is fetched from peers
        pairs = self.mempool.pairs_for(r for r in block.records if r.body.sealed)
        signing = None if state is None else (self.key.public, state.to_wire())
        await self._durably(_traced("append", block.height, self.store.append), block,
                            action.last_cert, payloads=pairs, signing_state=signing)
        self.faults.crash_point("after_commit" if state is None else "after_group_commit")
        if TRACE_DIR is not None:
            trace("appended", block.height, len(block.records))
        lacking = sum(r.body.sealed and r.id not in pairs for r in block.records)
        if pairs:
            self.metrics.count_payload_pairs("with_block", len(pairs))
        if lacking:
            self.metrics.count_payload_pairs("missing_at_commit", lacking)
            self.payload_sync.nudge()
        self._on_committed(action.block)
        if self.evidence.prune(action.block.height):
            self._persist_evidence()

    def _own_name(self) -> str:
        """Our validator name in the newest configuration listing our key, else a name
        from the key (a joining node before it has synced the change that adds it)."""
        history = self.store.history
        configs = ([c for _, c in history] if history is not None else [self.genesis.config])
        for config in reversed(configs):
            v = config.validators.by_key(self.key.public)
            if v is not None:
                return v.name
        return f"node-{self.key.public.hex()[:8]}"

    def refresh_peers(self) -> None:
        """Give the transport the validator keys of the configuration in force and the next
        one (``accepted_peers``), when they changed: links open to added validators and
        close to removed ones. Called at start and after each commit."""
        history = self.store.history
        if history is None or self.transport is None:
            return
        tip = self.store.height
        accepted = accepted_peers(history, tip)
        if accepted == self._peers_applied:
            return
        first = self._peers_applied is None
        self._peers_applied = accepted
        self.directory.learn(history)
        self.name = self._own_name()
        # a transport without set_peers (a test's fake) keeps the links it has
        set_peers = getattr(self.transport, "set_peers", None)
        if set_peers is not None:
            set_peers(peer_map(self.config, self.genesis, history, tip, self.key.public))
        if not first:
            log.info("peers follow configuration version %d: %d validator keys accepted; "
                     "this node is %s", history.latest.version,
                     len(accepted) - (self.key.public in accepted),
                     "a validator" if history.latest.validators.by_key(self.key.public)
                     else "not a validator (it follows the chain)")

    async def persist_signing_state(self, state: SigningState,
                                    commit: CommitBlock | None = None) -> None:
        """Write ``state`` durably (in a worker thread); the consensus loop awaits it before
        executing the next action, the broadcast of what was just signed. Alone: one
        in-place slot write and one fdatasync of the signing-state file (``SlotFile``).
        With ``commit``: in the transaction of that block (``GroupCommit``: the block and
        the state durable by the block's one fsync), then the rest of the commit."""
        if commit is not None:
            await self._commit_block(commit, state)
            self._newest_in_store = state
            self._last_written = state
            return
        torn = self.faults.torn_write()
        try:
            await self._durably(_traced("persist", state.height, self._signing_file.write),
                                state.to_wire(), torn_at=torn)
        except OSError:
            if torn is not None:
                self.faults.crash_point("torn_persist")
            raise
        self._newest_in_store = None
        self._last_written = state
        if TRACE_DIR is not None:
            trace("persist_back", state.height)

    async def _durably(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in the node's durable-write thread (``DurableThread``:
        the writes the consensus loop awaits, apart from the shared pool's bulk work)."""
        return await self._durable.run(fn, *args, **kwargs)

    def _final_signing_state(self) -> SigningState | None:
        """What a clean stop writes: the newest state without the reservation it made for
        the next height's round-0 proposal when this node did not sign it (so the restarted
        node need not refuse it), or with what it signed under it and nothing reserved
        beyond; a refusal inherited from the state it started from and not passed stays.
        None when nothing would change, or when the core is not where such a state could
        describe it (it signed at a height it has since left without a write)."""
        core, last = self.core, self._last_written
        if last is None:
            return None
        refused = core.refused if core.refused > core.last_signed else NO_RESERVATION
        if core.last_signed == last.last_signed:  # nothing signed since: reserve nothing new
            final = dataclasses.replace(last, reserved=refused)
        elif core.last_signed[0] == core.height:  # a reserved proposal since, at this height
            final = core.signing_state(reserve=False)
        else:
            return None
        return None if final == last else final

    async def _checkpoint_loop(self) -> None:
        """Checkpoint the store's WAL every CHECKPOINT_S in a worker thread, off the
        consensus path (``SqliteStore.checkpoint``: never blocks a commit)."""
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            try:
                await asyncio.to_thread(self.store.checkpoint)
            except LedgerError as exc:  # StoreError: the next attempt may succeed
                log.warning("%s", exc)

    # -- evidence (kept across restarts) -------------------------------------------------

    @classmethod
    def from_config(cls, config: NodeConfig) -> Node:
        """Read what ``config`` names — genesis, the key (passphrase from
        ``LEDGER_KEY_PASSPHRASE``), the store (checked), the signing state and the
        evidence — and build the node from it."""
        genesis = Genesis.load(config.genesis_path)
        passphrase = os.environ.get("LEDGER_KEY_PASSPHRASE")
        key = read_key_file(config.key_path, passphrase.encode() if passphrase else None)
        validator = genesis.validators.by_key(key.public)
        if (validator is not None and config.index is not None
                and validator.index != config.index):  # before opening the store
            raise ConfigError(f"{config.key_path} is validator {validator.index}, "
                              f"config says {config.index}")
        store = SqliteStore(config.store_path, genesis_hash=genesis.hash,
                            config=genesis.config,  # rebuilds the configuration history
                            autocheckpoint=False)  # Node._checkpoint_loop does it
        assert store.history is not None
        persisted = load_signing_state(config.signing_state_path, store, key.public)
        held = read_slots(config.signing_state_path).payload  # read once more: it is whole
        if persisted is not None and held != persisted.to_wire():
            # the newest state is the one a block's transaction kept (a crash before
            # stop() copied it): the file gets it before anything is signed
            SlotFile(config.signing_state_path).write(persisted.to_wire())
        # refuse to serve a corrupted store (its tip certified by the set of its height),
        # once the signing state it may hold is in the file (an operator who then replaces
        # the store keeps it)
        check_recent(store, genesis, validators=store.history.validators_at(store.height))
        return cls(config, genesis, key, store, persisted=persisted,
                   evidence=load_evidence(evidence_path(config)))

    def _persist_evidence(self) -> None:
        """Write the evidence file within EVIDENCE_FLUSH_S (one write for a burst)."""
        if self._evidence_flush is not None:
            return

        def flush() -> None:
            self._evidence_flush = None
            task = asyncio.ensure_future(asyncio.to_thread(
                write_durably, self.evidence_path, self.evidence.to_bytes()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._evidence_flush = asyncio.get_running_loop().call_later(EVIDENCE_FLUSH_S, flush)

    # -- misbehaving peers -------------------------------------------------------------

    def _misbehaved(self, peer: int, reason: str, weight: float) -> None:
        """Score ``peer``; past the limit, drop its link and refuse it for a while."""
        self.misbehaviour[peer] = self.misbehaviour.get(peer, 0) + 1
        now = time.monotonic()
        if not self.scores.add(peer, weight, now):
            return
        log.warning("validator %d misbehaves (%s): disconnected for %g s", peer, reason,
                    MISBEHAVIOUR_BACKOFF_S)
        self.backoff_until[peer] = now + MISBEHAVIOUR_BACKOFF_S
        if self.transport is not None:
            self.transport.disconnect(peer, reason, backoff_s=MISBEHAVIOUR_BACKOFF_S)

    def backed_off(self, peer: int) -> bool:
        """``peer`` was disconnected for misbehaving and its backoff has not ended."""
        until = self.backoff_until.get(peer)
        return until is not None and time.monotonic() < until

    # -- block sync: serving ---------------------------------------------------------------

    def _serve(self, peer: int, start: int, stop: int) -> None:
        """Send ``peer`` blocks ``start`` .. ``stop - 1`` from their stored bytes, read in a
        worker thread, within its per-peer budgets (a request beyond them is dropped: the
        requester asks again)."""
        if self.transport is None or peer in self._serving or self.backed_off(peer):
            return
        if self.transport.queue_length(peer) > SERVE_MAX_QUEUED:
            return
        now = time.monotonic()
        blocks, nbytes = self._serve_buckets.setdefault(peer, (
            TokenBucket(SERVE_BLOCKS_PER_S, SERVE_BLOCKS_BURST),
            TokenBucket(SERVE_BYTES_PER_S, SERVE_BYTES_BURST)))
        count = min(stop - start, int(blocks.available(now)))
        budget = min(SERVE_BATCH_BYTES, int(nbytes.available(now)))
        if count < 1 or budget <= 0:
            self._misbehaved(peer, "block requests over the rate", 1)
            return
        blocks.spend(count, now)
        self._serving.add(peer)
        task = asyncio.ensure_future(self._serve_task(peer, start, start + count, budget,
                                                      nbytes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_task(self, peer: int, start: int, stop: int, budget: int,
                          nbytes: TokenBucket) -> None:
        try:
            max_frame = self.transport.max_frame if self.transport is not None else 0
            frames = await asyncio.to_thread(self.block_frames, start, stop, budget, max_frame)
            nbytes.spend(sum(len(f) for f in frames), time.monotonic())
            for frame in frames:
                self.send_frame(frame, [peer])
        except LedgerError as exc:
            log.error("cannot serve blocks %d..%d: %s", start, stop - 1, exc)
        finally:
            self._serving.discard(peer)

    def block_frames(self, start: int, stop: int, budget: int, max_frame: int) -> list[bytes]:
        """BlockResponse frames for ``start`` .. ``stop - 1`` built from the stored bytes
        (nothing decoded but each block's certificate), at most ``budget`` bytes (at least
        one frame) and none over ``max_frame``. Runs in a worker thread."""
        frames: list[bytes] = []
        total = 0
        previous = self.store.block_bytes(start - 1) if start > 1 else None
        last_cert = peek_cert_obj(previous) if previous is not None else None
        for height in range(start, stop):
            data = self.store.block_bytes(height)
            if data is None:
                break
            frame = bytes([CONSENSUS]) + encode_block_response(data, last_cert)
            if len(frame) > max_frame or (frames and total + len(frame) > budget):
                break
            frames.append(frame)
            total += len(frame)
            last_cert = peek_cert_obj(data)
        return frames

    def _schedule(self, t: ScheduleTimeout) -> None:
        if t.height < self.core.height:
            return  # for a height already left: the core ignores it (see _drop_stale_timers)
        loop = asyncio.get_running_loop()
        event = TimeoutFired(t.height, t.round, t.kind)

        def fire() -> None:
            if TRACE_DIR is not None:
                trace("timer", t.height, t.kind)
            self._timers.pop(handle, None)
            if t.height >= self.core.height:  # else left during the event under way
                self.events.put_nowait(event)

        handle = loop.call_later(t.delay_ms / 1000, fire)
        self._timers[handle] = t.height

    def _drop_stale_timers(self) -> None:
        """Cancel the timers of heights the core has left. A timeout of a lower height is
        a no-op to the core (``ConsensusCore._on_timeout`` acts on its own height only),
        but each height leaves its propose, prevote, precommit and resend timers behind
        (0.5-1 s long): delivered, ~3 per height woke the consensus loop for nothing at
        light load, sometimes just ahead of a vote on a record's path."""
        height = self.core.height
        if height == self._timers_height:
            return
        self._timers_height = height
        for handle in [h for h, at in self._timers.items() if at < height]:
            handle.cancel()
            del self._timers[handle]

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as one of the node's tasks (``stop`` waits for them, then cancels)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_committed(self, block: Block) -> None:
        self.mempool.remove_committed(block)
        if any(r.body.type == REDACT_TYPE for r in block.records):
            # the store deleted the named pairs in the block's write: drop them here too
            # and scrub them from the store's files
            self.payload_sync.redacted_ids(
                rid for red in block_redactions(None, block.records) for rid in red.ids)
        now = time.monotonic()
        pop = self.admitted_at.pop
        batches: dict[float, int] = {}  # records admitted together share their start
        for r in block.records:
            started = pop(r.id, None)
            if started is not None:
                batches[started] = batches.get(started, 0) + 1
        for started, count in batches.items():
            self.metrics.observe_commit_latency(now - started, count)
        self.commits.committed(block)
        self.metrics.records_committed += len(block.records)
        self.metrics.height = block.height
        self.feed.publish(block.height)
        self.refresh_peers()
        log.info("committed height %d (%d records) %s", block.height, len(block.records),
                 block.hash.hex()[:16])

    # -- peer frames ----------------------------------------------------------------------

    def send_frame(self, frame: bytes, peers: list[int] | None = None) -> None:
        """Send to ``peers`` (None: every connected validator)."""
        if self.transport is None:
            return
        self._unflushed = True
        if peers is None and not self.faults.filters_peers:
            self.transport.broadcast(frame)
            self.metrics.count_sent(frame_kind(frame),
                                    (len(frame) + 4) * len(self.transport.connected()))
            return
        for peer in self.connected_peers() if peers is None else peers:
            if not self.faults.blocked(peer):
                self._send_to(peer, frame)

    def _send_to(self, peer: int, frame: bytes) -> bool:
        """``transport.send``, counted in ``ledger_peer_bytes_sent_total``."""
        if self.transport is None or not self.transport.send(peer, frame):
            return False
        self._unflushed = True
        self.metrics.count_sent(frame_kind(frame), len(frame) + 4)
        return True

    # -- compact proposals ------------------------------------------------------------

    def _send_proposal(self, proposal: Proposal, peers: list[int] | None) -> None:
        """Send ``proposal`` to ``peers`` (None: every connected validator): compact to
        those whose hello named COMPACT_FEATURE (its records named by id, but for those
        this node admitted in the last ``compact_inline_s``: a peer may not hold them yet),
        whole to the others, and to all when it names no record by id."""
        compact: list[int] = []
        if self.compact and proposal.records:
            targets = self.connected_peers() if peers is None else peers
            compact = [q for q in targets
                       if COMPACT_FEATURE in self.peer_features.get(q, frozenset())]
        if compact:
            recent = time.monotonic() - self.compact_inline_s
            admitted = self.admitted_at
            inline = [admitted.get(r.id, 0.0) > recent for r in proposal.records]
            if all(inline):
                compact = []
            else:
                flags = iter(inline)
                body = encode_compact_proposal(proposal, lambda _: next(flags))
                self.send_frame(bytes([CONSENSUS]) + body, compact)
        if not compact:
            self.send_frame(bytes([CONSENSUS]) + encode_message(proposal), peers)
            return
        whole = [q for q in (self.connected_peers() if peers is None else peers)
                 if q not in compact]
        if whole:
            self.send_frame(bytes([CONSENSUS]) + encode_message(proposal), whole)

    def _on_features(self, peer: int, body: bytes) -> None:
        """A peer's hello on the FEATURES channel: the features its protocol reads."""
        try:
            names = unpack_exact(body, "features")
            if (type(names) is not list or len(names) > MAX_FEATURES
                    or any(type(n) is not str for n in names)):
                raise DecodeError("features: expected an array of strings")
        except LedgerError as exc:
            log.warning("dropped a malformed features frame from validator %d: %s", peer, exc)
            self._misbehaved(peer, "sent a malformed features frame", 10)
            return
        self.peer_features[peer] = frozenset(names)

    def _remember(self, records: Sequence[Record]) -> None:
        """Keep records of a proposal this node does not hold pending, to answer fetches
        (at most twice a block's records; the oldest go first)."""
        recent = self._recent
        for r in records:
            recent[r.id] = r
            recent.move_to_end(r.id)
        excess = len(recent) - 2 * self.core.config.max_block_records
        for _ in range(max(excess, 0)):
            recent.popitem(last=False)

    def _held(self, record_id: bytes) -> Record | None:
        return self.mempool.pending.get(record_id) or self._recent.get(record_id)

    def _ask_records(self, peer: int, fetch: RecordFetch, ids: Sequence[bytes]) -> bool:
        """Ask ``peer`` for ``ids`` for ``fetch``; False if it is not linked."""
        frame = bytes([CONSENSUS]) + encode_records_request(RecordsRequest(fetch.height,
                                                                           tuple(ids)))
        if self.faults.blocked(peer) or not self._send_to(peer, frame):
            return False
        fetch.asked.add(peer)
        fetch.requested.update(ids)
        self._unanswered[peer] = self._unanswered.get(peer, 0) + 1
        waiting = self._fetches.setdefault(peer, [])
        if fetch not in waiting:
            waiting.append(fetch)
        return True

    def _end_fetch(self, fetch: RecordFetch) -> None:
        for peer in fetch.asked:
            waiting = self._fetches.get(peer)
            if waiting is not None and fetch in waiting:
                waiting.remove(fetch)
                if not waiting:
                    del self._fetches[peer]

    async def _fetch(self, peer: int, fetch: RecordFetch, deadline: float) -> None:
        """Ask ``peer`` (the sender) for ``fetch.ids``, then, half way to ``deadline``, one
        other peer that speaks compact proposals for what is still missing; return when
        nothing is or at ``deadline``."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        halfway = start + (deadline - start) / 2
        self._ask_records(peer, fetch, sorted(fetch.ids))
        while fetch.ids and loop.time() < deadline:
            fetch.event.clear()
            now = loop.time()
            until = halfway if now < halfway else deadline
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fetch.event.wait(), max(until - now, 0.0))
            fetch.ids = {i for i in fetch.ids if i not in fetch.got
                         and (fetch.refetch or self._held(i) is None)}
            if fetch.ids and loop.time() >= halfway and len(fetch.asked) < 2:
                others = [q for q in self.connected_peers() if q not in fetch.asked
                          and COMPACT_FEATURE in self.peer_features.get(q, frozenset())]
                if not others or not self._ask_records(others[0], fetch, sorted(fetch.ids)):
                    fetch.asked.add(-1)  # nobody else to ask: wait for the first answer

    async def _rebuild_proposal(self, peer: int, frame: UndecodedCompactProposal,
                                size: int = INLINE_BYTES + 1) -> None:
        """Rebuild a compact proposal from the records this node holds (its mempool, recent
        proposals), those it carries and, for the rest, record gossip being admitted, then
        a fetch from the sender (and another peer), within ``compact_fetch_s``. The
        rebuilt records are checked against the header's ``records_root`` (an id names a
        record's body; a client that signed one body twice could have left this node
        another envelope): on a mismatch every named record is fetched. A proposal still
        lacking records when the wait ends is dropped: the core's propose timeout makes
        this validator prevote nil, and the round goes on without it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.compact_fetch_s
        if TRACE_DIR is not None:
            trace("rebuild_in", frame.height)
        try:
            slots, shell = ((frame.slots(self.mempool.known), frame.without_records())
                            if size <= INLINE_BYTES else await asyncio.to_thread(
                lambda: (frame.slots(self.mempool.known), frame.without_records())))
        except LedgerError as exc:
            self.peer_backlog -= 1
            log.warning("dropped a malformed proposal from validator %d: %s", peer, exc)
            self._misbehaved(peer, "sent a malformed proposal", MALFORMED)
            return
        if len(slots) > self.core.config.max_block_records:
            # never fetched: a request over the block limits gets the asker scored by an
            # honest peer (``_serve_records``)
            self.peer_backlog -= 1
            self._misbehaved(peer, "a proposal over the block limits", 60)
            return
        named = [s for s in slots if isinstance(s, bytes)]
        counts = {"inline": len(slots) - len(named), "held": 0, "waited": 0, "fetched": 0,
                  "asked": 0}
        missing = {i for i in named if self._held(i) is None}
        counts["held"] = len(named) - len(missing)
        if missing and self._gossip_tasks:  # what arrives by gossip is not fetched
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.wait(set(self._gossip_tasks)),
                                       max(deadline - loop.time(), 0.0) * GOSSIP_WAIT_SHARE)
            before = len(missing)
            missing = {i for i in missing if self._held(i) is None}
            counts["waited"] = before - len(missing)
        outcome, got = "rebuilt", {}
        for attempt in range(2):
            if missing:
                fetch = RecordFetch(frame.height, set(missing), refetch=attempt > 0)
                counts["asked"] += len(missing)
                try:
                    await self._fetch(peer, fetch, deadline)
                finally:
                    self._end_fetch(fetch)
                got.update(fetch.got)
                counts["fetched"] = len(got)
                missing = {i for i in missing
                           if i not in got and (attempt > 0 or self._held(i) is None)}
            if missing:
                self.peer_backlog -= 1
                self.metrics.count_compact("dropped", counts)
                log.info("dropped the compact proposal of validator %d for height %d round "
                         "%d: %d records still missing after %.0f ms", frame.proposer,
                         frame.height, frame.round, len(missing), self.compact_fetch_s * 1000)
                return
            found = [s if isinstance(s, Record) else got.get(s) or self._held(s)
                     for s in slots]
            if None in found:  # committed meanwhile (and left the mempool): nothing to do
                self.peer_backlog -= 1
                return
            records = tuple(r for r in found if r is not None)
            proposal = dataclasses.replace(shell, records=records)
            if attempt or (self._contents_match(proposal) if size <= INLINE_BYTES
                           else await asyncio.to_thread(self._contents_match, proposal)):
                break
            # ids held with other envelopes than the proposer's: fetch every named record
            outcome, missing, got = "refetched", set(named), {}
        self.metrics.count_compact(outcome, counts)
        if TRACE_DIR is not None:
            trace("rebuilt", frame.height, counts)
        self._remember([r for r in records if r.id not in self.mempool.pending])
        await self._verify_then_queue(peer, proposal, self._unverified_records(proposal))

    @staticmethod
    def _contents_match(proposal: Proposal) -> bool:
        """The records are those the header commits to (in a worker thread)."""
        try:
            check_contents(proposal.header, [leaf_hash(r.envelope) for r in proposal.records])
        except BlockError:
            return False
        return True

    def _serve_records(self, peer: int, request: RecordsRequest) -> None:
        """Answer a RecordsRequest with the records this node holds of those ids (its
        mempool's, with their pairs; recent proposals'), as many as fit in a frame, within
        ``peer``'s budget (beyond it: not answered)."""
        if self.transport is None or self.backed_off(peer):
            return
        if len(request.ids) > self.core.config.max_block_records:
            self._misbehaved(peer, "a records request over the block limits", 20)
            return
        now = time.monotonic()
        requests, nbytes = self._fetch_buckets.setdefault(peer, (
            TokenBucket(RECORD_FETCHES_PER_S, RECORD_FETCHES_BURST),
            TokenBucket(RECORD_FETCH_BYTES_PER_S, RECORD_FETCH_BYTES_BURST)))
        budget = min(self.transport.max_frame, int(nbytes.available(now)))
        if budget <= RESPONSE_OVERHEAD or not requests.take(1, now):
            self._misbehaved(peer, "records requests over the rate", 1)
            return
        item, pending, recent = self.mempool.batch_item, self.mempool.pending, self._recent
        items: list[BatchItem] = []
        size = RESPONSE_OVERHEAD
        for rid in request.ids:
            r = pending.get(rid) or recent.get(rid)
            if r is None:
                continue
            entry = item(r) if r.id in pending else r.envelope
            size += RESPONSE_ITEM_OVERHEAD + (len(entry) if isinstance(entry, bytes)
                                              else sum(map(len, entry)))
            if size > budget:
                break
            items.append(entry)
        frame = bytes([CONSENSUS]) + encode_records_response(
            RecordsResponse(request.height, tuple(items)))
        nbytes.spend(len(frame), now)
        self._send_to(peer, frame)

    def _take_records(self, peer: int, response: RecordsResponse) -> None:
        """A RecordsResponse: taken only from a peer asked, for a height asked (a late one
        is dropped); its records are admitted as gossip is (their pairs with them) and
        handed to the fetches waiting on them."""
        if not self._unanswered.get(peer):
            return  # a repeated response spawns nothing (it would bypass MAX_GOSSIP_TASKS)
        self._unanswered[peer] -= 1  # one response per request (``_serve_records``)
        waiting = [f for f in self._fetches.get(peer, ()) if f.height == response.height]
        if not waiting or not response.items:
            return
        self.spawn(self._admit_fetched(peer, response, waiting))

    async def _admit_fetched(self, peer: int, response: RecordsResponse,
                             waiting: list[RecordFetch]) -> None:
        """Decode a response's records (in a worker thread) and hand them to the fetches
        waiting on them at once (their signatures are checked with the proposal's, before
        the core sees it); then admit them as gossip is, so their pairs are kept for the
        commit (a pair that does not match its digest is misbehaviour)."""
        wanted = set().union(*(f.requested for f in waiting))
        envelopes = [i if isinstance(i, bytes) else i[0] for i in response.items]
        known = self.mempool.known
        try:
            decoded = await asyncio.to_thread(
                lambda: [known(e) or Record.from_wire(e) for e in envelopes])
        except LedgerError as exc:
            log.warning("dropped malformed records from validator %d: %s", peer, exc)
            self._misbehaved(peer, "sent malformed records", MALFORMED)
            return
        records = {r.id: r for r in decoded}
        for fetch in waiting:
            fetch.got.update((rid, r) for rid, r in records.items() if rid in fetch.requested)
            fetch.event.set()
        extra = len(set(records) - wanted)
        if extra:
            self._misbehaved(peer, f"sent {extra} records not asked for", 2)
        try:
            results = await self.submit(list(response.items), gossip=False)
        except (MempoolFull, NotAValidator):
            return
        bad = sum(r.error == "payload_mismatch" for r in results)
        if bad:
            self._misbehaved(peer, f"sent {bad} sealed records with a pair that does not "
                             "match", GOSSIP_PAIR_WEIGHT)

    def on_link(self, peer: int) -> None:
        """Called by the transport when a link to ``peer`` comes up: send it this node's
        pending records. Gossip at admission reaches only the peers linked then, so without
        this a record admitted while a link was down (a restart, a network fault) would wait
        for its node's own turn to propose (forever, on a chain without empty blocks whose
        other nodes never start the height). First, this node's features hello: until the
        new link's peer sends its own, it gets whole proposals."""
        self.peer_features.pop(peer, None)
        if self.compact and not self._stopping and not self.faults.blocked(peer):
            self._send_to(peer, bytes([FEATURES]) + packb([COMPACT_FEATURE]))
        if len(self.mempool) and not self._stopping and not self.faults.blocked(peer):
            earlier = self._gossiping.pop(peer, None)
            if earlier is not None:  # the link came up again: one resend per peer at a time
                earlier.cancel()
            task = self.spawn(self._gossip_out(peer))
            self._gossiping[peer] = task
            task.add_done_callback(
                lambda t: self._gossiping.pop(peer, None) if self._gossiping.get(peer) is t
                else None)

    async def _gossip_out(self, peer: int) -> None:
        """The pending records to ``peer``, oldest first, in frames of at most
        ``GOSSIP_FRAME_RECORDS`` records or ``GOSSIP_FRAME_BYTES``; each frame waits until
        the link's queue has drained to a few frames (so consensus frames never queue behind
        a whole mempool, and the peer admits the frames as they come instead of dropping
        those beyond its MAX_GOSSIP_TASKS). Those the peer holds already it answers as
        duplicates, and drops."""
        if self.transport is None:
            return
        item, limit = self.mempool.batch_item, min(GOSSIP_FRAME_BYTES, self.transport.max_frame)
        frame: list[BatchItem] = []
        size = 0
        for record in list(self.mempool.pending.values()):
            if record.id not in self.mempool.pending:
                continue  # committed while an earlier frame was sent
            entry = item(record)
            cost = len(record.envelope) + (0 if isinstance(entry, bytes)
                                           else len(entry[1]) + len(entry[2])) + 16
            if frame and (len(frame) >= GOSSIP_FRAME_RECORDS or size + cost > limit):
                if not self._send_to(peer, bytes([RECORDS]) + packb(frame)):
                    return  # the link went down again: the next link sends them
                frame, size = [], 0
                await asyncio.sleep(0)
                for _ in range(GOSSIP_DRAIN_WAITS):  # bounded: a stuck link ends the send
                    if self.transport.queue_length(peer) <= GOSSIP_QUEUE_FRAMES:
                        break
                    await asyncio.sleep(0.01)
                else:
                    return
            frame.append(entry)
            size += cost
        if frame:
            self._send_to(peer, bytes([RECORDS]) + packb(frame))

    def on_frame(self, peer: int, payload: bytes) -> None:
        """Called by the transport on the event loop for every frame from a peer."""
        if not payload or self._stopping or self.faults.blocked(peer):
            return  # stopping: nothing started now would be waited for (see stop)
        if TRACE_DIR is not None:
            trace("rx", self.core.height, f"{peer} {frame_kind(payload)}")
        if self.backed_off(peer):  # frames already in flight when it was disconnected
            self.dropped_peer_messages += 1
            return
        channel, body = payload[0], payload[1:]
        if channel == CONSENSUS:
            try:
                header = peek_block_response(body)
            except LedgerError as exc:
                log.warning("dropped a malformed message from validator %d: %s", peer, exc)
                self._misbehaved(peer, "sent a malformed block response", MALFORMED)
                return
            if header is not None:  # checked before anything else in it is decoded
                self._on_block_response(peer, header, body)
                return
            if body[:2] == b"\x92\x07" and not self._unanswered.get(peer):
                return  # a RecordsResponse (its canonical start) nobody asked for: unread
            try:
                frame = decode_frame(body)
            except LedgerError as exc:
                log.warning("dropped a malformed message from validator %d: %s", peer, exc)
                self._misbehaved(peer, "sent a malformed consensus message", MALFORMED)
                return
            if isinstance(frame, RecordsRequest):
                self._serve_records(peer, frame)
                return
            if isinstance(frame, RecordsResponse):
                self._take_records(peer, frame)
                return
            if self.peer_backlog >= MAX_PEER_BACKLOG:
                self.dropped_peer_messages += 1  # consensus re-sends; memory stays bounded
                return
            if isinstance(frame, UndecodedBlockResponse):  # not the canonical layout
                self._misbehaved(peer, "sent a malformed block response", MALFORMED)
                return
            self._heard(peer, frame)
            message: Message
            if isinstance(frame, UndecodedProposal | UndecodedCompactProposal):
                admitted = self._admit_proposal(peer, frame, len(body))
                if admitted is None or admitted is False:
                    return
                if admitted is True:
                    self.peer_backlog += 1
                    decoding = asyncio.ensure_future(
                        self._decode_proposal(peer, frame, len(body))
                        if isinstance(frame, UndecodedProposal)
                        else self._rebuild_proposal(peer, frame, len(body)))
                    self._tasks.add(decoding)
                    decoding.add_done_callback(self._tasks.discard)
                    return
                message = admitted
            else:
                message = frame
            self.peer_backlog += 1
            self.events.put_nowait(MessageReceived(peer, message))
        elif channel == RECORDS:
            try:
                # Split as the API splits a batch: nothing but bins is built, so a frame of
                # empty maps costs its bytes, not a dict each. Sealed records come as
                # [envelope, salt, payload_bytes].
                items = split_batch(body, "record gossip", len(body))
            except LedgerError as exc:
                log.warning("dropped malformed records from validator %d: %s", peer, exc)
                self._misbehaved(peer, "sent malformed record gossip", MALFORMED)
                return
            if len(self._gossip_tasks) >= MAX_GOSSIP_TASKS:
                self.dropped_peer_messages += 1
                return
            task = self.spawn(self._gossip_in(peer, items))
            self._gossip_tasks.add(task)
            task.add_done_callback(self._gossip_tasks.discard)
        elif channel == PAYLOADS:
            self.payload_sync.on_frame(peer, body)
        elif channel == FEATURES:
            self._on_features(peer, body)
        else:
            # A newer peer's channel this node does not know: dropped, lightly scored (it
            # is not garbage on a known channel), logged once per peer and channel.
            if (peer, channel) not in self._unknown_channels:
                self._unknown_channels.add((peer, channel))
                log.warning("dropped a frame on unknown channel %d from validator %d",
                            channel, peer)
            self._misbehaved(peer, f"sent a frame on unknown channel {channel}", 1)

    def _heard(self, peer: int, frame: object) -> None:
        """Note the height ``frame`` shows ``peer`` has committed (readiness)."""
        height = (frame.vote.height if isinstance(frame, SignedVote)
                  else getattr(frame, "height", None))
        key = self.directory.key(peer)
        if type(height) is int and key is not None and height - 1 > self.heard_heights.get(
                key, 0):
            self.heard_heights[key] = height - 1

    async def _gossip_in(self, peer: int, items: list[BatchItem]) -> None:
        """Admit records a peer gossiped (a full mempool drops them: the peer proposes).
        A peer gossips only pairs its own admission checked: a sealed record without its
        pair, or with one that does not match, is misbehaviour."""
        try:
            results = await self.submit(items, gossip=False)
        except (MempoolFull, NotAValidator):
            return
        bad = sum(r.error in GOSSIP_PAIR_ERRORS for r in results)
        if bad:
            self._misbehaved(peer, f"gossiped {bad} sealed records without their matching "
                             "payload", GOSSIP_PAIR_WEIGHT)

    def _admit_proposal(self, peer: int, frame: UndecodedProposal | UndecodedCompactProposal,
                        size: int) -> Proposal | bool | None:
        """Whether a proposal is worth decoding: within the block limits and ``peer``'s
        budgets (a rate in frames and bytes, a round the core tracks, two distinct proposals
        per round), and not one the core holds. ``True``: decode it (in a worker thread);
        a Proposal without records: what the core needs of a proposal for another height;
        ``None``: drop it."""
        now = time.monotonic()
        cfg = self.core.config
        if size > cfg.max_block_bytes + BLOCK_OVERHEAD + cfg.max_block_records * RECORD_OVERHEAD:
            self._misbehaved(peer, "a proposal over the block limits", 60)
            return None
        frames, nbytes = self._proposal_buckets.setdefault(peer, (
            TokenBucket(PROPOSALS_PER_S, PROPOSALS_BURST),
            TokenBucket(PROPOSAL_BYTES_PER_S, PROPOSAL_BYTES_BURST)))
        height = self.core.height
        if not (frames.take(1, now) and nbytes.take(size, now)):
            self._misbehaved(peer, "proposals over the rate", 1)
            return None
        if self.core.holds_proposal(peer, frame.height, frame.round, frame.sig):
            return None  # a re-send (gossip): the core has it; its records are not decoded
        if not 0 <= frame.height - height <= 1:
            # The core only notes the height (a sender behind or ahead): the records are
            # not decoded (that was free work on the loop for any validator).
            try:
                proposal = frame.without_records()
            except LedgerError as exc:
                log.warning("dropped a malformed proposal from validator %d: %s", peer, exc)
                self._misbehaved(peer, "sent a malformed proposal", MALFORMED)
                return None
            self._stripped.add(id(proposal))
            return proposal
        if frame.height == height and not self.core.votes.admits(frame.round, frame.proposer):
            self._misbehaved(peer, "a proposal for a round too far ahead", 1)
            return None
        if not self.proposal_budget.allow(peer, frame.height, frame.round, frame.sig, height):
            if frame.height > height:  # as the core's next-height buffer scores it
                self._misbehaved(peer, "too many proposals for the next height", 1)
            else:
                self._misbehaved(peer, "more proposals for one round than evidence needs", 5)
            return None
        return True

    async def _decode_proposal(self, peer: int, frame: UndecodedProposal,
                               size: int = INLINE_BYTES + 1) -> None:
        """Decode a proposal's records in a worker thread (records this node holds are
        looked up, not decoded): up to a block of amplifying payloads (8 MB of empty maps
        is seconds of decoding) never runs on the loop. Then verify and queue it."""
        try:
            if TRACE_DIR is not None:
                trace("decode_in", frame.height)
            proposal = (frame.decode(self.mempool.known) if size <= INLINE_BYTES
                        else await asyncio.to_thread(frame.decode, self.mempool.known))
            if TRACE_DIR is not None:
                trace("decoded", frame.height)
        except LedgerError as exc:
            self.peer_backlog -= 1
            log.warning("dropped a malformed proposal from validator %d: %s", peer, exc)
            self._misbehaved(peer, "sent a malformed proposal", MALFORMED)
            return
        unheld = self._unverified_records(proposal)
        if unheld:
            self._remember(unheld)  # a compact relay of it may name them to peers
        await self._verify_then_queue(peer, proposal, unheld)

    # -- block sync: receiving ----------------------------------------------------------

    def _on_block_response(self, peer: int, header: Header, body: bytes) -> None:
        """Take a block response (``body``, whose block ``header`` was peeked) only for a
        height asked of ``peer`` and within the block limits; decode it, check its
        certificate and sizes, then decode and verify its records, in a worker thread."""
        height = header.height
        if height < self.core.height:
            return  # late: decided meanwhile
        if not self.sync_requests.answer(peer, height, time.monotonic()):
            # An honest peer may offer blocks to a node it hears speak for an old height
            # (the core's ServeBlocks to a sender behind): not misbehaviour, but not taken.
            if height >= self.core.height + self.core.config.sync_batch:
                self._misbehaved(peer, "an unsolicited block response", 2)
            return
        if not self.within_block_limits(header, len(body)):
            self._misbehaved(peer, "a block response over the block limits", 60)
            return
        self.peer_backlog += 1
        task = asyncio.ensure_future(self._check_then_queue(peer, header, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def within_block_limits(self, header: Header, size: int) -> bool:
        """Whether a block response of ``size`` bytes whose
        block has ``header`` is within the block limits (checked before anything is decoded;
        block sync over peer links and following over HTTP alike)."""
        cfg = self.core.config
        count = header.record_count
        return count <= cfg.max_block_records and size <= (
            cfg.max_block_bytes + BLOCK_OVERHEAD + count * RECORD_OVERHEAD)

    def max_block_response(self) -> int:
        """The most bytes a block response within the block limits may have."""
        cfg = self.core.config
        return cfg.max_block_bytes + BLOCK_OVERHEAD + cfg.max_block_records * RECORD_OVERHEAD

    async def _check_then_queue(self, peer: int, header: Header, body: bytes) -> None:
        try:
            response = await asyncio.to_thread(self.check_block_response, header, body)
        except LedgerError as exc:
            self.peer_backlog -= 1
            if (isinstance(exc, CertificateError)
                    and header.height > self.core.chain.height + 1):
                # Certified by a set this node does not know yet (a change in a block it
                # has still to commit may govern it): not the peer's fault; asked again later.
                log.info("set aside block %d from validator %d until the blocks below it "
                         "are committed: %s", header.height, peer, exc)
                return
            log.warning("dropped a block response from validator %d: %s", peer, exc)
            self._misbehaved(peer, f"a block response that does not check ({exc})", 60)
            return
        except Exception:  # a bug here must not leak the backlog or kill the task silently
            self.peer_backlog -= 1
            log.exception("checking a block response from validator %d failed", peer)
            return
        self.events.put_nowait(MessageReceived(peer, response))

    def check_block_response(self, header: Header, body: bytes) -> BlockResponse:
        """The certificate first (read past the records, ``verify_block_cert``), then the
        sizes (``BlockShell.check``), the records only then, their signatures verified into
        the cache block validation asks. Runs in a worker thread; raises LedgerError."""
        frame = decode_frame(body)
        if not isinstance(frame, UndecodedBlockResponse) or frame.header != header:
            raise DecodeError("block response: not the block response it looked like")
        validators = self.core.validators_at(frame.header.height)  # that height's set
        verify_block_cert(frame.block, frame.header, self.genesis.chain_id, validators,
                          self.mempool.verify)
        shell = frame.shell()
        cfg = self.core.config
        shell.check(self.genesis.chain_id, validators,
                    max_records=cfg.max_block_records, max_bytes=cfg.max_block_bytes,
                    is_valid=self.mempool.verify)
        block = shell.decode(self.mempool.known)
        pending, verify = self.mempool.pending, self.mempool.verify
        for r in block.records:
            if r.id not in pending:
                verify(r.body.signer, r.sign_bytes(), r.sig)
        return BlockResponse(block, frame.last_cert)

    def _unverified_records(self, message: Message) -> list[Record]:
        """Records of a proposal for a height still to decide that this node has not
        admitted (so their signatures are not in the verified cache)."""
        if not isinstance(message, Proposal) or message.height < self.core.height:
            return []
        pending = self.mempool.pending
        return [r for r in message.records if r.id not in pending]

    async def _verify_then_queue(self, peer: int, message: Message,
                                 records: list[Record]) -> None:
        """Verify signatures in a worker thread, filling the cache block validation asks,
        so the consensus loop never waits on them; then hand the message to the core."""
        verify = self.mempool.verify
        if records and small_work(len(records), sum(len(r.envelope) for r in records[:2])):
            for r in records:
                verify(r.body.signer, r.sign_bytes(), r.sig)
        elif records:
            await asyncio.to_thread(
                lambda: [verify(r.body.signer, r.sign_bytes(), r.sig) for r in records])
        self.events.put_nowait(MessageReceived(peer, message))

    # -- submission (API and gossip) ------------------------------------------------------

    async def submit(self, items: Sequence[BatchItem], *, gossip: bool = True
                     ) -> list[AdmitResult]:
        """Admit a batch (envelopes, or ``[envelope, salt, payload]`` for sealed records):
        signature and digest checks in a worker thread, state checks here. A sealed record
        already committed, resubmitted with its pair, gives this node the pair if it lacks
        it (``store.put_payloads``, in a worker thread)."""
        if self.core.index is None and not self.connected_peers():
            raise NotAValidator(
                f"this node ({self.name}) is not a validator at height {self.core.height} "
                "and has no peer link, so a record admitted here would never be committed; "
                "submit to a validator of the configuration in force (GET /v1/config)")
        if TRACE_DIR is not None:
            trace("submit_in", self.core.height, f"{len(items)} {gossip}")
        checked = (self.mempool.precheck(items)
                   if small_work(len(items), sum(_item_bytes(i) for i in items[:2]))
                   else await asyncio.to_thread(self.mempool.precheck, items))
        if TRACE_DIR is not None:
            trace("prechecked", self.core.height)
        results = self.mempool.admit(checked, now_ms())
        accepted = [r.record for r in results if r.status == "accepted" and r.record]
        if accepted:
            started = time.monotonic()
            for r in accepted:
                self.admitted_at[r.id] = started
            if gossip:
                item = self.mempool.batch_item
                self.send_frame(bytes([RECORDS]) + packb([item(r) for r in accepted]))
            self.events.put_nowait(RecordsAvailable())
        self.metrics.mempool = len(self.mempool)
        heal = {r.id: r.pair for r in results
                if r.status == "duplicate" and r.id is not None and r.pair is not None}
        if heal:
            put = await asyncio.to_thread(self.store.put_payloads, heal)
            self.metrics.count_payload_pairs("healed", len(put.stored))
        return results

    def connected_peers(self) -> list[int]:
        return self.transport.connected() if self.transport is not None else []

    @property
    def stopping(self) -> bool:
        """``stop`` has begun: background loops end at their next turn."""
        return self._stopping

    # -- what the API uses (node.service.NodeService) -------------------------------------

    def pending(self, record_id: bytes) -> Record | None:
        return self.mempool.get(record_id)

    def pending_pair(self, record_id: bytes) -> SealedPayload | None:
        """The (salt, payload) pair of a pending sealed record (the read side applies the
        read policy before serving it)."""
        return self.mempool.pair(record_id)

    def status(self) -> Status:
        peers = tuple(self.connected_peers())
        keys = (self.directory.key(p) for p in peers)
        return Status(height=self.store.height, tip_hash=self.store.tip_hash(),
                      round=self.core.round, mempool=len(self.mempool),
                      index=self.core.index, peers=peers,
                      evidence=tuple(list(self.evidence)[-EVIDENCE_SHOWN:]),
                      pubkey=self.key.public, peer_keys=tuple(k for k in keys if k))

    def metrics_text(self) -> str:
        self.metrics.mempool = len(self.mempool)
        return self.metrics.render(len(self.connected_peers()), self.core.invalid_blocks)

    # -- running ------------------------------------------------------------------------

    async def start(self, transport: TransportFactory = tcp_transport, *,
                    api: bool = True) -> None:
        """Start the peer links (``transport(self)``: TCP by default, anything with the
        ``Transport`` methods in a test), the consensus loop and, with ``api``, the HTTP
        API server (a test may run the node without one)."""
        if self._consensus is not None or self._stopped:
            raise RuntimeError("Node.start(): a node starts once (build another to restart)")
        self.transport = transport(self)
        self.refresh_peers()
        await self.transport.start()
        self._consensus = asyncio.create_task(self.consensus_loop(), name="consensus")
        self._lag_probe = asyncio.create_task(self.metrics.probe_loop_lag(), name="loop lag")
        self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="checkpoints")
        self._follow = asyncio.create_task(self.follower.run(), name="follow")
        self._payload_fetch = asyncio.create_task(self.payload_sync.run(), name="payloads")
        self.payload_sync.nudge()  # pairs a previous run left missing
        if api:
            self._server = self.api_server()
            self._api = asyncio.create_task(self._server.serve(), name="api")
            # "serving" only once it is: a port already in use ends the task (uvicorn logs
            # the bind error and exits) before this line would claim otherwise
            deadline = time.monotonic() + API_START_S
            while (not self._server.started and not self._api.done()
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.01)
        cfg = self.config
        index = self.core.index
        log.info("node %s (%s) %s, peers on %s:%d", self.name,
                 f"validator {index}" if index is not None else "not a validator: following",
                 "serving {}://{}:{}".format("https" if _tls(cfg) else "http", *cfg.api)
                 if api else "without an API", *cfg.p2p)

    def api_server(self) -> _Server:
        """The uvicorn server of the HTTP API (not started)."""
        from node.api import create_app, guarded_protocol

        cfg = self.config
        tls = _tls(cfg)
        app = create_app(self, cfg)
        host, port = cfg.api
        return _Server(uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            http=guarded_protocol(cfg.api_connections_per_source, cfg.api_header_timeout),
            # Per-source limits count the connection's address: a forwarded-for header from
            # a local process would let it pose as any number of sources.
            proxy_headers=False,
            # on stop, responses still running after 1 s (event streams never end) are
            # cancelled by uvicorn, rather than the server task after STOP_API_S
            timeout_graceful_shutdown=1,
            ssl_certfile=str(cfg.tls_cert) if tls else None,
            ssl_keyfile=str(cfg.tls_key) if tls else None))

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Wait until ``stop`` is set (never, without one), or the consensus loop or the API
        server ends (an error: logged). Does not stop the node: ``stop()`` does."""
        if self._consensus is None:
            raise RuntimeError("Node.serve() before start()")
        tasks: list[asyncio.Task[Any]] = [self._consensus]
        if self._api is not None:
            tasks.append(self._api)
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        try:
            done, _ = await asyncio.wait([*tasks, *filter(None, [stopper])],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            if stopper is not None:
                stopper.cancel()
        for t in tasks:
            if t in done and not t.cancelled() and t.exception() is not None:
                log.error("%s stopped: %r", t.get_name(), t.exception())

    async def stop(self) -> None:
        """Stop cleanly, once: close the API server, let the consensus loop finish the event
        it is executing (a signing state or a block being written) and end it, cancel the
        timers, let the node's tasks end (within STOP_TASKS_S, then cancel them), write the
        evidence a pending flush would have, stop the transport and close the store."""
        if self._stopped:
            return
        self._stopped = self._stopping = True
        if self._lag_probe is not None:
            self._lag_probe.cancel()
        backgrounds = [t for t in (self._follow, self._payload_fetch, self._checkpoints)
                       if t is not None]
        for background in backgrounds:
            background.cancel()
        if backgrounds:  # bounded: Python 3.11's wait_for can swallow a cancellation
            _, stuck = await asyncio.wait(backgrounds, timeout=STOP_TASKS_S)
            for background in stuck:
                log.error("background task %s did not end when cancelled",
                          background.get_name())
        if self._server is not None and self._api is not None:
            self._server.should_exit = True
            self.commits.close()  # requests waiting for a commit answer 503 stopping now
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._api, timeout=STOP_API_S)
        clean = False  # the consensus loop ended between events: the core is consistent
        if self._consensus is not None:
            idle = not self._handling
            if idle:  # idle, waiting for an event: nothing is cut short
                self._consensus.cancel()
            done, _ = await asyncio.wait([self._consensus], timeout=STOP_CONSENSUS_S)
            if not done:
                log.error("the consensus loop did not finish its event within %g s",
                          STOP_CONSENSUS_S)
                self._consensus.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._consensus
            loop = self._consensus
            ended = loop.done() and not loop.cancelled()  # returned, or raised
            # not when an exception ended it (a failed write: the core is ahead of the store)
            clean = (idle or ended) and not (ended and loop.exception() is not None)
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        if self._tasks:  # most are a worker thread's read or check: let them end first
            _, late = await asyncio.wait(list(self._tasks), timeout=STOP_TASKS_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._evidence_flush is not None:  # write what the pending flush would have
            self._evidence_flush.cancel()
            self._evidence_flush = None
            await asyncio.to_thread(write_durably, self.evidence_path, self.evidence.to_bytes())
        final = self._final_signing_state() if clean else None
        if final is not None:  # into the file, which then holds the newest state
            await self.persist_signing_state(final)
        elif self._newest_in_store is not None:  # the file gets it too (a key's move takes it)
            await self._durably(self._signing_file.write, self._newest_in_store.to_wire())
            self._newest_in_store = None
        self._durable.shutdown()  # idle: every write it took was awaited
        if self.transport is not None:
            await self.transport.stop()
        self.store.close()
        log.info("node %s stopped", self.name)

    async def run(self, stop: asyncio.Event) -> None:
        """Run transport, consensus and the API until ``stop`` is set, then stop."""
        try:
            await self.start()
            await self.serve(stop)
        finally:
            await self.stop()


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


def serve_forever(config: NodeConfig, install: Callable[[Node], None] | None = None) -> None:
    """Build the node of ``config`` and run it until SIGINT or SIGTERM, on uvloop.

    ``install`` may change the node before it starts (a test harness installing faults)."""
    import signal

    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        favour_the_loop(loop)  # worker threads below it, a shorter GIL switch interval
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        node = Node.from_config(config)
        if install is not None:
            install(node)
        try:
            await node.start()
            tune_gc()  # after the node's long-lived objects are built, before it serves
            await node.serve(stop)
        finally:
            await node.stop()

    uvloop.run(main())
