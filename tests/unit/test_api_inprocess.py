"""The HTTP API (SPEC section 7) in-process: the real app over a real service (MemoryStore,
the real Mempool, certified blocks committed in-process; tests/inprocess.py). What the
real-process tests checked of the API alone, without consensus, runs here in milliseconds:
every endpoint's shape, every problem code, per-record admission, wait=commit, receipts,
the event stream (live, resumed, slow subscribers dropped), and the import graph."""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from ledger.blocks import Block
from ledger.crypto import RECORD_TAG, PrivateKey
from ledger.encoding import packb
from ledger.receipts import verify_receipt
from ledger.records import Record
from node.client import AsyncLedgerClient, LedgerClient, NodeError
from node.service import BlockFeed
from tests.inprocess import InProcessApi, events_of, msgpack_post, now_ms

ROOT = Path(__file__).resolve().parents[2]


def problem(resp: httpx.Response, status: int, code: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    doc = resp.json()
    assert doc["code"] == code and doc["status"] == status and doc["detail"]
    assert doc["type"] == f"urn:ledger:problem:{code}" and doc["title"]


def data_lines(n: int) -> Any:
    return lambda lines: sum(line.startswith("data:") for line in lines) >= n


# -- every endpoint ------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_every_endpoint_answers_per_the_spec() -> None:
    api = InProcessApi(autocommit=True)
    recs = [api.record(subject=f"plant-1/s{i % 7}") for i in range(70)]
    async with api.client() as http:
        for i in range(0, 70, 10):
            resp = await http.post("/v1/records", params={"wait": "commit"},
                                   **msgpack_post([r.envelope for r in recs[i:i + 10]]))
            assert resp.status_code == 202
            assert all(item["status"] == "accepted" and item["height"] == i // 10 + 1
                       for item in resp.json()["results"])
        status = (await http.get("/v1/status")).json()
        assert set(status) == {"chain", "node", "height", "last_block_hash", "genesis_hash",
                               "round", "mempool", "validators", "peers", "evidence",
                               "config_version", "validator", "validator_index",
                               "split_views", "split_view_count"}
        assert (status["chain"], status["node"], status["height"]) == ("test-chain", "node0", 7)
        assert status["last_block_hash"] == api.store.tip_hash().hex()  # type: ignore[union-attr]
        assert status["genesis_hash"] == api.fx.genesis.hash.hex()
        assert status["mempool"] == 0 and status["peers"] == [] and status["evidence"] == []
        assert status["split_views"] == [] and status["split_view_count"] == 0
        assert [v["connected"] for v in status["validators"]] == [True, False, False, False]
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "height": 7}
        metrics = (await http.get("/metrics")).text
        assert "ledger_height 7\n" in metrics and "ledger_records_committed_total 70\n" in metrics
        assert "ledger_commit_latency_seconds_bucket" in metrics
        block = (await http.get("/v1/blocks/1")).json()
        assert set(block) == {"height", "hash", "header", "records", "cert", "witnesses"}
        assert block["height"] == 1 and len(block["records"]) == 10
        assert block["records"][3]["id"] == recs[3].id.hex()
        assert (block["records"][3]["status"], block["records"][3]["index"]) == ("committed", 3)
        raw = await http.get("/v1/blocks/2", headers={"Accept": "application/msgpack"})
        assert raw.headers["content-type"] == "application/msgpack"
        assert raw.content == api.store.block_bytes(2)
        assert Block.from_wire(raw.content).records[0].id == recs[10].id
        problem(await http.get("/v1/blocks/999999"), 404, "not_found")
        hist = (await http.get("/v1/subjects/plant-1/s3/history", params={"limit": 5})).json()
        assert len(hist["records"]) == 5 and hist["next"] is not None
        page2 = (await http.get("/v1/subjects/plant-1/s3/history",
                                params={"limit": 5, "after": hist["next"]})).json()
        mine = [r.id.hex() for r in recs if r.body.subject == "plant-1/s3"]
        assert [r["id"] for r in hist["records"] + page2["records"]] == mine[:10]
        newest = (await http.get("/v1/subjects/plant-1/s3/history",
                                 params={"order": "desc", "limit": 5})).json()
        assert [r["id"] for r in newest["records"]] == mine[::-1][:5]
        nobody = await http.get("/v1/subjects/nobody/history")
        assert nobody.json() == {"subject": "nobody", "records": [], "next": None,
                                 "checkpoint": {"height": 7, "log_size": 70}}
        rid = recs[0].id.hex()
        doc = (await http.get(f"/v1/records/{rid}")).json()
        assert doc == {"id": rid, "status": "committed", "height": 1, "index": 0,
                       "type": "sensor.reading", "subject": "plant-1/s0",
                       "signer": api.fx.writer.public.hex(), "ts": recs[0].body.ts,
                       "nonce": recs[0].body.nonce, "payload": recs[0].body.payload,
                       "envelope": base64.b64encode(recs[0].envelope).decode()}
        receipt = (await http.get(f"/v1/records/{rid}/receipt")).json()
        assert verify_receipt(receipt, api.fx.genesis).record.id.hex() == rid
        genesis = await http.get("/v1/genesis")
        assert genesis.content == api.fx.genesis.raw
        assert genesis.headers["x-genesis-hash"] == api.fx.genesis.hash.hex()
        page = await http.get("/")
        assert page.status_code == 200 and "default-src 'self'" in \
            page.headers["content-security-policy"]
        schema = (await http.get("/openapi.json")).json()
        assert "/v1/records" in schema["paths"] and "Problem" in schema["components"]["schemas"]
    status_code, head, lines = await api.sse("/v1/events?from_height=1", until=data_lines(7))
    assert status_code == 200 and head["content-type"].startswith("text/event-stream")
    assert head["cache-control"] == "no-cache"
    assert lines[0] == ": ledger block events" and "event: block" in lines
    events = events_of(lines)
    assert [e["height"] for e in events] == list(range(1, 8))
    assert events[0] == {"height": 1, "hash": block["hash"], "time_ms": block["header"]["time_ms"],
                         "record_count": 10}
    assert "id: 7" in lines


