"""SDK failover (node/client.py): a client given several node URLs sends a call that fails
(no connection, a timeout, a 5xx) to the next node, the same bytes; a resubmitted record the
next node already holds is reported accepted, never written twice. Both clients, over
``httpx.MockTransport`` nodes sharing one chain."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import msgpack
import pytest

from ledger.crypto import PrivateKey
from ledger.records import Record
from node import client as sdk
from node.client import AsyncLedgerClient, LedgerClient, NodeError, node_urls
from tests.unit.test_sdk import run_to_end

KEY = PrivateKey.generate()
URLS = ["http://a.test", "http://b.test", "http://c.test"]


def problem(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"type": f"urn:ledger:problem:{code}", "title": code,
                                        "status": status, "detail": code, "code": code},
                          headers={"Content-Type": "application/problem+json"})


class Chain:
    """Three nodes over one set of records (what gossip gives a real cluster): a record
    any node admitted is a ``duplicate`` on every node. ``down`` nodes refuse connections,
    ``fail`` maps a node to the answer it gives instead, ``die_after_admit`` nodes admit a
    batch and drop the connection before answering (a node stopped mid-request)."""

    def __init__(self) -> None:
        self.records: dict[str, int] = {}  # id -> times admitted (must stay 1)
        self.asked: list[tuple[str, str]] = []
        self.down: set[str] = set()
        self.fail: dict[str, Callable[[], httpx.Response]] = {}
        self.die_after_admit: set[str] = set()
        self.break_stream: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        self.asked.append((host, path))
        if host in self.down:
            raise httpx.ConnectError("Connection refused", request=request)
        if host in self.fail:
            return self.fail[host]()
        if path == "/v1/status":
            return httpx.Response(200, json={"chain": "demo", "height": 7, "node": host})
        if path == "/v1/records" and request.method == "POST":
            results = []
            for envelope in msgpack.unpackb(request.content):
                rid = Record.from_wire(envelope).id.hex()
                if rid in self.records:
                    results.append({"id": rid, "status": "duplicate"})
                else:
                    self.records[rid] = self.records.get(rid, 0) + 1
                    results.append({"id": rid, "status": "accepted"})
            if host in self.die_after_admit:
                raise httpx.RemoteProtocolError("Server disconnected without sending a "
                                                "response.", request=request)
            return httpx.Response(202, json={"results": results})
        if path == "/v1/events":
            first = int(request.url.params.get("from_height", 1))
            lines = []
            for h in range(first, min(first + 2, 7)):  # the chain's tip is 6
                lines += ["event: block", f"data: {{\"height\": {h}, \"node\": \"{host}\"}}",
                          ""]
            if host in self.break_stream:
                self.break_stream.discard(host)
                self.down.add(host)
                return httpx.Response(200, stream=Broken(lines),
                                      headers={"Content-Type": "text/event-stream"})
            return httpx.Response(200, content=("\n".join(lines) + "\n").encode(),
                                  headers={"Content-Type": "text/event-stream"})
        return problem(404, "not_found")


class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """An event stream that breaks after its lines (the node stopped)."""

    def __init__(self, lines: list[str]) -> None:
        self.data = ("\n".join(lines) + "\n").encode()

    def __iter__(self) -> Any:
        yield self.data
        raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> Any:
        yield self.data
        raise httpx.ReadError("connection reset")


def make(kind: str, chain: Chain, urls: Any = URLS) -> Any:
    transport = httpx.MockTransport(chain)
    if kind == "sync":
        return Sync(LedgerClient(urls, identity=KEY, http=httpx.Client(transport=transport)))
    return Sync(AsyncLedgerClient(urls, identity=KEY,
                                  http=httpx.AsyncClient(transport=transport)))


class Sync:
    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        return run_to_end(method) if callable(method) else method


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sdk, "FAILOVER_PAUSE_S", 0.0)
    return str(request.param)


def test_urls_from_a_list_or_a_comma_separated_string() -> None:
    assert node_urls("http://a.test/, http://b.test") == ["http://a.test", "http://b.test"]
    assert node_urls(("http://a.test",)) == ["http://a.test"]
    with pytest.raises(NodeError):
        node_urls(" , ")
    client = LedgerClient("http://a.test,http://b.test")
    assert client.base_urls == ["http://a.test", "http://b.test"]
    assert client.base_url == "http://a.test"
    client.close()


def test_a_down_node_is_skipped_and_the_client_stays_with_the_next(kind: str) -> None:
    chain = Chain()
    chain.down.add("a.test")
    c = make(kind, chain)
    result = c.write(type="t", subject="s", payload=1)
    assert result["status"] == "accepted" and "resubmitted" not in result
    assert c.base_url == "http://b.test"
    assert c.status()["node"] == "b.test"  # reads go on to the node that answered
    assert [h for h, _ in chain.asked] == ["a.test", "b.test", "b.test", "b.test"]


def test_a_record_admitted_before_the_node_died_is_accepted_once(kind: str) -> None:
    """The first node admits the batch, then the connection drops: the same envelopes go
    to the next node, which holds them (gossip) and answers duplicate; the SDK reports
    them accepted (resubmitted), and the chain holds each once."""
    chain = Chain()
    chain.die_after_admit.add("a.test")
    c = make(kind, chain)
    records = [c.sign(type="t", subject=f"s{i}", payload=i) for i in range(3)]
    results = c.submit(records)
    assert [r["status"] for r in results] == ["accepted"] * 3
    assert all(r["resubmitted"] is True for r in results)
    assert chain.records == {r.id.hex(): 1 for r in records}


def test_5xx_fails_over_but_a_commit_timeout_does_not(kind: str) -> None:
    chain = Chain()
    chain.fail["a.test"] = lambda: problem(503, "mempool_full")
    c = make(kind, chain)
    assert c.write(type="t", subject="s", payload=1)["status"] == "accepted"
    assert c.base_url == "http://b.test"
    chain.fail["b.test"] = lambda: problem(504, "commit_timeout")
    with pytest.raises(NodeError) as err:
        c.write(type="t", subject="s", payload=2, wait=True, timeout=1)
    assert err.value.problem_code == "commit_timeout"
    assert chain.asked[-1][0] == "b.test" and ("c.test", "/v1/records") not in chain.asked


def test_every_node_failing_raises_after_bounded_rounds(kind: str) -> None:
    chain = Chain()
    chain.down.update({"a.test", "b.test", "c.test"})
    c = make(kind, chain)
    with pytest.raises(NodeError, match="is the cluster running"):
        c.status()
    assert len(chain.asked) == len(URLS) * sdk.FAILOVER_ROUNDS
    chain.down.clear()
    chain.fail = {h: (lambda: problem(503, "overloaded")) for h in ("a.test", "b.test",
                                                                   "c.test")}
    with pytest.raises(NodeError) as err:  # the last node's own answer
        c.status()
    assert (err.value.status, err.value.problem_code) == (503, "overloaded")


def test_one_url_is_tried_once(kind: str) -> None:
    chain = Chain()
    chain.down.add("a.test")
    c = make(kind, chain, "http://a.test")
    with pytest.raises(NodeError, match="is the cluster running"):
        c.status()
    assert chain.asked == [("a.test", "/v1/status")]


def test_events_resume_on_the_next_node_after_the_last_block(kind: str) -> None:
    chain = Chain()
    chain.break_stream.add("a.test")
    c = make(kind, chain)
    events = c.events(from_height=1)
    # a: 1, 2 then the stream breaks; b resumes at 3: 3, 4, then 5, 6, then nothing new
    assert [(e["height"], e["node"]) for e in events] == [
        (1, "a.test"), (2, "a.test"), (3, "b.test"), (4, "b.test"), (5, "b.test"),
        (6, "b.test")]
    assert c.committed_height == 6  # the blocks it followed


# -- a call's timeout is one deadline over every attempt (review finding 1) ----------------

def test_a_calls_timeout_bounds_every_attempt_and_round_together(
        kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every node answers 503 after 0.4 s: with ``timeout=1`` over three nodes the call
    gives up after about 1 s (the attempt under way when the deadline passes ends), not
    after six attempts and a 1 s pause (3.4 s); each attempt asks the node to wait for the
    commit only for what is left of the deadline, less a margin to answer."""
    monkeypatch.setattr(sdk, "FAILOVER_PAUSE_S", 1.0)
    chain = Chain()
    asked: list[float] = []

    def slow() -> httpx.Response:
        time.sleep(0.4)
        return problem(503, "overloaded")

    c = make(kind, chain)
    record = c.sign(type="t", subject="s", payload=1)
    chain.fail = {h: slow for h in ("a.test", "b.test", "c.test")}
    original = chain.__call__

    def spy(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/records":
            asked.append(float(request.url.params["timeout"]))
        return original(request)

    c = make(kind, spy)
    start = time.monotonic()
    with pytest.raises(NodeError) as err:
        c.submit([record], wait=True, timeout=1.0)
    elapsed = time.monotonic() - start
    assert (err.value.status, err.value.problem_code) == (503, "overloaded")
    assert elapsed < 2.4, elapsed  # before: 3.4 s (6 attempts, a pause; 240 s at timeout=30)
    assert 2 <= len(asked) <= 3, asked
    assert all(0 < t < 1.0 for t in asked) and asked == sorted(asked, reverse=True), asked


def test_a_silent_node_does_not_multiply_the_timeout(kind: str) -> None:
    """Three real sockets on 127.0.0.1 that accept connections and never answer: a
    client with ``timeout=1`` raises within about 1 s (before: 1 s per attempt, six
    attempts: about 6 s); ``submit(wait=True, timeout=1)`` too, as ``commit_timeout`` (no
    answer within the deadline: not known committed)."""
    listeners = []
    try:
        for _ in range(3):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)  # the kernel completes connections nobody accepts
            listeners.append(sock)
        urls = [f"http://127.0.0.1:{s.getsockname()[1]}" for s in listeners]
        client: Any = (LedgerClient(urls, identity=KEY, timeout=1.0) if kind == "sync"
                       else AsyncLedgerClient(urls, identity=KEY, timeout=1.0))
        c = Sync(client)
        start = time.monotonic()
        with pytest.raises(NodeError):
            c.status()
        elapsed = time.monotonic() - start
        assert elapsed < 2.5, elapsed
        record = client.make_record(type="t", subject="s", payload=1, chain="demo")
        start = time.monotonic()
        with pytest.raises(NodeError) as err:
            c.submit([record], wait=True, timeout=1.0)
        elapsed = time.monotonic() - start
        c.close()
        assert err.value.problem_code == "commit_timeout"
        assert elapsed < 2.5, elapsed
    finally:
        for sock in listeners:
            sock.close()


