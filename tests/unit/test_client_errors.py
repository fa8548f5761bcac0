"""The SDK turns answers that are not a node's (HTML from a proxy) into NodeError."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from node.client import AsyncLedgerClient, LedgerClient, NodeError

HTML = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


def _answer(status: int) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(
        status, content=HTML, headers={"Content-Type": "text/html"}))


@pytest.mark.parametrize("status", [502, 200, 202])
def test_sync_client_names_a_non_json_answer(status: int) -> None:
    client = LedgerClient("http://node.invalid")
    client._http = httpx.Client(base_url=client.base_url, transport=_answer(status))
    with client, pytest.raises(NodeError, match="text/html") as err:
        client.status() if status != 202 else client.submit([])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("status", [502, 200, 202])
def test_async_client_names_a_non_json_answer(status: int) -> None:
    async def run() -> None:
        client = AsyncLedgerClient("http://node.invalid")
        client._http = httpx.AsyncClient(base_url=client.base_url, transport=_answer(status))
        async with client:
            with pytest.raises(NodeError, match="text/html"):
                await (client.status() if status != 202 else client.submit([]))

    asyncio.run(run())
