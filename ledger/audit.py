"""Re-verifying a chain from genesis (SPEC section 4), streaming and on every core.

The audit is split the way the rules split:

- ``check_block_alone`` needs only genesis and one block: decoding, chain id, validator
  set hash, proposer index, record count and ``records_root``, the certificate (every
  signature a valid precommit, signers holding more than 2/3 of the power), and for each
  record its signature, chain, authorisation, and uniqueness within the block. This is
  where the signature checks are, so it runs in worker processes, a chunk of blocks at a
  time.
- ``ChainVerifier.extend`` needs the chain so far: height sequence, ``prev_hash`` links
  (height 1 links to the genesis hash), strictly increasing ``time_ms``, ``log_size`` and
  ``log_root`` against the Merkle log of every envelope before, and uniqueness of record
  ids and ``(signer, nonce)`` across the chain. It runs in the calling process, in height
  order, so the first bad block is always the one reported, whichever worker found it.

Configuration changes (SPEC section 9): ``check_block_alone`` takes the configuration in
force at the block's height and returns, in its summary, the one the block makes for the next
height. A chunk is checked from the configuration the caller knew when it handed the chunk
out (version 0, i.e. nothing to send, until a change is seen) and follows the changes inside
the chunk itself; ``audit_chunks`` checks, in height order, that the configuration a chunk
started from is the one really in force there, and re-checks the chunk in the calling
process when a change in an earlier chunk made it stale. A chain without changes pays
nothing for this; a chain with one re-checks at most the chunks in flight when it is seen.
``ChainVerifier.extend`` keeps the ``ConfigHistory`` and the chain state that sealed records
and redactions need (SPEC section 10).

``ChainVerifier.verify_next`` runs both halves on one block in the calling process: the
incremental audit of a follower that checks each block as it commits
(``examples/auditor.py``). The first failure raises ``AuditError(height, reason)``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures import process as cf_process
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from ledger import merkle
from ledger.blocks import Block
from ledger.config import Config, ConfigHistory
from ledger.errors import AuditError, LedgerError, ValidationError
from ledger.genesis import Genesis
from ledger.store.base import block_change
from ledger.store.sqlite import SqliteStore
from ledger.validation import (
    Authority,
    ChainTip,
    Redaction,
    check_extends,
    check_header_fields,
    check_records,
    check_unique_within,
    config_of,
)


@dataclass(frozen=True, slots=True)
class BlockSummary:
    """What the stateful checks need from one block that passed ``check_block_alone``."""

    height: int
    hash: bytes
    prev_hash: bytes
    time_ms: int
    log_size: int
    log_root: bytes
    leaves: list[bytes]
    ids: list[bytes]
    nonces: list[tuple[bytes, int]]
    #: The id of the configuration the block was checked under (the one in force at it).
    config_id: bytes = b""
    #: The configuration the block's change makes (governing the next height), if any.
    new_config: Config | None = None
    #: Sealed records: (id, payload_digest, signer).
    sealed: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)
    redactions: tuple[Redaction, ...] = ()
    #: The change map bytes of the block's configuration change (b"" without one): what a
    #: saved audit state (``ledger.auditstate``) keeps to rebuild the history.
    change: bytes = b""

    @property
    def record_count(self) -> int:
        """Records in the block (``check_block_alone`` checked the header's count)."""
        return len(self.leaves)


def check_block_alone(data: bytes, source: Authority, expected_height: int) -> BlockSummary:
    """Every rule that needs only this block and the configuration in force at its height
    (``source``; a Genesis means version 0); AuditError names the height."""
    config = config_of(source)
    try:
        block = Block.from_wire(data)
    except LedgerError as exc:
        raise AuditError(expected_height, f"block does not decode: {exc}") from exc
    h = block.header
    height = h.height

    def bad(reason: str) -> AuditError:
        return AuditError(height, reason)

    if height != expected_height:
        raise AuditError(expected_height, f"expected height {expected_height}, got {height}")
    try:
        check_header_fields(config, h)
        block.validate_basic()
        block.cert.verify(config.chain_id, config.validators)
        effects = check_records(config, block.records)
        check_unique_within(block.records)
    except LedgerError as exc:
        raise bad(str(exc)) from exc
    ids = [r.id for r in block.records]
    nonces = [(r.body.signer, r.body.nonce) for r in block.records]
    sealed = [(r.id, r.body.payload_digest, r.body.signer) for r in block.records
              if r.body.payload_digest is not None]
    change = b""
    if effects.config is not None:
        carried = block_change(block)
        change = carried.change if carried is not None else b""
    return BlockSummary(height, h.hash, h.prev_hash, h.time_ms, h.log_size, h.log_root,
                        block.leaf_hashes(), ids, nonces, config.id, effects.config, sealed,
                        effects.redactions, change)


@dataclass
class ChainVerifier:
    """The stateful half of the audit, fed blocks in height order."""

    genesis: Genesis
    height: int = 0
    records: int = 0
    tip_hash: bytes = b""
    last_time_ms: int = -1
    log: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    seen_ids: set[bytes] = field(default_factory=set)
    seen_nonces: set[tuple[bytes, int]] = field(default_factory=set)
    history: ConfigHistory = field(init=False)
    #: Sealed records so far, id -> signer; their digests; the ids redacted.
    sealed: dict[bytes, bytes] = field(default_factory=dict)
    digests: set[bytes] = field(default_factory=set)
    redacted: set[bytes] = field(default_factory=set)
    #: Every configuration change followed: (height committed at, change map bytes).
    changes: list[tuple[int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tip_hash = self.genesis.hash
        self.history = self.genesis.history()

    @property
    def config(self) -> Config:
        """The configuration in force at the next height."""
        return self.history.latest

    def _sealed_signers(self, ids: list[bytes]) -> dict[bytes, bytes]:
        return {rid: self.sealed[rid] for rid in ids if rid in self.sealed}

    def verify_next(self, data: bytes) -> BlockSummary:
        """Check the wire bytes of block ``height + 1`` by every rule, then advance."""
        summary = check_block_alone(data, self.config, self.height + 1)
        self.extend(summary)
        return summary

    def extend(self, s: BlockSummary) -> None:
        """Check ``s`` extends the chain so far (``ledger.validation.check_extends``, the
        rule consensus and the store also apply) and was checked under the configuration
        in force at its height, then advance (following its change, if any)."""
        config = self.config
        if s.config_id != config.id:
            raise AuditError(s.height, "block was checked under another configuration than "
                                       f"the one in force (version {config.version})")
        try:
            log, _ = check_extends(
                ChainTip(self.height, self.tip_hash, self.last_time_ms, self.log), s,
                s.leaves, s.ids, s.nonces,
                seen_ids=self.seen_ids.intersection, seen_nonces=self.seen_nonces.intersection,
                digests=[d for _, d, _ in s.sealed], seen_digests=self.digests.intersection,
                redactions=s.redactions, config=config, sealed_signers=self._sealed_signers,
                redacted=self.redacted.intersection)
        except ValidationError as exc:
            raise AuditError(s.height, str(exc)) from exc
        self.seen_ids.update(s.ids)
        self.seen_nonces.update(s.nonces)
        for rid, digest, signer in s.sealed:
            self.sealed[rid] = signer
            self.digests.add(digest)
        for redaction in s.redactions:
            self.redacted.update(redaction.ids)
        if s.new_config is not None:
            self.history.append(s.height, s.new_config)
            self.changes.append((s.height, s.change))
        self.log = log
        self.height = s.height
        self.records += len(s.ids)
        self.tip_hash = s.hash
        self.last_time_ms = s.time_ms


# -- running the audit over worker processes ----------------------------------------------

@dataclass(frozen=True, slots=True)
class BytesChunk:
    """Blocks already in memory (fetched over HTTP, read from a bundle), from ``start``."""

    start: int
    blocks: list[bytes | None]


@dataclass(frozen=True, slots=True)
class StoreChunk:
    """Blocks ``[start, end)`` of an SQLite store, read by the worker itself."""

    path: str
    start: int
    end: int


Chunk = BytesChunk | StoreChunk


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """The summaries of a chunk's good blocks, then the first failure, if any."""

    summaries: list[BlockSummary]
    failure: AuditError | None


_worker_genesis: Genesis | None = None
_worker_stores: dict[str, SqliteStore] = {}


def _init_worker(genesis_bytes: bytes) -> None:
    global _worker_genesis
    _worker_genesis = Genesis.from_bytes(genesis_bytes)
    # Stores opened by the process this worker was forked from are not this worker's to
    # use (a SQLite connection must not cross a fork): open its own.
    _worker_stores.clear()


def _ready() -> bool:
    return True


def _chunk_blocks(chunk: Chunk) -> Iterator[tuple[int, bytes | None]]:
    if isinstance(chunk, BytesChunk):
        for i, data in enumerate(chunk.blocks):
            yield chunk.start + i, data
        return
    store = _worker_stores.get(chunk.path)
    if store is None:
        store = _worker_stores[chunk.path] = SqliteStore(chunk.path, readonly=True)
    for height in range(chunk.start, chunk.end):
        try:
            data = store.block_bytes(height)
        except LedgerError as exc:  # a store row that does not read: this height is bad
            raise AuditError(height, str(exc)) from exc
        yield height, data


def check_chunk(chunk: Chunk, genesis: Genesis | None = None,
                start: Config | None = None) -> ChunkResult:
    """Run ``check_block_alone`` over a chunk, stopping at its first bad block, from the
    configuration ``start`` (None: genesis's) and following the changes in the chunk."""
    genesis = genesis or _worker_genesis
    if genesis is None:
        raise RuntimeError("worker not initialised with genesis")
    config = start or genesis.config
    summaries: list[BlockSummary] = []
    height = chunk.start
    try:
        for height, data in _chunk_blocks(chunk):
            if data is None:
                return ChunkResult(summaries, AuditError(height, "block is missing"))
            summary = check_block_alone(data, config, height)
            summaries.append(summary)
            if summary.new_config is not None:
                config = summary.new_config
    except AuditError as exc:
        return ChunkResult(summaries, exc)
    except LedgerError as exc:
        return ChunkResult(summaries, AuditError(height, str(exc)))
    return ChunkResult(summaries, None)


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of a passing audit."""

    height: int
    records: int
    tip_hash: bytes
    #: Every configuration version followed, with the height it governs from.
    history: ConfigHistory | None = None

    @property
    def versions(self) -> int:
        """How many configuration versions governed the chain (1: genesis only)."""
        return len(self.history) if self.history is not None else 1


class _InlineExecutor(Executor):
    """Runs work in the calling thread (one worker, or tests)."""

    def __init__(self, genesis: Genesis) -> None:
        self._genesis = genesis

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future: Future[ChunkResult] = Future()
        future.set_result(check_chunk(args[0], self._genesis, *args[2:]))
        return future


#: Bytes of blocks handed to a worker at a time (about 300 records of 337 bytes: ~20 ms
#: of signature checks; whole blocks, so one block of 500). Small enough that the last
#: pieces of a chain keep every worker busy to the end, large enough that handing a piece
#: out costs nothing beside its checks.
PIECE_BYTES = 96 * 1024


PIPE_BYTES = 1 << 20
#: Pieces queued for the workers per worker (beyond the one each is checking).
QUEUED_PIECES = 4


def _widen_pipes(executor: ProcessPoolExecutor) -> None:
    """Give the pool's call and result pipes 1 MiB instead of Linux's 64 KiB (best effort:
    elsewhere, or past ``/proc/sys/fs/pipe-max-size``, they stay as they are).

    A piece of blocks (~100 KB) or a block's summaries (~70 KB for 500 records) does not
    fit in 64 KiB: a worker then waits, before its next piece, for this process to be
    scheduled and read its result or write it the next piece, while the other workers
    hold the cores. With room for the ``QUEUED_PIECES`` queued per worker, the next piece
    is already in the pipe and a result is left there."""
    try:
        import fcntl

        pipes = (executor._call_queue._writer, executor._result_queue._writer)  # type: ignore[attr-defined]
        for connection in pipes:
            fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


class AuditPool:
    """The worker processes an audit checks blocks in (``workers``, default every core; one
    worker: the calling thread, no process).

    Start it first thing, before the caller starts any thread (HTTP fetchers, a progress
    bar's monitor): the workers are then forked from the caller, already holding every
    module it imported, and start in milliseconds. If threads already run, forking could
    copy a lock another thread holds, so the workers start from a fork server instead,
    which imports this module once for all of them. A context manager: leaving it stops
    and joins every worker.
    """

    def __init__(self, genesis: Genesis, workers: int | None = None) -> None:
        self.genesis = genesis
        self.workers = workers or os.cpu_count() or 1
        self.method = "inline"
        self.executor: Executor
        if self.workers == 1:
            self.executor = _InlineExecutor(genesis)
            return
        context: multiprocessing.context.BaseContext
        if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods():
            self.method = "fork"
            context = multiprocessing.get_context("fork")
        else:
            self.method = "forkserver"
            server = multiprocessing.get_context("forkserver")
            server.set_forkserver_preload(["ledger.audit"])
            context = server
        # The pool queues only workers + EXTRA_QUEUED_CALLS pieces for its workers; the rest
        # wait in this process for its manager thread to hand them over. On a busy machine
        # this process can go unscheduled for longer than 3 pieces take, and the workers
        # then sit idle (a 1M-record audit ran at half speed): queue QUEUED_PIECES per worker,
        # in pipes wide enough to hold them (``_widen_pipes``).
        extra = cf_process.EXTRA_QUEUED_CALLS
        cf_process.EXTRA_QUEUED_CALLS = QUEUED_PIECES * self.workers  # type: ignore[misc]
        try:
            executor = ProcessPoolExecutor(self.workers, mp_context=context,
                                           initializer=_init_worker, initargs=(genesis.raw,))
        finally:
            cf_process.EXTRA_QUEUED_CALLS = extra  # type: ignore[misc]
        _widen_pipes(executor)
        self.executor = executor
        if self.method == "fork":
            # The first submit forks every worker, before this call returns: before any
            # thread the caller starts next.
            self.executor.submit(_ready)

    def close(self) -> None:
        """Stop and join the workers (idempotent)."""
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> AuditPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pieces(chunks: Iterable[Chunk], piece_bytes: int) -> Iterator[Chunk]:
    """Chunks of blocks in memory cut into pieces of about ``piece_bytes`` (whole blocks,
    in order); a store's chunks as they are (``store_chunks`` sizes them)."""
    for chunk in chunks:
        if not isinstance(chunk, BytesChunk):
            yield chunk
            continue
        start, size, first = chunk.start, 0, 0
        blocks = chunk.blocks
        for i, data in enumerate(blocks):
            size += len(data) if data is not None else 0
            if size >= piece_bytes or data is None:
                yield BytesChunk(start + first, blocks[first:i + 1])
                first, size = i + 1, 0
        if first < len(blocks):
            yield BytesChunk(start + first, blocks[first:])


def audit_chunks(
    genesis: Genesis,
    chunks: Iterable[Chunk],
    *,
    workers: int | None = None,
    on_block: Callable[[BlockSummary], None] | None = None,
    verifier: ChainVerifier | None = None,
    pool: AuditPool | None = None,
    piece_bytes: int = PIECE_BYTES,
) -> AuditReport:
    """Audit a chain given as consecutive chunks from height 1 (or, given ``verifier``, a
    chain verified up to ``verifier.height``, from the next height, continuing its state);
    raise AuditError at the first bad block. The signature checks run in ``pool`` (the
    caller's, left running), else in an ``AuditPool`` of ``workers`` made and stopped
    here. Blocks in memory are handed out in pieces of about ``piece_bytes``, up to four
    pieces per worker in flight: while the calling process follows the chain through one
    piece's summaries, the workers check the next ones."""
    own = pool is None
    if pool is None:
        pool = AuditPool(genesis, workers)
    executor = pool.executor
    verifier = verifier if verifier is not None else ChainVerifier(genesis)
    # Each piece in flight, with the configuration it is checked from (None: genesis's).
    window: deque[tuple[Future[ChunkResult], Chunk, Config | None]] = deque()
    source = _pieces(chunks, piece_bytes)
    ahead = (QUEUED_PIECES + 2) * pool.workers
    # Reading the source failed (a download cut off, a store row that does not read): the
    # pieces before it are still checked, in order, so a bad block before the failure is
    # the one reported; then the failure is raised as it came.
    stopped: BaseException | None = None
    try:
        while True:
            while len(window) < ahead and stopped is None:
                try:
                    chunk = next(source, None)
                except Exception as exc:  # re-raised below, after the window
                    stopped = exc
                    break
                if chunk is None:
                    break
                known = verifier.config if verifier.config.version else None
                if known is None:
                    window.append((executor.submit(check_chunk, chunk), chunk, None))
                else:
                    window.append((executor.submit(check_chunk, chunk, None, known), chunk,
                                   known))
            if not window:
                if stopped is not None:
                    raise stopped
                break
            future, chunk, assumed = window.popleft()
            try:
                result = future.result()
            except BrokenProcessPool as exc:
                raise LedgerError(f"an audit worker process died ({exc})") from exc
            in_force = verifier.config
            if (assumed or genesis.config).id != in_force.id:
                # A change in an earlier piece: this one was checked from a stale
                # configuration. Check it again here, from the one in force.
                result = check_chunk(chunk, genesis, in_force)
            for summary in result.summaries:
                verifier.extend(summary)
                if on_block is not None:
                    on_block(summary)
            if result.failure is not None:
                raise result.failure
    finally:
        for future, _, _ in window:
            future.cancel()
        if own:
            pool.close()
        else:
            for future, _, _ in window:  # the caller's pool: let the pieces left finish
                with contextlib.suppress(BaseException):
                    future.result()
    return AuditReport(verifier.height, verifier.records, verifier.tip_hash, verifier.history)


def store_blocks(store: SqliteStore, first: int, last: int,
                 blocks_per_chunk: int = 32) -> Iterator[BytesChunk]:
    """Blocks ``first..last`` of a store the caller holds open, read in the calling thread
    as the audit asks for them. A row that does not read is an AuditError at its height,
    raised after the blocks before it were handed out. (``ledger audit --db`` uses
    ``store_chunks`` instead: the workers read, and only heights cross the pipes; reading
    and sending the bytes from one process made it the bottleneck of a 1M-record audit.)"""
    start = first
    while start <= last:
        blocks: list[bytes | None] = []
        for height in range(start, min(start + blocks_per_chunk, last + 1)):
            try:
                blocks.append(store.block_bytes(height))
            except LedgerError as exc:
                if blocks:
                    yield BytesChunk(start, blocks)
                raise AuditError(height, str(exc)) from exc
        yield BytesChunk(start, blocks)
        start += len(blocks)


def store_chunks(path: str, sizes: list[tuple[int, int]],
                 records_per_chunk: int = 2000) -> Iterator[StoreChunk]:
    """Split a store's blocks into chunks of about ``records_per_chunk`` records."""
    start = None
    count = 0
    for height, n in sizes:
        if start is None:
            start = height
        count += n + 1
        if count >= records_per_chunk:
            yield StoreChunk(path, start, height + 1)
            start, count = None, 0
    if start is not None:
        yield StoreChunk(path, start, sizes[-1][0] + 1)
