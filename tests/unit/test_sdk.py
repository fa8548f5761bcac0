"""The SDK (node/client.py): the sync and async clients have one surface, and every
operation behaves the same on both, against a fake node speaking the API's shapes over
``httpx.MockTransport`` (the same handler serves both clients)."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import msgpack
import pytest

from ledger.crypto import PrivateKey
from ledger.records import Record
from node.client import (
    AsyncLedgerClient,
    Call,
    EventFeed,
    LedgerClient,
    NodeError,
    connection_hint,
)

KEY = PrivateKey.generate()
GENESIS = b'{"chain_id": "demo"}'
BLOCK_BYTES = b"\x93\x01\x02\x03"
TIP = 3
HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


def problem(status: int, code: str, detail: str) -> httpx.Response:
    return httpx.Response(status, json={"type": f"urn:ledger:problem:{code}", "title": code,
                                        "status": status, "detail": detail, "code": code},
                          headers={"Content-Type": "application/problem+json"})


class FakeNode:
    """The API's answers, in its shapes (docs/api.md), for a chain of TIP blocks."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.records: dict[str, Record] = {}
        self.events_per_stream = 2  # the node ends each stream after this many events
        self.last_event = 5

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path, q = request.url.path, request.url.params
        if path == "/v1/status":
            return httpx.Response(200, json={"chain": "demo", "node": "node0", "height": TIP})
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok", "height": TIP})
        if path == "/v1/genesis":
            return httpx.Response(200, content=GENESIS,
                                  headers={"Content-Type": "application/json"})
        if path == "/v1/records" and request.method == "POST":
            assert request.headers["content-type"] == "application/msgpack"
            results = []
            for envelope in msgpack.unpackb(request.content):
                record = Record.from_wire(envelope)
                rid = record.id.hex()
                status = "duplicate" if rid in self.records else "accepted"
                self.records[rid] = record
                results.append({"id": rid, "status": status}
                               | ({"height": TIP + 1} if q.get("wait") == "commit" else {}))
            return httpx.Response(202, json={"results": results})
        if path.startswith("/v1/records/"):
            rid, _, receipt = path.removeprefix("/v1/records/").partition("/")
            if rid not in self.records:
                return problem(404, "not_found", f"no record {rid}")
            record = self.records[rid]
            if receipt:
                return httpx.Response(200, json={"record_id": rid, "header": "aGVhZGVy",
                                                 "envelope": "ZW52"})
            return httpx.Response(200, json={"id": rid, "status": "committed",
                                             "subject": record.body.subject})
        if path.startswith("/v1/blocks/"):
            height = int(path.rsplit("/", 1)[1])
            if height > TIP:
                return problem(404, "not_found", f"no block at height {height}")
            if request.headers.get("accept") == "application/msgpack":
                return httpx.Response(200, content=BLOCK_BYTES,
                                      headers={"Content-Type": "application/msgpack"})
            return httpx.Response(200, json={"height": height, "records": []})
        if path.startswith("/v1/subjects/"):
            if q.get("order") == "desc" and "after" in q:
                return problem(400, "invalid_parameter", "`after` pages `order=asc`")
            return httpx.Response(200, json={"subject": path.split("/")[3], "records": [],
                                             "next": None, "query": dict(q)})
        if path == "/v1/events":
            first = int(q.get("from_height", TIP + 1))
            lines = [": ledger block events", ""]
            for h in range(first, min(first + self.events_per_stream, self.last_event + 1)):
                lines += ["event: block", f"id: {h}",
                          "data: " + json.dumps({"height": h, "hash": f"{h:064x}"}), ""]
            return httpx.Response(200, content=("\n".join(lines) + "\n").encode(),
                                  headers={"Content-Type": "text/event-stream"})
        return problem(404, "not_found", "no such route")


