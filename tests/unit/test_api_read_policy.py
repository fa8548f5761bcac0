"""Read policies on every endpoint that renders records (SPEC sections 7 and 10): a sealed
record's ``payload`` and ``salt`` reach only a reader whose RFC 9421 signature proves a
member holding a role its type's read policy names. Every other reader — a member without
the role, an unsigned request, an expired signature, a signature of another path, a garbage
signature — gets the record without them (never an error), and no byte of the payload is in
its answer. After a redaction every reader sees ``redacted`` and no payload."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import replace
from typing import Any

import pytest

from ledger import httpsig
from ledger.crypto import PrivateKey
from ledger.errors import ReceiptError
from ledger.genesis import Genesis
from ledger.receipts import verify_receipt
from ledger.records import Record, SealedPayload, seal_record
from tests.factory import redaction_record
from tests.inprocess import BASE, InProcessApi, now_ms
from tests.unit.test_one_rule import A0, GX, ORG0_WRITER


def read_policy_genesis() -> Genesis:
    """The governed genesis with ``read_policies``: only admins read ``batch.recipe``
    payloads; other types have no policy (anyone reads them)."""
    doc = json.loads(GX.genesis.raw)
    doc["read_policies"] = {"batch.recipe": ["admin"]}
    return Genesis.from_bytes(json.dumps(doc).encode())


RP = read_policy_genesis()
FX = replace(GX, genesis=RP)
CHAIN = RP.chain_id
MARKER = "MARKER-7f3a-confidential-recipe"


def sealed(key: PrivateKey, nonce: int, *, type: str = "batch.recipe",
           subject: str = "oven") -> tuple[Record, SealedPayload]:
    return seal_record(key, chain=CHAIN, type=type, subject=subject,
                       payload={"recipe": f"{MARKER}-{nonce}"}, ts=now_ms(), nonce=nonce)


def committed(api: InProcessApi, items: list[tuple[Record, SealedPayload]],
              extra: list[Record] | None = None) -> int:
    """A block of ``items`` (and ``extra``) appended as consensus would, its pairs kept."""
    service = api.service
    block = service.builder.block([r for r, _ in items] + (extra or []))
    service.append(block)
    service.builder.blocks.append(block)
    put = api.store.put_payloads({r.id: p for r, p in items})
    assert set(put.stored) == {r.id for r, _ in items} and not put.mismatched
    return block.height


def signed(key: PrivateKey, path: str, *, created: int | None = None,
           signed_path: str | None = None) -> dict[str, str]:
    return httpsig.sign_request(key, "GET", BASE + (signed_path or path),
                                int(time.time()) if created is None else created)


GARBAGE = {"Signature-Input": 'sig1=("@method");created=1', "Signature": "sig1=:AAAA:"}


def readers(path: str) -> dict[str, dict[str, str]]:
    """The reader kinds: headers of a request of ``path`` by each."""
    return {
        "authorised": signed(A0, path),
        "member without the role": signed(FX.operator, path),
        "anonymous": {},
        "expired": signed(A0, path, created=int(time.time()) - 1000),
        "another path": signed(A0, path, signed_path="/v1/status"),
        "garbage": GARBAGE,
    }


def secret_bytes(pair: SealedPayload) -> list[bytes]:
    """What must not be in a refused reader's answer: the marker, the payload's and the
    salt's base64 (and the raw payload bytes)."""
    return [MARKER.encode(), pair.payload, base64.b64encode(pair.payload),
            base64.b64encode(pair.salt)]


def records_in(path: str, doc: Any) -> list[dict[str, Any]]:
    if "/history" in path:
        return list(doc["records"])
    if path.startswith("/v1/blocks/"):
        return list(doc["records"])
    return [doc]


