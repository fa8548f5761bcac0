"""The pipelined audit (``AuditPool``, pieces, the source read ahead): the same outcome as
the one-block-at-a-time verifier on good and bad chains, the same error at the same height,
a failed read raised loudly after the blocks before it, and no worker left behind."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ledger.audit import (
    AuditPool,
    BytesChunk,
    ChainVerifier,
    Chunk,
    audit_chunks,
    store_blocks,
)
from ledger.blocks import Block
from ledger.errors import AuditError, LedgerError
from ledger.genesis import Genesis
from ledger.store import SqliteStore
from tests.factory import ChainBuilder
from tests.unit.test_audit import FAULTS, FX, faulty_chain, good_chain
from tests.unit.test_vectors_v11 import CHAINS
from tests.unit.test_vectors_v11 import blocks as vector_blocks
from tests.unit.test_vectors_v11 import genesis as vector_genesis


def reference(genesis: Genesis, data: list[bytes]) -> tuple[int, int, bytes] | str:
    """What the one-block-at-a-time verifier says: (height, records, tip) or the error."""
    verifier = ChainVerifier(genesis)
    try:
        for block in data:
            verifier.verify_next(block)
    except AuditError as exc:
        return str(exc)
    return verifier.height, verifier.records, verifier.tip_hash


def pipelined(genesis: Genesis, data: list[bytes], pool: AuditPool, piece_bytes: int,
              chunk: int = 3) -> tuple[int, int, bytes] | str:
    chunks = [BytesChunk(1 + i, list[bytes | None](data[i:i + chunk]))
              for i in range(0, len(data), chunk)]
    try:
        report = audit_chunks(genesis, chunks, pool=pool, piece_bytes=piece_bytes)
    except AuditError as exc:
        return str(exc)
    return report.height, report.records, report.tip_hash


@pytest.fixture
def pool2() -> Iterator[AuditPool]:
    with AuditPool(FX.genesis, 2) as pool:
        yield pool


@pytest.mark.parametrize("piece_bytes", [1, 600, 1 << 20])
def test_a_good_chain_gives_the_same_report_in_any_pieces(pool2: AuditPool,
                                                           piece_bytes: int) -> None:
    data = [blk.to_wire() for blk in good_chain(9).blocks]
    assert pipelined(FX.genesis, data, pool2, piece_bytes) == reference(FX.genesis, data)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_each_fault_gives_the_same_message_at_the_same_height(
        pool2: AuditPool, fault: Callable[[ChainBuilder], Block]) -> None:
    data = faulty_chain(fault)
    expected = reference(FX.genesis, data)
    assert isinstance(expected, str) and expected.startswith("height 3: ")
    for piece_bytes in (1, 1 << 20):
        assert pipelined(FX.genesis, data, pool2, piece_bytes) == expected
    with AuditPool(FX.genesis, 1) as inline:
        assert pipelined(FX.genesis, data, inline, 1) == expected


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_every_v11_vector_gives_the_same_outcome_in_worker_processes(name: str) -> None:
    g = vector_genesis()
    data = vector_blocks(name)
    expected = reference(g, data)
    if CHAINS[name]["valid"]:
        assert not isinstance(expected, str)
    else:
        bad = CHAINS[name]["first_bad_height"]
        assert isinstance(expected, str) and expected.startswith(f"height {bad}: ")
    with AuditPool(g, 2) as pool:
        for piece_bytes, chunk in ((1, 1), (1, 4), (1 << 20, 2)):
            assert pipelined(g, data, pool, piece_bytes, chunk) == expected


def test_workers_fork_without_threads_and_use_the_fork_server_with_them() -> None:
    data = [blk.to_wire() for blk in good_chain(4).blocks]
    alone = threading.active_count() == 1  # (a test runner may run threads of its own)
    with AuditPool(FX.genesis, 2) as pool:
        assert pool.method == ("fork" if alone else "forkserver")
        assert pipelined(FX.genesis, data, pool, 1) == reference(FX.genesis, data)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with AuditPool(FX.genesis, 2) as pool:
            assert pool.method == "forkserver"
            assert pipelined(FX.genesis, data, pool, 1) == reference(FX.genesis, data)
    finally:
        stop.set()
        other.join()


class _Cut(LedgerError):
    """A download that stopped."""


def _cut_after(data: list[bytes], n: int) -> Iterator[Chunk]:
    for i, block in enumerate(data[:n]):
        yield BytesChunk(1 + i, [block])
    raise _Cut(f"connection lost after block {n}")


def test_a_source_that_fails_is_raised_after_the_blocks_before_it() -> None:
    data = [blk.to_wire() for blk in good_chain(8).blocks]
    seen: list[int] = []
    with pytest.raises(_Cut, match="after block 5"):
        audit_chunks(FX.genesis, _cut_after(data, 5), workers=2,
                     on_block=lambda s: seen.append(s.height))
    assert seen == [1, 2, 3, 4, 5]  # every block read was checked, then the failure


def test_a_bad_block_before_a_failed_read_is_the_one_reported() -> None:
    data = faulty_chain(FAULTS[0])
    with pytest.raises(AuditError) as info:
        audit_chunks(FX.genesis, _cut_after(data, 4), workers=2)
    assert info.value.height == 3


def test_store_blocks_reads_a_store_and_names_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as s:
        b = ChainBuilder(FX, s)
        for i in range(12):
            b.add(i % 4)
    with SqliteStore(path, readonly=True) as store:
        report = audit_chunks(FX.genesis, store_blocks(store, 1, store.height, 5), workers=2)
    assert (report.height, report.records) == (12, sum(i % 4 for i in range(12)))
    with sqlite3.connect(path) as db:  # blob || blob is TEXT: this row no longer reads
        db.execute("UPDATE records SET envelope = envelope || X'ff' WHERE seq = 5")
    seen: list[int] = []
    with SqliteStore(path, readonly=True) as store, pytest.raises(AuditError) as info:
        audit_chunks(FX.genesis, store_blocks(store, 1, store.height, 5), workers=2,
                     on_block=lambda s: seen.append(s.height))
    height = info.value.height  # the block holding log index 5 (blocks of 0, 1, 2, 3 ...)
    assert height == 4 and seen == [1, 2, 3], str(info.value)


def test_no_worker_or_thread_outlives_an_audit() -> None:
    data = [blk.to_wire() for blk in good_chain(6).blocks]
    bad = faulty_chain(FAULTS[0])
    threads = threading.active_count()
    audit_chunks(FX.genesis, [BytesChunk(1, list[bytes | None](data))], workers=2,
                 piece_bytes=1)
    with pytest.raises(AuditError):
        audit_chunks(FX.genesis, [BytesChunk(1, list[bytes | None](bad))], workers=2,
                     piece_bytes=1)
    with pytest.raises(_Cut):
        audit_chunks(FX.genesis, _cut_after(data, 3), workers=2)
    with AuditPool(FX.genesis, 2) as pool, pytest.raises(AuditError):
        audit_chunks(FX.genesis, [BytesChunk(1, list[bytes | None](bad))], pool=pool)
    assert multiprocessing.active_children() == []
    assert threading.active_count() == threads