class Both:
    """One client, sync or async, called the same way: async methods are run to the end."""

    def __init__(self, kind: str, handler: Callable[[httpx.Request], httpx.Response],
                 **kw: Any) -> None:
        self.kind = kind
        transport = httpx.MockTransport(handler)
        if kind == "sync":
            self.client: Any = LedgerClient("http://node.test", identity=KEY,
                                            http=httpx.Client(transport=transport), **kw)
        else:
            self.client = AsyncLedgerClient("http://node.test", identity=KEY,
                                            http=httpx.AsyncClient(transport=transport), **kw)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        return run_to_end(getattr(self.client, name))


def run_to_end(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of either client, called the same way: a coroutine is run to the end, an
    async or sync generator collected into a list."""
    def call(*args: Any, **kw: Any) -> Any:
        if inspect.isasyncgenfunction(method):
            async def collect() -> list[Any]:
                return [item async for item in method(*args, **kw)]
            return asyncio.run(collect())
        if inspect.iscoroutinefunction(method):
            return asyncio.run(method(*args, **kw))
        result = method(*args, **kw)
        return list(result) if inspect.isgenerator(result) else result
    return call


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def node() -> FakeNode:
    return FakeNode()


@pytest.fixture
def client(kind: str, node: FakeNode) -> Iterator[Both]:
    yield Both(kind, node)


# -- one surface ------------------------------------------------------------------------------

def _public(cls: type) -> dict[str, Any]:
    return {name: getattr(cls, name) for name in dir(cls)
            if not name.startswith("_") or name == "__init__"}


def _normal(annotation: Any) -> str:
    """An annotation with the async spellings made sync: the signatures must match modulo
    ``await``."""
    text = str(annotation)
    for a, b in (("AsyncIterator", "Iterator"), ("httpx.AsyncClient", "httpx.Client"),
                 ("AsyncLedgerClient", "LedgerClient")):
        text = text.replace(a, b)
    return text


def test_both_clients_have_the_same_methods_and_signatures() -> None:
    sync, asyn = _public(LedgerClient), _public(AsyncLedgerClient)
    assert set(asyn) - set(sync) == {"aclose"}  # asyncio's name for close(), an alias
    assert set(sync) - set(asyn) == set()
    assert set(sync) == {"__init__", "status", "chain_id", "health", "genesis", "submit",
                         "sign", "write", "make_record", "record", "receipt", "block",
                         "block_bytes", "history", "subject_history", "events", "config",
                         "close",
                         "log_inclusion", "log_consistency", "checkpoint",
                         "verified_checkpoint", "verify_inclusion", "verify_consistency",
                         "verified_receipt", "post_cosignature", "cosignatures",
                         "seal", "make_sealed", "payload", "payloads"}
    assert hasattr(LedgerClient, "__enter__") and hasattr(AsyncLedgerClient, "__aenter__")
    for name, method in sync.items():
        twin = asyn[name]
        if name not in ("__init__", "make_record", "make_sealed"):
            assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), name
            assert not (inspect.iscoroutinefunction(method)
                        or inspect.isasyncgenfunction(method)), name
        s, a = inspect.signature(method), inspect.signature(twin)
        assert [(p.name, p.kind, p.default, _normal(p.annotation))
                for p in s.parameters.values()] == \
               [(p.name, p.kind, p.default, _normal(p.annotation))
                for p in a.parameters.values()], name
        assert _normal(s.return_annotation) == _normal(a.return_annotation), name
        assert inspect.getdoc(method) and inspect.getdoc(twin), name


def test_every_operation_is_written_once_in_the_shared_layer() -> None:
    """Each public method of both clients only hands a shared ``_op_*`` to ``_run``."""
    for cls in (LedgerClient, AsyncLedgerClient):
        for name, method in _public(cls).items():
            if name in ("__init__", "make_record", "make_sealed", "events", "close",
                        "aclose"):
                continue
            source = inspect.getsource(method)
            assert f"self._run(self._op_{name}(" in source, (cls.__name__, name)
            assert "httpx" not in source and "_check(" not in source, (cls.__name__, name)


# -- every operation, on both clients -------------------------------------------------------

def test_status_health_genesis_chain_id(client: Both, node: FakeNode) -> None:
    assert client.status()["height"] == TIP
    assert client.health() == {"status": "ok", "height": TIP}
    assert client.genesis() == GENESIS
    assert client.chain_id() == "demo"
    assert client.chain_id() == "demo"
    assert [r.url.path for r in node.requests].count("/v1/status") == 2  # cached once known


def test_write_signs_for_the_nodes_chain_and_submits(client: Both, node: FakeNode) -> None:
    result = client.write(type="sensor.reading", subject="plant/t", payload={"v": 1},
                          wait=True, timeout=5.0, nonce=7, ts=1_700_000_000_000)
    assert result["status"] == "accepted" and result["height"] == TIP + 1
    record = node.records[result["id"]]
    assert record.body.chain == "demo" and record.body.nonce == 7
    assert record.body.signer == KEY.public
    post = node.requests[-1]
    # the node is asked to wait for what is left of the 5 s, less a margin to answer
    assert post.url.params["wait"] == "commit" and 3.0 < float(post.url.params["timeout"]) <= 4.0
    again = client.submit([record])
    assert again == [{"id": result["id"], "status": "duplicate"}]
    assert "wait" not in node.requests[-1].url.params


def test_sign_and_make_record(client: Both, node: FakeNode) -> None:
    record = client.sign(type="t", subject="s", payload=1, nonce=3)
    assert isinstance(record, Record) and record.body.chain == "demo" and not node.records
    offline = client.make_record(type="t", subject="s", payload=1, chain="other", nonce=3)
    assert offline.body.chain == "other"


def test_reads(client: Both, node: FakeNode) -> None:
    rid = client.write(type="t", subject="plant/x", payload=2)["id"]
    assert client.record(rid)["subject"] == "plant/x"
    assert client.receipt(rid)["record_id"] == rid
    assert client.block(2) == {"height": 2, "records": []}
    assert client.block_bytes(2) == BLOCK_BYTES
    assert client.block_bytes(TIP + 1) is None
    with pytest.raises(NodeError) as err:
        client.record("00" * 32)
    assert (err.value.status, err.value.problem_code) == (404, "not_found")
    with pytest.raises(NodeError) as err:
        client.block(TIP + 1)
    assert err.value.problem_code == "not_found"


def test_history_passes_its_cursor_and_order(client: Both) -> None:
    page = client.history("plant/x", order="desc", before=40, limit=5)
    assert page["query"] == {"order": "desc", "before": "40", "limit": "5"}
    page = client.history("plant/x", after=3)
    assert page["query"] == {"order": "asc", "after": "3", "limit": "100"}
    with pytest.raises(NodeError) as err:
        client.history("plant/x", order="desc", after=3)
    assert (err.value.status, err.value.problem_code) == (400, "invalid_parameter")


def test_events_resume_after_the_node_ends_a_stream(client: Both, node: FakeNode) -> None:
    events = client.events(from_height=1)
    assert [e["height"] for e in events] == [1, 2, 3, 4, 5]
    streams = [r.url.params.get("from_height") for r in node.requests]
    assert streams == ["1", "3", "5", "6"]  # the last one brought nothing: stop, not spin


def test_a_client_without_identity_cannot_sign(kind: str, node: FakeNode) -> None:
    both = Both(kind, node)
    both.client.identity = None
    with pytest.raises(NodeError, match="no identity"):
        both.write(type="t", subject="s", payload=1)
    assert node.requests == []


# -- errors, decoded in one place -----------------------------------------------------------

def _html(status: int, content_type: str = "text/html") -> Callable[..., httpx.Response]:
    return lambda request: httpx.Response(status, content=HTML,
                                          headers={"Content-Type": content_type})


@pytest.mark.parametrize("status", [200, 202, 502])
@pytest.mark.parametrize("operation", [
    ("status", (), {}), ("health", (), {}), ("genesis", (), {}), ("record", ("ab",), {}),
    ("receipt", ("ab",), {}), ("block", (1,), {}), ("block_bytes", (1,), {}),
    ("history", ("s",), {}), ("submit", ([],), {}), ("events", (), {}),
    ("config", (), {}),
    ("write", (), {"type": "t", "subject": "s", "payload": 1}),
])
def test_an_html_page_is_a_clear_node_error_everywhere(
        kind: str, status: int, operation: tuple[str, tuple[Any, ...], dict[str, Any]]) -> None:
    """A proxy's HTML page, whatever its status, is named as such: never a JSON traceback,
    and never block bytes (a 200 HTML page must not audit as a tampered block)."""
    name, args, kw = operation
    both = Both(kind, _html(status))
    with pytest.raises(NodeError, match="text/html") as err:
        getattr(both, name)(*args, **kw)
    assert "\n" not in str(err.value) and err.value.status == status


def test_a_problem_answer_keeps_its_code_and_detail(kind: str) -> None:
    both = Both(kind, lambda request: problem(503, "mempool_full", "the mempool is full"))
    with pytest.raises(NodeError) as err:
        both.submit([])
    assert (err.value.status, err.value.problem_code) == (503, "mempool_full")
    assert str(err.value) == "POST /v1/records: 503 mempool_full the mempool is full"


def test_a_wrong_shape_is_a_node_error(kind: str) -> None:
    both = Both(kind, lambda request: httpx.Response(200, json=[1, 2]))
    with pytest.raises(NodeError, match="not a JSON object"):
        both.status()
    both = Both(kind, lambda request: httpx.Response(200, json={"height": "7"}))
    with pytest.raises(NodeError, match="not an integer"):
        both.status()
    both = Both(kind, lambda request: httpx.Response(202, json={"results": []}))
    with pytest.raises(NodeError, match="'results' list of 1"):
        both.submit([Record.create(KEY, chain="c", type="t", subject="s", payload=1, ts=1,
                                   nonce=1)])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed now: a connection is refused


def test_nothing_listening_says_is_the_cluster_running(kind: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    client: Any = (LedgerClient(url, timeout=5) if kind == "sync"
                   else AsyncLedgerClient(url, timeout=5))
    with pytest.raises(NodeError) as err:
        if kind == "sync":
            client.status()
        else:
            asyncio.run(client.status())
    assert str(err.value) == f"cannot connect to {url}: is the cluster running? " \
                             "(make run / ledger cluster up)"
    assert err.value.status is None


def test_tls_errors_get_a_hint() -> None:
    untrusted = httpx.ConnectError("boom")
    untrusted.__cause__ = ssl.SSLCertVerificationError(1, "CERTIFICATE_VERIFY_FAILED")
    assert "pass --ca FILE" in str(connection_hint(untrusted, "https://n:1"))
    plain = httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert connection_hint(plain, "https://n:1/") == \
        "https://n:1: no TLS there: the node serves plain http (try http://n:1)"
    tls_only = httpx.RemoteProtocolError("Server disconnected without sending a response.")
    assert "does it serve https? (try https://n:1" in str(connection_hint(tls_only,
                                                                         "http://n:1"))
    assert connection_hint(httpx.ReadTimeout("slow"), "http://n:1") is None


def test_the_sse_parser_alone() -> None:
    feed = EventFeed(None)
    call = feed.next_call()
    assert isinstance(call, Call) and dict(call.params) == {} and call.timeout is None
    out = [feed.line(x) for x in (": hi", "", "event: block", "id: 9",
                                  'data: {"height": 9}', "", "event: other", "data: {}", "")]
    assert [o for o in out if o is not None] == [{"height": 9}]
    again = feed.next_call()
    assert again is not None and dict(again.params) == {"from_height": 10}
    assert feed.next_call() is None  # that stream brought nothing
