"""``DurableThread``: the consensus path's durable writes in one thread, in order, with
their outcome (result or exception) delivered to the awaiting task on the loop."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from node.threads import DurableThread


def test_jobs_run_in_one_thread_in_the_order_given_and_return_their_results() -> None:
    done: list[int] = []
    names: set[str] = set()

    def job(i: int, *, pause: float = 0.0) -> int:
        time.sleep(pause)  # an early job slower than the next: the order must still hold
        names.add(threading.current_thread().name)
        done.append(i)
        return i * 10

    async def main() -> list[int]:
        durable = DurableThread("durable")
        try:
            futures = [durable.run(job, i, pause=0.02 if i == 0 else 0.0) for i in range(20)]
            return list(await asyncio.gather(*futures))
        finally:
            durable.shutdown()

    results = asyncio.run(main())
    assert results == [i * 10 for i in range(20)]
    assert done == list(range(20))
    assert names == {"durable_0"}  # one thread, not the loop's
    assert threading.current_thread().name not in names


def test_an_exception_reaches_the_awaiting_task_and_later_jobs_still_run() -> None:
    def fails() -> None:
        raise OSError("disk full")

    async def main() -> str:
        durable = DurableThread()
        try:
            with pytest.raises(OSError, match="disk full"):
                await durable.run(fails)
            return str(await durable.run(lambda: "after"))
        finally:
            durable.shutdown()

    assert asyncio.run(main()) == "after"


def test_a_cancelled_waiter_does_not_break_the_thread() -> None:
    started = threading.Event()
    release = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "late"

    async def main() -> str:
        durable = DurableThread()
        try:
            task = asyncio.ensure_future(durable.run(slow))
            while not started.is_set():
                await asyncio.sleep(0.001)
            task.cancel()
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the job finished anyway (a write is never abandoned half way); the next one runs
            return str(await asyncio.wait_for(durable.run(lambda: "next"), 5))
        finally:
            durable.shutdown()

    assert asyncio.run(main()) == "next"


def test_no_job_after_shutdown() -> None:
    async def main() -> None:
        durable = DurableThread()
        assert await durable.run(lambda: 1) == 1
        durable.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            durable.run(lambda: 2)

    asyncio.run(main())
