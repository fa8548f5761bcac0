"""SDK failover (node/client.py): a client given several node URLs sends a call that fails
(no connection, a timeout, a 5xx) to the next node, the same bytes; a resubmitted record the
next node already holds is reported accepted, never written twice. Both clients, over
``httpx.MockTransport`` nodes sharing one chain."""

from __future__ import annotations

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
