"""What a record waits for at light load besides CPU and fsync (docs/performance.md,
"Structural delays on the light-load path"): timers of heights already left, a send that
waits for the consensus loop to yield, the shared worker pool for the consensus path's
durable writes, and the API's worker hops for a small submission. Four real nodes in one
event loop (``tests/memnet.py``), and the API in-process; the chain's outcome and the
signing order are those of ``test_runtime_inprocess``."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import node.api as api_module
from ledger.consensus import (
    ConsensusCore,
    Event,
    RecordsAvailable,
    Start,
    Tick,
    TimeoutFired,
    TimeoutKind,
)
from node.files import SlotFile
from node.runtime import now_ms
from tests.inprocess import InProcessApi, msgpack_post
from tests.unit.test_runtime_inprocess import (
    Cluster,
    N,
    check_signing_order,
    committed,
    run,
    same_blocks,
    submit,
)


def test_timers_of_a_height_left_are_cancelled_not_delivered(tmp_path: Path) -> None:
    """Each height schedules propose, prevote, precommit and resend timeouts that outlive
    it; the runtime cancels them when the core moves on instead of waking the consensus
    loop with timeouts it ignores."""
    cluster = Cluster(tmp_path, empty_blocks=False)
    delivered: list[tuple[int, int]] = []  # (timeout's height, core's height): to the core

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        for node in nodes:
            real = node.core.handle

            def handle(event: Event, node: Any = node, real: Any = real) -> Any:
                if isinstance(event, TimeoutFired):
                    delivered.append((event.height, node.core.height))
                return real(event)

            node.core.handle = handle  # type: ignore[method-assign]
        for _ in range(6):  # one record a height, faster than the timeouts (300 ms)
            await committed(nodes, await submit(nodes[0], 1))
        assert same_blocks(nodes) >= 6
        for node in nodes:  # what is pending is for the height under way, or the next
            assert node._timers and all(h >= node.core.height for h in node._timers.values())
        core, mark = nodes[0].core, len(delivered)
        for kind in TimeoutKind:  # what was dropped is a no-op to the core
            assert core.handle(TimeoutFired(core.height - 1, 0, kind)) == []
        del delivered[mark:]  # (no await since: only these calls)
        await asyncio.sleep(0.5)  # the old heights' timeouts would have fired by now

    run(cluster, body)
    assert not [(t, h) for t, h in delivered if t < h], delivered
    for i in range(N):
        check_signing_order(cluster.journals[i])


def test_after_an_event_that_sent_a_frame_the_loop_yields_before_the_next_event(
        tmp_path: Path) -> None:
    """uvloop hands a transport's data to the socket at the end of the loop iteration, and
    ``events.get()`` does not suspend while events are queued: a vote sent by one event
    must not wait for the core to handle every event queued behind it. After an event that
    sent something the consensus loop lets one iteration pass; after one that sent nothing
    it goes straight on (no cost to a burst of votes that send nothing)."""
    cluster = Cluster(tmp_path)
    order: list[str] = []

    async def body() -> None:
        node = cluster.from_parts(0)
        loop = asyncio.get_running_loop()
        quiet, last = RecordsAvailable(), RecordsAvailable()

        async def handle(event: Event) -> None:
            name = ("start" if isinstance(event, Start) else
                    "quiet" if event is quiet else "last")
            order.append(name)
            if name == "start":
                node._unflushed = True  # as send_frame does: this event sent a frame
            loop.call_soon(order.append, f"iteration after {name}")
            if name == "last":
                node._stopping = True

        node._handle = handle  # type: ignore[method-assign]
        node.events.put_nowait(quiet)
        node.events.put_nowait(last)
        await asyncio.wait_for(node.consensus_loop(), 10)
        node.store.close()

    run(cluster, body)
    assert order[:4] == ["start", "iteration after start", "quiet", "last"], order


def test_the_consensus_paths_durable_writes_run_in_their_own_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing states and blocks are written in the node's durable-write thread (normal
    priority, nothing else queued in it), never in the shared pool where bulk work (a
    batch's signature checks, a proposal's decode) could be ahead of them."""
    threads: dict[str, set[str]] = {"state": set(), "block": set()}
    real_write = SlotFile.write

    def write(self: SlotFile, payload: bytes, *, torn_at: int | None = None) -> None:
        threads["state"].add(threading.current_thread().name)
        real_write(self, payload, torn_at=torn_at)

    monkeypatch.setattr(SlotFile, "write", write)
    cluster = Cluster(tmp_path, empty_blocks=False)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        for node in nodes:
            real_append = node.store.append

            def append(*args: Any, real: Any = real_append, **kwargs: Any) -> None:
                threads["block"].add(threading.current_thread().name)
                real(*args, **kwargs)

            node.store.append = append  # type: ignore[method-assign]
        await committed(nodes, await submit(nodes[1], 1))
        await committed(nodes, await submit(nodes[2], 3))

    run(cluster, body)
    assert threads["state"] and threads["block"]
    assert all(name.startswith("durable") for names in threads.values() for name in names), (
        threads)
    for i in range(N):
        check_signing_order(cluster.journals[i])


