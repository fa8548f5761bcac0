"""A ``ledger.config`` payload may be up to 1 MiB, every other one 64 KiB (SPEC sections 2
and 9): record decoding, admission through the API, blocks and the node's limits all follow
``ledger.records.MAX_CONFIG_PAYLOAD_BYTES``."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from ledger.config import CONFIG_TAG, CONFIG_TYPE, Config, approval_message
from ledger.consensus.core import ConsensusConfig
from ledger.crypto import PrivateKey
from ledger.encoding import packb
from ledger.errors import TooLargeError
from ledger.genesis import Genesis
from ledger.records import (
    MAX_CONFIG_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_RECORD_ENVELOPE_BYTES,
    Record,
    RecordBody,
)
from node.config import ConfigError, NodeConfig
from node.transport.network import PeerNetwork
from tests.factory import change_bytes, config_doc, make_governed_fixture, seeded_key
from tests.inprocess import InProcessApi, msgpack_post, now_ms

FX = make_governed_fixture()
KEY = seeded_key("size-writer")


def body_map(type: str, payload: Any) -> dict[str, Any]:
    return {"chain": "c", "type": type, "subject": "s", "payload": payload, "ts": 1,
            "nonce": 1, "signer": KEY.public}


def bin_payload(size: int) -> bytes:
    """A bin whose msgpack encoding is exactly ``size`` bytes (size > 65540)."""
    data = b"x" * (size - 5)
    assert len(packb(data)) == size
    return data


def test_a_config_payload_may_reach_1_mib_and_no_other_may_pass_64_kib() -> None:
    ok = bin_payload(MAX_CONFIG_PAYLOAD_BYTES)
    assert RecordBody.from_wire(packb(body_map(CONFIG_TYPE, ok))).payload == ok
    with pytest.raises(TooLargeError, match="payload: 1048577 bytes exceeds 1048576"):
        RecordBody.from_wire(packb(body_map(CONFIG_TYPE, ok + b"x")))
    for other in ("sensor.reading", "ledger.redact", "ledger.configx"):
        with pytest.raises(TooLargeError, match="exceeds"):
            RecordBody.from_wire(packb(body_map(other, bin_payload(65 * 1024))))
        with pytest.raises(TooLargeError, match=f"only a {CONFIG_TYPE} payload"):
            RecordBody.from_wire(packb(body_map(other, ok)))


def test_a_large_body_of_tiny_elements_is_refused_before_it_is_built() -> None:
    # 1 MiB of empty maps would decode to ~70 MiB of dicts: the scan refuses it first.
    bomb = packb(body_map(CONFIG_TYPE, [{}] * (MAX_CONFIG_PAYLOAD_BYTES - 8)))
    with pytest.raises(TooLargeError, match="msgpack elements"):
        RecordBody.from_wire(bomb)
    # Up to 64 KiB the element count is what it always was: a 64 KiB payload of empty maps.
    RecordBody.from_wire(packb(body_map(CONFIG_TYPE, [{}] * (MAX_PAYLOAD_BYTES - 3))))


def test_the_node_limits_derive_from_the_largest_record() -> None:
    cfg = ConsensusConfig()
    assert cfg.max_block_bytes >= MAX_RECORD_ENVELOPE_BYTES
    with pytest.raises(ValueError, match="largest record envelope"):
        ConsensusConfig(max_block_bytes=MAX_RECORD_ENVELOPE_BYTES - 1)
    # A proposal frame carries a whole block; a request body a base64 envelope in JSON.
    defaults = PeerNetwork.__init__.__kwdefaults__
    assert defaults is not None
    frame = defaults["max_frame"]
    assert frame > cfg.max_block_bytes + 64 * 1024
    assert NodeConfig.max_body_bytes >= (MAX_RECORD_ENVELOPE_BYTES * 4) // 3 + 1024


def big_change(config: Config, target: int) -> bytes:
    """A valid change adding organisation ``bigco`` with enough members to make the change
    about ``target`` bytes."""
    doc = copy.deepcopy(config_doc(FX.genesis))
    pad = "-" + "m" * 200
    per_member = len(packb({"name": "m00000" + pad, "pubkey": "0" * 64, "roles": ["writer"]}))
    members = [{"name": f"m{i:05d}{pad}", "pubkey": seeded_key(f"big-{i}").public.hex(),
                "roles": ["writer"]} for i in range(target // per_member)]
    doc["organizations"].append({"name": "bigco", "members": members})
    return change_bytes(config, doc)


def config_record(config: Config, change: bytes, approvers: list[PrivateKey],
                  nonce: int) -> Record:
    msg = approval_message(config.genesis_hash, change, CONFIG_TAG)
    return Record.create(FX.admins[0], chain=config.chain_id, type=CONFIG_TYPE,
                         subject="config", ts=now_ms(), nonce=nonce,
                         payload={"change": change, "joins": [],
                                  "approvals": [[k.public, k.sign(msg)] for k in approvers]})


@pytest.mark.asyncio
async def test_a_900_kib_change_is_admitted_and_committed_and_oversized_ones_are_too_large(
        ) -> None:
    api = InProcessApi(FX)
    c0 = FX.genesis.config
    change = big_change(c0, 900 * 1024)
    assert 880 * 1024 < len(change) < 920 * 1024
    good = config_record(c0, change, FX.admins[:2], nonce=1)
    over = Record.create(FX.admins[0], chain=c0.chain_id, type=CONFIG_TYPE, subject="config",
                         ts=now_ms(), nonce=2,
                         payload={"change": b"x" * (MAX_CONFIG_PAYLOAD_BYTES + 1 - 31),
                                  "approvals": [], "joins": []})
    assert len(packb(over.body.payload)) == MAX_CONFIG_PAYLOAD_BYTES + 1
    plain = api.record(payload=bin_payload(65 * 1024))
    async with api.client() as http:
        resp = await http.post("/v1/records", **msgpack_post([good.envelope, over.envelope,
                                                               plain.envelope]))
        assert resp.status_code == 202, resp.text
        assert [(r["status"], r.get("error")) for r in resp.json()["results"]] == [
            ("accepted", None), ("rejected", "too_large"), ("rejected", "too_large")]
        # the JSON form (base64 in JSON: 1.2 MiB of request body) admits the same way
        dup = await http.post("/v1/records", json={"records": [
            {"envelope": base64.b64encode(good.envelope).decode()}]})
        assert dup.json()["results"][0]["status"] == "duplicate"
        block = api.commit()
        assert block is not None and [r.id for r in block.records] == [good.id]
        stored = api.store.block(1)
        assert stored is not None and stored.records[0].envelope == good.envelope
        cfg = (await http.get("/v1/config")).json()
        assert (cfg["version"], cfg["height"]) == (1, 2)
        assert base64.b64decode(cfg["change"]) == change
        assert len(cfg["config"]["organizations"][-1]["members"]) > 3000
        rec = (await http.get(f"/v1/records/{good.id.hex()}")).json()
        assert rec["status"] == "committed"
        receipt = (await http.get(f"/v1/records/{good.id.hex()}/receipt")).json()
        from ledger.receipts import verify_receipt
        verify_receipt(receipt, FX.genesis)
        for missing in (over, plain):
            assert (await http.get(f"/v1/records/{missing.id.hex()}")).status_code == 404


def test_a_genesis_whose_blocks_cannot_hold_a_change_is_refused() -> None:
    doc = json.loads(FX.genesis.raw)
    doc["consensus"] = {"max_block_bytes": 512 * 1024}
    genesis = Genesis.from_bytes(json.dumps(doc).encode())
    cfg = NodeConfig.__new__(NodeConfig)
    with pytest.raises(ConfigError, match="largest record envelope"):
        cfg.consensus_config(genesis)