@pytest.mark.asyncio
async def test_every_endpoint_serves_the_payload_to_the_authorised_reader_only() -> None:
    api = InProcessApi(FX)
    own = sealed(ORG0_WRITER, 1)
    open_type = sealed(FX.writer, 2, type="sensor.reading", subject="oven")
    inline = api.record(subject="oven", nonce=3)
    height = committed(api, [own, open_type], [inline])
    record, pair = own
    rid = record.id.hex()
    paths = [f"/v1/records/{rid}", f"/v1/blocks/{height}", "/v1/subjects/oven/history",
             "/v1/subjects/oven/history?proof=true", "/v1/subjects/oven/history?order=desc",
             f"/v1/records/{rid}/receipt", "/v1/payloads", "/v1/payloads?from_index=0&limit=5"]
    async with api.client() as http:
        for path in paths:
            for kind, headers in readers(path).items():
                resp = await http.get(path, headers=headers)
                assert resp.status_code == 200, (path, kind, resp.text)
                where = f"{path} as {kind}"
                reader = resp.headers["ledger-reader"]
                # no shared cache may serve one reader's answer to another
                assert resp.headers["vary"] == "Signature, Signature-Input", where
                assert resp.headers["cache-control"] == "private", where
                if kind == "authorised":
                    assert reader == A0.public.hex(), where
                    assert MARKER.encode() not in resp.content  # b64 only, never raw
                    assert base64.b64encode(pair.payload) in resp.content, where
                else:
                    for secret in secret_bytes(pair):
                        assert secret not in resp.content, (where, secret)
                    expected = (FX.operator.public.hex() if kind == "member without the role"
                                else "anonymous")
                    assert reader.startswith(expected), (where, reader)
                    if kind in ("expired", "another path", "garbage"):
                        assert "signature not accepted" in reader, (where, reader)
                doc = resp.json()
                if path.startswith("/v1/payloads"):
                    items = {i["id"]: i for i in doc["payloads"]}
                    assert doc["next"] is None and doc["log_size"] == 3
                    mine = items[rid]
                    assert mine["index"] == 0
                    if kind == "authorised":
                        assert mine["payload_status"] == "served"
                        assert base64.b64decode(mine["payload"]) == pair.payload
                        assert base64.b64decode(mine["salt"]) == pair.salt
                    else:
                        assert mine == {"index": 0, "id": rid, "payload_status": "withheld"}
                    # no read policy for its type: everyone is served it
                    assert items[open_type[0].id.hex()]["payload_status"] == "served"
                    continue
                if path.endswith("/receipt"):
                    verify_receipt(doc, RP)
                    assert ("payload" in doc) == ("salt" in doc) == (kind == "authorised")
                    continue
                by_id = {r["id"]: r for r in records_in(path, doc)}
                mine = by_id[rid]
                assert mine["payload_digest"] == record.body.payload_digest.hex()  # type: ignore[union-attr]
                if kind == "authorised":
                    assert mine["payload_status"] == "served", where
                    assert base64.b64decode(mine["payload"]) == pair.payload
                    assert base64.b64decode(mine["salt"]) == pair.salt
                else:
                    assert mine["payload_status"] == "withheld", where
                    assert "payload" not in mine and "salt" not in mine, where
                if path.startswith("/v1/blocks") or "/history" in path:
                    other = by_id[open_type[0].id.hex()]
                    assert other["payload_status"] == "served"
                    assert by_id[inline.id.hex()]["payload"] == inline.body.payload
                    assert "payload_status" not in by_id[inline.id.hex()]


@pytest.mark.asyncio
async def test_a_missing_pair_and_a_pending_sealed_record() -> None:
    """A pair this node does not hold is ``missing`` (to a reader allowed it); a pending
    sealed record shows its digest (its pair comes from ``pending_pair``)."""
    api = InProcessApi(FX)
    record, _ = sealed(ORG0_WRITER, 1)
    block = api.service.builder.block([record])
    api.service.append(block)
    api.service.builder.blocks.append(block)
    path = f"/v1/records/{record.id.hex()}"
    async with api.client() as http:
        allowed = (await http.get(path, headers=signed(A0, path))).json()
        refused = (await http.get(path)).json()
    assert allowed["payload_status"] == "missing" and "payload" not in allowed
    assert refused["payload_status"] == "withheld"