# -- hostile requests ----------------------------------------------------------------------

def body_bytes(fields: dict[str, object], repeat: tuple[str, object] | None = None) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    items = list(fields.items()) + ([repeat] if repeat else [])
    head: bytes = packer.pack_map_header(len(items))
    return head + b"".join(packer.pack(k) + packer.pack(v) for k, v in items)


@pytest.mark.asyncio
async def test_hostile_requests_get_4xx_problems_and_stable_codes() -> None:
    api = InProcessApi(max_body_bytes=200_000, max_batch=5)
    async with api.client() as http:
        async def post(body: bytes, content_type: str = "application/msgpack",
                       params: dict[str, str] | None = None) -> httpx.Response:
            return await http.post("/v1/records", content=body, params=params,
                                   headers={"Content-Type": content_type})

        async def get(path: str, **kw: Any) -> httpx.Response:
            return await http.get(path, **kw)

        problem(await post(b"\xc1\xc1\xc1"), 400, "malformed")
        problem(await post(packb({"not": "an array"})), 400, "malformed")
        problem(await post(packb([1, 2])), 400, "malformed")
        problem(await post(packb([])), 400, "empty_batch")
        problem(await post(b"hello", "text/plain"), 415, "unsupported_media_type")
        problem(await post(b"hello", ""), 415, "unsupported_media_type")
        problem(await post(b"x" * 300_000), 413, "body_too_large")
        problem(await post(packb([b"x"] * 6)), 413, "batch_too_large")
        problem(await post(b"{", "application/json"), 400, "malformed")
        problem(await post(b'{"records": 5}', "application/json"), 400, "malformed")
        problem(await post(b'{"records": [{"envelope": "%%%"}]}', "application/json"), 400,
                "malformed")
        problem(await post(packb([b"x"]), params={"wait": "soon"}), 400, "invalid_parameter")
        problem(await post(packb([b"x"]), params={"timeout": "-1"}), 400, "invalid_parameter")
        problem(await get("/v1/records/ZZZ"), 400, "invalid_id")
        problem(await get(f"/v1/records/{'A' * 64}"), 400, "invalid_id")
        problem(await get(f"/v1/records/{'0' * 64}"), 404, "not_found")
        problem(await get(f"/v1/records/{'0' * 64}/receipt"), 404, "not_found")
        for height in ("-1", "0", "1e9", "9" * 40, "abc", "%C2%B2", "%D9%A3"):
            problem(await get(f"/v1/blocks/{height}"), 400, "invalid_height")
        for params in ({"limit": "100000"}, {"after": "abc"}, {"order": "newest"},
                       {"order": "desc", "after": "1"}, {"after": "9" * 5000}):
            problem(await get("/v1/subjects/x/history", params=params), 400,
                    "invalid_parameter")
        for params in ({"from_height": "-5"}, {"from_height": "\u00b2"},
                       {"from_height": "9" * 5000}):
            problem(await get("/v1/events", params=params), 400, "invalid_parameter")
        problem(await get("/v1/events", headers={"Last-Event-ID": "9" * 5000}), 400,
                "invalid_parameter")
        problem(await get("/v1/events", headers={"Last-Event-ID": "\u00b2".encode("latin-1")}),
                400, "invalid_parameter")
        problem(await post(b"[" * 100_000, "application/json"), 400, "malformed")
        problem(await post(b'{"records": [' + b"[" * 100_000, "application/json"), 400,
                "malformed")
        for body in (b'{"records": [{"envelope": "QQ==", "envelope": "QQ=="}]}',  # repeated
                     b'{"records": [{"envelope": "QR=="}]}',  # not canonical base64
                     b'{"records": [{"envelope": "QQ"}]}',  # no padding
                     b'{"records": [{"envelope": "QQ==", "x": 1}]}',  # an unknown key
                     b'\xff{"records": []}'):
            problem(await post(body, "application/json"), 400, "malformed")
        problem(await post(b'{"records": []}', "application/json"), 400, "empty_batch")
        problem(await post(b'{"records": [' + b'{"envelope": "QQ=="},' * 9 +
                           b'{"envelope": ""}]}', "application/json"), 413, "batch_too_large")
        problem(await post(b"\xdd\xff\xff\xff\xff\x80"), 413, "batch_too_large")
        problem(await post(b"\x92\xc4\x05ab"), 400, "malformed")  # a truncated item
        problem(await post(b"\x91\xc4\x01ab"), 400, "malformed")  # trailing bytes
        problem(await post(b"\x91\xa1a"), 400, "malformed")  # str, not bin
        empty = await get("/v1/subjects/%ED%A0%80%00/history")
        assert empty.status_code == 200 and empty.json()["records"] == []
        problem(await http.delete("/v1/status"), 405, "method_not_allowed")
        problem(await get("/nope"), 404, "not_found")
    assert api.store.height == 0 and len(api.service.mempool) == 0


