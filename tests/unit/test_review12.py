"""Review of issue 12's merges (node/service.py, node/api.py, node/runtime.py, node/client.py,
node/cluster.py): each test demonstrates one finding of the review."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest

from node.client import AsyncLedgerClient
from node.service import BlockFeed
from tests.inprocess import CLIENT, InProcessApi, msgpack_post

# -- 1. the SDK puts a subject into the URL path unquoted ------------------------------------

@pytest.mark.parametrize("subject", ["lot#5/temp", "plant?7/temp", "batch%41/temp"])
def test_sdk_history_of_a_subject_with_url_characters(subject: str) -> None:
    """Subjects are any UTF-8 (ledger/records.py); the explorer encodeURIComponent()s them,
    the SDK does not: '#' cuts the path (a fragment), '?' starts the query, '%41' is decoded
    by the server as 'A'. The history of such a subject comes back empty or 404."""
    api = InProcessApi()

    async def body() -> None:
        record = api.record(subject=subject)
        async with api.client() as http:
            answer = await http.post("/v1/records", **msgpack_post([record.envelope]))
            assert answer.status_code == 202
            api.commit()
            client = AsyncLedgerClient("http://127.0.0.1", http=http)
            page = await client.history(subject)
        assert [r["id"] for r in page["records"]] == [record.id.hex()]

    asyncio.run(body())


# -- 2. /v1/events: a subscription made before the stream starts is never closed -------------

def test_an_event_stream_whose_client_is_gone_before_the_first_byte_leaves_the_feed() -> None:
    """node/api.py events() subscribes to the feed in the handler, but closes the
    subscription in the generator's ``finally``, which never runs if the generator never
    starts (the client gone before the response starts). Each such request keeps a slot of
    MAX_SUBSCRIBERS (256) until 1000 blocks have filled its queue: 256 quick disconnects
    and /v1/events answers 503 too_many_subscribers to everyone."""
    api = InProcessApi()

    async def body() -> None:
        scope: MutableMapping[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/v1/events",
            "raw_path": b"/v1/events", "query_string": b"", "root_path": "",
            "headers": [], "client": CLIENT, "server": ("127.0.0.1", 80)}

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            raise OSError("connection reset by peer")  # the client is gone

        for _ in range(3):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(api.app(scope, receive, send), 5)
        await asyncio.sleep(0.1)
        assert len(api.service.feed) == 0, f"{len(api.service.feed)} subscriptions leaked"

    asyncio.run(body())


# -- 3. cluster up: threading.Event.set() in a signal handler deadlocks ----------------------

# run_cluster on one fake node (a sleeping process). ``threading.Event`` is replaced by one
# whose set() lets a second signal arrive while it holds the Event's lock: the moment a
# real second signal (Ctrl-C twice; `timeout`/make forwarding SIGINT to the group a few
# microseconds after the terminal's) hits the first handler inside Event.set().
FAKE_CLUSTER = textwrap.dedent("""
    import os, signal, subprocess, sys, threading, types
    from pathlib import Path
    import node.cluster as c

    class SecondSignalInSet(threading.Event):
        fired = False

        def set(self):
            with self._cond:
                if not SecondSignalInSet.fired:
                    SecondSignalInSet.fired = True
                    os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode
                self._flag = True
                self._cond.notify_all()

    c.threading = types.SimpleNamespace(Event=SecondSignalInSet, Lock=threading.Lock,
                                        Thread=threading.Thread)
    real = subprocess.Popen
    c.subprocess.Popen = lambda args, **kw: real([sys.executable, "-c",
                                                  "import time; time.sleep(15)"], **kw)
    c.check_ports = lambda dirs: None
    sys.exit(c.run_cluster(Path(sys.argv[1])))
