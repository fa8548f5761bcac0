"""Worker threads that yield the CPU to the event loop.

A node's bulk work (signature checks, decoding, block appends, history pages) runs in
worker threads; its event loop answers requests and peers. On a busy machine the loop
waited behind those threads for a CPU: in the worst 5% of a saturated node's loop-lag
probes, 40 of 47 ms were spent runnable but not running (``/proc/thread-self/schedstat``),
2 ms running. Worker threads therefore run ``WORKER_NICE`` steps below the process's
priority (Linux lets any thread lower its own), so a waking loop thread gets a CPU first.

The consensus path's durable writes are the exception (``DurableThread``): small, awaited
by the consensus loop, on every record's path.

Then the GIL: a loop thread that wakes while a worker runs Python waits for the interpreter's
switch interval (5 ms by default) before the worker must hand the GIL over, at every wake-up
and after every call that released the GIL (SQLite, libsodium, socket I/O). A node switches
every ``SWITCH_INTERVAL_S`` instead: loop-lag p99 13 -> 10 ms under saturation, throughput
not lower.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sys
import threading
from asyncio import AbstractEventLoop
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WORKER_NICE = 10
SWITCH_INTERVAL_S = 0.001


def lower_priority() -> None:
    """Thread initializer: this thread's nice value ``WORKER_NICE`` above the process's.

    Linux only (elsewhere a thread id is no process id), best effort (a sandbox may
    refuse)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid,
                       min(19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE))


def worker_pool(name: str, threads: int | None = None) -> ThreadPoolExecutor:
    """A thread pool whose threads run below the event loop's priority."""
    if threads is None:  # asyncio's default executor size
        threads = min(32, (os.cpu_count() or 1) + 4)
    return ThreadPoolExecutor(threads, thread_name_prefix=name, initializer=lower_priority)


class DurableThread:
    """One thread, at the process's own priority (not ``WORKER_NICE`` below it), for the
    consensus path's durable writes: the signing state before each signed message leaves,
    and each decided block. The consensus loop awaits every one of them, so they are on a
    record's path at any load, and most are a few hundred bytes and an ``fdatasync``. In
    the shared pool they queued behind bulk work (a batch's signature checks, a proposal's
    decode, block sync), and a lowered thread waits behind every runnable thread of normal
    priority on a busy host twice per write: to start, and when its ``fdatasync`` returns.
    One thread: the loop issues them one at a time, and they run in the order given.

    Not a ``ThreadPoolExecutor`` + ``run_in_executor``: that hop builds a
    ``concurrent.futures.Future`` (two ``threading.Condition`` objects), chains it to an
    asyncio future, checks the callable with ``inspect`` and takes two locks in ``submit``,
    ~2-3 times a height on every node even when a height carries one record. Here a job is
    one tuple on a ``SimpleQueue`` and its outcome one ``call_soon_threadsafe``."""

    def __init__(self, name: str = "durable") -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._start_lock = threading.Lock()

    def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """``fn(*args, **kwargs)`` in the thread, after every job given before it; the
        returned future (of the running loop) gets its result or exception."""
        if self._closed:
            raise RuntimeError(f"{self._name}: shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    # a daemon: a write under way when the process exits without ``shutdown``
                    # is a crash mid-write, which every durable write survives
                    thread = threading.Thread(target=self._work, name=f"{self._name}_0",
                                              daemon=True)
                    thread.start()
                    self._thread = thread
        self._jobs.put((loop, future, fn, args, kwargs))
        return future

    def shutdown(self) -> None:
        """No more jobs; the thread ends once those given are done (not waited for)."""
        self._closed = True
        self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args, kwargs = job
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # the awaiting task gets it, as from a pool
                outcome: tuple[Any, BaseException | None] = (None, exc)
            else:
                outcome = (result, None)
            del job, fn, args, kwargs
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody awaits it
                loop.call_soon_threadsafe(_settle, future, *outcome)
            del future, outcome


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any],
             tuple[Any, ...], dict[str, Any]]


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def favour_the_loop(loop: AbstractEventLoop) -> None:
    """Make ``loop`` (the node's one event loop) the thread that gets the CPU and the GIL
    first: its default executor's threads run below it, and the GIL changes hands every
    ``SWITCH_INTERVAL_S``. Process-wide: call once, from the node's entry point."""
    loop.set_default_executor(worker_pool("node"))
    sys.setswitchinterval(SWITCH_INTERVAL_S)