@pytest.mark.asyncio
async def test_hostile_records_are_rejected_per_record_and_never_committed() -> None:
    api = InProcessApi(autocommit=True)
    key, now = api.fx.writer, now_ms()
    fields: dict[str, object] = {"chain": api.fx.genesis.chain_id, "type": "sensor.reading",
                                 "subject": "s", "payload": 1, "ts": now, "nonce": 1,
                                 "signer": key.public}

    def envelope(body: bytes, signer: PrivateKey = key) -> bytes:
        return packb([body, signer.sign(RECORD_TAG + body)])

    stranger = PrivateKey.generate()
    good = api.record(subject="s", payload=1, nonce=1, ts=now)
    cases = {
        "bad_signature": packb([good.body_bytes, bytes(64)]),
        "wrong_chain": envelope(body_bytes({**fields, "chain": "other", "nonce": 2})),
        "unauthorized": envelope(body_bytes({**fields, "signer": stranger.public, "nonce": 3}),
                                 stranger),
        "repeated_key": envelope(body_bytes(fields, ("nonce", 9))),
        "extra_key": envelope(body_bytes({**fields, "extra": 1, "nonce": 4})),
        "missing_key": envelope(body_bytes({k: v for k, v in fields.items() if k != "ts"})),
        "not_an_envelope": b"\x92\xc4\x01x",
    }
    expected = {"bad_signature": "bad_signature", "wrong_chain": "wrong_chain",
                "unauthorized": "unauthorized", "repeated_key": "malformed",
                "extra_key": "malformed", "missing_key": "malformed",
                "not_an_envelope": "malformed"}
    async with api.client() as http:
        async def post(envelopes: list[bytes], **params: str) -> dict[str, Any]:
            resp = await http.post("/v1/records", params=params, **msgpack_post(envelopes))
            assert resp.status_code == 202, resp.text
            result: dict[str, Any] = resp.json()["results"][0]
            return result

        for name, env in cases.items():
            res = await post([env])
            assert (res["status"], res["error"]) == ("rejected", expected[name]), (name, res)
            assert res["detail"]
        # One batch: a result per envelope, in input order.
        mixed = await http.post("/v1/records", **msgpack_post(
            [cases["bad_signature"], good.envelope, cases["unauthorized"]]))
        assert [r["status"] for r in mixed.json()["results"]] == \
            ["rejected", "accepted", "rejected"]
        await asyncio.sleep(0)  # the autocommit
        replay = await post([good.envelope], wait="commit", timeout="5")
        assert replay == {"id": good.id.hex(), "status": "duplicate", "height": 1}
        reused = api.record(subject="t", payload=2, nonce=1, ts=now)
        res = await post([reused.envelope])
        assert (res["status"], res["error"]) == ("rejected", "nonce_reused")
        skewed = api.record(subject="t", payload=2, nonce=77, ts=now - 86_400_000)
        res = await post([skewed.envelope])
        assert (res["status"], res["error"]) == ("rejected", "clock_skew")
        json_body = json.dumps({"records": [{"envelope": base64.b64encode(
            cases["bad_signature"]).decode()}]}).encode()
        resp = await http.post("/v1/records", content=json_body,
                               headers={"Content-Type": "application/json"})
        res = resp.json()["results"][0]
        assert (res["status"], res["error"]) == ("rejected", "bad_signature")
        problem(await http.get(f"/v1/records/{Record.from_wire(cases['unauthorized']).id.hex()}"),
                404, "not_found")
    # Nothing but the one good record is on the chain.
    assert api.store.height == 1
    assert [r.id for r in api.store.block(1).records] == [good.id]  # type: ignore[union-attr]


