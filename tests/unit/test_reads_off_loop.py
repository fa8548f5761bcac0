"""Reads never block the event loop (issue 12): ``?wait=commit`` asks the store in a
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
from typing import Any

import pytest

from ledger.store import RecordLocation
from node.metrics import LAG_BUCKETS, LAG_PROBE_S, Metrics
from node.threads import SWITCH_INTERVAL_S, WORKER_NICE, favour_the_loop, worker_pool
from tests.inprocess import InProcessApi, msgpack_post


def test_wait_commit_asks_the_store_off_the_loop() -> None:
    """``?wait=commit`` of a record already committed: the store lookup runs in a worker
    thread (CommitWaiters.wait, the API's lookup), never on the event loop."""
    api = InProcessApi()
    record = api.record()
    threads: list[str] = []
    locate = api.store.locate

    def spy(record_id: bytes) -> RecordLocation | None:
        threads.append(threading.current_thread().name)
        return locate(record_id)

    async def go() -> dict[str, Any]:
        async with api.client() as http:
            first = await http.post("/v1/records", **msgpack_post([record.envelope]))
            assert first.status_code == 202
            api.commit()
            api.store.locate = spy  # type: ignore[method-assign]
            again = await http.post("/v1/records?wait=commit&timeout=5",
                                    **msgpack_post([record.envelope]))
            assert again.status_code == 202, again.text
            result: dict[str, Any] = again.json()["results"][0]
            return result

    result = asyncio.run(go())
    assert result["status"] == "duplicate" and result["height"] == 1
    assert threads and threading.main_thread().name not in threads
    assert len(api.service.commits) == 0  # nothing left registered


def test_the_loop_lag_probe_sees_a_blocked_loop_and_metrics_report_it() -> None:
    metrics = Metrics()

    async def go() -> None:
        probe = asyncio.ensure_future(metrics.probe_loop_lag())
        await asyncio.sleep(2.5 * LAG_PROBE_S)  # two probes
        time.sleep(0.3)  # the loop blocked for 300 ms
        await asyncio.sleep(1.5 * LAG_PROBE_S)
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