# -- reads after a failover reach a node that has what this client saw committed (2) -------

class Lagging:
    """Nodes with their own heights and committed records: ``heights`` per node, and the
    records each holds committed; ``catch_up_after`` a node answers that many record reads
    as its old self, then holds every record (a restarted node catching up)."""

    def __init__(self, heights: dict[str, int]) -> None:
        self.heights = dict(heights)
        self.holds: dict[str, set[str]] = {h: set() for h in heights}
        self.asked: list[tuple[str, str]] = []
        self.down: set[str] = set()
        self.behind_for: dict[str, int] = {}
        self.top = max(heights.values())  # the chain's height
        self.committed: set[str] = set()  # every record on the chain

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        self.asked.append((host, path))
        if host in self.down:
            raise httpx.ConnectError("Connection refused", request=request)
        if path == "/v1/status":
            return httpx.Response(200, json={"chain": "demo", "height": self.heights[host]})
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "height": self.heights[host]})
        if path == "/v1/records" and request.method == "POST":
            self.top += 1
            results = []
            for envelope in msgpack.unpackb(request.content):
                rid = Record.from_wire(envelope).id.hex()
                self.holds[host].add(rid)
                self.committed.add(rid)
                results.append({"id": rid, "status": "accepted", "height": self.top})
            self.heights[host] = self.top
            return httpx.Response(202, json={"results": results})
        if path.startswith("/v1/records/"):
            rid = path.rsplit("/", 1)[1]
            if self.behind_for.get(host, 0) > 0:
                self.behind_for[host] -= 1
                if self.behind_for[host] == 0:  # caught up from the next read on
                    self.heights[host] = self.top
                    self.holds[host] |= self.committed
            if rid not in self.holds[host]:
                return problem(404, "not_found")
            return httpx.Response(200, json={"id": rid, "status": "committed",
                                             "height": self.heights[host]})
        if path.startswith("/v1/blocks/"):
            height = int(path.rsplit("/", 1)[1])
            if height > self.heights[host]:
                return problem(404, "not_found")
            return httpx.Response(200, json={"height": height, "node": host})
        return problem(404, "not_found")