# -- submission and commit -----------------------------------------------------------------

@pytest.mark.asyncio
async def test_wait_commit_times_out_then_the_record_commits_later() -> None:
    api = InProcessApi()  # nothing commits until the test does
    rec = api.record()
    async with api.client() as http:
        resp = await http.post("/v1/records", params={"wait": "commit", "timeout": "0.2"},
                               **msgpack_post([rec.envelope]))
        problem(resp, 504, "commit_timeout")
        assert len(api.service.commits) == 0  # the timed-out waiters are forgotten
        pending = (await http.get(f"/v1/records/{rec.id.hex()}")).json()
        assert pending["status"] == "pending" and "height" not in pending
        problem(await http.get(f"/v1/records/{rec.id.hex()}/receipt"), 409, "not_committed")
        assert (await http.get("/v1/status")).json()["mempool"] == 1
        waiting = asyncio.ensure_future(http.post(
            "/v1/records", params={"wait": "commit", "timeout": "10"},
            **msgpack_post([rec.envelope])))
        for _ in range(100):  # until the request waits on its record
            await asyncio.sleep(0.01)
            if len(api.service.commits):
                break
        assert len(api.service.commits) == 1
        block = api.commit()
        assert block is not None and block.height == 1
        assert (await waiting).json()["results"] == [
            {"id": rec.id.hex(), "status": "duplicate", "height": 1}]
        assert len(api.service.commits) == 0
        doc = (await http.get(f"/v1/records/{rec.id.hex()}")).json()
        assert (doc["status"], doc["height"], doc["index"]) == ("committed", 1, 0)
        assert (await http.get("/v1/status")).json()["mempool"] == 0


