"""The node follows committed configuration changes through its API (SPEC sections 6, 7,
9): admission checks the configuration governing the next height (a revoked key is
``unauthorized`` as soon as the change commits; bad changes get their codes), ``GET
/v1/config`` and ``?version=``, ``GET /v1/config/proof``, ``config_version`` in
``/v1/status``, and receipts carry the ``config_proof`` that verifies from genesis alone."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from ledger.config import CONFIG_TAG, CONFIG_TYPE, Config, approval_message, decode_change
from ledger.crypto import PrivateKey
from ledger.receipts import verify_receipt
from ledger.records import Record
from node.client import AsyncLedgerClient, NodeError
from tests.factory import change_bytes, config_doc, make_governed_fixture
from tests.inprocess import InProcessApi, msgpack_post, now_ms
from tests.unit.test_store_config import revoke_writer

FX = make_governed_fixture()


def change_record(config: Config, signer: PrivateKey, change: bytes, *,
                  approvers: list[PrivateKey], nonce: int) -> Record:
    """A ``ledger.config`` record stamped now (admission checks the clock)."""
    msg = approval_message(config.genesis_hash, change, CONFIG_TAG)
    return Record.create(signer, chain=config.chain_id, type=CONFIG_TYPE, subject="config",
                         payload={"change": change, "joins": [],
                                  "approvals": [[k.public, k.sign(msg)] for k in approvers]},
                         ts=now_ms(), nonce=nonce)


async def submit(http: Any, records: list[Record]) -> list[dict[str, Any]]:
    resp = await http.post("/v1/records", **msgpack_post([r.envelope for r in records]))
    assert resp.status_code == 202, resp.text
    results: list[dict[str, Any]] = resp.json()["results"]
    return results


@pytest.mark.asyncio
async def test_a_committed_change_governs_admission_config_and_receipts() -> None:
    api = InProcessApi(FX)
    genesis_config = FX.genesis.config
    async with api.client() as http:
        before = api.record()
        assert (await submit(http, [before]))[0]["status"] == "accepted"
        api.commit()
        cfg0 = (await http.get("/v1/config")).json()
        assert (cfg0["version"], cfg0["height"], cfg0["change"]) == (0, 1, None)
        assert cfg0["config"] == config_doc(FX.genesis)
        assert (await http.get("/v1/status")).json()["config_version"] == 0

        change = revoke_writer(FX, genesis_config)
        # approvals below the threshold (2 of 3 organisations) and a stale version
        few = change_record(genesis_config, FX.admins[0], change, approvers=FX.admins[:1],
                            nonce=1)
        stale = change_record(genesis_config, FX.admins[0],
                              change_bytes(genesis_config, config_doc(FX.genesis), version=5),
                              approvers=FX.admins[:2], nonce=2)
        good = change_record(genesis_config, FX.admins[0], change, approvers=FX.admins[:2],
                             nonce=3)
        results = await submit(http, [few, stale, good])
        assert [(r["status"], r.get("error")) for r in results] == [
            ("rejected", "approvals_insufficient"), ("rejected", "config_version"),
            ("accepted", None)]
        block = api.commit()
        assert block is not None and block.height == 2

        cfg = (await http.get("/v1/config")).json()
        assert (cfg["version"], cfg["height"]) == (1, 3)
        assert base64.b64decode(cfg["change"]) == change
        doc = decode_change(change)
        assert cfg["config"]["validators"] == doc["validators"]
        assert len(cfg["config"]["validators"]) == 3
        assert (await http.get("/v1/config", params={"version": 0})).json() == cfg0
        assert (await http.get("/v1/config", params={"version": 1})).json() == cfg
        assert (await http.get("/v1/config", params={"version": 2})).status_code == 404
        sdk = AsyncLedgerClient("http://127.0.0.1", http=http)  # the SDK reads the same
        assert await sdk.config() == cfg and await sdk.config(0) == cfg0
        with pytest.raises(NodeError) as unknown:
            await sdk.config(2)
        assert unknown.value.status == 404
        status = (await http.get("/v1/status")).json()
        assert status["config_version"] == 1 and len(status["validators"]) == 3

        # the revoked key is refused at once; the same change again is a stale version
        late = api.record()
        again = change_record(genesis_config, FX.admins[0], change, approvers=FX.admins[:2],
                              nonce=4)
        results = await submit(http, [late, again])
        assert [(r["status"], r.get("error")) for r in results] == [
            ("rejected", "unauthorized"), ("rejected", "config_version")]
        other = api.record(key=FX.operator)
        assert (await submit(http, [other]))[0]["status"] == "accepted"
        assert api.commit() is not None  # certified by the new set

        proof = (await http.get("/v1/config/proof", params={"to_height": 3})).json()
        assert [s["height"] for s in proof["steps"]] == [2]
        assert (await http.get("/v1/config/proof", params={"to_height": 2})).json() == {
            "steps": []}
        for rec, steps in ((before, 0), (other, 1)):
            receipt = (await http.get(f"/v1/records/{rec.id.hex()}/receipt")).json()
            assert len(receipt["config_proof"]) == steps
            verify_receipt(receipt, FX.genesis)


@pytest.mark.asyncio
async def test_a_pending_record_of_a_revoked_key_leaves_the_mempool() -> None:
    api = InProcessApi(FX)
    genesis_config = FX.genesis.config
    async with api.client() as http:
        good = change_record(genesis_config, FX.admins[0], revoke_writer(FX, genesis_config),
                             approvers=FX.admins[:2], nonce=3)
        pending = api.record()
        results = await submit(http, [good, pending])
        assert [r["status"] for r in results] == ["accepted", "accepted"]
        block = api.service.commit(max_records=1)  # the change alone
        assert block is not None and [r.id for r in block.records] == [good.id]
        assert api.service.pending(pending.id) is None  # dropped: never proposed
        assert api.commit() is None
