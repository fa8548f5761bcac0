"""Reads never block the event loop (issue 12): ``Node.wait_for`` asks the store in a
worker thread, worker threads yield the CPU to the loop, and the node measures its own
event-loop lag for ``/metrics``.

In process, on a real SQLite store, over the fake transport of ``test_peer_budgets``."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ledger.store import RecordLocation
from node.metrics import LAG_BUCKETS, Metrics
from node.threads import SWITCH_INTERVAL_S, WORKER_NICE, favour_the_loop, worker_pool
from tests.factory import ChainBuilder
from tests.unit.consensus_helpers import FX
from tests.unit.test_peer_budgets import make_node


def test_wait_for_a_committed_record_asks_the_store_off_the_loop(tmp_path: Path) -> None:
    node = make_node(tmp_path / "n")
    builder = ChainBuilder(FX, node.store)
    builder.add(3)
    rid = builder.add(2).records[0].id  # height 2
    threads: list[str] = []
    locate = node.store.locate

    def spy(record_id: bytes) -> RecordLocation | None:
        threads.append(threading.current_thread().name)
        return locate(record_id)

    node.store.locate = spy  # type: ignore[method-assign]

    async def go() -> int:
        return await asyncio.wait_for(node.wait_for(rid), 10)

    assert asyncio.run(go()) == 2
    assert threads and threading.main_thread().name not in threads
    assert rid not in node.waiters  # resolved by the lookup: nothing left registered


def test_wait_for_a_pending_record_resolves_at_its_commit(tmp_path: Path) -> None:
    node = make_node(tmp_path / "n")
    builder = ChainBuilder(FX, node.store)
    builder.add(1)
    block = builder.block([builder.record(), builder.record()])

    async def go() -> int:
        fut = node.wait_for(block.records[1].id)
        await asyncio.sleep(0.2)  # the lookup finds nothing: still waiting
        assert not fut.done()
        node.store.append(block)
        node._on_committed(block)
        return await asyncio.wait_for(fut, 10)

    assert asyncio.run(go()) == 2


def test_the_loop_lag_probe_sees_a_blocked_loop_and_metrics_report_it() -> None:
    metrics = Metrics()

    async def go() -> None:
        probe = asyncio.ensure_future(metrics.probe_loop_lag())
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the loop blocked for 300 ms
        await asyncio.sleep(0.05)
        probe.cancel()

    asyncio.run(go())
    assert sum(metrics.loop_lag_counts) >= 3
    assert metrics.loop_lag_counts[LAG_BUCKETS.index(0.5)] >= 1  # 250 ms < lag <= 500 ms
    text = metrics.render(peers=0)
    buckets: dict[str, Any] = dict(re.findall(
        r'^ledger_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\d+)$', text, re.M))
    assert int(buckets["+Inf"]) == sum(metrics.loop_lag_counts)
    assert int(buckets["0.25"]) == int(buckets["+Inf"]) - 1
    assert "ledger_event_loop_lag_seconds_count" in text


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_worker_threads_run_below_the_event_loops_priority() -> None:
    pool = worker_pool("test", 2)
    try:
        nice = pool.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result(10)
    finally:
        pool.shutdown()
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert nice == min(19, main + WORKER_NICE)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # unchanged


def test_favour_the_loop_sets_the_executor_and_the_switch_interval() -> None:
    before = sys.getswitchinterval()
    loop = asyncio.new_event_loop()
    try:
        favour_the_loop(loop)
        assert sys.getswitchinterval() == SWITCH_INTERVAL_S
        name = loop.run_until_complete(
            loop.run_in_executor(None, lambda: threading.current_thread().name))
        assert name.startswith("node")
    finally:
        loop.close()
        sys.setswitchinterval(before)