@pytest.mark.asyncio
async def test_a_commit_waited_for_when_the_node_stops_answers_its_height_if_stored() -> None:
    """The node stops (its waiters fail with NodeStopping) just as a block it stored
    commits the record a ``wait=commit`` request waits for: the request answers the
    committed result (202, with ``height``), not 503 ``stopping``. A record still pending
    when the node stops answers 503 ``stopping`` as before."""
    api = InProcessApi()
    rec, other = api.record(), api.record()
    async with api.client() as http:
        waiting = asyncio.ensure_future(http.post(
            "/v1/records", params={"wait": "commit", "timeout": "10"},
            **msgpack_post([rec.envelope])))
        for _ in range(100):  # until the request waits on its record
            await asyncio.sleep(0.01)
            if len(api.service.commits):
                break
        assert len(api.service.commits) == 1
        api.service.commits.close()  # the node stops: the waiter fails with NodeStopping
        block = api.commit()  # ... while the block holding the record is being stored
        assert block is not None and [r.id for r in block.records] == [rec.id]
        resp = await waiting  # before: 503 stopping
        assert resp.status_code == 202, resp.text
        assert resp.json()["results"] == [
            {"id": rec.id.hex(), "status": "accepted", "height": 1}]
        # a record not committed when the node stops: 503 stopping
        resp = await http.post("/v1/records", params={"wait": "commit", "timeout": "10"},
                               **msgpack_post([rec.envelope, other.envelope]))
        problem(resp, 503, "stopping")
        # and a record already committed, sent again to a stopping node: its height
        resp = await http.post("/v1/records", params={"wait": "commit", "timeout": "10"},
                               **msgpack_post([rec.envelope]))
        assert resp.status_code == 202, resp.text
        assert resp.json()["results"] == [
            {"id": rec.id.hex(), "status": "duplicate", "height": 1}]


@pytest.mark.asyncio
async def test_a_full_mempool_answers_503_with_retry_after() -> None:
    api = InProcessApi(mempool_records=2)
    async with api.client() as http:
        ok = await http.post("/v1/records", **msgpack_post(
            [api.record().envelope, api.record().envelope]))
        assert [r["status"] for r in ok.json()["results"]] == ["accepted", "accepted"]
        full = await http.post("/v1/records", **msgpack_post([api.record().envelope]))
        problem(full, 503, "mempool_full")
        assert full.headers["retry-after"] == "1"
        api.commit()
        again = await http.post("/v1/records", **msgpack_post([api.record().envelope]))
        assert again.json()["results"][0]["status"] == "accepted"


@pytest.mark.asyncio
async def test_json_submission_is_admitted_like_msgpack() -> None:
    api = InProcessApi(autocommit=True)
    rec = api.record()
    body = {"records": [{"envelope": base64.b64encode(rec.envelope).decode()}]}
    async with api.client() as http:
        resp = await http.post("/v1/records", params={"wait": "commit"}, json=body)
        assert resp.status_code == 202
        assert resp.json() == {"results": [{"id": rec.id.hex(), "status": "accepted",
                                            "height": 1}]}