@pytest.mark.asyncio
async def test_a_small_wait_commit_submission_costs_no_api_worker_hop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A small body is split on the loop, and an accepted record is not looked up in the
    store (it was not there when admitted, and its commit resolves the waiter); a
    duplicate of a committed record still is, and answers with its height."""
    api = InProcessApi(autocommit=True)
    jobs: list[str] = []
    real_run = api_module.Workers.run

    async def counting(self: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        jobs.append(getattr(fn, "__name__", repr(fn)))
        return await real_run(self, fn, *args, **kwargs)

    monkeypatch.setattr(api_module.Workers, "run", counting)
    one = api.record()
    async with api.client() as http:
        resp = await http.post("/v1/records", params={"wait": "commit"},
                               **msgpack_post([one.envelope]))
        assert resp.status_code == 202, resp.text
        assert resp.json()["results"][0]["status"] == "accepted"
        height = resp.json()["results"][0]["height"]
        assert jobs == [], jobs
        again = await http.post("/v1/records", params={"wait": "commit"},
                                **msgpack_post([one.envelope]))
        item = again.json()["results"][0]
        assert (item["status"], item["height"]) == ("duplicate", height)
        assert jobs == ["committed"], jobs
        big = [api.record(payload={"pad": "x" * 400}) for _ in range(60)]  # > 16 KiB
        resp = await http.post("/v1/records", params={"wait": "commit"},
                               **msgpack_post([r.envelope for r in big]))
        assert resp.status_code == 202
        assert all(i["status"] == "accepted" for i in resp.json()["results"])
        assert jobs == ["committed", "decode_batch"], jobs


def test_the_core_gets_the_time_without_a_tick_pass_per_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before each event the runtime sets the core's clock instead of handing it a Tick
    (whose pass over every rule found nothing at the rules' fixpoint and whose actions
    were dropped): one ``handle`` per event, the clock never behind the wall clock, and
    the chain commits with every signed message after its durable write."""
    handled: list[str] = []
    behind: list[int] = []
    real_handle = ConsensusCore.handle

    def handle(self: ConsensusCore, event: Event) -> Any:
        handled.append(type(event).__name__)
        if not isinstance(event, Start):
            wall = now_ms()
            if self.now_ms < wall - 1000:  # set just before this call: never a second behind
                behind.append(wall - self.now_ms)
        return real_handle(self, event)

    monkeypatch.setattr(ConsensusCore, "handle", handle)
    cluster = Cluster(tmp_path, empty_blocks=False)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        await committed(nodes, await submit(nodes[1], 2))

    run(cluster, body)
    assert handled and Tick.__name__ not in handled, set(handled)
    assert not behind, behind
    for i in range(N):
        check_signing_order(cluster.journals[i])