""")


@pytest.mark.slow
def test_cluster_up_stops_when_a_second_signal_arrives_during_the_first(
        tmp_path: Path) -> None:
    """node/cluster.py run_cluster: on_signal calls ``stop.set()``, which takes the Event's
    lock; a second signal handled while the first handler holds it deadlocks the process
    (it never stops its nodes). Seen for real during this review: `make run` under
    `timeout -s INT`, SIGINT to the process group -> py-spy showed three nested on_signal
    frames blocked in Condition.__enter__."""
    node = tmp_path / "node0"
    node.mkdir()
    (node / "config.json").write_text('{"api": "127.0.0.1:1", "p2p": "127.0.0.1:2"}')
    proc = subprocess.Popen([sys.executable, "-c", FAKE_CLUSTER, str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).parents[2], start_new_session=True)
    try:
        assert proc.stdout is not None
        for _ in range(20):
            if "Ctrl-C stops it" in proc.stdout.readline():
                break
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("cluster up deadlocked in its signal handler")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- 4. Node.stop(): frames still arriving start tasks after stop() stopped waiting for them --

def test_stop_leaves_no_task_started_by_a_frame_that_arrived_while_stopping(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """node/runtime.py Node.stop waits for ``_tasks`` and only then stops the transport;
    ``on_frame`` does not look at ``_stopping``. Frames arriving in between (here, while
    the pending evidence is written) start gossip-admission tasks that outlive stop() and
    run against a closed store (sqlite3.ProgrammingError in a task nobody awaits)."""
    import node.runtime as runtime
    from tests.unit.test_runtime_inprocess import Cluster, run, submit, until

    cluster = Cluster(tmp_path)
    real_write = runtime.write_durably

    def slow_evidence_write(path: Path, data: bytes) -> None:
        if path.name == "evidence.json":
            time.sleep(0.5)  # an fsync on a busy disk
        real_write(path, data)

    monkeypatch.setattr(runtime, "write_durably", slow_evidence_write)
    late: list[Any] = []

    async def body() -> None:
        for i in range(4):
            await cluster.start(cluster.from_parts(i))
        node0, node1 = cluster.nodes[0], cluster.nodes[1]
        await until(lambda: node0.store.height >= 1, "height 1")
        precheck = node0.mempool.precheck

        def slow_precheck(envelopes: Any) -> Any:
            time.sleep(0.6)  # a big gossip batch's signatures, on a busy machine
            return precheck(envelopes)

        node0.mempool.precheck = slow_precheck  # type: ignore[method-assign]
        node0._persist_evidence()  # a flush pending when it stops
        stopping = asyncio.create_task(cluster.stop(0))
        while not stopping.done():  # clients keep submitting to node 1, which gossips
            await submit(node1, 2)  # two: a gossip batch is prechecked in a worker
            await asyncio.sleep(0.02)  # thread (one small record is checked on the loop)
        await stopping
        late.extend(node0._tasks)
        await asyncio.gather(*late, return_exceptions=True)

    run(cluster, body)
    errors = [t.exception() for t in late if t.done() and not t.cancelled()]
    assert not late, f"{len(late)} tasks outlived stop(); their errors: {errors}"


# -- 5. Node.stop() with an event stream open: the API server waits out STOP_API_S --------

@pytest.mark.slow
def test_stop_with_an_open_event_stream_is_prompt(tmp_path: Path) -> None:
    """node/runtime.py Node.stop: ``should_exit`` makes uvicorn wait for every response to
    finish; an SSE stream (the explorer keeps one open) never does, so every stop takes
    STOP_API_S (5 s) and then cancels the server task, leaving the stream's connection
    task running on a node whose store is then closed. Suggested: close the BlockFeed's
    subscriptions (ending the streams) before waiting for the server, or set uvicorn's
    ``timeout_graceful_shutdown``."""
    import httpx

    from tests.unit.test_runtime_inprocess import Cluster, run, until

    cluster = Cluster(tmp_path)
    took: list[float] = []

    async def body() -> None:
        node0 = cluster.from_parts(0)
        await node0.start(cluster.net.factory, api=True)
        cluster.nodes[0] = node0
        for i in range(1, 4):
            await cluster.start(cluster.from_parts(i))
        await until(lambda: node0._server is not None and node0._server.started, "API up")
        assert node0._server is not None
        port = node0._server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http, \
                http.stream("GET", "/v1/events") as resp:
            assert resp.status_code == 200
            lines = resp.aiter_lines()
            assert (await anext(lines)).startswith(": ledger")
            started = time.monotonic()
            await cluster.stop(0)
            took.append(time.monotonic() - started)

    run(cluster, body)
    assert took[0] < 3.0, f"stop() took {took[0]:.1f} s with one event stream open"


# -- 6. GET /v1/records/{id}: 404 for a record committing during the request ---------------

@pytest.mark.parametrize("suffix", ["", "/receipt"])
def test_a_record_committing_during_get_record_is_never_not_found(suffix: str) -> None:
    """node/api.py get_record reads the store in a worker (not committed yet), then asks
    the mempool on the loop; a block committed in between has taken the record out of the
    mempool: 404 not_found for a record that exists (before issue 12 both reads were on the
    loop, with nothing in between). A client polling its record after submitting sees a
    spurious 'no record'. Same window in get_receipt (404 instead of 409/200).
    Suggested: on a store miss, ask the mempool, and on a mempool miss read the store once
    more (a record leaves the mempool only after its block is stored)."""
    api = InProcessApi()

    async def body() -> None:
        record = api.record()
        async with api.client() as http:
            answer = await http.post("/v1/records", **msgpack_post([record.envelope]))
            assert answer.status_code == 202
            loop = asyncio.get_running_loop()
            locate = api.store.locate

            async def commit() -> None:
                api.commit()

            first = True

            def locate_then_commit(rid: bytes) -> Any:
                nonlocal first
                found = locate(rid)  # not committed yet ...
                if first:  # ... and the block commits before the handler asks the mempool
                    first = False
                    if threading.current_thread() is threading.main_thread():
                        api.commit()  # get_record reads on the loop (its WAL reader)
                    else:
                        asyncio.run_coroutine_threadsafe(commit(), loop).result(5)
                return found

            api.store.locate = locate_then_commit  # type: ignore[method-assign]
            got = await http.get(f"/v1/records/{record.id.hex()}{suffix}")
        assert got.status_code == 200, got.text

    asyncio.run(body())


# -- 7. a slow subscriber dropped while its stream replays past blocks --------------------------

@pytest.mark.asyncio
async def test_a_stream_dropped_while_replaying_ends_before_catching_up() -> None:
    """A client that reads slowly fills its subscription while the stream replays past
    blocks; once dropped, the stream must end (the client resumes with Last-Event-ID),
    not keep replaying to the tip outside the subscriber limit."""
    api = InProcessApi(feed=BlockFeed(queue_size=2))
    for _ in range(40):  # 40 past blocks: more than two replay batches
        api.service.append(api.service.builder.block([api.record()]))
    scope: MutableMapping[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": "/v1/events",
        "raw_path": b"/v1/events", "query_string": b"from_height=1", "root_path": "",
        "headers": [], "client": CLIENT, "server": ("127.0.0.1", 80)}
    reading = asyncio.Event()  # the slow client: each send waits until the test lets it
    events = 0
    ended = asyncio.Event()

    async def receive() -> MutableMapping[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal events
        if message["type"] != "http.response.body":
            return
        events += message.get("body", b"").count(b"\nevent: block") + \
            message.get("body", b"").startswith(b"event: block")
        if not message.get("more_body", False):
            ended.set()
            return
        await reading.wait()

    task = asyncio.ensure_future(api.app(scope, receive, send))
    try:
        await asyncio.sleep(0.1)  # the stream is blocked on its first send
        for _ in range(3):  # the subscription holds 2: dropped at the third new block
            api.service.append(api.service.builder.block([api.record()]))
        assert api.service.feed.dropped == 1
        reading.set()
        await asyncio.wait_for(ended.wait(), 10)
        assert events < 43, f"the dropped stream replayed all {events} blocks"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
