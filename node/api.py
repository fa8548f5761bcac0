"""The HTTP API (SPEC section 7), a FastAPI app over one Node.

Every failure is ``application/problem+json`` (RFC 9457) with a stable ``code``; nothing a
client sends produces a 500. OpenAPI is served at ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ledger.blocks import Block
from ledger.encoding import b64encode
from ledger.jsonview import jsonable
from ledger.receipts import build_receipt
from ledger.records import Record
from node.mempool import MempoolFull

if TYPE_CHECKING:
    from node.runtime import Node

MSGPACK = "application/msgpack"
MAX_INFLIGHT = 512  # concurrent requests (beyond: 503 overloaded)
MAX_SUBSCRIBERS = 256  # concurrent event streams
EXPLORER = Path(__file__).with_name("explorer")  # the web explorer: static files, no build step
# The explorer loads only its own files and talks only to this node; payloads it shows are
# attacker-controlled, so no inline script and no other origin, even if escaping failed.
EXPLORER_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data: blob:; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Problem(Exception):
    """An error answered as problem+json."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


TITLES = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
          413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
          503: "Service Unavailable", 504: "Gateway Timeout"}


PROBLEM_JSON = "application/problem+json"
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Problem", "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "description": "`urn:ledger:problem:` and the code"},
        "title": {"type": "string", "description": "the HTTP status phrase"},
        "status": {"type": "integer", "description": "the HTTP status code"},
        "detail": {"type": "string", "description": "what went wrong, for a human"},
        "code": {"type": "string", "description": "stable machine-readable code"},
    },
}
OVERLOADED = (503, "overloaded", f"more than {MAX_INFLIGHT} requests in flight (Retry-After)")
BINARY = {"schema": {"type": "string", "format": "binary"}}


def problems(*entries: tuple[int, str, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for the problem codes a route answers, as (status, code, when).

    Each response also lists its codes under ``x-problem-codes`` (rendered by node.apidoc)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status, code, when in entries:
        resp = out.setdefault(status, {
            "description": TITLES.get(status, "Error"), "x-problem-codes": [],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}})
        resp["x-problem-codes"].append({"code": code, "when": when})
        resp["description"] += f"; `{code}`: {when}"
    return out


def ok(description: str, content: dict[str, Any] | None = None, status: int = 200,
       ) -> dict[int | str, dict[str, Any]]:
    """An OpenAPI success response with a description and, optionally, more media types."""
    doc: dict[str, Any] = {"description": description}
    if content:
        doc["content"] = content
    return {status: doc}


SUBMIT_BODY: dict[str, Any] = {
    "required": True,
    "description": "A batch of 1..`max_batch` signed envelopes (SPEC section 2).",
    "content": {
        MSGPACK: {"schema": {"type": "string", "format": "binary",
                             "description": "msgpack array of envelopes (bin)"}},
        "application/json": {"schema": {
            "type": "object", "required": ["records"],
            "properties": {"records": {"type": "array", "items": {
                "type": "object", "required": ["envelope"],
                "properties": {"envelope": {"type": "string", "format": "byte",
                                            "description": "base64 envelope"}}}}}}},
    },
}


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
            ) -> JSONResponse:
    """An RFC 9457 problem response."""
    return JSONResponse(
        {"type": f"urn:ledger:problem:{code}", "title": TITLES.get(status, "Error"),
         "status": status, "detail": detail, "code": code},
        status_code=status, media_type=PROBLEM_JSON, headers=headers)


def record_json(record: Record, status: str, height: int | None = None,
                index: int | None = None) -> dict[str, Any]:
    body = record.body
    out: dict[str, Any] = {"id": record.id.hex(), "status": status}
    if height is not None:
        out["height"], out["index"] = height, index
    out.update({"type": body.type, "subject": body.subject, "signer": body.signer.hex(),
                "ts": body.ts, "nonce": body.nonce, "payload": jsonable(body.payload),
                "envelope": b64encode(record.envelope)})
    return out


def block_json(block: Block) -> dict[str, Any]:
    h = block.header
    return {
        "height": h.height, "hash": h.hash.hex(),
        "header": {"version": h.version, "chain": h.chain, "height": h.height,
                   "time_ms": h.time_ms, "prev_hash": h.prev_hash.hex(),
                   "records_root": h.records_root.hex(), "record_count": h.record_count,
                   "log_root": h.log_root.hex(), "log_size": h.log_size,
                   "proposer": h.proposer, "validators_hash": h.validators_hash.hex()},
        "records": [record_json(r, "committed", h.height, i) for i, r in enumerate(block.records)],
        "cert": {"height": block.cert.height, "round": block.cert.round,
                 "block_hash": block.cert.block_hash.hex(),
                 "signatures": [{"validator": i, "sig": b64encode(s)}
                                for i, s in block.cert.signatures]},
    }