@pytest.mark.asyncio
async def test_unauthorised_record_is_rejected_and_never_committed() -> None:
    api = InProcessApi(autocommit=True)
    bad = api.record(api.fx.outsider)
    operator_off_policy = api.record(api.fx.operator, type="quality.certificate")
    async with api.client() as http:
        resp = await http.post("/v1/records", **msgpack_post(
            [bad.envelope, operator_off_policy.envelope, api.record().envelope]))
        results = resp.json()["results"]
        assert [(r["status"], r.get("error")) for r in results] == [
            ("rejected", "unauthorized"), ("rejected", "unauthorized"), ("accepted", None)]
        await asyncio.sleep(0)
        assert api.store.height == 1
        problem(await http.get(f"/v1/records/{bad.id.hex()}"), 404, "not_found")


# -- the event stream ----------------------------------------------------------------------

@pytest.mark.asyncio
async def test_events_stream_live_commits_and_resume_after_last_event_id() -> None:
    api = InProcessApi()
    for _ in range(3):
        api.service.append(api.service.builder.block([api.record()]))

    async def commit_soon() -> None:
        for _ in range(2):
            await asyncio.sleep(0.05)
            api.service.append(api.service.builder.block([api.record(), api.record()]))

    committer = asyncio.ensure_future(commit_soon())
    _, _, lines = await api.sse(until=data_lines(2))  # from the tip: only what comes next
    await committer
    assert [(e["height"], e["record_count"]) for e in events_of(lines)] == [(4, 2), (5, 2)]
    _, _, lines = await api.sse(headers={"Last-Event-ID": "3"}, until=data_lines(2))
    assert [e["height"] for e in events_of(lines)] == [4, 5]
    _, _, lines = await api.sse("/v1/events?from_height=2", until=data_lines(4))
    assert [e["height"] for e in events_of(lines)] == [2, 3, 4, 5]
    assert len(api.service.feed) == 0  # every stream left the feed when it ended


@pytest.mark.asyncio
async def test_a_slow_subscriber_is_dropped_and_its_stream_ends() -> None:
    api = InProcessApi(feed=BlockFeed(queue_size=2))
    slow = api.service.feed.subscribe()
    fast_done = asyncio.ensure_future(api.sse(until=data_lines(3)))
    await asyncio.sleep(0.05)
    for _ in range(3):  # the slow one never reads: full after 2, dropped at the 3rd
        api.service.append(api.service.builder.block([api.record()]))
        await asyncio.sleep(0.01)
    _, _, lines = await fast_done
    assert [e["height"] for e in events_of(lines)] == [1, 2, 3]
    assert slow.dropped and api.service.feed.dropped == 1
    slow.close()


@pytest.mark.asyncio
async def test_too_many_event_streams_answer_503() -> None:
    api = InProcessApi()
    held = [api.service.feed.subscribe() for _ in range(api.service.feed.max_subscribers)]
    async with api.client() as http:
        resp = await http.get("/v1/events")
        problem(resp, 503, "too_many_subscribers")
        assert resp.headers["retry-after"] == "5"
    held[0].close()
    api.service.append(api.service.builder.block([api.record()]))
    _, _, lines = await api.sse("/v1/events?from_height=1", until=data_lines(1))
    assert events_of(lines)[0]["height"] == 1


def test_block_feed_publishes_to_each_and_drops_only_the_full() -> None:
    async def main() -> None:
        feed = BlockFeed(max_subscribers=3, queue_size=1)
        a, b = feed.subscribe(), feed.subscribe()
        feed.publish(1)
        assert await a.next(1) == 1
        feed.publish(2)  # b still holds 1: dropped
        assert not a.dropped and b.dropped and len(feed) == 1 and feed.dropped == 1
        assert await a.next(1) == 2 and await a.next(0.01) is None
        c = feed.subscribe()
        assert not feed.full() and len(feed) == 2
        d = feed.subscribe()
        assert feed.full()
        for sub in (a, c):
            sub.close()
        assert len(feed) == 1 and not d.dropped and c.dropped

    asyncio.run(main())


# -- the SDK over the in-process app -------------------------------------------------------

