"""The node API in-process: the real app (``node.api.create_app``) over a real
``node.service.LocalService`` — a ``MemoryStore``, the real ``Mempool`` (every admission rule),
the factory's genesis — with blocks committed in-process: the pending records, in a block
certified by three of the factory's four validator keys, appended to the store, their
waiters resolved and the height published to the event feed. No process, socket or
consensus: a request costs a millisecond or so.

    api = InProcessApi()
    async with api.client() as http:          # httpx over ASGITransport
        await http.post("/v1/records", ...)
    api.commit()                               # one block of what is pending

With ``autocommit=True`` every admitted batch is committed right after its POST admits it
(as a block of its own), so ``wait=commit`` answers as on a live chain.
``sse()`` reads an event stream (``httpx.ASGITransport`` buffers a whole response, and an
event stream never ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from ledger.blocks import Block
from ledger.crypto import PrivateKey
from ledger.encoding import BatchItem, packb
from ledger.records import Record
from ledger.store import MemoryStore
from node.api import create_app
from node.apidoc import limits
from node.mempool import AdmitResult
from node.service import BlockFeed, LocalService
from tests.factory import ChainBuilder, Fixture, make_fixture

CLIENT = ("10.0.0.1", 1234)  # the address requests come from (per-source limits count it)
BASE = "http://127.0.0.1"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class InProcessService(LocalService):
    """A LocalService that can commit its pending records in certified blocks."""

    def __init__(self, fx: Fixture, *, autocommit: bool = False,
                 mempool_records: int = 100_000) -> None:
        super().__init__(fx.genesis, MemoryStore(fx.genesis.hash, config=fx.genesis.config),
                         name="node0", index=0, mempool_records=mempool_records)
        self.fx = fx
        self.builder = ChainBuilder(fx, self.store, time_ms=now_ms())
        self.autocommit = autocommit

    async def submit(self, items: Sequence[BatchItem]) -> list[AdmitResult]:
        results = await super().submit(items)
        if self.autocommit and any(r.status == "accepted" for r in results):
            asyncio.get_running_loop().call_soon(self.commit)
        return results

    def commit(self, max_records: int = 10_000, max_bytes: int = 8 << 20) -> Block | None:
        """A block of the oldest pending records (None if none are pending)."""
        records = self.mempool.reap(max_records, max_bytes)
        if not records:
            return None
        block = self.builder.block(records)
        self.append(block)
        self.builder.blocks.append(block)
        history = self.store.history  # the next blocks are certified by the set in force
        if history is not None and history.latest is not self.builder.config:
            self.builder.follow(history.latest)
        return block


class InProcessApi:
    """The app and its service; see the module docstring."""

    def __init__(self, fx: Fixture | None = None, *, autocommit: bool = False,
                 mempool_records: int = 100_000, feed: BlockFeed | None = None,
                 **api_limits: Any) -> None:
        self.fx = fx or make_fixture()
        self.service = InProcessService(self.fx, autocommit=autocommit,
                                        mempool_records=mempool_records)
        if feed is not None:
            self.service.feed = feed
        self.config = limits(**api_limits)
        self.app: FastAPI = create_app(self.service, self.config)
        self.nonce = 0

    @property
    def store(self) -> MemoryStore:
        assert isinstance(self.service.store, MemoryStore)
        return self.service.store

    def commit(self) -> Block | None:
        return self.service.commit()

    def record(self, key: PrivateKey | None = None, *, type: str = "sensor.reading",
               subject: str = "plant-1/line-2/temp", payload: Any = None,
               nonce: int | None = None, ts: int | None = None) -> Record:
        """A signed record (by the factory's writer unless ``key``), stamped now."""
        self.nonce += 1
        return Record.create(key or self.fx.writer, chain=self.fx.genesis.chain_id,
                             type=type, subject=subject,
                             payload={"v": self.nonce} if payload is None else payload,
                             ts=now_ms() if ts is None else ts,
                             nonce=self.nonce if nonce is None else nonce)

    def client(self, client: tuple[str, int] = CLIENT, *, raise_app_exceptions: bool = True,
               ) -> httpx.AsyncClient:
        """An httpx client of the app (``async with`` it)."""
        transport = httpx.ASGITransport(app=self.app, client=client,
                                        raise_app_exceptions=raise_app_exceptions)
        return httpx.AsyncClient(transport=transport, base_url=BASE)

    @contextlib.contextmanager
    def sync_client(self) -> Iterator[TestClient]:
        """A synchronous client (starlette's TestClient: the app runs on its own loop)."""
        with TestClient(self.app, base_url=BASE, client=CLIENT) as http:
            yield http

    async def sse(self, path: str = "/v1/events", *, headers: dict[str, str] | None = None,
                  until: Callable[[list[str]], bool], timeout: float = 10.0,
                  ) -> tuple[int, dict[str, str], list[str]]:
        """Read an event stream's lines until ``until(lines)``, then disconnect: the
        status, the headers and the lines."""
        path, _, query = path.partition("?")
        scope: MutableMapping[str, Any] = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": CLIENT, "server": ("127.0.0.1", 80)}
        gone, requested = asyncio.Event(), False
        status, head, buffer = 0, {}, b""
        lines: list[str] = []
        done = asyncio.Event()

        async def receive() -> MutableMapping[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, head, buffer
            if message["type"] == "http.response.start":
                status = message["status"]
                head = {k.decode(): v.decode() for k, v in message["headers"]}
                return
            buffer += message.get("body", b"")
            *complete, rest = buffer.split(b"\n")
            buffer = rest
            lines.extend(line.decode() for line in complete)
            if until(lines) or not message.get("more_body", False):
                done.set()

        task = asyncio.ensure_future(self.app(scope, receive, send))
        try:
            waiter = asyncio.ensure_future(done.wait())
            await asyncio.wait([task, waiter], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            assert done.is_set() or task.done(), f"no end of stream in {timeout} s: {lines}"
        finally:
            gone.set()
            try:
                await asyncio.wait_for(task, 5)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
        return status, head, lines


def events_of(lines: list[str]) -> list[dict[str, Any]]:
    """The ``data`` of each ``block`` event in SSE lines."""
    return [json.loads(line[5:]) for line in lines if line.startswith("data:")]


def msgpack_post(items: Sequence[BatchItem]) -> dict[str, Any]:
    """Keyword arguments for ``http.post("/v1/records", ...)`` of a msgpack batch (a sealed
    record's item is ``(envelope, salt, payload_bytes)``)."""
    return {"content": packb([i if isinstance(i, bytes) else list(i) for i in items]),
            "headers": {"Content-Type": "application/msgpack"}}

