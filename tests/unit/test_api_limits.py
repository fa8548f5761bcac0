"""The API's bounded decoding, number parsing and admission limits (node/api.py), in process."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import MutableMapping
from typing import Any

import msgpack
import pytest

from ledger.encoding import packb
from node.api import (
    BODY,
    ApiGuard,
    BlockJson,
    BlockJsonCache,
    EventCache,
    Problem,
    Workers,
    decode_batch,
    parse_height,
    parse_last_event_id,
    split_bin_array,
    split_json_batch,
)
from node.apidoc import limits
from node.service import BlockFeed


def problem_of(fn: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(Problem) as info:
        fn(*args)
    return info.value.status, info.value.code


def test_bin_arrays_split_in_every_encoding() -> None:
    envelopes = [b"", b"a", b"b" * 300, b"c" * 70_000]
    assert split_bin_array(packb(envelopes), 10) == envelopes
    for header in (b"\x94", b"\xdc\x00\x04", b"\xdd\x00\x00\x00\x04"):
        items = [b"\xc4\x00", b"\xc5\x00\x01a", b"\xc6\x00\x00\x00\x02bb", b"\xc4\x01c"]
        assert split_bin_array(header + b"".join(items), 10) == [b"", b"a", b"bb", b"c"]
    big = [b"x"] * 20
    assert split_bin_array(packb(big), 20) == big


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"", 400, "malformed"),
    (b"\xc1", 400, "malformed"),
    (packb({"a": 1}), 400, "malformed"),
    (packb([]), 400, "empty_batch"),
    (b"\x90\x00", 400, "malformed"),  # an empty array and trailing bytes
    (packb([b"x"] * 11), 413, "batch_too_large"),
    (b"\xdd\xff\xff\xff\xff", 413, "batch_too_large"),  # declared, never sent
    (b"\xdc\x00", 400, "malformed"),  # a cut array header
    (packb([1]), 400, "malformed"),
    (packb(["text"]), 400, "malformed"),
    (packb([b"x", {}]), 400, "malformed"),
    (b"\x92\xc4\x01x", 400, "malformed"),  # one item missing
    (b"\x91\xc4\x05ab", 400, "malformed"),  # a truncated item
    (b"\x91\xc6\xff\xff\xff\xff", 400, "malformed"),
    (b"\x91\xc5\x00", 400, "malformed"),  # a cut length
    (packb([b"x"]) + b"\x00", 400, "malformed"),
])
def test_bin_arrays_refused(body: bytes, status: int, code: str) -> None:
    assert problem_of(split_bin_array, body, 10) == (status, code)


def test_an_array_of_empty_maps_is_refused_without_building_it() -> None:
    n = 4 * 1024 * 1024
    for header in (b"\xdd" + n.to_bytes(4, "big"), b"\xdd" + (10_000).to_bytes(4, "big")):
        body = header + b"\x80" * n
        tracemalloc.start()
        try:
            outcome = problem_of(split_bin_array, body, 10_000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert outcome in ((413, "batch_too_large"), (400, "malformed"))
        assert peak < 64 * 1024, peak  # msgpack.unpackb built ~1 GB from 16 MiB of these


def test_json_batches_are_strict() -> None:
    body = json.dumps({"records": [{"envelope": "QQ=="}, {"envelope": ""}]}).encode()
    assert split_json_batch(body, 10) == [b"A", b""]
    assert decode_batch("application/json; charset=utf-8", [body[:5], body[5:]], 10) == [
        b"A", b""]
    shape = b' { "records" : [ { "envelope" : "QUI=" } ] } '
    assert split_json_batch(shape, 1) == [b"AB"]


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"[" * 100_000, 400, "malformed"),
    (b'{"records": [' + b"[" * 100_000, 400, "malformed"),
    (b'{"records": [{"envelope": [[["QQ=="]]]}]}', 400, "malformed"),
    (b'{"records": [{"envelope": "QQ==", "envelope": "QQ=="}]}', 400, "malformed"),
    (b'{"records": [], "records": [{"envelope": "QQ=="}]}', 400, "malformed"),
    (b'{"records": [{"envelope": "QR=="}]}', 400, "malformed"),
    (b'{"records": [{"envelope": "QQ"}]}', 400, "malformed"),
    (b'{"records": [{"envelope": "Q Q=="}]}', 400, "malformed"),
    (b'{"records": [{"envelope": 5}]}', 400, "malformed"),
    (b'{"records": [{"envelope": "QQ==", "salt": "QQ=="}]}', 400, "malformed"),
    (b'{"records": [], "[[[[[[[[": 1}', 400, "malformed"),
    (b'{"records": {}}', 400, "malformed"),
    (b'{"records": []}', 400, "empty_batch"),
    (b'{"records": [' + b'{"envelope": ""},' * 10 + b'{"envelope": ""}]}', 413,
     "batch_too_large"),
    (b'{"records": [' + b"1," * 1000 + b"1]}", 400, "malformed"),
    (b'{"records": [' + b"9" * 5000 + b"]}", 400, "malformed"),
    (b"\xff", 400, "malformed"),
    (b"", 400, "malformed"),
])
def test_json_batches_refused(body: bytes, status: int, code: str) -> None:
    assert problem_of(split_json_batch, body, 10) == (status, code)


def test_brackets_inside_strings_are_not_nesting() -> None:
    deep = "[" * 50 + "{" * 50
    body = json.dumps({"records": [{"envelope": "QQ=="}], deep: 1}).encode()
    with pytest.raises(Problem) as info:
        split_json_batch(body, 10)
    assert "nested" not in info.value.detail  # refused for its unknown key, not its depth
    escaped = b'{"records": [{"envelope": "\\"[[[[[[["}]}'
    with pytest.raises(Problem) as info:
        split_json_batch(escaped, 10)
    assert "nested" not in info.value.detail


def test_other_media_types_are_415() -> None:
    assert problem_of(decode_batch, "text/plain", [b"x"], 10) == (415, "unsupported_media_type")


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "1\u00b2", "", "0", "-1", "+1", " 1",
                                  "1 ", "1e3", "9" * 19, "9" * 5000, "\uff11"])
def test_heights_are_ascii_digits(text: str) -> None:
    assert problem_of(parse_height, text) == (400, "invalid_height")


def test_heights_and_event_ids_parse() -> None:
    assert parse_height("1") == 1 and parse_height("0042") == 42
    assert parse_last_event_id("") is None and parse_last_event_id("17") == 17
    for bad in ("\u00b2", "9" * 4301, "-1", "1.0"):
        assert problem_of(parse_last_event_id, bad) == (400, "invalid_parameter")


def test_block_json_cache_is_bounded_by_bytes() -> None:
    cache = BlockJsonCache(100)
    cache.put(1, BlockJson(b"a" * 60))
    cache.put(2, BlockJson(b"b" * 30))
    assert cache.get(1) is not None  # 1 is now the most recent
    cache.put(3, BlockJson(b"c" * 30))
    assert cache.get(2) is None and cache.get(1) and cache.get(3) and cache.size == 90
    cache.put(4, BlockJson(b"d" * 101))
    assert cache.get(4) is None and cache.size == 90


def test_event_cache_is_bounded() -> None:
    cache = EventCache(max_entries=3)
    for h in range(1, 6):
        cache.put(h, str(h))
    assert [cache.get(h) for h in range(1, 6)] == [None, None, "3", "4", "5"]


def test_workers_refuse_beyond_their_queue() -> None:
    async def main() -> None:
        workers = Workers(1, max_queued=2)
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wait() -> int:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(5)
            return 1

        first = asyncio.ensure_future(workers.run(wait))
        second = asyncio.ensure_future(workers.run(lambda: 2))
        await asyncio.sleep(0.05)
        with pytest.raises(Problem) as info:
            await workers.run(lambda: 3)
        assert (info.value.status, info.value.code) == (503, "overloaded")
        gate.set()
        assert await first == 1 and await second == 2
        assert await workers.run(lambda: 4) == 4 and workers.queued == 0
        workers.pool.shutdown()

    asyncio.run(main())


# -- ApiGuard ---------------------------------------------------------------------------

class Limits:
    """The API limits of a config, and the event feed the guard counts streams of."""

    def __init__(self, **overrides: Any) -> None:
        self.config = limits(**overrides)
        self.feed = BlockFeed()


class Exchange:
    """One request through the guard, recording what was sent."""

    def __init__(self, path: str, method: str = "GET", client: str = "10.0.0.1",
                 body: list[bytes] | None = None, length: int | None = None) -> None:
        headers = [] if length is None else [(b"content-length", str(length).encode())]
        self.scope: MutableMapping[str, Any] = {
            "type": "http", "path": path, "method": method, "client": (client, 1234),
            "headers": headers}
        self.incoming: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        for i, chunk in enumerate(body or []):
            self.incoming.put_nowait({"type": "http.request", "body": chunk,
                                      "more_body": i + 1 < len(body or [])})
        self.sent: list[MutableMapping[str, Any]] = []

    async def receive(self) -> MutableMapping[str, Any]:
        return await self.incoming.get()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"]) if self.sent else 0

    @property
    def code(self) -> str:
        return str(json.loads(self.sent[1]["body"])["code"])

    async def through(self, guard: ApiGuard) -> Exchange:
        await guard(self.scope, self.receive, self.send)
        return self


def guard_over(node: Limits) -> tuple[ApiGuard, asyncio.Event, list[Any]]:
    """A guard over an app that records each request's body and holds it until released."""
    release, seen = asyncio.Event(), []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        if scope["method"] == "POST":
            while True:
                message = await receive()
                body += message["body"]
                if not message["more_body"]:
                    break
            seen.append((scope[BODY], body))
        if scope["path"] != "/quick":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return ApiGuard(app, node.config, node.feed), release, seen