def parse_id(text: str) -> bytes:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise Problem(400, "invalid_id", "a record id is 64 lowercase hex characters")
    return bytes.fromhex(text)


def parse_height(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise Problem(400, "invalid_height", f"height must be a positive integer, got {text!r}")
    height = int(text)
    if height < 1:
        raise Problem(400, "invalid_height", "heights start at 1")
    return height


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise Problem(413, "body_too_large", f"body of {length} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, "body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_batch(content_type: str, body: bytes, max_batch: int) -> list[bytes]:
    """The envelopes of a POST /v1/records body, in either encoding."""
    media = content_type.split(";")[0].strip().lower()
    if media == MSGPACK:
        try:
            items = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as exc:
            raise Problem(400, "malformed", f"body is not msgpack ({type(exc).__name__})") from exc
        if not isinstance(items, list) or not all(isinstance(e, bytes) for e in items):
            raise Problem(400, "malformed", "expected a msgpack array of envelopes (bin)")
        envelopes: list[bytes] = items
    elif media == "application/json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Problem(400, "malformed", f"body is not JSON ({exc})") from exc
        recs = doc.get("records") if isinstance(doc, dict) else None
        if not isinstance(recs, list):
            raise Problem(400, "malformed", 'expected {"records": [{"envelope": b64}, ...]}')
        envelopes = []
        for i, item in enumerate(recs):
            env = item.get("envelope") if isinstance(item, dict) else None
            if not isinstance(env, str):
                raise Problem(400, "malformed", f"records[{i}].envelope: expected base64 text")
            try:
                envelopes.append(base64.b64decode(env, validate=True))
            except ValueError as exc:
                raise Problem(400, "malformed", f"records[{i}].envelope: not base64") from exc
    else:
        raise Problem(415, "unsupported_media_type",
                      f"Content-Type must be {MSGPACK} or application/json, got {media!r}")
    if not envelopes:
        raise Problem(400, "empty_batch", "the batch holds no envelopes")
    if len(envelopes) > max_batch:
        raise Problem(413, "batch_too_large",
                      f"{len(envelopes)} envelopes exceed the limit of {max_batch}")
    return envelopes


def create_app(node: Node) -> FastAPI:
    """The API of ``node``."""
    app = FastAPI(title="ledger node API", version="1",
                  description="Permissioned BFT ledger for industrial data (SPEC section 7).")
    cfg = node.config
    limits = {"inflight": 0}

    @app.middleware("http")
    async def bound_concurrency(request: Request, call_next: Any) -> Response:
        """At most MAX_INFLIGHT requests at once (event streams are bounded apart)."""
        if request.url.path == "/v1/events":
            if len(node.subscribers) >= MAX_SUBSCRIBERS:
                return problem(503, "too_many_subscribers",
                               f"{MAX_SUBSCRIBERS} event streams are open", {"Retry-After": "5"})
            response: Response = await call_next(request)
            return response
        if limits["inflight"] >= MAX_INFLIGHT:
            return problem(503, "overloaded", f"{MAX_INFLIGHT} requests in flight",
                           {"Retry-After": "1"})
        limits["inflight"] += 1
        try:
            response = await call_next(request)
        finally:
            limits["inflight"] -= 1
        return response

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return problem(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return problem(400, "invalid_parameter", f"{where}: {first.get('msg', 'invalid')}")

    @app.post("/v1/records", status_code=202, openapi_extra={"requestBody": SUBMIT_BODY},
              responses={**ok("one result per envelope, in input order", status=202),
                         **problems(
        (400, "malformed", "the body does not decode as an array of envelopes"),
        (400, "empty_batch", "the batch holds no envelopes"),
        (400, "invalid_parameter", "`wait` is not `commit`, or `timeout` is out of range"),
        (413, "body_too_large", "the body exceeds `max_body_bytes` (default 16 MiB)"),
        (413, "batch_too_large", "more envelopes than `max_batch` (default 10 000)"),
        (415, "unsupported_media_type", "Content-Type is neither msgpack nor JSON"),
        (503, "mempool_full", "the mempool is full (Retry-After)"), OVERLOADED,
        (504, "commit_timeout", "`wait=commit`: not all committed within `timeout`; "
         "the records stay in the mempool"))})
    async def submit(request: Request,
                     wait: str | None = Query(None, pattern="^commit$"),
                     timeout: float = Query(30.0, gt=0, le=600)) -> JSONResponse:
        """Submit a batch of signed envelopes (msgpack array, or JSON)."""
        body = await read_body(request, cfg.max_body_bytes)
        envelopes = decode_batch(request.headers.get("content-type", ""), body, cfg.max_batch)
        try:
            results = await node.submit(envelopes)
        except MempoolFull as exc:
            raise Problem(503, "mempool_full", str(exc), {"Retry-After": "1"}) from exc
        out: list[dict[str, Any]] = []
        for r in results:
            item: dict[str, Any] = {"id": r.id.hex() if r.id else None, "status": r.status}
            if r.error:
                item["error"], item["detail"] = r.error, r.detail
            out.append(item)
        if wait == "commit":
            ids = [r.id for r in results if r.status in ("accepted", "duplicate") and r.id]
            futures = [node.wait_for(i) for i in ids]
            try:
                heights = await asyncio.wait_for(asyncio.gather(*futures), timeout)
            except TimeoutError as exc:
                node.forget_waiters(ids)
                raise Problem(504, "commit_timeout",
                              f"not every record committed within {timeout} s") from exc
            by_id = dict(zip(ids, heights, strict=True))
            for item, r in zip(out, results, strict=True):
                if r.id in by_id:
                    item["height"] = by_id[r.id]
        return JSONResponse({"results": out}, status_code=202)

    @app.get("/v1/records/{record_id}", responses={
        **ok("the record, `pending` or `committed` (with `height` and `index`)"),
        **problems((400, "invalid_id", "not 64 lowercase hex characters"),
                   (404, "not_found", "no such record, pending or committed"), OVERLOADED)})
    async def get_record(record_id: str) -> JSONResponse:
        """A committed or pending record."""
        rid = parse_id(record_id)
        loc = node.store.locate(rid)
        if loc is not None:
            envelope = node.store.envelope(rid)
            if envelope is not None:
                return JSONResponse(record_json(Record.from_wire(envelope), "committed",
                                                loc.height, loc.index))
        pending = node.mempool.get(rid)
        if pending is not None:
            return JSONResponse(record_json(pending, "pending"))
        raise Problem(404, "not_found", f"no record {record_id}")

    @app.get("/v1/records/{record_id}/receipt", responses={
        **ok("the receipt: verify it offline with `ledger verify RECEIPT --genesis G`"),
        **problems((400, "invalid_id", "not 64 lowercase hex characters"),
                   (404, "not_found", "no such record"),
                   (409, "not_committed", "the record is pending, not committed yet"),
                   OVERLOADED)})
    async def get_receipt(record_id: str) -> JSONResponse:
        """The offline-verifiable receipt of a committed record (SPEC section 6)."""
        rid = parse_id(record_id)
        receipt = build_receipt(node.store, rid)
        if receipt is not None:
            return JSONResponse(receipt)
        if node.mempool.get(rid) is not None:
            raise Problem(409, "not_committed", f"record {record_id} is not committed yet")
        raise Problem(404, "not_found", f"no record {record_id}")

    @app.get("/v1/blocks/{height}", response_model=None, responses={
        **ok("the block as JSON, or with `Accept: application/msgpack` its exact bytes",
             {MSGPACK: BINARY}),
        **problems((400, "invalid_height", "not a positive integer"),
                   (404, "not_found", "beyond the tip"), OVERLOADED)})
    async def get_block(height: str, request: Request) -> Response:
        """A committed block: JSON, or the exact SPEC bytes with Accept: application/msgpack."""
        h = parse_height(height)
        data = node.store.block_bytes(h)
        if data is None:
            raise Problem(404, "not_found", f"no block at height {h}; the tip is "
                          f"{node.store.height}")
        if MSGPACK in request.headers.get("accept", ""):
            return Response(data, media_type=MSGPACK)
        return JSONResponse(block_json(Block.from_wire(data)))

    @app.get("/v1/status", responses={**ok("this node's view of the chain"),
                                       **problems(OVERLOADED)})
    async def status() -> JSONResponse:
        """Chain, node, tip, validators and connected peers."""
        tip = node.store.tip_hash()
        connected = set(node.connected_peers())
        return JSONResponse({
            "chain": node.genesis.chain_id, "node": node.name, "height": node.store.height,
            "last_block_hash": tip.hex() if tip else None,
            "genesis_hash": node.genesis.hash.hex(),
            "round": node.core.round, "mempool": len(node.mempool),
            "validators": [{"index": v.index, "name": v.name, "pubkey": v.pubkey.hex(),
                            "power": v.power, "api": v.api,
                            "connected": v.index in connected or v.index == node.config.index}
                           for v in node.genesis.validators],
            "peers": sorted(connected), "evidence": list(node.evidence)[-20:],
        })

    @app.get("/v1/subjects/{subject:path}/history", responses={
        **ok("one page of records; `next` is null on the last page"),
        **problems((400, "invalid_parameter", "`after` or `limit` out of range"),
                   OVERLOADED)})
    async def history(subject: str, after: int = Query(-1, ge=-1, le=2**62),
                      limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
        """Committed records of one subject, oldest first; page with ``after=next``."""
        rows = node.store.subject_history(subject, after_seq=after, limit=limit)
        records = [record_json(Record.from_wire(e), "committed", loc.height, loc.index)
                   for loc, e in rows]
        nxt = rows[-1][0].seq if len(rows) == limit else None
        return JSONResponse({"subject": subject, "records": records, "next": nxt})

    @app.get("/v1/events", response_class=StreamingResponse, responses={
        **ok("an endless `text/event-stream`: `event: block`, `id: <height>`, "
             "`data: {height, hash, time_ms, record_count}`",
             {"text/event-stream": {"schema": {"type": "string"}}}),
        **problems((400, "invalid_parameter", "`from_height` out of range"),
                   (503, "too_many_subscribers",
                    f"{MAX_SUBSCRIBERS} event streams are open (Retry-After)"))})
    async def events(request: Request,
                     from_height: int | None = Query(None, ge=1, le=2**62)) -> StreamingResponse:
        """Server-Sent Events: one ``block`` event per committed block."""
        last_id = request.headers.get("last-event-id", "")
        start = from_height or (int(last_id) + 1 if last_id.isdigit() else node.store.height + 1)
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1000)
        node.subscribers.add(queue)

        async def stream() -> Any:
            nxt = start
            try:
                yield ": ledger block events\n\n"
                while True:
                    while nxt <= node.store.height:
                        block = node.store.block(nxt)
                        if block is None:
                            break
                        data = json.dumps({"height": block.height, "hash": block.hash.hex(),
                                           "time_ms": block.header.time_ms,
                                           "record_count": len(block.records)})
                        yield f"event: block\nid: {block.height}\ndata: {data}\n\n"
                        nxt += 1
                    if queue not in node.subscribers:
                        return  # too slow: dropped; the client resumes with Last-Event-ID
                    try:
                        await asyncio.wait_for(queue.get(), timeout=15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
            finally:
                node.subscribers.discard(queue)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    @app.get("/v1/genesis", response_model=None,
             responses=ok("the exact genesis.json bytes this node runs"))
    async def genesis() -> Response:
        """The exact genesis.json bytes this node runs (sha256 of them is the genesis hash)."""
        return Response(node.genesis.raw, media_type="application/json",
                        headers={"X-Genesis-Hash": node.genesis.hash.hex()})

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def explorer() -> FileResponse:
        """The web explorer (docs/explorer.md)."""
        return FileResponse(EXPLORER / "index.html", headers=EXPLORER_HEADERS)

    @app.get("/explorer", include_in_schema=False)
    async def explorer_slash() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/explorer", StaticFiles(directory=EXPLORER), name="explorer")

    @app.get("/healthz", responses={**ok("the process serves (even with no peers)"),
                                     **problems(OVERLOADED)})
    async def healthz() -> JSONResponse:
        """Liveness: 200 while the process serves."""
        return JSONResponse({"status": "ok", "height": node.store.height})

    @app.get("/metrics", response_class=PlainTextResponse, responses={
        **ok("Prometheus text format"), **problems(OVERLOADED)})
    async def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        node.metrics.mempool = len(node.mempool)
        return PlainTextResponse(node.metrics.render(len(node.connected_peers())),
                                 media_type="text/plain; version=0.0.4")

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, minus its 422 answers: invalid parameters answer 400 here."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            schemas["Problem"] = PROBLEM_SCHEMA
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
