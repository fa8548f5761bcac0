"""Redaction admission through the API (SPEC section 10): a ``ledger.redact`` record the
chain-extension rule would refuse gets its code at admission and is never committed — a
target that is inline, unknown, still pending, already redacted or named by a pending
redaction (``redaction_target``), approvals neither at the threshold nor by the records' own
organisation (``approvals_insufficient``) — and so does a sealed record reusing a digest
(``digest_reused``); a valid redaction commits and the audit of the chain passes."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from ledger.audit import ChainVerifier
from ledger.encoding import packb
from ledger.records import Record
from node.mempool import Mempool
from tests.factory import ChainBuilder, redaction_record, sealed_record
from tests.inprocess import InProcessApi, msgpack_post, now_ms
from tests.unit.test_one_rule import A0, A1, A2, GOVERNED, GX, ORG0_WRITER

CHAIN = GOVERNED.chain_id


def redact(ids: list[bytes], approvers: list[Any], *, signer: Any = A0, nonce: int,
           reason: str = "erasure request") -> Record:
    return redaction_record(GOVERNED.config, signer, ids, approvers=approvers, nonce=nonce,
                            reason=reason, ts=now_ms())


async def submit(http: Any, records: list[Record | tuple[Record, bytes, bytes]],
                 ) -> list[tuple[str, str | None]]:
    """Post ``records`` (a sealed one as ``(record, salt, payload_bytes)``)."""
    items = [r.envelope if isinstance(r, Record) else (r[0].envelope, r[1], r[2])
             for r in records]
    resp = await http.post("/v1/records", **msgpack_post(items))
    assert resp.status_code == 202, resp.text
    return [(r["status"], r.get("error")) for r in resp.json()["results"]]


def committed_sealed(api: InProcessApi) -> tuple[Record, Record, Record]:
    """Block 1, appended as consensus would: a sealed record of org0's writer, one of
    acme's writer, and an inline record."""
    own = sealed_record(ORG0_WRITER, CHAIN, nonce=10_001, ts=now_ms())
    acme = sealed_record(GX.writer, CHAIN, nonce=10_002, ts=now_ms())
    inline = api.record(nonce=10_003)
    service = api.service
    block = service.builder.block([own, acme, inline])
    service.append(block)
    service.builder.blocks.append(block)
    return own, acme, inline


@pytest.mark.asyncio
async def test_invalid_redactions_get_their_code_and_never_commit() -> None:
    api = InProcessApi(GX)
    own, acme, inline = committed_sealed(api)
    async with api.client() as http:
        pending = api.record(nonce=20_000)
        assert await submit(http, [pending]) == [("accepted", None)]
        bad = {
            "inline": redact([inline.id], [A1, A2], nonce=1),
            "unknown": redact([os.urandom(32)], [A1, A2], nonce=2),
            "pending": redact([pending.id], [A1, A2], nonce=3),
            "cross-org": redact([acme.id], [A0], nonce=4),
            "two orgs": redact([own.id, acme.id], [A0], nonce=5),
        }
        good = redact([own.id], [A0], nonce=6)
        twice = redact([own.id], [A1, A2], nonce=7, reason="again")
        # own's digest again, with own's (salt, payload): the pair matches, the digest is
        # already on the chain
        salt = hashlib.sha256(b"salt" + (10_001).to_bytes(8, "big")).digest()
        reused = sealed_record(GX.writer, CHAIN, nonce=10_004, ts=now_ms(), salt=salt,
                               payload={"secret": 10_001})
        assert reused.body.payload_digest == own.body.payload_digest
        results = await submit(http, [*bad.values(), good, twice,
                                      (reused, salt, packb({"secret": 10_001}))])
        assert results == [
            ("rejected", "redaction_target"), ("rejected", "redaction_target"),
            ("rejected", "redaction_target"), ("rejected", "approvals_insufficient"),
            ("rejected", "approvals_insufficient"), ("accepted", None),
            ("rejected", "redaction_target"), ("rejected", "digest_reused")]
        resp = await http.post("/v1/records", **msgpack_post([bad["inline"].envelope]))
        detail = resp.json()["results"][0]["detail"]
        assert f"redaction names {inline.id.hex()}, which is not a sealed record" in detail

        block = api.commit()
        assert block is not None and block.height == 2
        assert [r.id for r in block.records] == [pending.id, good.id]
        for rec in [*bad.values(), twice, reused]:
            assert (await http.get(f"/v1/records/{rec.id.hex()}")).status_code == 404
        assert (await http.get(f"/v1/records/{good.id.hex()}")).json()["status"] == "committed"

        # once committed, the target is redacted: a new redaction of it is refused
        again = redact([own.id], [A1, A2], nonce=8, reason="third")
        assert await submit(http, [again]) == [("rejected", "redaction_target")]
        assert api.commit() is None

    assert api.store.redacted_at(own.id) == 2 and api.store.redacted_at(acme.id) is None
    verifier = ChainVerifier(GOVERNED)
    for height in range(1, api.store.height + 1):
        data = api.store.block_bytes(height)
        assert data is not None
        verifier.verify_next(data)
    assert verifier.height == 2 and verifier.redacted == {own.id}


def test_a_pending_redaction_is_dropped_when_a_block_redacts_its_target() -> None:
    """A redaction admitted here, overtaken by another node's redaction of the same record
    committed first: it could only make an invalid block, so the mempool lets it go (and
    a sealed record whose digest a block committed likewise)."""
    api = InProcessApi(GX)
    own, acme, _ = committed_sealed(api)
    pool: Mempool = api.service.mempool
    mine = redact([own.id], [A0], nonce=1)
    twin = sealed_record(ORG0_WRITER, CHAIN, nonce=10_005, ts=now_ms(),
                         salt=b"\x01" * 32)
    other = redact([acme.id], [A1, A2], nonce=2)
    twin_item = (twin.envelope, b"\x01" * 32, packb({"secret": 10_005}))
    results = pool.admit(pool.precheck([mine.envelope, twin_item, other.envelope]),
                         now_ms())
    assert [r.status for r in results] == ["accepted"] * 3
    assert set(pool.redacting) == {own.id, acme.id}
    theirs = redact([own.id], [A1, A2], nonce=3, reason="theirs")
    same_digest = sealed_record(GX.writer, CHAIN, nonce=10_006, ts=now_ms(),
                                digest=twin.body.payload_digest)
    builder: ChainBuilder = api.service.builder
    block = builder.block([theirs, same_digest])
    api.service.append(block)
    assert list(pool.ids()) == [other.id]
    assert set(pool.redacting) == {acme.id} and pool.digests == set()