def test_guard_limits_each_source_but_not_health() -> None:
    async def main() -> None:
        guard, release, _ = guard_over(Limits(api_requests_per_source=2))
        held = [asyncio.ensure_future(Exchange("/v1/status").through(guard)) for _ in range(2)]
        await asyncio.sleep(0.01)
        refused = await Exchange("/v1/status").through(guard)
        assert (refused.status, refused.code) == (429, "too_many_requests")
        assert dict(refused.sent[0]["headers"])[b"retry-after"] == b"1"
        other = asyncio.ensure_future(Exchange("/v1/status", client="10.0.0.2").through(guard))
        health = asyncio.ensure_future(Exchange("/healthz").through(guard))
        await asyncio.sleep(0.01)
        assert not other.done()  # admitted: it waits in the app like the first two
        release.set()
        assert (await health).status == 200 and (await other).status == 200
        assert [(await h).status for h in held] == [200, 200]
        assert not guard.per_source and guard.inflight == 0

    asyncio.run(main())


def test_guard_limits_requests_in_flight() -> None:
    async def main() -> None:
        guard, release, _ = guard_over(Limits(api_max_inflight=2))
        held = [asyncio.ensure_future(Exchange("/v1/status", client=f"10.0.0.{i}")
                                      .through(guard)) for i in range(2)]
        await asyncio.sleep(0.01)
        refused = await Exchange("/v1/status", client="10.0.0.9").through(guard)
        assert (refused.status, refused.code) == (503, "overloaded")
        metrics = asyncio.ensure_future(Exchange("/metrics").through(guard))  # exempt
        await asyncio.sleep(0.01)
        release.set()
        assert [(await h).status for h in held] == [200, 200]
        assert (await metrics).status == 200

    asyncio.run(main())


