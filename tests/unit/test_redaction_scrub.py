"""The redaction's physical erasure off the commit path (SPEC section 10, issue 15).

A redaction block clears its pairs in its own transaction (O(the pairs named)) and marks the
``sealed`` rebuild pending, durably, in the same write; ``SqliteStore.scrub`` does the one
rebuild that removes every copy SQLite left of the cleared cells (O(the pairs held)), however
many redaction blocks came before it; an open for writing does it if a crash came first;
the node spaces the rebuilds out (``node.payloads.SCRUB_REBUILD_INTERVAL_S``), and a
redaction that commits meanwhile gets its rebuild when the interval ends."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
import types
from pathlib import Path

import pytest

from ledger.records import Record, SealedPayload
from ledger.store.sqlite import SqliteStore
from node.payloads import SCRUB_REBUILD_INTERVAL_S, SCRUB_WAIT_SLICE_S, PayloadSync
from tests.factory import ChainBuilder, redaction_record
from tests.unit.test_one_rule import A1, A2, GOVERNED, GX
from tests.unit.test_payload_store import _leaked, sealed


def healed(path: Path, count: int, tag: str, *, pad: tuple[int, ...] = (10, 60, 200, 700),
           autocheckpoint: bool = True
           ) -> tuple[SqliteStore, ChainBuilder, list[tuple[Record, SealedPayload]]]:
    """A store of ``count`` sealed records whose pairs arrived after them, one at a time in
    no order (rows grown mid-table: SQLite moves cells and leaves copies behind)."""
    rnd = random.Random(count)
    store = SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config,
                        autocheckpoint=autocheckpoint)
    builder = ChainBuilder(GX, store)
    records = [sealed(n, f"{tag}-{n:05d}-MARK".encode(), pad=rnd.choice(pad))
               for n in range(count)]
    for i in range(0, count, 100):
        store.append(builder.block([r for r, _ in records[i:i + 100]]))
    order = list(range(count))
    rnd.shuffle(order)
    for n in order:
        assert store.put_payloads({records[n][0].id: records[n][1]}).stored
    return store, builder, records


def redact(store: SqliteStore, builder: ChainBuilder, ids: list[bytes], k: int) -> None:
    store.append(builder.block([redaction_record(GOVERNED.config, A1, ids, approvers=[A1, A2],
                                                 nonce=2_000_000 + k)]))


def scrubbing_node(path: Path, count: int, marker: str
                   ) -> tuple[SqliteStore, ChainBuilder, list[tuple[Record, SealedPayload]],
                              PayloadSync]:
    """A scrubbed store of ``count`` healed pairs (``healed``) and a ``PayloadSync`` on a
    stand-in node holding it, whose scrub task the test drives."""
    store, builder, records = healed(path, count, marker)
    assert store.scrub()
    node = types.SimpleNamespace(store=store, stopping=False,
                                 spawn=lambda coro: asyncio.ensure_future(coro))
    return store, builder, records, PayloadSync(node, 1.0)  # type: ignore[arg-type]


def markers(tag: str, ns: list[int]) -> dict[int, bytes]:
    return {n: f"{tag}-{n:05d}-MARK".encode() for n in ns}


def test_redaction_blocks_in_a_row_commit_cheaply_and_one_scrub_rebuilds_once(
        tmp_path: Path) -> None:
    """Eight redaction blocks of one record each: no commit rebuilds (each writes a few
    pages to the WAL, not the table), the flag is pending until one ``scrub`` rebuilds once
    for all of them, and ``scrub(rebuild=False)`` leaves it pending and says so."""
    store, builder, records = healed(tmp_path / "s.db", 300, "ROW", pad=(3000,),
                                     autocheckpoint=False)
    assert store.scrub() and not store.rebuild_pending()
    (table_bytes,) = sqlite3.connect(tmp_path / "s.db").execute(
        "SELECT SUM(pgsize) FROM dbstat WHERE name = 'sealed'").fetchone()
    assert table_bytes > 1_000_000
    gone = list(range(0, 16, 2))
    grown = []
    for k, n in enumerate(gone):
        before = store.wal_bytes()
        redact(store, builder, [records[n][0].id], k)
        grown.append(store.wal_bytes() - before)
        assert store.rebuild_pending() and store.sealed_rebuilds == 0
    # a redaction block's write is O(the pairs it names), not O(the table)
    assert max(grown) < table_bytes / 8, (grown, table_bytes)
    print(f"WAL bytes per redaction block {grown}, sealed table {table_bytes}")
    assert store.payloads(records[n][0].id for n in gone) == {}
    assert not store.scrub(rebuild=False)  # the WAL only: the rebuild is still due
    assert store.rebuild_pending() and store.sealed_rebuilds == 0
    assert store.scrub()
    assert store.sealed_rebuilds == 1 and not store.rebuild_pending()
    assert store.scrub() and store.sealed_rebuilds == 1  # nothing pending: no rebuild
    store.close()
    assert _leaked(tmp_path, markers("ROW", gone)) == []
    assert len(_leaked(tmp_path, markers("ROW", list(range(300))))) == 300 - len(gone)


def test_a_redaction_that_cleared_no_pair_leaves_nothing_pending(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    (a, _), = [sealed(1, b"NEVER-HELD")]
    store.append(builder.block([a]))  # committed without its pair (as by block sync)
    redact(store, builder, [a.id], 0)
    assert not store.rebuild_pending()
    assert store.scrub() and store.sealed_rebuilds == 0
    store.close()


def test_the_pending_rebuild_survives_a_crash_and_the_next_open_does_it(
        tmp_path: Path) -> None:
    """The files as a crash right after the redaction's commit leaves them (no scrub ran):
    the flag is in the committed state, and the next open for writing rebuilds before
    anything reads, so the node never runs with the copies in its file."""
    live = tmp_path / "live"
    live.mkdir()
    store, builder, records = healed(live / "s.db", 400, "CRASH")
    assert store.scrub()
    gone = [n for n in range(400) if n % 2]
    redact(store, builder, [records[n][0].id for n in gone], 0)
    crashed, seen = tmp_path / "crashed", tmp_path / "seen"
    for copy in (crashed, seen):
        copy.mkdir()
        for name in ("s.db", "s.db-wal"):  # as they are on disk, mid-run
            shutil.copy(live / name, copy / name)
    store.close()

    db = sqlite3.connect(seen / "s.db")  # what the crash left committed
    assert db.execute("SELECT value FROM meta WHERE key = 'sealed_rebuild_pending'"
                      ).fetchone() == (1,)
    db.close()
    reopened = SqliteStore(crashed / "s.db", genesis_hash=GOVERNED.hash,
                           config=GOVERNED.config)
    try:
        assert reopened.sealed_rebuilds == 1 and not reopened.rebuild_pending()
        assert reopened.payloads(records[n][0].id for n in gone) == {}
        assert (crashed / "s.db-wal").stat().st_size == 0
        assert _leaked(crashed, markers("CRASH", gone)) == []
        assert len(_leaked(crashed, markers("CRASH", list(range(400))))) == 400 - len(gone)
    finally:
        reopened.close()
    again = SqliteStore(crashed / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    assert again.sealed_rebuilds == 0  # cleared with the rebuild: done once
    again.close()


def test_a_read_only_store_reports_the_flag_and_does_nothing(tmp_path: Path) -> None:
    store, builder, records = healed(tmp_path / "s.db", 100, "RO")
    redact(store, builder, [records[3][0].id], 0)
    reader = SqliteStore(tmp_path / "s.db", readonly=True)
    try:
        assert reader.rebuild_pending()
        assert reader.scrub() and reader.sealed_rebuilds == 0
        assert store.rebuild_pending()  # the writer's: untouched by the reader
    finally:
        reader.close()
    assert store.scrub() and store.sealed_rebuilds == 1
    store.close()


def test_the_node_rebuilds_at_most_once_per_interval_and_never_loses_a_redaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PayloadSync``'s scrub task, its clock and sleep driven by the test: the first
    redaction is rebuilt at once; one 10 s later waits for the interval (counted from the
    first rebuild's end); one that commits during that wait shares the second rebuild; one
    that commits while the second rebuild runs gets a third, one interval after the
    second; a node that stops while waiting leaves the rebuild pending (the next open
    does it)."""
    store, builder, records, sync = scrubbing_node(tmp_path / "s.db", 200, "NODE")
    now = [1_000.0]
    sleeps: list[float] = []
    during_sleep: list[int] = []  # redact this record at the first slice of a wait
    rebuilt_at: list[float] = []  # clock readings at the scrubs that rebuilt
    real_scrub = store.scrub
    after_rebuild: list[int] = []  # redact this record while a scrub's rebuild runs

    def scrub(rebuild: bool = True) -> bool:
        pending = store.rebuild_pending()
        done = real_scrub(rebuild)
        if rebuild and pending:
            rebuilt_at.append(now[0])
            if after_rebuild:  # a commit, and its on-commit callback, during the scrub
                n = after_rebuild.pop()
                redact(store, builder, [records[n][0].id], n)
                loop.call_soon_threadsafe(sync.redacted_ids, [records[n][0].id])
        return done

    monkeypatch.setattr(store, "scrub", scrub)

    async def sleep(seconds: float) -> None:
        assert 0 < seconds <= SCRUB_WAIT_SLICE_S
        sleeps.append(seconds)
        if during_sleep:
            n = during_sleep.pop()
            redact(store, builder, [records[n][0].id], n)
            sync.redacted_ids([records[n][0].id])
        now[0] += seconds
        await asyncio.sleep(0)

    sync.clock = lambda: now[0]
    sync.sleep = sleep

    async def settle() -> None:
        for _ in range(1000):  # the task, and any a late redaction started
            task = sync._scrub
            if task is None or task.done():
                return
            await task
        raise AssertionError("the scrub task never ended")

    async def body() -> None:
        redact(store, builder, [records[1][0].id], 1)
        sync.redacted_ids([records[1][0].id])
        await settle()
        assert rebuilt_at == [1_000.0] and sleeps == []  # at once: nothing before it
        assert sync.rebuild_after == 1_000.0 + SCRUB_REBUILD_INTERVAL_S
        assert _leaked(tmp_path, markers("NODE", [1])) == []

        now[0] += 10.0
        during_sleep.append(3)
        after_rebuild.append(5)
        redact(store, builder, [records[2][0].id], 2)
        sync.redacted_ids([records[2][0].id])
        await settle()
        first, second, third = rebuilt_at
        assert second == pytest.approx(first + SCRUB_REBUILD_INTERVAL_S)
        assert third == pytest.approx(second + SCRUB_REBUILD_INTERVAL_S)
        assert sum(sleeps) == pytest.approx(2 * SCRUB_REBUILD_INTERVAL_S - 10.0)
        assert store.sealed_rebuilds == 3 and not store.rebuild_pending()
        assert _leaked(tmp_path, markers("NODE", [1, 2, 3, 5])) == []

        now[0] += 1.0  # within the interval: the node stops while the task waits
        redact(store, builder, [records[7][0].id], 7)
        sync.redacted_ids([records[7][0].id])
        await asyncio.sleep(0)
        sync.node.stopping = True
        await settle()
        assert store.rebuild_pending() and store.sealed_rebuilds == 3

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(body())
    finally:
        loop.close()
    store.close()
    reopened = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash,
                           config=GOVERNED.config)
    assert reopened.sealed_rebuilds == 1
    reopened.close()
    assert _leaked(tmp_path, markers("NODE", [1, 2, 3, 5, 7])) == []