@pytest.mark.asyncio
async def test_redacted_records_show_redacted_and_no_payload_to_anyone() -> None:
    api = InProcessApi(FX)
    own = sealed(ORG0_WRITER, 1)
    committed(api, [own])
    record, pair = own
    redaction = redaction_record(RP.config, A0, [record.id], approvers=[A0], nonce=50,
                                 ts=now_ms())
    block = api.service.builder.block([redaction])
    api.service.append(block)
    api.service.builder.blocks.append(block)
    assert api.store.redacted_at(record.id) == 2
    rid = record.id.hex()
    async with api.client() as http:
        for path in (f"/v1/records/{rid}", "/v1/blocks/1", "/v1/subjects/oven/history",
                     f"/v1/records/{rid}/receipt", "/v1/payloads"):
            for kind, headers in readers(path).items():
                resp = await http.get(path, headers=headers)
                assert resp.status_code == 200, (path, kind)
                for secret in secret_bytes(pair):
                    assert secret not in resp.content, (path, kind)
                doc = resp.json()
                if path == "/v1/payloads":
                    assert doc["payloads"] == []
                elif path.endswith("/receipt"):
                    verify_receipt(doc, RP)  # still verifies after the redaction
                else:
                    mine = {r["id"]: r for r in records_in(path, doc)}[rid]
                    assert mine["redacted"] == {"height": 2}
                    assert mine["payload_status"] == "redacted"
                    assert "payload" not in mine and "salt" not in mine


@pytest.mark.asyncio
async def test_events_carry_no_payloads() -> None:
    """SSE block events are `{height, hash, time_ms, record_count}`: no record, so no
    payload, whoever reads them."""
    api = InProcessApi(FX)
    committed(api, [sealed(ORG0_WRITER, 1)])
    status, _, lines = await api.sse("/v1/events?from_height=1",
                                     headers=signed(A0, "/v1/events?from_height=1"),
                                     until=lambda lines: any("data:" in x for x in lines))
    assert status == 200
    data = [json.loads(x[5:]) for x in lines if x.startswith("data:")]
    assert data and set(data[0]) == {"height", "hash", "time_ms", "record_count"}


@pytest.mark.asyncio
async def test_payload_listing_pages() -> None:
    api = InProcessApi(FX)
    items = [sealed(ORG0_WRITER, n, type="sensor.reading") for n in range(1, 6)]
    committed(api, items)
    seen: list[str] = []
    cursor: int | None = 0
    async with api.client() as http:
        for _ in range(10):
            resp = await http.get(f"/v1/payloads?from_index={cursor}&limit=2")
            doc = resp.json()
            assert len(doc["payloads"]) <= 2
            seen += [i["id"] for i in doc["payloads"]]
            cursor = doc["next"]
            if cursor is None:
                break
        assert seen == [r.id.hex() for r, _ in items]
        bad = await http.get("/v1/payloads?limit=0")
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_parameter"


@pytest.mark.asyncio
async def test_a_served_receipt_payload_is_checked_by_the_verifier() -> None:
    """`ledger verify` (verify_receipt) checks a receipt's payload and salt against the
    digest when present; a receipt without them stays valid."""
    api = InProcessApi(FX)
    record, pair = sealed(ORG0_WRITER, 1)
    committed(api, [(record, pair)])
    path = f"/v1/records/{record.id.hex()}/receipt"
    async with api.client() as http:
        doc = (await http.get(path, headers=signed(A0, path))).json()
        plain = (await http.get(path)).json()
    assert verify_receipt(doc, RP).payload == pair
    assert verify_receipt(plain, RP).payload is None
    forged = dict(doc, payload=base64.b64encode(pair.payload + b"x").decode())
    with pytest.raises(ReceiptError) as info:
        verify_receipt(forged, RP)
    assert info.value.code == "payload_mismatch"
    no_salt = {k: v for k, v in doc.items() if k != "salt"}
    with pytest.raises(ReceiptError, match="missing 'salt'"):
        verify_receipt(no_salt, RP)


@pytest.mark.asyncio
async def test_a_pending_sealed_record_is_served_from_the_mempool_pair() -> None:
    """A pending sealed record's pair is ``node.pending_pair``'s (the mempool's), under the
    same read rule."""
    api = InProcessApi(FX)
    record, pair = sealed(ORG0_WRITER, 1)
    pool = api.service.mempool
    item = (record.envelope, pair.salt, pair.payload)
    assert [r.status for r in pool.admit(pool.precheck([item]), now_ms())] == ["accepted"]
    assert api.service.pending_pair(record.id) == pair
    path = f"/v1/records/{record.id.hex()}"
    async with api.client() as http:
        allowed = (await http.get(path, headers=signed(A0, path))).json()
        refused = await http.get(path, headers=signed(FX.operator, path))
    assert allowed["status"] == "pending" and allowed["payload_status"] == "served"
    assert base64.b64decode(allowed["payload"]) == pair.payload
    assert refused.json()["payload_status"] == "withheld"
    for secret in secret_bytes(pair):
        assert secret not in refused.content