def test_guard_receives_bodies_before_counting_them_in_flight() -> None:
    async def main() -> None:
        guard, release, seen = guard_over(Limits(api_max_inflight=1, api_body_timeout=0.2))
        release.set()
        ok = await Exchange("/quick", "POST", body=[b"ab", b"", b"cd"], length=4).through(guard)
        assert ok.status == 200 and seen == [([b"ab", b"cd"], b"abcd")]
        slow = [Exchange("/quick", "POST", client=f"10.0.1.{i}", body=[b"x"], length=10)
                for i in range(3)]
        for ex in slow:  # half a body each, never finished
            ex.incoming = asyncio.Queue()
            ex.incoming.put_nowait({"type": "http.request", "body": b"x", "more_body": True})
        pending = [asyncio.ensure_future(ex.through(guard)) for ex in slow]
        await asyncio.sleep(0.05)
        assert guard.inflight == 0  # receiving bodies is not being in flight
        assert (await Exchange("/quick").through(guard)).status == 200
        for ex in await asyncio.gather(*pending):
            assert (ex.status, ex.code) == (408, "body_timeout")
            assert dict(ex.sent[0]["headers"])[b"connection"] == b"close"
        assert guard.body_bytes == 0 and not guard.per_source

    asyncio.run(main())


def test_guard_bounds_body_sizes_and_the_body_budget() -> None:
    async def main() -> None:
        node = Limits(max_body_bytes=10, api_body_budget=25)
        guard, release, _ = guard_over(node)
        declared = await Exchange("/v1/records", "POST", length=11).through(guard)
        assert (declared.status, declared.code) == (413, "body_too_large")
        sent = await Exchange("/v1/records", "POST", body=[b"x" * 6, b"y" * 6]).through(guard)
        assert (sent.status, sent.code) == (413, "body_too_large")
        held = [asyncio.ensure_future(Exchange("/v1/records", "POST", client=f"10.0.0.{i}",
                                               body=[b"x" * 10], length=10).through(guard))
                for i in range(2)]
        await asyncio.sleep(0.01)
        assert guard.body_bytes == 20
        over = await Exchange("/v1/records", "POST", client="10.0.0.9", body=[b"x"],
                              length=10).through(guard)
        assert (over.status, over.code) == (503, "overloaded")
        release.set()
        assert [(await h).status for h in held] == [200, 200] and guard.body_bytes == 0

    asyncio.run(main())


