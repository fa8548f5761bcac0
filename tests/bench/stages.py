"""CPU time by stage, for ``inline_node_bench --stages``: wraps named synchronous functions
so each call adds its thread's CPU time (``time.thread_time``) to a label, exclusive of the
wrapped calls it makes (a per-thread stack). What no wrapped function covers (the event
loop, asyncio tasks and futures, the in-memory transport, thread hand-offs) is the process
CPU time minus the labelled sum. A wrapper costs about a microsecond per call: the
per-record wrappers (decode, signature) add that to their own label."""

from __future__ import annotations

import collections
import functools
import importlib
import threading
import time
from collections.abc import Callable
from typing import Any

TOTALS: collections.Counter[str] = collections.Counter()
CALLS: collections.Counter[str] = collections.Counter()
_local = threading.local()
_lock = threading.Lock()

#: (module, attribute path, label): a function or method, patched where it is looked up.
STAGES = [
    ("ledger.encoding", "split_batch", "split batch (gossip frames, client batches)"),
    ("node.runtime", "split_batch", "split batch (gossip frames, client batches)"),
    ("tests.bench.sealed_node_bench", "split_batch", "split batch (gossip frames, client batches)"),
    ("node.mempool", "decode", "record decode (Record.from_wire)"),
    ("node.mempool", "is_valid_signature", "signature check (libsodium)"),
    ("node.mempool", "Mempool.precheck", "precheck: the rest (check_record, cost, loop)"),
    ("node.mempool", "Mempool._look_up", "mempool _look_up (less the store)"),
    ("node.mempool", "Mempool.admit", "admit (state checks, add)"),
    ("node.mempool", "VerifiedCache.remember", "verified cache: remember (sha256)"),
    ("node.mempool", "Mempool.remove_committed", "mempool removal at commit"),
    ("node.runtime", "packb", "packb in runtime (gossip frames)"),
    ("node.runtime", "Node.send_frame", "send_frame (metrics, memnet enqueue)"),
    ("node.runtime", "Node.on_frame", "on_frame (frame decode, dispatch)"),
    ("node.runtime", "Node.submit", "submit: the rest"),  # async: sync parts only
    ("node.runtime", "Node._send_proposal", "proposal encode (compact)"),
    ("node.runtime", "Node._contents_match", "proposal rebuild: records_root check"),
    ("ledger.consensus.messages", "UndecodedCompactProposal.slots", "proposal rebuild: slots"),
    ("ledger.consensus.core", "ConsensusCore.check_block", "check_block (per-record state)"),
    ("ledger.consensus.core", "ConsensusCore.handle", "consensus core: the rest"),
    ("ledger.consensus.core", "ConsensusCore._fresh_records", "proposer: fresh records"),
    ("ledger.store.sqlite", "SqliteStore.append", "SQLite append (block, index, log)"),
    ("ledger.store.sqlite", "SqliteStore.seen_ids", "store: seen_ids"),
    ("ledger.store.sqlite", "SqliteStore.seen_nonces", "store: seen_nonces"),
    ("ledger.consensus.core", "check_records", "check_block: check_records"),
    ("ledger.consensus.core", "check_extends", "check_block: check_extends (less lookups)"),
    ("ledger.store.sqlite", "check_extends", "append: check_extends (less lookups)"),
    ("node.mempool", "check_record", "precheck: check_record (less signature)"),
    ("node.mempool", "VerifiedCache.verify", "verified cache: verify (sha256, less signature)"),
    ("node.runtime", "Node._on_committed", "commit notification (waiters, metrics)"),
    ("node.service", "CommitWaiters.committed", "commit waiters"),
    ("node.files", "SlotFile.write", "signing state write (fsync)"),
]


def _wrap(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    if getattr(fn, "_stage", None) is not None:
        return fn
    is_coro = hasattr(fn, "__code__") and fn.__code__.co_flags & 0x80
    if is_coro:  # time the synchronous steps only: each resumption up to its next await
        return fn

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stack = getattr(_local, "stack", None)
        if stack is None:
            stack = _local.stack = []
        stack.append(0.0)
        t0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time() - t0
            children = stack.pop()
            if stack:
                stack[-1] += spent
            with _lock:
                TOTALS[label] += spent - children
                CALLS[label] += 1

    wrapper._stage = label  # type: ignore[attr-defined]
    return wrapper


_gc_started: dict[int, float] = {}


def _on_gc(phase: str, info: dict[str, int]) -> None:
    """The collector's own time, per generation (its thread's CPU between start and stop;
    not subtracted from the stage that triggered it)."""
    if phase == "start":
        _gc_started[threading.get_ident()] = time.thread_time()
    else:
        spent = time.thread_time() - _gc_started.pop(threading.get_ident(), time.thread_time())
        with _lock:
            GC[info["generation"]] += spent
            GC_CALLS[info["generation"]] += 1


GC: collections.Counter[int] = collections.Counter()
GC_CALLS: collections.Counter[int] = collections.Counter()


def install() -> None:
    import gc
    gc.callbacks.append(_on_gc)
    for module, path, label in STAGES:
        owner: Any = importlib.import_module(module)
        *parents, name = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        fn = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(fn, staticmethod):
            setattr(owner, name, staticmethod(_wrap(fn.__func__, label)))
        else:
            setattr(owner, name, _wrap(fn, label))


def report(process_cpu: float, records: int, nodes: int) -> None:
    per = 1e6 / records / nodes
    labelled = sum(TOTALS.values())
    for label, spent in sorted(TOTALS.items(), key=lambda kv: -kv[1]):
        print(f"  {spent * per:6.1f} us  {label}  ({CALLS[label]:,} calls)")
    print(f"  {(process_cpu - labelled) * per:6.1f} us  the rest (event loop, tasks, "
          "futures, memnet, thread hand-offs, GC outside the stages)")
    print(f"  {process_cpu * per:6.1f} us  in all, per record per node")
    for gen, spent in sorted(GC.items()):
        print(f"  (of which the cyclic collector, generation {gen}: {spent * per:.1f} us, "
              f"{GC_CALLS[gen]} collections)")
    GC.clear()
    GC_CALLS.clear()
    TOTALS.clear()
    CALLS.clear()
