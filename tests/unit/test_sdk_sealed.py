"""The SDK's sealed payloads: ``write(seal=True)`` / ``seal`` + ``submit(payloads=)`` send
each sealed record as ``[envelope, salt, payload]`` (SPEC section 7); ``payload(id)`` returns
a sealed record's value only after checking what the node served against the digest signed;
``payloads()`` lists pages; the read identity signs every read."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import msgpack
import pytest

from ledger.records import Record, SealedPayload, payload_digest
from node.client import LedgerClient, NodeError, served_pair
from tests.inprocess import BASE, InProcessApi
from tests.unit.test_api_read_policy import FX, MARKER, ORG0_WRITER, committed, sealed
from tests.unit.test_one_rule import A0


def test_write_seal_sends_envelope_salt_and_payload() -> None:
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        items = msgpack.unpackb(request.content)
        seen.extend(items)
        ids = [Record.from_wire(i[0] if isinstance(i, list) else i).id.hex() for i in items]
        return httpx.Response(202, json={"results": [{"id": i, "status": "accepted"}
                                                     for i in ids]})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = LedgerClient(BASE, identity=ORG0_WRITER, chain=FX.genesis.chain_id, http=http)
    result = client.write(type="batch.recipe", subject="oven", payload={"t": 180}, seal=True)
    assert result["status"] == "accepted"
    [item] = seen
    envelope, salt, payload = item
    record = Record.from_wire(envelope)
    assert record.id.hex() == result["id"] and record.body.payload is None
    assert record.body.payload_digest == payload_digest(salt, payload)
    assert msgpack.unpackb(payload) == {"t": 180} and len(salt) == 32

    seen.clear()
    sealed_rec, pair = client.seal(type="batch.recipe", subject="oven", payload=1)
    plain = client.sign(type="batch.recipe", subject="oven", payload=2)
    client.submit([plain, sealed_rec], payloads={sealed_rec.id: pair})
    assert seen[0] == plain.envelope
    assert seen[1] == [sealed_rec.envelope, pair.salt, pair.payload]


def test_payload_is_served_to_the_read_identity_and_checked() -> None:
    api = InProcessApi(FX)
    mine = sealed(ORG0_WRITER, 1)
    committed(api, [mine])
    record, pair = mine
    rid = record.id.hex()
    with api.sync_client() as http:
        reader = LedgerClient(BASE, http=http, read_identity=A0)
        assert reader.payload(rid) == {"recipe": f"{MARKER}-1"}
        page = reader.payloads()
        [item] = page["payloads"]
        assert served_pair(item, record) == pair and page["next"] is None
        for who in (None, FX.operator):
            other = LedgerClient(BASE, http=http, read_identity=who)
            with pytest.raises(NodeError) as err:
                other.payload(rid)
            assert err.value.problem_code == "withheld"
            assert "withheld by the read policy" in str(err.value)
            assert other.payloads()["payloads"][0]["payload_status"] == "withheld"
        history = list(reader.subject_history("oven"))
        assert history[0]["payload"] == base64.b64encode(pair.payload).decode()


def test_a_payload_not_matching_its_digest_is_refused() -> None:
    """A node (or anything between) serving another payload than the one signed for."""
    record, pair = sealed(ORG0_WRITER, 1)
    forged = SealedPayload(pair.salt, msgpack.packb({"recipe": "swapped"}))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={
            "id": record.id.hex(), "status": "committed",
            "payload_digest": record.body.payload_digest.hex(),  # type: ignore[union-attr]
            "payload_status": "served",
            "payload": base64.b64encode(forged.payload).decode(),
            "salt": base64.b64encode(forged.salt).decode(),
            "envelope": base64.b64encode(record.envelope).decode()})

    client = LedgerClient(BASE, http=httpx.Client(transport=httpx.MockTransport(handler)))
    with pytest.raises(NodeError) as err:
        client.payload(record.id.hex())
    assert err.value.problem_code == "payload_mismatch"