def test_guard_forgets_clients_that_leave_mid_body() -> None:
    async def main() -> None:
        guard, _, seen = guard_over(Limits())
        gone = Exchange("/v1/records", "POST", body=[b"x"], length=5)
        gone.incoming = asyncio.Queue()
        gone.incoming.put_nowait({"type": "http.request", "body": b"x", "more_body": True})
        gone.incoming.put_nowait({"type": "http.disconnect"})
        await gone.through(guard)
        assert gone.sent == [] and seen == [] and not guard.per_source
        assert guard.body_bytes == 0

    asyncio.run(main())


def test_guard_bounds_event_streams() -> None:
    async def main() -> None:
        node = Limits()
        streams = [node.feed.subscribe() for _ in range(256)]
        guard, _, _ = guard_over(node)
        refused = await Exchange("/v1/events").through(guard)
        assert (refused.status, refused.code) == (503, "too_many_subscribers")
        streams[0].close()  # one stream ends: there is room for another
        admitted = asyncio.ensure_future(Exchange("/v1/events").through(guard))
        await asyncio.sleep(0.01)
        assert not admitted.done()  # admitted: it waits in the app
        admitted.cancel()

    asyncio.run(main())


def test_msgpack_library_would_have_built_the_maps() -> None:
    """The finding this module fixes: msgpack materialises every item before a type check."""
    body = b"\xdd" + (100_000).to_bytes(4, "big") + b"\x80" * 100_000
    tracemalloc.start()
    try:
        items = msgpack.unpackb(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(items) == 100_000 and peak > 50 * len(body)


def test_a_failing_handler_answers_a_problem_not_a_bare_500() -> None:
    from tests.inprocess import InProcessApi

    api = InProcessApi()

    def broken() -> Any:
        raise RuntimeError("a bug in the status snapshot")

    api.service.status = broken  # type: ignore[method-assign]

    async def main() -> None:
        async with api.client(raise_app_exceptions=False) as client:
            resp = await client.get("/v1/status")
            assert resp.status_code == 500
            assert resp.headers["content-type"] == "application/problem+json"
            assert resp.json()["code"] == "internal"
            resp = await client.get("/v1/blocks/%C2%B2")
            assert (resp.status_code, resp.json()["code"]) == (400, "invalid_height")

    asyncio.run(main())


@pytest.mark.parametrize("body", [
    b'"' * (4 << 20), b'"' + b"a" * (4 << 20), b'"\\' * (2 << 20), b'"\\"' * (1 << 20),
    b"[" * (4 << 20), b'{"records": [' + b'"a",' * (1 << 20) + b'"a"]}',
    b'{"records": [{"envelope": "' + b"QUFB" * (1 << 20) + b'"}]}',
], ids=["quotes", "open-string", "escapes", "escaped-quotes", "brackets", "strings", "valid"])
def test_json_prescan_is_linear(body: bytes) -> None:
    """A string-skipping regex took seconds on such 16 MiB bodies (the GIL held)."""
    import time

    started = time.perf_counter()
    try:
        split_json_batch(body, 10_000)
    except Problem as exc:
        assert exc.status == 400
    assert time.perf_counter() - started < 2.0


def test_block_json_builds_are_budgeted_per_source() -> None:
    """A source cycling through more blocks than the cache holds would have the node build
    their JSON (CPU under the GIL) without end: each source has a byte budget of builds."""
    from node.api import BuildBudgets

    budgets = BuildBudgets(rate=4 << 20, burst=64 << 20, max_sources=2)
    assert budgets.wait("a", 100.0) == 0
    budgets.spend("a", 20 << 20, 100.0)
    budgets.spend("a", 20 << 20, 100.0)
    budgets.spend("a", 30 << 20, 100.0)  # the third build leaves a 6 MiB debt
    assert budgets.wait("a", 100.0) > 1.4
    assert budgets.wait("b", 100.0) == 0  # another source is not held back
    assert budgets.wait("a", 102.0) == 0  # the debt is paid back at 4 MiB/s
    budgets.wait("c", 102.0)
    assert list(budgets.buckets) == ["a", "c"]  # sources remembered are bounded


def test_block_json_is_rendered_one_record_at_a_time_with_the_same_shape() -> None:
    """render_block_json streams records; the document is what the whole view would be."""
    from ledger.blocks import BlockShell
    from ledger.store import MemoryStore
    from node.api import block_json, record_json, render_block_json
    from tests.factory import ChainBuilder, make_fixture

    fx = make_fixture()
    builder = ChainBuilder(fx, MemoryStore(genesis_hash=fx.genesis.hash))
    builder.add(1)
    block = builder.add(4, payload={"1": "a", 1: "b", "deep": [[[1.5]]]})
    raw = block.to_wire()
    whole = block_json(BlockShell.from_wire(raw), [
        record_json(r, "committed", block.header.height, i) for i, r in enumerate(block.records)])
    assert json.loads(render_block_json(raw)) == whole
    assert whole["records"][0]["payload"] == {"$map": [["1", "a"], [1, "b"],
                                                                    ["deep", [[[1.5]]]]]}
    empty = ChainBuilder(fx, MemoryStore(genesis_hash=fx.genesis.hash)).add(0)
    assert json.loads(render_block_json(empty.to_wire()))["records"] == []