def test_a_read_on_a_lagging_node_goes_on_to_one_that_has_the_write(kind: str) -> None:
    """The client wrote through b (committed at 8); b then stops; c answers the read, but
    c is at height 5 and says 404: the client sees c is below 8 (its /healthz) and asks
    the other nodes, a having caught up, instead of reporting a committed record missing."""
    nodes = Lagging({"a.test": 5, "b.test": 7, "c.test": 5})
    nodes.down.add("a.test")
    c = make(kind, nodes)  # type: ignore[arg-type]
    result = c.write(type="t", subject="s", payload=1, wait=True, timeout=5)
    assert (result["height"], c.base_url) == (8, "http://b.test")
    assert c.committed_height == 8
    nodes.down = {"b.test"}
    nodes.heights["a.test"] = 8
    nodes.holds["a.test"].add(result["id"])
    doc = c.record(result["id"])  # before: NodeError 404 not_found from c
    assert (doc["status"], doc["height"]) == ("committed", 8)
    assert c.base_url == "http://a.test"  # and stays with the node that had it


def test_a_404_from_a_node_at_the_height_seen_is_the_answer(kind: str) -> None:
    """A record unknown to a node that is at the height this client saw: NodeError 404
    after one /healthz, no other node asked."""
    nodes = Lagging({"a.test": 7, "b.test": 7, "c.test": 7})
    c = make(kind, nodes)  # type: ignore[arg-type]
    assert c.status()["height"] == 7 and c.committed_height == 7
    nodes.asked.clear()
    with pytest.raises(NodeError) as err:
        c.record("ab" * 32)
    assert (err.value.status, err.value.problem_code) == (404, "not_found")
    assert nodes.asked == [("a.test", f"/v1/records/{'ab' * 32}"), ("a.test", "/healthz")]


