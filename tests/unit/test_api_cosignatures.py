"""``POST /v1/log/cosignatures`` (SPEC sections 7 and 11): a witness's cosignature that holds
over this node's block is kept and listed with the checkpoint, the block's JSON and receipts
of that height; one from a key that is not a witness of that height, with a bad signature or
malformed is 400 and never stored; beyond the tip is 404 ``unknown_height``; one that
verifies over another block at that height is 409 ``split_view``, kept durably and shown in
``/v1/status``. Witnesses that join by a configuration change count from the height that
configuration governs."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger.blocks import Block, Header
from ledger.crypto import PrivateKey
from ledger.encoding import b64decode
from ledger.receipts import verify_receipt
from ledger.store import SqliteStore
from ledger.store.base import BlockStore
from ledger.witness import Cosignature, cosign, count_witnesses, for_header, parse_witnesses
from node.api import COSIGNATURE_BODY_MAX, create_app
from node.apidoc import limits
from node.service import LocalService
from tests.factory import (
    ChainBuilder,
    Fixture,
    change_bytes,
    change_record,
    config_doc,
    make_fixture,
    make_governed_fixture,
    seeded_key,
)
from tests.inprocess import BASE, CLIENT, InProcessApi

FX = make_fixture(witnesses=3)
PATH = "/v1/log/cosignatures"


def header_at(store: BlockStore, height: int) -> Header:
    block = store.block(height)
    assert block is not None
    return block.header


def chain(api: InProcessApi, blocks: int = 3) -> None:
    """``blocks`` blocks of two records each, committed in-process."""
    service = api.service
    for _ in range(blocks):
        block = service.builder.block([api.record(), api.record()])
        service.append(block)
        service.builder.blocks.append(block)


def cosig_of(fx: Fixture, key: PrivateKey, header: Header) -> dict[str, Any]:
    return for_header(key, fx.genesis.hash, header).to_json()


def other_block(header: Header) -> Header:
    """A header at the same height as ``header`` naming another log (what a node showing
    another history would have served the witness)."""
    return dataclasses.replace(header, time_ms=header.time_ms + 1, log_root=bytes(32))


def problem_code(resp: httpx.Response) -> str:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    code: str = resp.json()["code"]
    return code


@pytest.mark.asyncio
async def test_a_good_cosignature_is_kept_and_listed_everywhere() -> None:
    api = InProcessApi(FX)
    chain(api)
    header = header_at(api.store, 2)
    async with api.client() as http:
        first = await http.post(PATH, json=cosig_of(FX, FX.witnesses[1], header))
        assert first.status_code == 200, first.text
        assert first.json() == {"stored": True, "height": 2, "block_hash": header.hash.hex()}
        again = await http.post(PATH, json=cosig_of(FX, FX.witnesses[1], header))
        assert again.status_code == 200 and again.json()["stored"] is False
        # without the optional log_size/log_root (the SPEC's four fields) it holds too
        bare = {k: v for k, v in cosig_of(FX, FX.witnesses[0], header).items()
                if k not in ("log_size", "log_root")}
        assert (await http.post(PATH, json=bare)).json()["stored"] is True

        assert len(api.store.cosignatures(2)) == 2 and api.store.cosignatures(1) == []
        expected = sorted([{"pubkey": k.public.hex(),
                            "sig": cosig_of(FX, k, header)["sig"]}
                           for k in FX.witnesses[:2]], key=lambda w: w["pubkey"])

        checkpoint = (await http.get("/v1/log/checkpoint", params={"height": 2})).json()
        assert checkpoint["witnesses"] == expected
        tip = (await http.get("/v1/log/checkpoint")).json()
        assert tip["height"] == 3 and tip["witnesses"] == []
        pairs = parse_witnesses(checkpoint["witnesses"], "checkpoint")
        assert count_witnesses(pairs, FX.genesis.config, FX.genesis.hash, header, "c") == 2

        block = (await http.get("/v1/blocks/2")).json()
        assert block["witnesses"] == expected and block["hash"] == header.hash.hex()
        assert (await http.get("/v1/blocks/2")).json() == block  # served again, from cache
        assert (await http.get("/v1/blocks/3")).json()["witnesses"] == []
        raw = await http.get("/v1/blocks/2", headers={"Accept": "application/msgpack"})
        assert raw.content == api.store.block_bytes(2)  # SPEC section 4 bytes, unchanged

        rid = api.service.builder.blocks[1].records[0].id.hex()
        receipt = (await http.get(f"/v1/records/{rid}/receipt")).json()
        assert receipt["height"] == 2 and receipt["witnesses"] == expected
        verify_receipt(receipt, FX.genesis)  # the extra key does not disturb a verifier

        metrics = (await http.get("/metrics")).text
        assert 'ledger_cosignatures_total{result="stored"} 2' in metrics
        assert 'ledger_cosignatures_total{result="duplicate"} 1' in metrics


@pytest.mark.asyncio
async def test_refused_cosignatures_are_400_and_never_stored() -> None:
    api = InProcessApi(FX)
    chain(api)
    header = header_at(api.store, 2)
    good = cosig_of(FX, FX.witnesses[0], header)
    stranger = seeded_key("not-a-witness")
    flipped = bytearray(b64decode(good["sig"], "sig"))
    flipped[5] ^= 1
    cases: list[tuple[Any, str]] = [
        (cosig_of(FX, stranger, header), "unknown_witness"),
        (cosig_of(FX, FX.validator_keys[0], header), "unknown_witness"),
        ({**good, "sig": Cosignature(b"", 0, b"", bytes(flipped)).to_json()["sig"]},
         "bad_cosignature"),
        # signed over block 2 but posted for block 3
        ({**good, "height": 3}, "bad_cosignature"),
        # names another block without the log to check it by
        ({k: v for k, v in {**good, "block_hash": "ab" * 32}.items()
          if k not in ("log_size", "log_root")}, "bad_cosignature"),
        # names another block with a log, but the signature is over ours
        ({**good, "block_hash": "ab" * 32}, "bad_cosignature"),
        ({**good, "pubkey": "zz"}, "bad_cosignature"),
        ({**good, "height": "2"}, "bad_cosignature"),
        ({**good, "height": 0}, "bad_cosignature"),
        ({k: v for k, v in good.items() if k != "sig"}, "bad_cosignature"),
        ({**good, "log_root": None}, "bad_cosignature"),
        # beyond msgpack's integers: refused, never a 500 when the message is built
        ({**good, "block_hash": "ab" * 32, "log_size": 2**70}, "bad_cosignature"),
        ({**good, "height": 2**64}, "bad_cosignature"),
        ([good], "malformed"),
    ]
    async with api.client() as http:
        for body, code in cases:
            resp = await http.post(PATH, json=body)
            assert (resp.status_code, problem_code(resp)) == (400, code), (body, resp.text)
        for raw in (b"{", b"\xff", b'{"pubkey": 1, "pubkey": 2}', b""):
            resp = await http.post(PATH, content=raw,
                                   headers={"Content-Type": "application/json"})
            assert (resp.status_code, problem_code(resp)) == (400, "malformed"), raw
        too_big = await http.post(PATH, content=b" " * (COSIGNATURE_BODY_MAX + 1),
                                  headers={"Content-Type": "application/json"})
        assert (too_big.status_code, problem_code(too_big)) == (413, "body_too_large")
        status = (await http.get("/v1/status")).json()
        metrics = (await http.get("/metrics")).text
    assert all(api.store.cosignatures(h) == [] for h in (1, 2, 3))
    assert api.store.split_views() == []
    assert status["split_views"] == [] and status["split_view_count"] == 0
    assert 'ledger_cosignatures_total{result="unknown_witness"} 2' in metrics
    assert 'ledger_cosignatures_total{result="bad_cosignature"} 11' in metrics
    assert 'ledger_cosignatures_total{result="malformed"} 5' in metrics


@pytest.mark.asyncio
async def test_beyond_the_tip_is_404_unknown_height() -> None:
    api = InProcessApi(FX)
    chain(api, 2)
    header = header_at(api.store, 2)
    future = dataclasses.replace(header, height=3, time_ms=header.time_ms + 1000,
                                 prev_hash=header.hash, record_count=0)
    async with api.client() as http:
        resp = await http.post(PATH, json=cosig_of(FX, FX.witnesses[0], future))
        assert (resp.status_code, problem_code(resp)) == (404, "unknown_height")
        assert "tip is 2" in resp.json()["detail"]
        chain(api, 1)  # the block arrives: a cosignature of *that* block is then kept
        resp = await http.post(PATH, json=cosig_of(FX, FX.witnesses[0],
                                                   header_at(api.store, 3)))
        assert resp.status_code == 200 and resp.json()["stored"] is True


def sqlite_app(tmp_path: Path, blocks: int = 3) -> tuple[LocalService, Any]:
    store = SqliteStore(tmp_path / "chain.db", genesis_hash=FX.genesis.hash,
                        config=FX.genesis.config)
    service = LocalService(FX.genesis, store)
    builder = ChainBuilder(FX, store)
    for _ in range(blocks - store.height):
        block = builder.block([builder.record()])
        service.append(block)
    return service, create_app(service, limits())


def sqlite_client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=CLIENT),
                             base_url=BASE)


@pytest.mark.asyncio
async def test_a_split_view_is_409_kept_durably_and_shown_in_status(tmp_path: Path) -> None:
    service, app = sqlite_app(tmp_path)
    ours = header_at(service.store, 2)
    theirs = other_block(ours)
    witness = FX.witnesses[2]
    evidence = cosig_of(FX, witness, theirs)
    try:
        async with sqlite_client(app) as http:
            resp = await http.post(PATH, json=evidence)
            assert (resp.status_code, problem_code(resp)) == (409, "split_view")
            assert theirs.hash.hex() in resp.json()["detail"]
            assert ours.hash.hex() in resp.json()["detail"]
            again = await http.post(PATH, json=evidence)  # the same evidence: kept once
            assert again.status_code == 409
            # the same witness's cosignature of our block is still kept as a cosignature
            assert (await http.post(PATH, json=cosig_of(FX, witness, ours))).status_code == 200
            assert 'ledger_cosignatures_total{result="split_view"} 2' in (
                await http.get("/metrics")).text
    finally:
        service.store.close()
    assert service.store is not None
    service, app = sqlite_app(tmp_path)  # reopened: the evidence survived
    try:
        async with sqlite_client(app) as http:
            status = (await http.get("/v1/status")).json()
            checkpoint = (await http.get("/v1/log/checkpoint", params={"height": 2})).json()
    finally:
        service.store.close()
    assert status["split_view_count"] == 1 and status["evidence"] == []
    (entry,) = status["split_views"]
    assert entry == {"kind": "split_view", "height": 2, "witness": witness.public.hex(),
                     "block_hash": theirs.hash.hex(), "node_block_hash": ours.hash.hex(),
                     "cosignature": evidence}
    # the evidence checks with nothing but the witness key and the genesis hash
    from ledger.witness import cosigned_message
    assert witness.public and b64decode(evidence["sig"], "sig") == cosign(
        witness, FX.genesis.hash, theirs)
    msg = cosigned_message(FX.genesis.hash, 2, theirs.hash, evidence["log_size"],
                           bytes.fromhex(evidence["log_root"]))
    from ledger.crypto import is_valid_signature
    assert is_valid_signature(witness.public, msg, b64decode(evidence["sig"], "sig"))
    assert [w["pubkey"] for w in checkpoint["witnesses"]] == [witness.public.hex()]


GOV = make_governed_fixture()
JOINER = seeded_key("witness-joining")


@pytest.mark.asyncio
async def test_witnesses_added_by_a_change_count_from_the_height_it_governs() -> None:
    api = InProcessApi(GOV)
    service = api.service
    builder = service.builder

    def add(records: list[Any]) -> Block:
        block = builder.block(records)
        service.append(block)
        builder.blocks.append(block)
        history = service.store.history
        assert history is not None
        builder.follow(history.latest)
        return block

    add([api.record()])
    doc = copy.deepcopy(config_doc(GOV.genesis))
    doc["witnesses"] = [{"name": "joiner", "pubkey": JOINER.public.hex()}]
    change = change_bytes(GOV.genesis.config, doc)
    add([change_record(GOV.genesis.config, GOV.admins[0], change, approvers=GOV.admins[:2],
                       nonce=1)])  # height 2: the change governs from height 3
    add([api.record()])
    async with api.client() as http:
        for height, status, code in ((1, 400, "unknown_witness"), (2, 400, "unknown_witness"),
                                     (3, 200, None)):
            resp = await http.post(PATH, json=cosig_of(GOV, JOINER,
                                                       header_at(api.store, height)))
            assert resp.status_code == status, (height, resp.text)
            if code:
                assert problem_code(resp) == code
        config = (await http.get("/v1/config")).json()
    assert config["config"]["witnesses"] == doc["witnesses"]
    assert [h for h in (1, 2, 3) if api.store.cosignatures(h)] == [3]


def test_the_endpoint_is_documented() -> None:
    api = InProcessApi(FX)
    schema = api.app.openapi()
    post = schema["paths"][PATH]["post"]
    codes = {c["code"] for r in post["responses"].values()
             for c in r.get("x-problem-codes", [])}
    assert {"malformed", "bad_cosignature", "unknown_witness", "unknown_height",
            "split_view", "body_too_large"} <= codes
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"pubkey", "height", "block_hash", "sig"}
    assert json.dumps(body)  # serialisable


@pytest.mark.asyncio
async def test_the_sdk_posts_cosignatures() -> None:
    from node.client import AsyncLedgerClient, NodeError

    api = InProcessApi(FX)
    chain(api, 2)
    header = header_at(api.store, 2)
    async with api.client() as http:
        sdk = AsyncLedgerClient(BASE, http=http)
        cosig = for_header(FX.witnesses[0], FX.genesis.hash, header)
        assert (await sdk.post_cosignature(cosig))["stored"] is True
        assert (await sdk.post_cosignature(cosig.to_json()))["stored"] is False
        checkpoint = await sdk.checkpoint(2)
        assert [w["pubkey"] for w in checkpoint["witnesses"]] == [cosig.pubkey.hex()]
        with pytest.raises(NodeError) as split:
            await sdk.post_cosignature(for_header(FX.witnesses[1], FX.genesis.hash,
                                                  other_block(header)))
        assert (split.value.status, split.value.problem_code) == (409, "split_view")
        with pytest.raises(NodeError) as unknown:
            await sdk.post_cosignature(for_header(seeded_key("x"), FX.genesis.hash, header))
        assert (unknown.value.status, unknown.value.problem_code) == (400, "unknown_witness")


@pytest.mark.asyncio
async def test_cosignatures_are_listed_by_height_range() -> None:
    """``GET /v1/log/cosignatures`` (our extension: what ``ledger export --node`` writes as
    a bundle's witnesses section): pages by height, and bad ranges are 400 problems."""
    api = InProcessApi(FX)
    async with api.client() as http:
        resp = await http.get(PATH)
        assert (resp.status_code, problem_code(resp)) == (404, "not_found")
    chain(api, 3)
    for h in (1, 3):
        for key in FX.witnesses[:2]:
            assert api.store.add_cosignature(h, key.public,
                                             cosign(key, FX.genesis.hash, header_at(api.store, h)))
    async with api.client() as http:
        doc = (await http.get(PATH)).json()
        assert (doc["from_height"], doc["to_height"], doc["next"]) == (1, 3, None)
        assert [(c["height"], c["pubkey"]) for c in doc["cosignatures"]] == [
            (h, pk.hex()) for h, pk, _ in api.store.cosignatures_between(1, 3)]
        assert len(doc["cosignatures"]) == 4
        doc = (await http.get(PATH, params={"from_height": 2, "to_height": 2})).json()
        assert (doc["cosignatures"], doc["next"]) == ([], 3)
        for params in ({"from_height": 0}, {"from_height": 4}, {"from_height": "x"},
                       {"from_height": 3, "to_height": 2}, {"to_height": 9}):
            resp = await http.get(PATH, params=params)
            assert (resp.status_code, problem_code(resp)) == (400, "invalid_parameter"), params
