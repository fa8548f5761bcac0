"""GET /v1/subjects/{subject}/history in-process (tests/inprocess.py: the app over a
MemoryStore, no node process): oldest first by default, newest first with ``order=desc``
and ``before=``, both bounded by ``limit`` and by bytes; and the sync and async SDK's
``history``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import node.api
from node.client import AsyncLedgerClient, LedgerClient, NodeError
from tests.factory import make_fixture
from tests.inprocess import InProcessApi

FX = make_fixture()
SUBJECT = "plant-9/deep"


@pytest.fixture(scope="module")
def chain() -> tuple[FastAPI, list[str]]:
    """1,200 records of SUBJECT in 12 blocks, another subject interleaved; their ids in
    log order."""
    api = InProcessApi(FX)
    b = api.service.builder
    ids: list[str] = []
    for _ in range(12):
        records = [b.record(subject="plant-9/other" if i % 11 == 5 else SUBJECT)
                   for i in range(110)]
        api.service.append(b.block(records))
        ids += [r.id.hex() for r in records if r.body.subject == SUBJECT]
    assert len(ids) == 1200
    return api.app, ids


@pytest.fixture
def http(chain: tuple[FastAPI, list[str]]) -> Iterator[TestClient]:
    with TestClient(chain[0], base_url="http://127.0.0.1") as client:
        yield client


def walk(http: TestClient, order: str, limit: int) -> tuple[list[str], int]:
    """Every page of SUBJECT in ``order``: the record ids and the number of pages."""
    cursor_name = "after" if order == "asc" else "before"
    ids: list[str] = []
    params: dict[str, Any] = {"order": order, "limit": limit}
    for pages in range(1, 200):
        resp = http.get(f"/v1/subjects/{SUBJECT}/history", params=params)
        assert resp.status_code == 200, resp.text
        doc = resp.json()
        assert set(doc) == {"subject", "records", "next", "checkpoint"}
        assert doc["subject"] == SUBJECT
        ids += [r["id"] for r in doc["records"]]
        if doc["next"] is None:
            return ids, pages
        params[cursor_name] = doc["next"]
    raise AssertionError("history never ended")


def test_default_is_oldest_first_and_pages_forward(
        http: TestClient, chain: tuple[FastAPI, list[str]]) -> None:
    first = http.get(f"/v1/subjects/{SUBJECT}/history", params={"limit": 5}).json()
    assert [r["id"] for r in first["records"]] == chain[1][:5]
    ids, pages = walk(http, "asc", 500)
    assert ids == chain[1] and pages == 3


def test_order_desc_shows_the_newest_first_and_pages_back(
        http: TestClient, chain: tuple[FastAPI, list[str]]) -> None:
    first = http.get(f"/v1/subjects/{SUBJECT}/history",
                     params={"order": "desc", "limit": 5}).json()
    assert [r["id"] for r in first["records"]] == chain[1][::-1][:5]
    heights = [(r["height"], r["index"]) for r in first["records"]]
    assert heights == sorted(heights, reverse=True) and heights[0][0] == 12
    ids, pages = walk(http, "desc", 500)
    assert ids == chain[1][::-1] and pages == 3
    ids, _ = walk(http, "desc", 97)  # pages that cut blocks and slices anywhere
    assert ids == chain[1][::-1]


def test_pages_end_early_at_the_byte_bound_in_both_orders(
        http: TestClient, chain: tuple[FastAPI, list[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.api, "HISTORY_PAGE_BYTES", 10_000)  # ~50 envelopes
    for order, want in (("asc", chain[1]), ("desc", chain[1][::-1])):
        ids, pages = walk(http, order, 1000)
        assert ids == want and len(set(ids)) == 1200
        assert pages >= 1200 // 60, f"{order}: {pages} pages: the byte bound did not end them"


@pytest.mark.parametrize("params", [
    {"order": "sideways"}, {"order": "DESC"}, {"order": ""},
    {"order": "asc", "before": 5}, {"before": 5},
    {"order": "desc", "after": 5}, {"order": "desc", "after": -1},
    {"order": "desc", "before": -1}, {"order": "desc", "before": "x"},
    {"order": "desc", "before": str(2**63)}, {"order": "desc", "limit": 0},
])
def test_invalid_order_or_cursor_answers_400(http: TestClient, params: dict[str, Any]) -> None:
    resp = http.get(f"/v1/subjects/{SUBJECT}/history", params=params)
    assert resp.status_code == 400, (params, resp.text)
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "invalid_parameter"


def test_unknown_subject_is_an_empty_page_both_ways(http: TestClient) -> None:
    for order in ("asc", "desc"):
        doc = http.get("/v1/subjects/nobody/history", params={"order": order}).json()
        assert doc == {"subject": "nobody", "records": [], "next": None,
                       "checkpoint": {"height": 12, "log_size": 1320}}


def test_sync_sdk_pages_both_ways(http: TestClient, chain: tuple[FastAPI, list[str]]) -> None:
    client = LedgerClient("http://127.0.0.1", http=http)  # the in-process app, no socket
    newest = client.history(SUBJECT, order="desc", limit=3)
    assert [r["id"] for r in newest["records"]] == chain[1][::-1][:3]
    older = client.history(SUBJECT, order="desc", before=newest["next"], limit=3)
    assert [r["id"] for r in older["records"]] == chain[1][::-1][3:6]
    oldest = client.history(SUBJECT, limit=2)
    assert [r["id"] for r in oldest["records"]] == chain[1][:2]
    after = client.history(SUBJECT, after=oldest["next"], limit=2)
    assert [r["id"] for r in after["records"]] == chain[1][2:4]
    with pytest.raises(NodeError) as err:
        client.history(SUBJECT, order="desc", after=3)
    assert err.value.problem_code == "invalid_parameter" and err.value.status == 400


@pytest.mark.asyncio
async def test_async_sdk_pages_both_ways(chain: tuple[FastAPI, list[str]]) -> None:
    transport = httpx.ASGITransport(app=chain[0])
    async with httpx.AsyncClient(transport=transport) as http, \
            AsyncLedgerClient("http://127.0.0.1", http=http) as client:
        newest = await client.history(SUBJECT, order="desc", limit=3)
        assert [r["id"] for r in newest["records"]] == chain[1][::-1][:3]
        older = await client.history(SUBJECT, order="desc", before=newest["next"], limit=3)
        assert [r["id"] for r in older["records"]] == chain[1][::-1][3:6]
        oldest = await client.history(SUBJECT, limit=2)
        assert [r["id"] for r in oldest["records"]] == chain[1][:2]
        after = await client.history(SUBJECT, after=oldest["next"], limit=2)
        assert [r["id"] for r in after["records"]] == chain[1][2:4]
        with pytest.raises(NodeError) as err:
            await client.history(SUBJECT, order="asc", before=3)
        assert err.value.problem_code == "invalid_parameter" and err.value.status == 400
