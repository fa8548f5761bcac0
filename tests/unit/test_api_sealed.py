"""Sealed records through ``POST /v1/records`` (SPEC sections 7 and 10), in-process: the two
submission shapes, every refusal with its code and nothing refused ever committed, the
mempool keeping the pair (its byte bound counting it, ``pending_pair``), the pair stored in
the block's own write, and a resubmission healing a store that committed the record without
its pair."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from ledger.crypto import RECORD_TAG
from ledger.encoding import packb
from ledger.errors import InvalidBodyError
from ledger.records import Record, SealedPayload, seal_record
from node.api import Problem, split_json_batch
from node.mempool import MempoolFull, decode
from tests.factory import make_fixture
from tests.inprocess import InProcessApi, msgpack_post, now_ms

FX = make_fixture()
CHAIN = FX.genesis.chain_id


def sealed(nonce: int, payload: Any = None) -> tuple[Record, SealedPayload]:
    return seal_record(FX.writer, chain=CHAIN, type="sensor.reading", subject="oven",
                       payload={"recipe": f"secret-{nonce}"} if payload is None else payload,
                       ts=now_ms(), nonce=nonce)


def item(record: Record, pair: SealedPayload | None) -> Any:
    return record.envelope if pair is None else (record.envelope, pair.salt, pair.payload)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def both_keys_body(nonce: int) -> bytes:
    """The envelope of a signed body holding both ``payload`` and ``payload_digest``."""
    body = {"chain": CHAIN, "type": "sensor.reading", "subject": "oven", "payload": 1,
            "payload_digest": os.urandom(32), "ts": now_ms(), "nonce": nonce,
            "signer": FX.writer.public}
    raw = packb(body)
    envelope = packb([raw, FX.writer.sign(RECORD_TAG + raw)])
    with pytest.raises(InvalidBodyError):
        Record.from_wire(envelope)
    return envelope


async def post(http: Any, items: list[Any]) -> list[dict[str, Any]]:
    resp = await http.post("/v1/records", **msgpack_post(items))
    assert resp.status_code == 202, resp.text
    results: list[dict[str, Any]] = resp.json()["results"]
    return results


@pytest.mark.asyncio
async def test_sealed_submissions_in_both_shapes_commit_with_their_pairs() -> None:
    api = InProcessApi(FX)
    a, pa = sealed(1)
    b, pb = sealed(2)
    async with api.client() as http:
        assert [r["status"] for r in await post(http, [item(a, pa)])] == ["accepted"]
        resp = await http.post("/v1/records", json={"records": [
            {"envelope": b64(b.envelope), "salt": b64(pb.salt), "payload": b64(pb.payload)}]})
        assert resp.status_code == 202 and resp.json()["results"][0]["status"] == "accepted"
    service = api.service
    assert service.pending_pair(a.id) == pa and service.pending_pair(b.id) == pb
    assert service.mempool.bytes == a.cost + b.cost + pa.size + pb.size
    block = api.commit()
    assert block is not None and {r.id for r in block.records} == {a.id, b.id}
    assert api.store.payloads([a.id, b.id]) == {a.id: pa, b.id: pb}
    assert service.pending_pair(a.id) is None and service.mempool.bytes == 0
    assert api.store.missing_payloads() == []


@pytest.mark.asyncio
async def test_every_bad_sealed_item_is_refused_with_its_code_and_never_committed() -> None:
    api = InProcessApi(FX)
    missing, _ = sealed(10)
    wrong, pw = sealed(11)
    short_salt, ps = sealed(12)
    inline = api.record(nonce=13)
    good, pg = sealed(14)
    items = [
        item(missing, None),
        (wrong.envelope, pw.salt, packb({"recipe": "not it"})),
        (short_salt.envelope, ps.salt[:16], ps.payload),
        (inline.envelope, os.urandom(32), packb(1)),
        both_keys_body(15),
        item(good, pg),
    ]
    async with api.client() as http:
        results = await post(http, items)
    assert [(r["status"], r.get("error")) for r in results] == [
        ("rejected", "payload_missing"), ("rejected", "payload_mismatch"),
        ("rejected", "payload_mismatch"), ("rejected", "invalid_body"),
        ("rejected", "invalid_body"), ("accepted", None)]
    assert "payload_digest" in results[1]["detail"]
    block = api.commit()
    assert block is not None and [r.id for r in block.records] == [good.id]
    assert api.commit() is None  # nothing else was ever pending
    for r in (missing, wrong, short_salt, inline):
        assert api.store.locate(r.id) is None
    assert list(api.store.payloads([good.id])) == [good.id]


@pytest.mark.asyncio
async def test_a_resubmitted_pair_heals_a_store_that_committed_the_record_without_it() -> None:
    api = InProcessApi(FX)
    rec, pair = sealed(20)
    service = api.service
    block = service.builder.block([rec])  # committed as a block from a peer: no pair here
    service.append(block)
    service.builder.blocks.append(block)
    assert api.store.missing_payloads() == [(0, rec.id)]
    async with api.client() as http:
        bad = await post(http, [(rec.envelope, pair.salt, packb("forged"))])
        assert (bad[0]["status"], bad[0]["error"]) == ("rejected", "payload_mismatch")
        assert api.store.payloads([rec.id]) == {}
        again = await post(http, [item(rec, pair)])
    assert again[0]["status"] == "duplicate"
    assert api.store.payloads([rec.id]) == {rec.id: pair}
    assert api.store.missing_payloads() == []


@pytest.mark.asyncio
async def test_the_mempool_byte_bound_counts_the_pairs() -> None:
    api = InProcessApi(FX)
    big, pair = sealed(30, payload={"blob": b"x" * 60_000})
    pool = api.service.mempool
    pool.max_bytes = big.cost + pair.size - 1  # the record fits, record and pair do not
    with pytest.raises(MempoolFull):
        pool.precheck([item(big, pair)])
    pool.max_bytes = big.cost + pair.size
    results = pool.admit(pool.precheck([item(big, pair)]), now_ms())
    assert results[0].status == "accepted" and pool.bytes == big.cost + pair.size


def test_the_json_splitter_takes_sealed_items_strictly() -> None:
    rec, pair = sealed(40)
    env, salt, payload = b64(rec.envelope), b64(pair.salt), b64(pair.payload)
    body = json.dumps({"records": [{"envelope": env},
                                   {"envelope": env, "salt": salt, "payload": payload}]})
    assert split_json_batch(body.encode(), 10) == [
        rec.envelope, (rec.envelope, pair.salt, pair.payload)]
    for bad in ({"envelope": env, "salt": salt}, {"envelope": env, "payload": payload},
                {"envelope": env, "salt": salt, "payload": payload, "x": 1}):
        with pytest.raises(Problem) as info:
            split_json_batch(json.dumps({"records": [bad]}).encode(), 10)
        assert info.value.code == "malformed"


def test_a_sealed_body_with_a_payload_key_is_invalid_body_at_decoding() -> None:
    result = decode(both_keys_body(50))
    assert (result.status, result.error) == ("rejected", "invalid_body")