def test_sync_sdk_writes_reads_and_verifies() -> None:
    api = InProcessApi(autocommit=True)
    with api.sync_client() as http:
        client = LedgerClient("http://127.0.0.1", identity=api.fx.writer, http=http)
        result = client.write(type="quality.certificate", subject="batch-7",
                              payload={"grade": "A", "raw": b"\x00\x01"}, wait=True)
        assert result["status"] == "accepted" and result["height"] == 1
        rec = client.record(result["id"])
        assert rec["status"] == "committed" and rec["payload"]["grade"] == "A"
        assert rec["payload"]["raw"] == "AAE="  # bin payload values are base64 in JSON
        verify_receipt(client.receipt(result["id"]), api.fx.genesis)
        assert client.block(1)["height"] == 1
        assert client.history("batch-7", order="desc", limit=1)["records"][0]["id"] == \
            result["id"]
        with pytest.raises(NodeError) as err:
            client.record("00" * 32)
        assert err.value.status == 404 and err.value.problem_code == "not_found"


@pytest.mark.asyncio
async def test_async_sdk_writes_and_reads() -> None:
    api = InProcessApi(autocommit=True)
    client = AsyncLedgerClient("http://127.0.0.1", identity=api.fx.writer, http=api.client())
    async with client:
        res = await client.write(type="sensor.reading", subject="async/temp", payload=20.5,
                                 wait=True)
        assert res["status"] == "accepted" and res["height"] == 1
        newest = await client.history("async/temp", order="desc", limit=1)
        assert newest["records"][0]["id"] == res["id"]
        assert (await client.record(str(res["id"])))["status"] == "committed"


# -- the node itself serves the same app -------------------------------------------------------

@pytest.mark.asyncio
async def test_a_node_provides_the_service_and_its_commits_reach_waiters_and_feed(
        tmp_path: Path) -> None:
    """node.runtime.Node is a NodeService: the app over a real Node (SQLite store, no
    transport), a wait=commit answered when the node commits, the feed told."""
    from node.api import create_app
    from tests.factory import ChainBuilder
    from tests.unit.test_peer_budgets import make_node

    node = make_node(tmp_path / "node0")
    node.transport = None
    app = create_app(node, node.config)
    writer = InProcessApi()  # only to sign records for the fixture's chain
    rec = writer.record()
    sub = node.feed.subscribe()
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        waiting = asyncio.ensure_future(http.post(
            "/v1/records", params={"wait": "commit", "timeout": "10"},
            **msgpack_post([rec.envelope])))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(node.commits):
                break
        assert len(node.commits) == 1 and node.pending(rec.id) is not None
        assert (await http.get("/v1/status")).json()["mempool"] == 1
        block = ChainBuilder(writer.fx, node.store, time_ms=now_ms()).block(
            node.mempool.reap(10, 1 << 20))
        node.store.append(block)
        node._on_committed(block)
        assert (await waiting).json()["results"] == [
            {"id": rec.id.hex(), "status": "accepted", "height": 1}]
        assert await sub.next(1) == 1
        status = (await http.get("/v1/status")).json()
        assert (status["height"], status["mempool"], status["node"]) == (1, 0, "node0")
        assert "ledger_records_committed_total 1\n" in (await http.get("/metrics")).text
    sub.close()
    node.store.close()


# -- the import graph ------------------------------------------------------------------------

def test_the_api_never_imports_the_runtime() -> None:
    """node.api (and the service and apidoc it is rendered with) load without node.runtime:
    the API depends on node.service, and only the runtime imports the API."""
    code = ("import json, sys, node.api, node.service, node.apidoc; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('node'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    loaded = json.loads(out)
    assert "node.api" in loaded and "node.runtime" not in loaded, loaded
    for name in ("api", "service", "apidoc"):  # not even under TYPE_CHECKING
        tree = ast.parse((ROOT / "node" / f"{name}.py").read_text())
        imported = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for alias in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {f"{n.module}.{alias.name}" for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) for alias in n.names}
        assert name != "api" or "node.service" in imported  # the walk sees imports
        assert not {m for m in imported if m.startswith("node.runtime")}, (name, imported)
