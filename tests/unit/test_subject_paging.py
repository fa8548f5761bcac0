"""Subject history that scales (issue 14): cursor pages that stay exact while blocks commit
between them, in both orders; a block-time range (``since``/``until``) found by binary search
over heights; an RFC 9162 inclusion proof per record (``proof=true``) that the SDK verifies
against a verified checkpoint; every bad parameter a 400 problem. In-process: the real app
over a MemoryStore (tests/inprocess.py), blocks appended between requests."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from ledger import checkpoint as checkpoints
from ledger import merkle
from ledger.encoding import b64decode
from ledger.errors import LogProofError
from ledger.records import Record
from node.api import HISTORY_PROOF_PAGE
from node.client import AsyncLedgerClient, LedgerClient, NodeError
from tests.factory import make_fixture
from tests.inprocess import InProcessApi

FX = make_fixture()
S = "plant-4/line-1/flow"
T0 = 1_800_000_000_000  # block k (1-based) of the fixed chains has time T0 + 1000 * k


class Chain:
    """The in-process app over a chain whose blocks the test appends: ``grow`` adds one
    block of ``mine`` records of S among ``other`` records of another subject."""

    def __init__(self) -> None:
        self.api = InProcessApi(FX)
        self.builder = self.api.service.builder
        self.builder.time_ms = T0
        self.ids: list[str] = []  # S's record ids in log order

    def grow(self, mine: int = 5, other: int = 2) -> None:
        b = self.builder
        records = [b.record(subject=S) for _ in range(mine)]
        records[1:1] = [b.record(subject="plant-4/other") for _ in range(other)]
        self.api.service.append(b.block(records))
        self.ids += [r.id.hex() for r in records if r.body.subject == S]


@pytest.fixture
def chain() -> Chain:
    c = Chain()
    for _ in range(20):
        c.grow()
    return c


@pytest.fixture
def http(chain: Chain) -> Iterator[TestClient]:
    with TestClient(chain.api.app, base_url="http://127.0.0.1") as client:
        yield client


def get(http: TestClient, **params: Any) -> dict[str, Any]:
    resp = http.get(f"/v1/subjects/{S}/history", params=params)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


def walk(http: TestClient, chain: Chain | None = None, **params: Any) -> list[str]:
    """Every page of S; with ``chain``, a block of new records of S commits after each."""
    cursor = "before" if params.get("order") == "desc" else "after"
    ids: list[str] = []
    for _ in range(500):
        doc = get(http, **params)
        ids += [r["id"] for r in doc["records"]]
        if doc["next"] is None:
            return ids
        params[cursor] = doc["next"]
        if chain is not None:
            chain.grow(mine=3)
    raise AssertionError("the walk never ended")


# -- stable while blocks commit ---------------------------------------------------------------

def test_oldest_first_pages_stay_exact_while_blocks_commit(http: TestClient,
                                                           chain: Chain) -> None:
    """New records land after the cursor: the walk takes them in, none twice, none lost."""
    before = list(chain.ids)
    ids = walk(http, chain, limit=7)
    assert len(chain.ids) > len(before) + 30  # blocks did commit during the walk
    assert ids == chain.ids and len(set(ids)) == len(ids)


def test_newest_first_pages_stay_exact_and_never_show_newer_records(
        http: TestClient, chain: Chain) -> None:
    """A newest-first walk started before commits never shows the newer records (``before``
    bounds every later page), and skips or repeats none of the others; the first page's
    ``checkpoint`` pins its upper bound, so the newer ones are exactly ``after=log_size-1``."""
    before = list(chain.ids)
    first = get(http, order="desc", limit=7)
    pin = first["checkpoint"]
    assert pin == {"height": 20, "log_size": 140}
    chain.grow(mine=3)
    ids = [r["id"] for r in first["records"]]
    ids += walk(http, chain, order="desc", limit=7, before=first["next"])
    assert ids == before[::-1] and len(set(ids)) == len(ids)
    newer = walk(http, after=pin["log_size"] - 1, limit=50)
    assert newer == chain.ids[len(before):] and len(newer) > 30


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_at_height_pins_a_walk_in_both_orders(http: TestClient, chain: Chain,
                                              order: str) -> None:
    """``at_height`` (the first page's ``checkpoint.height``) reads every page at one block:
    the walk is exactly the history as of that block, whatever commits meanwhile."""
    before = list(chain.ids)
    height = get(http, limit=1)["checkpoint"]["height"]
    ids = walk(http, chain, order=order, limit=6, at_height=height)
    assert ids == (before if order == "asc" else before[::-1])
    older = get(http, order=order, at_height=5, limit=1000)
    assert older["checkpoint"] == {"height": 5, "log_size": 35}
    assert [r["id"] for r in older["records"]] == (before[:25] if order == "asc"
                                                   else before[:25][::-1])


def test_every_item_carries_its_log_index(http: TestClient, chain: Chain) -> None:
    doc = get(http, limit=12)
    for r in doc["records"]:
        assert r["log_index"] == (r["height"] - 1) * 7 + r["index"]
    assert doc["next"] == doc["records"][-1]["log_index"]


# -- a block-time range ------------------------------------------------------------------------

def block_ids(chain: Chain, first: int, last: int) -> list[str]:
    """S's record ids in blocks first..last (5 per block)."""
    return chain.ids[(first - 1) * 5:last * 5]


def rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(("since", "until", "blocks"), [
    (T0 + 3000, T0 + 6000, (3, 6)),            # both ends inclusive, exactly on block times
    (T0 + 2001, T0 + 5999, (3, 5)),            # between block times
    (T0 + 7000, T0 + 7000, (7, 7)),            # one block
    (T0 + 7001, T0 + 7999, None),              # between two blocks: nothing
    (None, T0 + 999, None),                    # before the first block
    (T0 + 20001, None, None),                  # after the last
    (0, None, (1, 20)), (None, T0 + 20000, (1, 20)), (T0 + 20000, None, (20, 20)),
    (T0 + 1000, T0 + 1000, (1, 1)),
])
def test_time_range_edges_in_both_orders(http: TestClient, chain: Chain, since: int | None,
                                         until: int | None,
                                         blocks: tuple[int, int] | None) -> None:
    want = [] if blocks is None else block_ids(chain, *blocks)
    params: dict[str, Any] = {k: v for k, v in (("since", since), ("until", until))
                              if v is not None}
    assert walk(http, limit=4, **params) == want
    assert walk(http, order="desc", limit=4, **params) == want[::-1]
    texts: dict[str, Any] = {k: rfc3339(v) for k, v in params.items()}  # the same range in RFC 3339
    assert walk(http, limit=1000, **texts) == want


def test_rfc3339_offsets_and_fractions_round_inwards(http: TestClient, chain: Chain) -> None:
    at = datetime.fromtimestamp((T0 + 4000) / 1000, UTC)
    plus2 = at.astimezone(timezone(timedelta(hours=2))).isoformat()  # the same instant
    assert plus2.endswith("+02:00")
    assert walk(http, since=plus2, until=plus2) == block_ids(chain, 4, 4)
    # 0.5 ms after block 4's time: since rounds up (block 4 out), until rounds down (in)
    after = at.strftime("%Y-%m-%dT%H:%M:%S") + ".0005Z"
    assert walk(http, since=after, until=rfc3339(T0 + 5000)) == block_ids(chain, 5, 5)
    assert walk(http, since=rfc3339(T0 + 3000), until=after) == block_ids(chain, 3, 4)
    assert walk(http, since=after.lower().replace("t", "T")) == chain.ids[4 * 5:]


def test_time_range_with_cursors_and_commits(http: TestClient, chain: Chain) -> None:
    """A cursor and a range combine; blocks committed during the walk are outside ``until``
    or inside, as their time says."""
    want = block_ids(chain, 2, 18)
    assert walk(http, chain, since=T0 + 2000, until=T0 + 18000, limit=9) == want
    assert walk(http, chain, order="desc", since=T0 + 2000, until=T0 + 18000, limit=9) \
        == want[::-1]
    open_ended = walk(http, since=T0 + 19000, limit=9)  # takes in the blocks added above
    assert open_ended == chain.ids[18 * 5:] and len(open_ended) > 10 + 30


def test_a_time_range_reads_log_height_headers(http: TestClient, chain: Chain,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The range is found by binary search over block heights: O(log height) header reads
    (one per probe), never one per block."""
    for _ in range(236):  # 256 blocks
        chain.grow(mine=1, other=0)
    store = chain.api.store
    reads: list[int] = []
    real = store.header_cert

    def counted(height: int) -> tuple[bytes, bytes] | None:
        reads.append(height)
        return real(height)

    monkeypatch.setattr(store, "header_cert", counted)
    doc = get(http, since=T0 + 100_000, until=T0 + 200_000, limit=1000)
    assert [r["height"] for r in doc["records"]] == list(range(100, 201))
    assert len(set(reads)) <= 2 * math.ceil(math.log2(257)) + 3, len(reads)
    print(f"header reads for a time range over 256 blocks: {len(reads)}")


# -- an inclusion proof per record -------------------------------------------------------------

def verified(http: TestClient, height: int) -> checkpoints.VerifiedCheckpoint:
    client = LedgerClient("http://127.0.0.1", http=http)
    return client.verified_checkpoint(FX.genesis, height)


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_every_proof_verifies_against_the_pages_checkpoint(http: TestClient, chain: Chain,
                                                           order: str) -> None:
    doc = get(http, order=order, proof="true", at_height=13, limit=1000)
    assert len(doc["records"]) == 65 and doc["next"] is None  # S's records to height 13
    cp = verified(http, doc["checkpoint"]["height"])
    assert cp.log_size == doc["checkpoint"]["log_size"] == 91
    for r in doc["records"]:
        leaf = merkle.leaf_hash(b64decode(r["envelope"], "envelope"))
        checkpoints.verify_log_inclusion(
            cp, r["log_index"], leaf, {"index": r["log_index"], "size": cp.log_size,
                                       "proof": r["proof"]})
    tip = get(http, proof="true", limit=1000)
    assert len(tip["records"]) == HISTORY_PROOF_PAGE and tip["next"] is not None  # capped


def test_a_proof_with_one_hash_changed_fails(http: TestClient, chain: Chain) -> None:
    doc = get(http, proof="true", limit=20)
    cp = verified(http, doc["checkpoint"]["height"])
    for r in doc["records"]:
        for k in range(len(r["proof"])):
            bad = list(r["proof"])
            bad[k] = ("0" if bad[k][0] != "0" else "1") + bad[k][1:]
            leaf = merkle.leaf_hash(b64decode(r["envelope"], "envelope"))
            with pytest.raises(LogProofError):
                checkpoints.verify_log_inclusion(
                    cp, r["log_index"], leaf,
                    {"index": r["log_index"], "size": cp.log_size, "proof": bad})


def test_no_proofs_without_proof_true(http: TestClient) -> None:
    assert all("proof" not in r for r in get(http, limit=5)["records"])


# -- the SDK's walk -----------------------------------------------------------------------------

def test_sdk_walks_verified_in_both_orders_while_blocks_commit(http: TestClient,
                                                               chain: Chain) -> None:
    client = LedgerClient("http://127.0.0.1", http=http)
    for order in ("asc", "desc"):
        want = list(chain.ids) if order == "asc" else chain.ids[::-1]
        seen = []
        for r in client.subject_history(S, order=order, proofs=True, genesis=FX.genesis,
                                        limit=9):
            seen.append(r["id"])
            if len(seen) % 9 == 0:
                chain.grow(mine=2)  # the walk is pinned to the tip of its first page
        assert seen == want
    ranged = client.subject_history(S, since=T0 + 3000, until=rfc3339(T0 + 4000), limit=3)
    assert [r["id"] for r in ranged] == block_ids(chain, 3, 4)
    assert list(client.subject_history("nobody", proofs=True, genesis=FX.genesis)) == []


class Tamper(httpx.BaseTransport):
    """The app, with one history page's answer rewritten by ``edit``."""

    def __init__(self, http: TestClient, edit: Any) -> None:
        self.http, self.edit = http, edit

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.http.get(request.url.path, params=request.url.params)
        if "/history" in request.url.path and resp.status_code == 200:
            doc = resp.json()
            self.edit(doc)
            return httpx.Response(200, json=doc)
        return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)


def flip_hash(doc: dict[str, Any]) -> None:
    path = doc["records"][2]["proof"]
    path[-1] = "ff" + path[-1][2:] if not path[-1].startswith("ff") else "00" + path[-1][2:]


def swap_payload(doc: dict[str, Any]) -> None:
    doc["records"][1]["payload"] = {"v": -1}


def drop_first(doc: dict[str, Any]) -> None:
    if doc["records"]:
        doc["records"][0]["log_index"] += 10**6


@pytest.mark.parametrize("edit", [flip_hash, swap_payload, drop_first])
def test_sdk_raises_log_proof_error_on_a_bad_item(http: TestClient, edit: Any) -> None:
    with httpx.Client(transport=Tamper(http, edit), base_url="http://127.0.0.1") as raw:
        client = LedgerClient("http://127.0.0.1", http=raw)
        with pytest.raises(LogProofError):
            list(client.subject_history(S, proofs=True, genesis=FX.genesis, limit=10))
        if edit is not flip_hash:  # without proofs, the envelope checks still hold
            with pytest.raises(NodeError):
                list(client.subject_history(S, limit=10))


@pytest.mark.asyncio
async def test_async_sdk_walks_verified(chain: Chain) -> None:
    transport = httpx.ASGITransport(app=chain.api.app)
    async with httpx.AsyncClient(transport=transport) as http, \
            AsyncLedgerClient("http://127.0.0.1", http=http) as client:
        cp = await client.verified_checkpoint(FX.genesis, 10)
        seen = [r["id"] async for r in client.subject_history(
            S, order="desc", checkpoint=cp, limit=8)]
        assert seen == chain.ids[:50][::-1]
        with pytest.raises(ValueError, match="genesis"):
            [r async for r in client.subject_history(S, proofs=True)]


def test_sdk_records_are_the_envelopes(http: TestClient, chain: Chain) -> None:
    client = LedgerClient("http://127.0.0.1", http=http)
    for r in client.subject_history(S, limit=40):
        record = Record.from_wire(b64decode(r["envelope"], "envelope"))
        assert record.id.hex() == r["id"] and record.body.subject == S


# -- bad parameters ------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [
    {"since": T0 + 5000, "until": T0 + 4999}, {"since": "yesterday"}, {"until": "-5"},
    {"since": "1e3"}, {"since": "2026-11-30"}, {"since": "2026-11-30T08:00:00"},
    {"since": "2026-11-30T08:00:60Z"}, {"until": "2026-13-01T00:00:00Z"},
    {"since": "1969-12-31T23:59:59Z"}, {"since": "２０２６"}, {"since": ""},
    {"since": "2026-11-30T09:00:00Z", "until": "2026-11-30T08:00:00Z"},
    {"at_height": "0"}, {"at_height": "21"}, {"at_height": "x"}, {"at_height": "-1"},
    {"proof": "maybe"}, {"proof": "true", "limit": 0}, {"order": "desc", "after": 3},
])
def test_bad_parameters_are_400_problems(http: TestClient, params: dict[str, Any]) -> None:
    resp = http.get(f"/v1/subjects/{S}/history", params=params)
    assert resp.status_code == 400, (params, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json")
    doc = resp.json()
    assert doc["code"] == "invalid_parameter" and doc["status"] == 400 and doc["detail"]


def test_an_empty_chain_is_an_empty_page() -> None:
    with TestClient(InProcessApi(FX).app, base_url="http://127.0.0.1") as http:
        for params in ({}, {"order": "desc", "proof": "true"}, {"since": T0}):
            assert get(http, **params) == {"subject": S, "records": [], "next": None,
                                           "checkpoint": {"height": 0, "log_size": 0}}
        resp = http.get(f"/v1/subjects/{S}/history", params={"at_height": 1})
        assert resp.status_code == 400 and resp.json()["code"] == "invalid_parameter"


# -- the CLI: ledger history ---------------------------------------------------------------------

@pytest.fixture
def cli(http: TestClient, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``ledger history`` in-process over the app; returns (exit code, stdout, stderr)."""
    import node.historycli
    from node.cli import main

    monkeypatch.setattr(node.historycli, "LedgerClient",
                        lambda url, verify, read_identity=None: LedgerClient(
                            url, http=http, read_identity=read_identity))

    def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        code = main(["history", "--node", "http://127.0.0.1", "--subject", S, *argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_lists_verifies_and_catches_a_lying_node(
        cli: Any, chain: Chain, tmp_path: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = cli(capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 100 and err == f"100 records of {S!r}\n"
    assert lines[0].startswith("1:0  log 0  ts ") and chain.ids[0] in lines[0]
    code, out, _ = cli(capsys, "--order", "desc", "--json", "--since", str(T0 + 19000))
    docs = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [d["id"] for d in docs] == chain.ids[90:][::-1]
    genesis = str(FX.write_genesis(tmp_path))
    code, out, err = cli(capsys, "--verify", "--genesis", genesis, "--until",
                         rfc3339(T0 + 2000), "--page-size", "3")
    assert code == 0 and len(out.splitlines()) == 10, err
    assert err.startswith(f"valid: 10 records of {S!r}, each proved in the log of 140 "
                          "records of the checkpoint at height 20")
    real = chain.api.store.log_nodes  # a node whose stored log is not the signed one
    monkeypatch.setattr(chain.api.store, "log_nodes",
                        lambda ids: {k: bytes(32) for k in real(ids)})
    code, out, err = cli(capsys, "--verify", "--genesis", genesis)
    assert code == 1 and out == "" and err.startswith("invalid: inclusion of log leaf 0 ")
    code, _, err = cli(capsys, "--verify")
    assert code == 2 and "--genesis" in err
    code, _, err = cli(capsys, "--since", "soon")
    assert code == 2 and "invalid_parameter" in err


def test_sdk_single_page_passes_the_new_parameters(http: TestClient, chain: Chain) -> None:
    client = LedgerClient("http://127.0.0.1", http=http)
    page = client.history(S, order="desc", since=T0 + 2000, until=rfc3339(T0 + 3000),
                          at_height=10, proof=True, limit=4)
    assert [r["id"] for r in page["records"]] == block_ids(chain, 2, 3)[::-1][:4]
    assert page["checkpoint"] == {"height": 10, "log_size": 70}
    assert all(isinstance(r["proof"], list) for r in page["records"])


def test_a_sub_millisecond_range_is_empty_not_an_error(http: TestClient) -> None:
    at = datetime.fromtimestamp((T0 + 4000) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert walk(http, since=at + ".0005Z", until=at + ".0005Z") == []
    assert walk(http, since=at + ".000Z", until=at + ".0009Z") != []


def test_batched_proofs_equal_single_ones_in_one_read(chain: Chain) -> None:
    """``log_inclusions`` answers what ``log_inclusion`` does for each leaf, in one call of
    the store's ``log_nodes`` reading each node once."""
    store = chain.api.store
    calls: list[int] = []

    def counted(ids: Any) -> Any:
        ids = list(ids)
        assert len(ids) == len(set(ids))
        calls.append(len(ids))
        return store.log_nodes(ids)

    size = store.log.size
    leaves = [0, 1, 2, 50, 51, 99, size - 1]
    paths = checkpoints.log_inclusions(counted, leaves, size)
    assert len(calls) == 1
    singles = [checkpoints.log_inclusion(store.log_nodes, i, size)["proof"] for i in leaves]
    assert paths == singles
    assert calls[0] < sum(len(p) for p in singles)  # shared upper levels read once
    assert checkpoints.log_inclusions(counted, [], size) == []


def test_cli_verify_prints_no_unproved_record_when_the_node_lies_about_its_height(
        cli: Any, chain: Chain, tmp_path: Any, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 14: `ledger history --verify` asked /v1/status for the height and, when the
    node said 0, walked WITHOUT proofs: a node claiming an empty chain had every record it
    served printed, unproved, under 'valid: ...' and exit 0."""
    from node.client import NodeError

    genesis = str(FX.write_genesis(tmp_path))
    monkeypatch.setattr(LedgerClient, "status", lambda self: {"height": 0})
    code, out, err = cli(capsys, "--verify", "--genesis", genesis)
    assert code == 0 and len(out.splitlines()) == 100
    assert err.startswith(f"valid: 100 records of {S!r}, each proved in the log"), err
    # a node answering 404 for its checkpoint: nothing can be proved, so nothing is listed

    def no_checkpoint(self: LedgerClient, *args: Any, **kw: Any) -> Any:
        raise NodeError("GET /v1/log/checkpoint: 404 not_found", 404, "not_found")
    monkeypatch.setattr(LedgerClient, "verified_checkpoint", no_checkpoint)
    code, out, err = cli(capsys, "--verify", "--genesis", genesis)
    assert code == 0 and out == "" and "the chain has no block yet" in err, (out, err)
