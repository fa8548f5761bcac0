"""Python SDK for a ledger node (SPEC section 7): sign, submit, fetch, follow.

``LedgerClient`` is synchronous, ``AsyncLedgerClient`` the same over asyncio. Both sign
records with a client key (``identity``), submit batches as msgpack, and fetch records,
receipts and blocks; ``events()`` follows the Server-Sent Events stream of blocks, resuming
from a height. Failures raise ``NodeError`` carrying the problem+json ``code``.
"""

from __future__ import annotations

import secrets
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import httpx

from ledger.crypto import PrivateKey
from ledger.encoding import loads_json, packb
from ledger.errors import LedgerError
from ledger.records import Record

MSGPACK = "application/msgpack"


class NodeError(LedgerError):
    """A node could not be reached or answered with an error (``status``, ``code``)."""

    code = "node_error"

    def __init__(self, message: str, status: int | None = None,
                 problem_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem_code = problem_code


def _ssl(verify: str | bool) -> ssl.SSLContext | bool:
    """httpx's verify: a CA file becomes a context trusting only it."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _check(resp: httpx.Response, ok: tuple[int, ...] = (200,)) -> httpx.Response:
    if resp.status_code in ok:
        return resp
    try:
        doc = resp.json()
        code, detail = doc.get("code"), doc.get("detail")
    except (ValueError, AttributeError):
        kind = resp.headers.get("content-type", "no content type").split(";")[0]
        code, detail = None, (f"{resp.reason_phrase} ({kind}, not a ledger node's answer: a "
                              "proxy in between, or not a ledger node?)")
    raise NodeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} "
                    f"{code or ''} {detail or ''}".strip(), resp.status_code, code)


def _json(resp: httpx.Response) -> Any:
    """The body as JSON, or NodeError naming what came instead (an HTML page, say)."""
    try:
        return resp.json()
    except ValueError as exc:
        kind = resp.headers.get("content-type", "no content type").split(";")[0]
        raise NodeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} "
                        f"answer is {kind}, not JSON (not a ledger node?)",
                        resp.status_code) from exc


def _parse_sse(lines: Iterator[str] | list[str]) -> Iterator[dict[str, Any]]:
    event: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if event == "block" and data:
                yield loads_json("\n".join(data))
            event, data = None, []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class _Base:
    def __init__(self, base_url: str, identity: PrivateKey | None, chain: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.chain = chain

    def make_record(self, *, type: str, subject: str, payload: Any, chain: str,
                    ts: int | None = None, nonce: int | None = None) -> Record:
        """Sign a record with this client's identity."""
        if self.identity is None:
            raise NodeError("this client has no identity to sign with")
        return Record.create(self.identity, chain=chain, type=type, subject=subject,
                             payload=payload, ts=time.time_ns() // 1_000_000 if ts is None else ts,
                             nonce=secrets.randbits(63) if nonce is None else nonce)

    @staticmethod
    def _history_args(subject: str, order: Literal["asc", "desc"], after: int | None,
                      before: int | None, limit: int) -> tuple[str, dict[str, str | int]]:
        """Path and query of one history page (the node checks the values)."""
        params: dict[str, str | int] = {"order": order, "limit": limit}
        if after is not None:
            params["after"] = after
        if before is not None:
            params["before"] = before
        return f"/v1/subjects/{subject}/history", params

    @staticmethod
    def _submit_args(records: Sequence[Record], wait: bool, timeout: float
                     ) -> tuple[bytes, dict[str, str], dict[str, str]]:
        params = {"wait": "commit", "timeout": str(timeout)} if wait else {}
        return packb([r.envelope for r in records]), params, {"Content-Type": MSGPACK}


class LedgerClient(_Base):
    """A synchronous client for one node; safe to share between threads."""

    def __init__(self, base_url: str, *, identity: PrivateKey | None = None,
                 chain: str | None = None, timeout: float = 30.0,
                 verify: str | bool = True) -> None:
        """``verify``: True (system CAs), a CA file path (e.g. a cluster's tls/ca.pem)."""
        super().__init__(base_url, identity, chain)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, verify=_ssl(verify),
                                  limits=httpx.Limits(max_connections=16))

    def _get(self, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.get(path, **kw)
        except httpx.HTTPError as exc:
            raise NodeError(f"{self.base_url}{path}: {exc or type(exc).__name__}") from exc

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        doc: dict[str, Any] = _json(_check(self._get("/v1/status")))
        if not isinstance(doc, dict) or type(doc.get("height")) is not int:
            raise NodeError(f"{self.base_url}/v1/status has no integer 'height'")
        return doc

    def chain_id(self) -> str:
        """The node's chain id (asked once)."""
        if self.chain is None:
            self.chain = str(self.status()["chain"])
        return self.chain

    def submit(self, records: Sequence[Record], *, wait: bool = False,
               timeout: float = 30.0) -> list[dict[str, Any]]:
        """Submit signed records; with ``wait``, return once all are committed."""
        body, params, headers = self._submit_args(records, wait, timeout)
        try:
            resp = self._http.post("/v1/records", content=body, params=params,
                                   headers=headers, timeout=timeout + 10)
        except httpx.HTTPError as exc:
            raise NodeError(f"{self.base_url}/v1/records: {exc or type(exc).__name__}") from exc
        doc = _json(_check(resp, (202,)))
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise NodeError(f"{self.base_url}/v1/records: 202 answer has no 'results' list")
        results: list[dict[str, Any]] = doc["results"]
        return results

    def write(self, *, type: str, subject: str, payload: Any, wait: bool = False,
              timeout: float = 30.0) -> dict[str, Any]:
        """Sign one record with this client's identity and submit it."""
        record = self.make_record(type=type, subject=subject, payload=payload,
                                  chain=self.chain_id())
        return self.submit([record], wait=wait, timeout=timeout)[0]

    def record(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}``."""
        doc: dict[str, Any] = _check(self._get(f"/v1/records/{record_id}")).json()
        return doc

    def receipt(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}/receipt`` (verify it with ``ledger.receipts``)."""
        doc: dict[str, Any] = _check(self._get(f"/v1/records/{record_id}/receipt")).json()
        return doc

    def block(self, height: int) -> dict[str, Any]:
        """The JSON view of a block."""
        doc: dict[str, Any] = _check(self._get(f"/v1/blocks/{height}")).json()
        return doc

    def block_bytes(self, height: int) -> bytes | None:
        """The exact block bytes (SPEC section 4), None beyond the tip."""
        resp = self._get(f"/v1/blocks/{height}", headers={"Accept": MSGPACK})
        if resp.status_code == 404:
            return None
        return _check(resp).content

    def history(self, subject: str, *, order: Literal["asc", "desc"] = "asc",
                after: int | None = None, before: int | None = None,
                limit: int = 100) -> dict[str, Any]:
        """One page of a subject's committed records, oldest first (``order="desc"``: newest
        first). ``next`` continues it: pass it as ``after`` (``before`` when newest first)."""
        path, params = self._history_args(subject, order, after, before, limit)
        doc: dict[str, Any] = _check(self._get(path, params=params)).json()
        return doc

    def events(self, from_height: int | None = None) -> Iterator[dict[str, Any]]:
        """Follow committed blocks (SSE), from ``from_height`` if given; runs until closed."""
        params = {"from_height": from_height} if from_height else {}
        with self._http.stream("GET", "/v1/events", params=params, timeout=None) as resp:
            _check(resp)
            yield from _parse_sse(resp.iter_lines())

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLedgerClient(_Base):
    """The asyncio twin of ``LedgerClient``."""

    def __init__(self, base_url: str, *, identity: PrivateKey | None = None,
                 chain: str | None = None, timeout: float = 30.0,
                 verify: str | bool = True) -> None:
        super().__init__(base_url, identity, chain)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       verify=_ssl(verify))

    async def _get(self, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._http.get(path, **kw)
        except httpx.HTTPError as exc:
            raise NodeError(f"{self.base_url}{path}: {exc or type(exc).__name__}") from exc

    async def status(self) -> dict[str, Any]:
        """``GET /v1/status``."""
        doc: dict[str, Any] = _json(_check(await self._get("/v1/status")))
        if not isinstance(doc, dict) or type(doc.get("height")) is not int:
            raise NodeError(f"{self.base_url}/v1/status has no integer 'height'")
        return doc

    async def chain_id(self) -> str:
        """The node's chain id (asked once)."""
        if self.chain is None:
            self.chain = str((await self.status())["chain"])
        return self.chain

    async def submit(self, records: Sequence[Record], *, wait: bool = False,
                     timeout: float = 30.0) -> list[dict[str, Any]]:
        """Submit signed records; with ``wait``, return once all are committed."""
        body, params, headers = self._submit_args(records, wait, timeout)
        try:
            resp = await self._http.post("/v1/records", content=body, params=params,
                                         headers=headers, timeout=timeout + 10)
        except httpx.HTTPError as exc:
            raise NodeError(f"{self.base_url}/v1/records: {exc or type(exc).__name__}") from exc
        doc = _json(_check(resp, (202,)))
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise NodeError(f"{self.base_url}/v1/records: 202 answer has no 'results' list")
        results: list[dict[str, Any]] = doc["results"]
        return results

    async def write(self, *, type: str, subject: str, payload: Any, wait: bool = False,
                    timeout: float = 30.0) -> dict[str, Any]:
        """Sign one record with this client's identity and submit it."""
        record = self.make_record(type=type, subject=subject, payload=payload,
                                  chain=await self.chain_id())
        return (await self.submit([record], wait=wait, timeout=timeout))[0]

    async def record(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}``."""
        doc: dict[str, Any] = _check(await self._get(f"/v1/records/{record_id}")).json()
        return doc

    async def receipt(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}/receipt``."""
        doc: dict[str, Any] = _check(await self._get(f"/v1/records/{record_id}/receipt")).json()
        return doc

    async def block(self, height: int) -> dict[str, Any]:
        """The JSON view of a block."""
        doc: dict[str, Any] = _check(await self._get(f"/v1/blocks/{height}")).json()
        return doc

    async def history(self, subject: str, *, order: Literal["asc", "desc"] = "asc",
                      after: int | None = None, before: int | None = None,
                      limit: int = 100) -> dict[str, Any]:
        """One page of a subject's committed records, oldest first (``order="desc"``: newest
        first). ``next`` continues it: pass it as ``after`` (``before`` when newest first)."""
        path, params = self._history_args(subject, order, after, before, limit)
        doc: dict[str, Any] = _check(await self._get(path, params=params)).json()
        return doc

    async def events(self, from_height: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Follow committed blocks (SSE), from ``from_height`` if given."""
        params = {"from_height": from_height} if from_height else {}
        async with self._http.stream("GET", "/v1/events", params=params, timeout=None) as resp:
            _check(resp)
            lines: list[str] = []
            async for line in resp.aiter_lines():
                lines.append(line)
                if line == "":
                    for event in _parse_sse(lines):
                        yield event
                    lines = []

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