def test_a_block_below_the_height_seen_is_read_from_a_node_that_has_it(kind: str) -> None:
    """``block(h)`` at or below the height this client saw goes on from a node behind it;
    beyond that height a 404 is the answer (a follower polling for the next block), asked
    of one node only."""
    nodes = Lagging({"a.test": 5, "b.test": 8, "c.test": 8})
    nodes.down.add("a.test")
    c = make(kind, nodes)  # type: ignore[arg-type]
    assert c.status()["height"] == 8 and c.committed_height == 8
    nodes.down.clear()
    c.client.base_url = "http://a.test"  # the next call starts at a (height 5)
    assert c.block(7) == {"height": 7, "node": "b.test"}  # before: 404 from a
    c.client.base_url = "http://a.test"
    nodes.asked.clear()
    assert c.block_bytes(9) is None
    assert nodes.asked == [("a.test", "/v1/blocks/9")]


def test_one_lagging_node_is_waited_for_briefly(kind: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """With one URL the client waits (a few short pauses) for the node to reach the
    height it saw, then reads again."""
    monkeypatch.setattr(sdk, "CATCH_UP_PAUSE_S", 0.01)
    nodes = Lagging({"a.test": 7})
    c = make(kind, nodes, "http://a.test")  # type: ignore[arg-type]
    result = c.write(type="t", subject="s", payload=1, wait=True, timeout=5)
    nodes.heights["a.test"], nodes.holds["a.test"] = 5, set()  # restarted from a backup
    nodes.behind_for["a.test"] = 3
    assert c.record(result["id"])["status"] == "committed"


# -- a client shared by threads or tasks: one call's failover is its own (3) ---------------

def test_threads_sharing_a_client_each_try_every_node() -> None:
    """Two threads fail on node a at the same moment (a barrier): each call goes on to b
    itself. Before, each thread moved the shared ``base_url`` on a failure, the two moves
    cancelled out, and both threads kept retrying a until they gave up."""
    barrier = threading.Barrier(2)
    chain = Chain()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=0.5)
            time.sleep(0.01)
            raise httpx.ConnectError("Connection refused", request=request)
        return chain(request)

    urls = ["http://a.test", "http://b.test"]
    errors: list[str] = []
    for _ in range(10):
        client = LedgerClient(urls, http=httpx.Client(transport=httpx.MockTransport(handler)))

        def call(client: LedgerClient = client) -> None:
            try:
                client.status()
            except NodeError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        barrier.reset()
        assert client.base_url == "http://b.test"
    assert errors == []


def test_tasks_sharing_an_async_client_each_try_every_node() -> None:
    """The async twin: two tasks fail on node a together (each awaits there), and each
    goes on to b."""
    chain = Chain()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.test":
            await asyncio.sleep(0.01)
            raise httpx.ConnectError("Connection refused", request=request)
        return chain(request)

    async def run() -> list[Any]:
        client = AsyncLedgerClient(["http://a.test", "http://b.test"], http=httpx.AsyncClient(
            transport=httpx.MockTransport(handler)))
        results = await asyncio.gather(client.status(), client.status(),
                                       return_exceptions=True)
        assert client.base_url == "http://b.test"
        return results

    results = asyncio.run(run())
    assert [r["node"] for r in results] == ["b.test", "b.test"], results
