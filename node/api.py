"""The HTTP API (SPEC section 7), a FastAPI app over one ``node.service.NodeService``.

Every failure is ``application/problem+json`` (RFC 9457) with a stable ``code``; nothing a
client sends produces a 500. OpenAPI is served at ``/openapi.json`` and ``/docs``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

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

from ledger import checkpoint as checkpoints
from ledger import encoding
from ledger.blocks import BlockShell, Header
from ledger.config import Config, ConfigHistory, decode_change
from ledger.encoding import BatchItem, b64decode, b64encode, loads_json
from ledger.errors import (
    CorruptStoreError,
    DecodeError,
    LedgerError,
    ReadSignatureError,
    TooLargeError,
    WitnessError,
)
from ledger.httpsig import verify_request
from ledger.jsonview import jsonable
from ledger.receipts import build_receipt, config_steps
from ledger.records import Record, SealedPayload
from ledger.store import RecordLocation
from ledger.store.base import ConfigChange
from ledger.witness import Cosignature, check_cosignature, parse_cosignature, witnesses_json
from node.config import NodeConfig
from node.mempool import MempoolFull
from node.peer_guard import TokenBucket
from node.service import (
    MAX_SUBSCRIBERS,
    BlockFeed,
    NodeService,
    NodeStopping,
    NotAValidator,
    ReadStore,
)
from node.swaggerui import add_swagger_ui
from node.threads import worker_pool
from node.trace import TRACE_DIR, trace

if TYPE_CHECKING:
    from ledger.store.base import BlockStore

MSGPACK = "application/msgpack"
KEEPALIVE_S = 15.0  # an event stream idle this long gets a comment line
MAX_REPLAYS = 4  # event streams replaying past blocks at once (the others wait their turn)
REPLAY_BATCH = 16  # past blocks read per worker job of a replay
HISTORY_SLICE = 64  # records read from the store at a time for a history page
HISTORY_PAGE_BYTES = 4 * 1024 * 1024  # envelope and served payload bytes that end a page early
HISTORY_PROOF_PAGE = 100  # records at most in a history page with proof=true
PAYLOAD_PAGE = 1000  # pairs at most in a GET /v1/payloads page
PAYLOAD_PAGE_BYTES = 4 * 1024 * 1024  # payload bytes that end a payloads page early
PAYLOAD_WINDOW = 4096  # log indices read from the store at a time for a payloads page
PAYLOAD_SLICE = 64  # pairs read from the store at a time for a payloads page
PAYLOAD_SCAN = 65_536  # log indices one payloads page scans at most
# A POST /v1/records body this small is split on the loop: a worker thread's hop (its
# wake-up, then the GIL back) costs more than the work, and sat on every light request's path.
INLINE_BODY_BYTES = 16 * 1024
MAX_QUEUED_WORK = 64  # jobs waiting for an API worker thread (beyond: 503 overloaded)
BODY = "ledger.body"  # scope key: the request body's chunks, received by ApiGuard
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})  # never limited or queued behind clients
COSIGNATURES = "/v1/log/cosignatures"
COSIGNATURE_BODY_MAX = 4096  # a cosignature body is ~400 bytes
#: a smaller body limit than ``max_body_bytes`` for these POST paths
BODY_LIMITS = {COSIGNATURES: COSIGNATURE_BODY_MAX}
COSIGNATURE_PAGE_HEIGHTS = 1000  # heights in one GET /v1/log/cosignatures page
SPLIT_VIEWS_SHOWN = 20  # split-view evidence entries in /v1/status (the newest)
DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() accepts "²" and "٣"
# RFC 3339 section 5.6 date-time (ASCII digits, an offset required; "T" or a space)
RFC3339 = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
                     r"(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})")
# a query parameter read as text (parse_count) but documented as the integer it must be
INTEGER: dict[str, Any] = {"type": "integer", "minimum": 0}
log = logging.getLogger("ledger.api")
T = TypeVar("T")
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


TITLES = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
          409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
          422: "Unprocessable Content", 429: "Too Many Requests", 500: "Internal Server Error",
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
OVERLOADED = (503, "overloaded", "more than `api_max_inflight` requests in flight, or the API's "
              "workers are busy (Retry-After)")
PER_SOURCE = (429, "too_many_requests",
              "more than `api_requests_per_source` requests at once from this address "
              "(Retry-After)")
LIMITED = (OVERLOADED, PER_SOURCE)
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
    "description": "A batch of 1..`max_batch` signed envelopes (SPEC section 2). A sealed "
                   "record (SPEC section 10) comes with its 32-byte salt and its payload's "
                   "msgpack bytes, which its `payload_digest` covers.",
    "content": {
        MSGPACK: {"schema": {"type": "string", "format": "binary",
                             "description": "msgpack array whose items are an envelope "
                                            "(bin), or `[envelope, salt, payload_bytes]` "
                                            "(three bin) for a sealed record"}},
        "application/json": {"schema": {
            "type": "object", "required": ["records"],
            "properties": {"records": {"type": "array", "items": {
                "type": "object", "required": ["envelope"],
                "properties": {
                    "envelope": {"type": "string", "format": "byte",
                                 "description": "base64 envelope"},
                    "salt": {"type": "string", "format": "byte",
                             "description": "sealed records only (with `payload`): base64 "
                                            "of the 32-byte salt"},
                    "payload": {"type": "string", "format": "byte",
                                "description": "sealed records only (with `salt`): base64 "
                                               "of the payload's msgpack bytes"}}}}}}},
    },
}


def problem(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
            ) -> JSONResponse:
    """An RFC 9457 problem response."""
    return JSONResponse(
        {"type": f"urn:ledger:problem:{code}", "title": TITLES.get(status, "Error"),
         "status": status, "detail": detail, "code": code},
        status_code=status, media_type=PROBLEM_JSON, headers=headers)


def config_versions(node: NodeService) -> tuple[ConfigHistory, list[ConfigChange]]:
    """The node's configuration history and the change that made each version after 0
    (``changes[v - 1]`` made version v), consistent with each other."""
    history = node.store.history
    changes = node.store.config_changes()
    if history is None:
        return ConfigHistory(node.genesis.config), []
    return history, changes[:len(history) - 1]


def _jsonable(value: Any) -> Any:
    """A decoded change map as JSON (its configuration is in genesis.json's shapes)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


CONFIG_KEYS = ("validators", "organizations", "policies", "governance", "witnesses",
               "read_policies")


def config_json(node: NodeService, version: int | None = None) -> dict[str, Any] | None:
    """``GET /v1/config``'s body for ``version`` (default: the one governing the next
    height), None for an unknown version."""
    history, changes = config_versions(node)
    if version is None:
        version = len(history) - 1
    if not 0 <= version < len(history):
        return None
    if version == 0:
        doc = json.loads(node.genesis.raw)
        change: bytes | None = None
    else:
        change = changes[version - 1].change
        doc = decode_change(change)
    return {"version": version, "height": history.start(version),
            "change": None if change is None else b64encode(change),
            "config": {k: _jsonable(doc[k]) for k in CONFIG_KEYS if k in doc}}


#: The response header naming who a request was read as (SPEC section 10 reads): the
#: reader's public key in hex, or ``anonymous`` followed by why a signature was not accepted.
READER_HEADER = "Ledger-Reader"
_HEADER_SAFE = re.compile(r"[^\x20-\x7e]")


@dataclass(frozen=True)
class Reader:
    """Who a request reads as: the member key its RFC 9421 signature proves (None: unsigned,
    or a signature that did not hold, with ``why``), and the configuration governing the
    next height, whose read policies decide (``Config.may_read``, the one read rule)."""

    key: bytes | None
    config: Config
    why: str = ""

    def may_read(self, record_type: str) -> bool:
        return self.config.may_read(self.key, record_type)

    @property
    def header(self) -> str:
        if self.key is not None:
            return self.key.hex()
        return "anonymous" + (f"; {self.why}" if self.why else "")

    @property
    def headers(self) -> dict[str, str]:
        """Response headers of an answer that depends on its reader: who it was read as,
        and, so that no shared cache serves one reader's payloads to another, ``Vary`` on
        the signature headers and ``Cache-Control: private``."""
        return {READER_HEADER: self.header, "Vary": "Signature, Signature-Input",
                "Cache-Control": "private"}


def governing_config(node: NodeService) -> Config:
    """The configuration governing the next height (the one whose read policies apply)."""
    history = node.store.history
    return node.genesis.config if history is None else history.latest


def request_reader(node: NodeService, request: Request) -> Reader:
    """The reader of ``request`` from its ``Signature-Input``/``Signature`` headers
    (``ledger.httpsig.verify_request`` over its method, Host, raw path and raw query, within
    300 s of this node's clock). Never an error: any failure reads as anonymous, with the
    reason kept for the ``Ledger-Reader`` response header."""
    config = governing_config(node)
    headers = request.headers
    if "signature-input" not in headers and "signature" not in headers:
        return Reader(None, config)
    scope = request.scope
    raw_path = scope.get("raw_path") or scope.get("path", "/").encode()
    try:
        # some servers put the query in raw_path too; a raw path never holds a "?"
        path = raw_path.split(b"?", 1)[0].decode("ascii")
        query = bytes(scope.get("query_string", b"")).decode("ascii")
        key = verify_request(request.method, headers.get("host", ""), path, query,
                             headers, int(time.time()))
    except (ReadSignatureError, UnicodeDecodeError) as exc:
        why = _HEADER_SAFE.sub("?", f"signature not accepted: {exc}")[:300]
        return Reader(None, config, why)
    return Reader(key, config)


@dataclass(frozen=True)
class PayloadView:
    """What a reader is shown of one sealed record's payload: ``payload_status`` is
    ``served`` (with ``pair``), ``withheld`` (the read policy refused this reader),
    ``missing`` (this node does not hold the pair) or ``redacted`` (at ``redacted``)."""

    status: Literal["served", "withheld", "missing", "redacted"]
    pair: SealedPayload | None = None
    redacted: int | None = None

    def fields(self) -> dict[str, Any]:
        """The record JSON's keys after ``payload_digest`` (SPEC section 7, v1.1)."""
        out: dict[str, Any] = {}
        if self.redacted is not None:
            out["redacted"] = {"height": self.redacted}
        out["payload_status"] = self.status
        if self.pair is not None:
            out["payload"] = b64encode(self.pair.payload)
            out["salt"] = b64encode(self.pair.salt)
        return out


def payload_views(store: ReadStore, reader: Reader, records: Sequence[Record],
                  pending: Callable[[bytes], SealedPayload | None] | None = None,
                  ) -> dict[bytes, PayloadView]:
    """The view of each sealed record of ``records`` for ``reader``: committed ones from the
    store (its pairs and redactions), pending ones (``pending`` given) from the mempool.
    Pairs are read only for records the reader may read."""
    sealed = [r for r in records if r.body.sealed]
    if not sealed:
        return {}
    ids = [r.id for r in sealed]
    redacted = store.redaction_heights(ids) if pending is None else {}
    allowed = [r.id for r in sealed if r.id not in redacted and reader.may_read(r.body.type)]
    if pending is not None:
        pairs = {rid: p for rid in allowed if (p := pending(rid)) is not None}
    else:
        pairs = store.payloads(allowed) if allowed else {}
    views: dict[bytes, PayloadView] = {}
    for r in sealed:
        if r.id in redacted:
            views[r.id] = PayloadView("redacted", redacted=redacted[r.id])
        elif not reader.may_read(r.body.type):
            views[r.id] = PayloadView("withheld")
        elif r.id in pairs:
            views[r.id] = PayloadView("served", pairs[r.id])
        else:
            views[r.id] = PayloadView("missing")
    return views


def record_json(record: Record, status: str, height: int | None = None,
                index: int | None = None, view: PayloadView | None = None) -> dict[str, Any]:
    """A record's JSON (SPEC section 7). A sealed record shows ``payload_digest`` and, with
    ``view``, what its reader is shown of the payload (``PayloadView.fields``); an inline
    record its ``payload``."""
    body = record.body
    out: dict[str, Any] = {"id": record.id.hex(), "status": status}
    if height is not None:
        out["height"], out["index"] = height, index
    out.update({"type": body.type, "subject": body.subject, "signer": body.signer.hex(),
                "ts": body.ts, "nonce": body.nonce})
    if body.payload_digest is not None:
        out["payload_digest"] = body.payload_digest.hex()
        if view is not None:
            out.update(view.fields())
    else:
        out["payload"] = jsonable(body.payload)
    out["envelope"] = b64encode(record.envelope)
    return out


def block_json(block: BlockShell, records: list[Any]) -> dict[str, Any]:
    """The JSON view of a block, with ``records`` as its records' views."""
    h = block.header
    return {
        "height": h.height, "hash": h.hash.hex(),
        "header": {"version": h.version, "chain": h.chain, "height": h.height,
                   "time_ms": h.time_ms, "prev_hash": h.prev_hash.hex(),
                   "records_root": h.records_root.hex(), "record_count": h.record_count,
                   "log_root": h.log_root.hex(), "log_size": h.log_size,
                   "proposer": h.proposer, "validators_hash": h.validators_hash.hex()},
        "records": records,
        "cert": {"height": block.cert.height, "round": block.cert.round,
                 "block_hash": block.cert.block_hash.hex(),
                 "signatures": [{"validator": i, "sig": b64encode(s)}
                                for i, s in block.cert.signatures]},
    }


@dataclass(frozen=True)
class BlockJson:
    """A block's JSON as every reader gets it (sealed records with ``payload_digest`` only)
    and, per sealed record, where its reader-dependent keys go: (offset of the closing brace
    of its object in ``data``, the record). ``for_reader`` adds them; the cache keeps this."""

    data: bytes
    sealed: tuple[tuple[int, Record], ...] = ()

    def for_reader(self, store: ReadStore, reader: Reader) -> bytes:
        """``data`` with each sealed record's payload keys for ``reader`` (store reads)."""
        if not self.sealed:
            return self.data
        views = payload_views(store, reader, [r for _, r in self.sealed])
        out, last = [], 0
        for at, record in self.sealed:
            extra = render_json(views[record.id].fields())  # {...}
            out += [self.data[last:at], b",", extra[1:-1]]
            last = at
        out.append(self.data[last:])
        return b"".join(out)


def render_block(data: bytes) -> BlockJson:
    """The JSON of a block's wire bytes, one record at a time: each record is decoded,
    rendered and dropped before the next (only sealed ones are kept, for ``for_reader``),
    so a block of large payloads never holds all its records decoded at once (an 8 MB block
    of short strings is ~60 MB of objects)."""
    shell = BlockShell.from_wire(data)
    height = shell.header.height
    pieces: list[bytes] = []
    sealed: list[tuple[int, Record]] = []
    for i, e in enumerate(shell.envelopes):
        record = Record.from_wire(e)
        pieces.append(render_json(record_json(record, "committed", height, i)))
        if record.body.sealed:
            sealed.append((i, record))
    doc = render_json(block_json(shell, records=[]))
    marker = b'"records":[]'
    at = doc.index(marker) + len(marker) - 1
    # offsets of each piece's closing brace in the joined document
    ends, offset = [], at
    for i, piece in enumerate(pieces):
        offset += (1 if i else 0) + len(piece)
        ends.append(offset - 1)
    return BlockJson(b"".join((doc[:at], b",".join(pieces), doc[at:])),
                     tuple((ends[i], record) for i, record in sealed))


def render_block_json(data: bytes) -> bytes:
    """``render_block(data).data``: the block's JSON with no payload of a sealed record."""
    return render_block(data).data


COSIGNATURE_BODY: dict[str, Any] = {
    "required": True,
    "description": "A witness's cosignature of one block (SPEC section 11). `log_size` and "
                   "`log_root` (optional, together) are those of the block the witness "
                   "cosigned: with them a cosignature over another block than this node's "
                   "can be verified, and kept as proof of a split view (docs/protocol.md).",
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["pubkey", "height", "block_hash", "sig"],
        "properties": {
            "pubkey": {"type": "string", "description": "the witness key, 64 hex"},
            "height": {"type": "integer", "minimum": 1},
            "block_hash": {"type": "string", "description": "the cosigned block, 64 hex"},
            "sig": {"type": "string", "format": "byte",
                    "description": "base64 Ed25519 signature (SPEC section 11)"},
            "log_size": {"type": "integer", "minimum": 0},
            "log_root": {"type": "string", "description": "64 hex"}}}}},
}


def split_view_json(cosig: Cosignature, node_block_hash: bytes) -> bytes:
    """The evidence a store keeps of a split view: the cosignature (a POST body, so anyone
    can check it with ``ledger.witness.cosigned_message``) and this node's block hash at its
    height, as canonical JSON (the same cosignature twice is the same bytes)."""
    doc = {"kind": "split_view", "height": cosig.height, "witness": cosig.pubkey.hex(),
           "block_hash": cosig.block_hash.hex(), "node_block_hash": node_block_hash.hex(),
           "cosignature": cosig.to_json()}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def judge_cosignature(node: NodeService, chunks: list[bytes]) -> tuple[Cosignature, bool]:
    """Check a ``POST /v1/log/cosignatures`` body against this node's block at its height
    and keep it: (the cosignature, whether it was new). A Problem otherwise; a split view is
    kept as evidence before its 409. Signature checks and a write: run it in a worker."""
    try:
        doc = loads_json(b"".join(chunks))
    except LedgerError as exc:
        raise Problem(400, "malformed", f"body is not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise Problem(400, "malformed", "expected a JSON object")
    try:
        cosig = parse_cosignature(doc)
    except WitnessError as exc:
        raise Problem(400, exc.code, str(exc)) from exc
    tip = node.store.height
    if cosig.height > tip:
        raise Problem(404, "unknown_height", f"no block at height {cosig.height} yet; the tip "
                      f"is {tip}")
    stored = node.store.header_cert(cosig.height)
    if stored is None:
        raise Problem(404, "unknown_height", f"no block at height {cosig.height}")
    header = Header.from_wire(stored[0])
    history = node.store.history
    config = node.genesis.config if history is None else history.at(cosig.height)
    try:
        holds = check_cosignature(cosig, config, node.genesis.hash, header)
    except WitnessError as exc:
        raise Problem(400, exc.code, str(exc)) from exc
    if holds:
        if any(pk == cosig.pubkey for pk, _ in node.store.cosignatures(cosig.height)):
            return cosig, False  # a replay (they are public): no write for it
        return cosig, node.store.add_cosignature(cosig.height, cosig.pubkey, cosig.sig)
    kept = node.store.add_split_view(split_view_json(cosig, header.hash))
    if kept:
        log.warning("split view: witness %s cosigned block %s at height %d; ours is %s",
                    cosig.pubkey.hex(), cosig.block_hash.hex(), cosig.height, header.hash.hex())
    raise Problem(409, "split_view",
                  f"witness {cosig.pubkey.hex()} cosigned block {cosig.block_hash.hex()} at "
                  f"height {cosig.height}; this node's block there is {header.hash.hex()}. "
                  f"Kept as evidence (GET /v1/status: split_views)")


def with_witnesses(block_json: bytes, pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A block's JSON (an object, as ``render_block_json`` makes it) with ``"witnesses"``
    added last: cosignatures arrive after the block, so the cached JSON has none."""
    return b"".join((block_json[:-1], b',"witnesses":', render_json(witnesses_json(pairs)),
                     b"}"))


def parse_id(text: str) -> bytes:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise Problem(400, "invalid_id", "a record id is 64 lowercase hex characters")
    return bytes.fromhex(text)


def parse_height(text: str) -> int:
    if not DIGITS.fullmatch(text):
        raise Problem(400, "invalid_height",
                      f"height must be a positive integer, got {text[:40]!r}")
    height = int(text)
    if height < 1:
        raise Problem(400, "invalid_height", "heights start at 1")
    return height


def parse_count(name: str, text: str, low: int, high: int, bound: str) -> int:
    """A query parameter that must be an integer in ``[low, high]``; the 400 names the bound
    it breaks (``bound`` says what ``high`` is)."""
    if not DIGITS.fullmatch(text):
        raise Problem(400, "invalid_parameter",
                      f"`{name}` must be a non-negative integer, got {text[:40]!r}")
    value = int(text)
    if value < low:
        raise Problem(400, "invalid_parameter", f"`{name}` must be at least {low}, got {value}")
    if value > high:
        raise Problem(400, "invalid_parameter",
                      f"`{name}` must be at most {bound} ({high}), got {value}")
    return value


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME_MS = 2**63 - 1  # a header's time_ms is an unsigned 63-bit count (ledger.blocks)


def parse_time_us(name: str, text: str) -> int:
    """``since``/``until`` in microseconds since the Unix epoch: given as milliseconds, or
    as an RFC 3339 date-time with its offset (``2026-11-30T08:00:00Z``)."""
    if DIGITS.fullmatch(text):
        return int(text) * 1000
    if not RFC3339.fullmatch(text):
        raise Problem(400, "invalid_parameter",
                      f"`{name}` must be milliseconds since the epoch or an RFC 3339 "
                      f"date-time with an offset, got {text[:40]!r}")
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError as exc:
        raise Problem(400, "invalid_parameter", f"`{name}`: {exc}") from exc
    micros = (moment - EPOCH) // timedelta(microseconds=1)
    if not 0 <= micros <= MAX_TIME_MS * 1000:
        raise Problem(400, "invalid_parameter", f"`{name}` is before 1970 or too far ahead")
    return micros


def time_range_ms(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    """The block-time range ``[since, until]`` in whole milliseconds (block times are): a
    fraction rounds inwards, so the range never takes in a block outside it. 400 when it
    ends before it starts."""
    t0 = None if since is None else parse_time_us("since", since)
    t1 = None if until is None else parse_time_us("until", until)
    if t0 is not None and t1 is not None and t0 > t1:
        raise Problem(400, "invalid_parameter",
                      f"`since` ({since}) is after `until` ({until})")
    return (None if t0 is None else -(-t0 // 1000)), (None if t1 is None else t1 // 1000)


class HeaderReader:
    """Block headers by height for one history page (each read once), and the log-index
    range of a block-time range.

    Block times strictly increase along the chain: ``ledger.validation.check_extends``, the
    one rule every store applies, refuses a block whose ``time_ms`` is not after its
    predecessor's. So the blocks of a time range are a run of heights, found by binary
    search, and their records a run of log indexes (a block's first is ``log_size -
    record_count``): O(log height) one-row reads, never a scan."""

    def __init__(self, node: NodeService) -> None:
        self.store = node.store
        self.read: dict[int, Header] = {}

    def header(self, height: int) -> Header:
        """The header at ``height`` (at most the tip)."""
        found = self.read.get(height)
        if found is None:
            stored = self.store.header_cert(height)
            if stored is None:
                raise CorruptStoreError(f"no stored header below the tip, at {height}", height)
            found = self.read[height] = Header.from_wire(stored[0])
        return found

    def log_size(self, height: int) -> int:
        """Records in the log up to and including block ``height`` (0 for none)."""
        return self.header(height).log_size if height else 0

    def first_seq(self, height: int) -> int:
        """The log index of block ``height``'s first record."""
        header = self.header(height)
        return header.log_size - header.record_count

    def first_height(self, height: int, after: Callable[[Header], bool]) -> int:
        """The lowest height in ``[1, height]`` whose header is ``after`` (which must hold
        from some height on), ``height + 1`` if none is."""
        low, high = 1, height + 1
        while low < high:
            mid = (low + high) // 2
            if after(self.header(mid)):
                high = mid
            else:
                low = mid + 1
        return low

    def seq_range(self, height: int, since: int | None, until: int | None) -> tuple[int, int]:
        """``[low, high)``: the log indexes of the records of blocks ``1..height`` whose time
        is within ``[since, until]`` (each bound optional)."""
        low, high = 0, self.log_size(height)
        if since is not None:
            h = self.first_height(height, lambda hd: hd.time_ms >= since)
            low = high if h > height else self.first_seq(h)
        if until is not None:
            high = self.log_size(self.first_height(height, lambda hd: hd.time_ms > until) - 1)
        return low, high


def parse_last_event_id(text: str) -> int | None:
    """The ``Last-Event-ID`` header: the height of the last event a client saw."""
    if not text:
        return None
    if not DIGITS.fullmatch(text):
        raise Problem(400, "invalid_parameter",
                      f"Last-Event-ID must be a block height, got {text[:40]!r}")
    return int(text)


def split_bin_array(body: bytes, max_items: int) -> list[BatchItem]:
    """The items of a msgpack batch: envelopes, or ``[envelope, salt, payload_bytes]`` for
    sealed records (see ``ledger.encoding.split_batch``)."""
    try:
        items = encoding.split_batch(body, "batch", max_items)
    except TooLargeError as exc:
        raise Problem(413, "batch_too_large", str(exc)) from exc
    except DecodeError as exc:
        raise Problem(400, "malformed", "expected a msgpack array of envelopes (bin) or "
                      f"[envelope, salt, payload_bytes]: {exc}") from exc
    if not items:
        raise Problem(400, "empty_batch", "the batch holds no envelopes")
    return items


JSON_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
JSON_MAX_DEPTH = 4  # {"records": [{"envelope": "…"}]} is 3 deep
JSON_SHAPE = ('expected {"records": [{"envelope": b64} or {"envelope": b64, "salt": b64, '
              '"payload": b64}, ...]}')
JSON_ITEM_KEYS = ({"envelope"}, {"envelope", "salt", "payload"})


def json_skeleton(text: str, max_items: int) -> str:
    """``text`` with every string's contents removed, in time linear in ``len(text)``.

    A batch's strings are keys and base64, so a body holding more ``{ [ , : "`` than
    ``max_items`` items need (a sealed item has three keys), or any escaped backslash,
    cannot be a valid batch and is refused first; what remains has few strings, and each
    escape is a single backslash."""
    objects = text.count("{")
    if objects - 1 > max_items:
        raise Problem(413, "batch_too_large",
                      f"about {objects - 1} envelopes exceed the limit of {max_items}")
    # a sealed item holds 19 of them (1 brace, 12 quotes, 3 colons, 3 commas)
    if sum(text.count(c) for c in '{[,:"') > 20 * max_items + 16 or "\\\\" in text:
        raise Problem(400, "malformed", JSON_SHAPE)
    parts, pos = [], 0
    while (start := text.find('"', pos)) >= 0:
        end = start
        while True:
            end = text.find('"', end + 1)
            if end < 0:
                raise Problem(400, "malformed", "body is not JSON (an unterminated string)")
            if text[end - 1] != "\\":
                break
        parts.append(text[pos:start] + '""')
        pos = end + 1
    parts.append(text[pos:])
    return "".join(parts)


def split_json_batch(body: bytes, max_items: int) -> list[BatchItem]:
    """The items of ``{"records": [{"envelope": b64}, ...]}``, strictly; a sealed record's
    item is ``{"envelope": b64, "salt": b64, "payload": b64}`` (an
    ``(envelope, salt, payload)`` tuple out).

    Before parsing, a scan outside strings bounds the nesting depth (a deep body would
    exhaust the parser's recursion) and the number of values (so memory is O(body)).
    Repeated keys, unknown keys and non-canonical base64 are malformed."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Problem(400, "malformed", "a JSON body must be UTF-8") from exc
    depth = 0
    for c in JSON_NOT_BRACKET.sub("", json_skeleton(text, max_items)):
        depth += 1 if c in "[{" else -1
        if depth > JSON_MAX_DEPTH:
            raise Problem(400, "malformed", f"JSON nested deeper than {JSON_MAX_DEPTH}")
    try:
        doc = loads_json(text)
    except LedgerError as exc:
        raise Problem(400, "malformed", f"body is not JSON ({exc})") from exc
    if not isinstance(doc, dict) or set(doc) != {"records"} or not isinstance(
            doc["records"], list):
        raise Problem(400, "malformed", JSON_SHAPE)
    envelopes: list[BatchItem] = []
    for i, item in enumerate(doc["records"]):
        if not isinstance(item, dict) or set(item) not in JSON_ITEM_KEYS:
            raise Problem(400, "malformed", f"records[{i}]: {JSON_SHAPE}")
        try:
            envelope = b64decode(item["envelope"], f"records[{i}].envelope")
            if "salt" in item:
                envelopes.append((envelope, b64decode(item["salt"], f"records[{i}].salt"),
                                  b64decode(item["payload"], f"records[{i}].payload")))
            else:
                envelopes.append(envelope)
        except LedgerError as exc:
            raise Problem(400, "malformed", str(exc)) from exc
    if not envelopes:
        raise Problem(400, "empty_batch", "the batch holds no envelopes")
    if len(envelopes) > max_items:
        raise Problem(413, "batch_too_large",
                      f"{len(envelopes)} envelopes exceed the limit of {max_items}")
    return envelopes


def decode_batch(content_type: str, chunks: list[bytes], max_batch: int,
                 ) -> list[BatchItem]:
    """The items (envelopes, or sealed records with their pairs) of a POST /v1/records body
    received as ``chunks``, in either encoding.

    CPU and memory bound: call it in a worker thread (joining 16 MiB costs ~40 ms of page
    faults; bytes.join releases the GIL for large joins), but for a body of at most
    ``INLINE_BODY_BYTES``."""
    body = b"".join(chunks)
    media = content_type.split(";")[0].strip().lower()
    if media == MSGPACK:
        return split_bin_array(body, max_batch)
    if media == "application/json":
        return split_json_batch(body, max_batch)
    raise Problem(415, "unsupported_media_type",
                  f"Content-Type must be {MSGPACK} or application/json, got {media[:80]!r}")


def render_json(doc: Any) -> bytes:
    """What JSONResponse would send, built wherever the caller runs (a worker thread)."""
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, indent=None,
                      separators=(",", ":")).encode("utf-8")


def block_event(data: bytes) -> str:
    """The SSE event of a block's wire bytes, decoding its header but not its records."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(data))
    unpacker.feed(data)
    unpacker.read_array_header()
    start = unpacker.tell()
    unpacker.skip()
    header = Header.from_wire(data[start:unpacker.tell()])
    count = unpacker.read_array_header()
    doc = json.dumps({"height": header.height, "hash": header.hash.hex(),
                      "time_ms": header.time_ms, "record_count": count})
    return f"event: block\nid: {header.height}\ndata: {doc}\n\n"


class Workers:
    """The API's own worker threads, apart from the default executor the consensus loop
    uses (so client work never delays a block being stored), with a bounded queue."""

    def __init__(self, threads: int, max_queued: int = MAX_QUEUED_WORK) -> None:
        self.pool = worker_pool("api", threads)  # below the event loop's priority
        self.max_queued = max_queued
        self.queued = 0  # submitted and not finished (a cancelled wait leaves its job here)
        self._lock = threading.Lock()

    def _done(self, _: object) -> None:
        with self._lock:
            self.queued -= 1

    async def run(self, fn: Callable[..., T], *args: Any, bounded: bool = True) -> T:
        """``fn(*args)`` in a worker thread; 503 ``overloaded`` when too much is queued
        (unless not ``bounded``: for work a request already admitted must finish)."""
        with self._lock:
            if bounded and self.queued >= self.max_queued:
                raise Problem(503, "overloaded", "the API's workers are busy",
                              {"Retry-After": "1"})
            self.queued += 1
        future = self.pool.submit(fn, *args)
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)


class BlockJsonCache:
    """Block JSON by height (blocks never change once committed), bounded by bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self.entries: OrderedDict[int, BlockJson] = OrderedDict()
        self.building: dict[int, asyncio.Future[BlockJson | None]] = {}

    def get(self, height: int) -> BlockJson | None:
        data = self.entries.get(height)
        if data is not None:
            self.entries.move_to_end(height)
        return data

    def put(self, height: int, block: BlockJson) -> None:
        if len(block.data) > self.max_bytes or height in self.entries:
            return
        self.entries[height] = block
        self.size += len(block.data)
        while self.size > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.size -= len(old.data)


#: Block JSON a source may have built per second (and saved up): building it is CPU work
#: under the GIL (an 8 MB block of short strings is ~20 MB of JSON, a second or more), so a
#: client cycling through more blocks than the cache holds made the node rebuild them
#: without end. Cached blocks cost nothing against it; the msgpack form never does.
BUILD_BYTES_PER_S, BUILD_BYTES_BURST = 4 << 20, 64 << 20


class BuildBudgets:
    """A token bucket of block-JSON bytes per source address, spent after each build (its
    size is known only then), bounded in the number of sources it remembers."""

    def __init__(self, rate: float, burst: float, max_sources: int = 4096) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, source: str) -> TokenBucket:
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(self.rate, self.burst)
            if len(self.buckets) > self.max_sources:
                self.buckets.popitem(last=False)
        self.buckets.move_to_end(source)
        return bucket

    def wait(self, source: str, now: float) -> float:
        """Seconds until ``source`` may have another block built (0: now)."""
        tokens = self._bucket(source).available(now)
        return 0.0 if tokens > 0 else (1 - tokens) / self.rate

    def spend(self, source: str, amount: int, now: float) -> None:
        self._bucket(source).spend(amount, now)


class EventCache:
    """SSE events of past blocks by height, bounded by count (an event is ~150 bytes): a
    replay reads each whole block from the store once, not once per subscriber. Used from
    worker threads."""

    def __init__(self, max_entries: int = 16_384) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[int, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, height: int) -> str | None:
        with self._lock:
            event = self.entries.get(height)
            if event is not None:
                self.entries.move_to_end(height)
            return event

    def put(self, height: int, event: str) -> None:
        with self._lock:
            self.entries[height] = event
            if len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class ApiGuard:
    """ASGI middleware: per-source and global limits, and request bodies received whole,
    within ``api_body_timeout`` and the byte budget, *before* a request counts in flight.

    ``/healthz``, ``/readyz`` and ``/metrics`` pass straight through: they are never limited
    or queued."""

    def __init__(self, app: ASGIApp, config: NodeConfig, feed: BlockFeed) -> None:
        self.app, self.cfg, self.feed = app, config, feed
        self.per_source: defaultdict[str, int] = defaultdict(int)
        self.inflight = 0
        self.body_bytes = 0  # reserved by requests whose bodies are held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT:
            await self.app(scope, receive, send)
            return
        cfg = self.cfg
        client = scope.get("client")
        source = str(client[0]) if client else ""
        if self.per_source[source] >= cfg.api_requests_per_source:
            await reply(scope, receive, send, Problem(
                429, "too_many_requests",
                f"{cfg.api_requests_per_source} requests at once from {source}",
                {"Retry-After": "1", "Connection": "close"}))
            return
        self.per_source[source] += 1
        reserved = 0
        try:
            if scope["method"] == "POST":
                reserved = self.reserve(scope)
                chunks = await self.receive_body(receive, self.limit(scope))
                scope[BODY] = chunks
                receive = replay(chunks, receive)
            if scope["path"] == "/v1/events":
                if self.feed.full():
                    raise Problem(503, "too_many_subscribers",
                                  f"{self.feed.max_subscribers} event streams are open",
                                  {"Retry-After": "5"})
                await self.app(scope, receive, send)
                return
            if self.inflight >= cfg.api_max_inflight:
                raise Problem(503, "overloaded", f"{cfg.api_max_inflight} requests in flight",
                              {"Retry-After": "1"})
            self.inflight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.inflight -= 1
        except Problem as exc:
            await reply(scope, receive, send, exc)
        except ClientGone:
            return
        finally:
            self.body_bytes -= reserved
            self.per_source[source] -= 1
            if not self.per_source[source]:
                del self.per_source[source]

    def limit(self, scope: Scope) -> int:
        """The body limit of this request's path (``max_body_bytes`` unless smaller)."""
        return min(self.cfg.max_body_bytes, BODY_LIMITS.get(scope["path"],
                                                            self.cfg.max_body_bytes))

    def reserve(self, scope: Scope) -> int:
        """Reserve the declared body size (or the limit) from the body budget."""
        limit = self.limit(scope)
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        size = int(declared) if DIGITS.fullmatch(declared) else limit
        if size > limit:
            raise Problem(413, "body_too_large", f"body of {size} bytes exceeds {limit}",
                          {"Connection": "close"})
        if self.body_bytes + size > self.cfg.api_body_budget:
            raise Problem(503, "overloaded", "too many request bodies are being received",
                          {"Retry-After": "1", "Connection": "close"})
        self.body_bytes += size
        return size

    async def receive_body(self, receive: Receive, limit: int) -> list[bytes]:
        """The whole body, as received, within ``api_body_timeout`` seconds (408 after), at
        most ``limit`` bytes (413 beyond)."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.cfg.api_body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise Problem(413, "body_too_large", f"body exceeds {limit} bytes",
                                      {"Connection": "close"})
                    if chunk:
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        return chunks
        except TimeoutError as exc:
            raise Problem(408, "body_timeout", f"the body did not arrive within "
                          f"{self.cfg.api_body_timeout:g} s", {"Connection": "close"}) from exc


def replay(chunks: list[bytes], receive: Receive) -> Receive:
    """A ``receive`` that yields the already-received body, then the client's own events."""
    pending = iter(range(len(chunks) or 1))

    async def again() -> MutableMapping[str, Any]:
        i = next(pending, None)
        if i is None:
            return await receive()
        return {"type": "http.request", "body": chunks[i] if chunks else b"",
                "more_body": i + 1 < len(chunks)}

    return again


async def reply(scope: Scope, receive: Receive, send: Send, exc: Problem) -> None:
    await problem(exc.status, exc.code, exc.detail, exc.headers)(scope, receive, send)


MAX_HEADER_BYTES = 64 * 1024  # a request line and headers beyond this: the connection is closed


def guarded_protocol(per_source: int, header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol with per-source connection limits and header deadlines.

    A connection beyond ``per_source`` open ones from its address is closed at once; one
    whose request line and headers take longer than ``header_timeout`` seconds (counted
    from its first byte, or from the connection) or exceed MAX_HEADER_BYTES is closed, so
    silent or slowly-dripping connections cannot pile up. (uvicorn has no header timeout,
    and its httptools parser buffers a header of any size.) Pass it as ``http=``."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol
    open_by_source: defaultdict[str, int] = defaultdict(int)

    class GuardedProtocol(base):  # type: ignore[misc]
        _source: str | None = None
        _timer: asyncio.TimerHandle | None = None
        _header_bytes = 0

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            source = str(peer[0]) if peer else ""
            if open_by_source[source] >= per_source:
                transport.close()
                return
            open_by_source[source] += 1
            self._source = source
            self._arm()

        def _between_requests(self) -> bool:
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm(self) -> None:
            if self._timer is None:
                self._timer = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self) -> None:
            self._timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._between_requests():
                self._header_bytes += len(data)
                self._arm()
            super().data_received(data)
            if not self._between_requests():
                self._header_bytes = 0
                self._disarm()
            elif self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._source is not None:
                open_by_source[self._source] -= 1
                if not open_by_source[self._source]:
                    del open_by_source[self._source]
                self._source = None
            super().connection_lost(exc)

    return GuardedProtocol


def create_app(node: NodeService, config: NodeConfig) -> FastAPI:
    """The API of ``node``, within the API limits of ``config``."""
    app = FastAPI(title="ledger node API", version="1",
                  description="Permissioned BFT ledger for industrial data (SPEC section 7).",
                  docs_url=None, redoc_url=None)  # their pages load from a CDN
    add_swagger_ui(app)  # /docs from the node's own files
    cfg = config
    workers = Workers(cfg.api_workers)
    blocks = BlockJsonCache(cfg.api_block_cache_bytes)
    builders = BuildBudgets(BUILD_BYTES_PER_S, BUILD_BYTES_BURST)
    replays = asyncio.Semaphore(MAX_REPLAYS)
    past_events = EventCache()
    app.add_middleware(ApiGuard, config=cfg, feed=node.feed)

    @app.exception_handler(Exception)
    async def _last_resort(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not the client's doing: logged, and still answered as problem+json."""
        log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
        return problem(500, "internal", "the node failed to answer this request")

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
              responses={**ok("one result per item, in input order; a rejected one names its "
                              "`error` (sealed records: `payload_missing`, `payload_mismatch`, "
                              "`invalid_body`)", status=202),
                         **problems(
        (400, "malformed", "the body does not decode as an array of envelopes or "
         "[envelope, salt, payload_bytes] items (JSON: `envelope`, or `envelope`, `salt` and "
         "`payload`)"),
        (400, "empty_batch", "the batch holds no envelopes"),
        (400, "invalid_parameter", "`wait` is not `commit`, or `timeout` is out of range"),
        (413, "body_too_large", "the body exceeds `max_body_bytes` (default 16 MiB)"),
        (413, "batch_too_large", "more envelopes than `max_batch` (default 10 000)"),
        (415, "unsupported_media_type", "Content-Type is neither msgpack nor JSON"),
        (408, "body_timeout", "the body did not arrive within `api_body_timeout` (10 s)"),
        (503, "mempool_full", "the mempool is full (Retry-After)"),
        (503, "not_a_validator", "this node is not a validator of the height being decided "
         "and has no peer link (removed, or joining): submit to a validator"), *LIMITED,
        (503, "stopping", "`wait=commit`: the node is stopping (SIGTERM) before it saw "
         "every record committed; submit them again to another node"),
        (504, "commit_timeout", "`wait=commit`: not all committed within `timeout`; "
         "the records stay in the mempool"))})
    async def submit(request: Request,
                     wait: str | None = Query(None, pattern="^commit$"),
                     timeout: float = Query(30.0, gt=0, le=600)) -> JSONResponse:
        """Submit a batch of signed envelopes (msgpack array, or JSON)."""
        if TRACE_DIR is not None:
            trace("api_in", node.store.height)
        chunks = request.scope.get(BODY)
        if chunks is None:  # only ApiGuard calls this app, and it receives every POST body
            raise Problem(500, "internal", "the body was not received")
        content_type = request.headers.get("content-type", "")
        items = (decode_batch(content_type, chunks, cfg.max_batch)
                 if sum(map(len, chunks)) <= INLINE_BODY_BYTES
                 else await workers.run(decode_batch, content_type, chunks, cfg.max_batch))
        try:
            results = await node.submit(items)
        except MempoolFull as exc:
            raise Problem(503, "mempool_full", str(exc), {"Retry-After": "1"}) from exc
        except NotAValidator as exc:
            raise Problem(503, "not_a_validator", str(exc)) from exc
        out: list[dict[str, Any]] = []
        for r in results:
            item: dict[str, Any] = {"id": r.id.hex() if r.id else None, "status": r.status}
            if r.error:
                item["error"], item["detail"] = r.error, r.detail
            out.append(item)
        if wait == "commit":
            ids = [r.id for r in results if r.status in ("accepted", "duplicate") and r.id]
            # The already-committed ones are looked up in a worker, not on the loop behind
            # a block being written (CommitWaiters.wait registers the futures first). Only a
            # duplicate can be: an accepted record was not in the store when the mempool
            # admitted it (``Mempool.admit`` asks the store again if a block committed since
            # its precheck), and nothing awaited since, so its commit resolves the future.
            duplicates = [r.id for r in results if r.status == "duplicate" and r.id]

            def committed(ids: Sequence[bytes]) -> dict[bytes, int]:
                locs = {rid: node.store.locate(rid) for rid in node.store.seen_ids(ids)}
                return {rid: loc.height for rid, loc in locs.items() if loc is not None}

            async def already(_: Sequence[bytes]) -> dict[bytes, int]:
                if not duplicates:
                    return {}
                return await workers.run(committed, duplicates, bounded=False)

            try:
                by_id = await node.commits.wait(ids, timeout, already)
            except TimeoutError as exc:
                raise Problem(504, "commit_timeout",
                              f"not every record committed within {timeout} s") from exc
            except NodeStopping as exc:
                # Stopping fails every waiter at once, also one whose record a block stored
                # meanwhile (or before the waiter was registered) commits: the store, still
                # open until the API has ended, says which are committed. If all are, that
                # is the answer; else 503, and the client submits them again elsewhere.
                try:
                    by_id = await workers.run(committed, ids, bounded=False)
                except Exception:  # the store closing (a slow stop): answer 503
                    by_id = {}
                if any(rid not in by_id for rid in ids):
                    raise Problem(503, "stopping", "the node is stopping before it saw every "
                                  "record committed; they may commit through the other "
                                  "nodes: submit them again to another (those it holds "
                                  "answer duplicate)") from exc
            for item, r in zip(out, results, strict=True):
                if r.id in by_id:
                    item["height"] = by_id[r.id]
        if TRACE_DIR is not None:
            trace("api_out", node.store.height)
        return JSONResponse({"results": out}, status_code=202)

    @app.get("/v1/records/{record_id}", responses={
        **ok("the record, `pending` or `committed` (with `height` and `index`)"),
        **problems((400, "invalid_id", "not 64 lowercase hex characters"),
                   (404, "not_found", "no such record, pending or committed"), *LIMITED)})
    async def get_record(record_id: str, request: Request) -> Response:
        """A committed or pending record. A sealed record's ``payload`` and ``salt`` are
        served only to a reader its type's read policy allows (a request signed per RFC
        9421 by such a member; ``Ledger-Reader`` names who the request was read as)."""
        rid = parse_id(record_id)
        reader = request_reader(node, request)

        def committed() -> bytes | None:
            loc = node.store.locate(rid)
            envelope = node.store.envelope(rid) if loc is not None else None
            if loc is None or envelope is None:
                return None
            record = Record.from_wire(envelope)
            view = payload_views(node.store, reader, [record]).get(rid)
            return render_json(record_json(record, "committed", loc.height, loc.index, view))

        # On the loop: a read through this thread's WAL reader never waits for the writer,
        # and costs less than the two thread hand-overs a worker would (each a wake-up
        # behind the GIL and other runnable threads: p50 11 -> 6 ms under saturation).
        data = committed()
        if data is None:
            pending = node.pending(rid)
            if pending is not None:
                view = payload_views(node.store, reader, [pending], node.pending_pair).get(rid)
                data = render_json(record_json(pending, "pending", view=view))
            # not pending: it may have left the mempool for a block stored since the read
            elif (data := committed()) is None:
                raise Problem(404, "not_found", f"no record {record_id}")
        return Response(data, media_type="application/json",
                        headers=reader.headers)

    @app.get("/v1/records/{record_id}/receipt", responses={
        **ok("the receipt: verify it offline with `ledger verify RECEIPT --genesis G`; "
             "`witnesses`: the cosignatures this node holds for its height"),
        **problems((400, "invalid_id", "not 64 lowercase hex characters"),
                   (404, "not_found", "no such record"),
                   (409, "not_committed", "the record is pending, not committed yet"),
                   *LIMITED)})
    async def get_receipt(record_id: str, request: Request) -> Response:
        """The offline-verifiable receipt of a committed record (SPEC section 6). A sealed
        record's receipt carries its ``payload`` and ``salt`` (b64) only for a reader its
        read policy allows, when this node holds them; ``ledger verify`` checks them against
        the record's ``payload_digest``."""
        rid = parse_id(record_id)
        reader = request_reader(node, request)

        def receipt() -> bytes | None:
            # build_receipt reads only locate(), block() and cosignatures(), which a
            # ReadStore has
            records = [(c.height, c.index) for c in config_versions(node)[1]]
            r = build_receipt(cast("BlockStore", node.store), rid, config_records=records,
                              witnesses=True)
            if r is None:
                return None
            record = Record.from_wire(b64decode(r["envelope"], "envelope"))
            view = payload_views(node.store, reader, [record]).get(rid)
            if view is not None and view.pair is not None:
                r["payload"], r["salt"] = (b64encode(view.pair.payload),
                                           b64encode(view.pair.salt))
            return render_json(r)

        data = await workers.run(receipt)
        if data is None and node.pending(rid) is None:
            # committed between the store read and the mempool look-up: never a 404 for it
            data = await workers.run(receipt)
        if data is not None:
            return Response(data, media_type="application/json",
                            headers=reader.headers)
        if node.pending(rid) is not None:
            raise Problem(409, "not_committed", f"record {record_id} is not committed yet")
        raise Problem(404, "not_found", f"no record {record_id}")

    @app.get("/v1/blocks/{height}", response_model=None, responses={
        **ok("the block as JSON (with `witnesses`: the cosignatures this node holds for it, "
             "`[{pubkey: hex, sig: b64}]`), or with `Accept: application/msgpack` its exact "
             "bytes (SPEC section 4: no cosignatures)", {MSGPACK: BINARY}),
        **problems((400, "invalid_height", "not a positive integer"),
                   (404, "not_found", "beyond the tip"), *LIMITED)})
    async def get_block(height: str, request: Request) -> Response:
        """A committed block: JSON, or the exact SPEC bytes with Accept: application/msgpack."""
        h = parse_height(height)
        if h > node.store.height:
            raise Problem(404, "not_found", f"no block at height {h}; the tip is "
                          f"{node.store.height}")
        if MSGPACK in request.headers.get("accept", ""):
            data = await workers.run(node.store.block_bytes, h)
            if data is None:
                raise Problem(404, "not_found", f"no block at height {h}")
            return Response(data, media_type=MSGPACK)
        cached = blocks.get(h)
        if cached is None:
            building = blocks.building.get(h)
            if building is None:  # one build per height at a time; the others wait on it
                source = request.client.host if request.client else ""
                wait = builders.wait(source, time.monotonic())
                if wait > 0:  # this source built more block JSON than its share lately
                    raise Problem(429, "too_many_requests",
                                  f"{source} had {BUILD_BYTES_PER_S >> 20} MiB/s of block "
                                  "JSON built lately; blocks are also served as msgpack",
                                  {"Retry-After": str(math.ceil(wait))})
                building = asyncio.ensure_future(workers.run(
                    lambda: None if (raw := node.store.block_bytes(h)) is None
                    else render_block(raw)))
                blocks.building[h] = building
                building.add_done_callback(lambda _: blocks.building.pop(h, None))
                cached = await asyncio.shield(building)
                builders.spend(source, len(cached.data) if cached else 0, time.monotonic())
            else:
                cached = await asyncio.shield(building)
            if cached is None:
                raise Problem(404, "not_found", f"no block at height {h}")
            blocks.put(h, cached)
        # On the loop, like a record's read (this thread's WAL reader never waits for the
        # writer); large blocks' JSON is copied in a worker, and so are a sealed record's
        # payloads read.
        pairs = node.store.cosignatures(h)
        reader = request_reader(node, request)

        def personal(block: BlockJson) -> bytes:
            return with_witnesses(block.for_reader(node.store, reader), pairs)

        if cached.sealed:
            # its payloads are read and rendered per request (up to 64 KiB each, off the
            # block's byte bound: a 116 KB block can carry 44 MB of them), so they count
            # against the source's block-JSON budget like a build
            source = request.client.host if request.client else ""
            wait = builders.wait(source, time.monotonic())
            if wait > 0:
                raise Problem(429, "too_many_requests",
                              f"{source} had {BUILD_BYTES_PER_S >> 20} MiB/s of block "
                              "JSON built lately; blocks are also served as msgpack",
                              {"Retry-After": str(math.ceil(wait))})
            data = await workers.run(personal, cached)
            builders.spend(source, len(data) - len(cached.data), time.monotonic())
        elif len(cached.data) > (1 << 20):
            data = await workers.run(personal, cached)
        else:
            data = personal(cached)
        return Response(data, media_type="application/json",
                        headers=reader.headers)

    @app.get("/v1/config", responses={
        **ok("the configuration governing the next height, or version V (SPEC section 9)"),
        **problems((404, "not_found", "no such configuration version"), *LIMITED)})
    async def get_config(version: int | None = None) -> JSONResponse:
        """The configuration that governs the next height (a change committed at the tip
        shows at once) in genesis.json's shapes, the first height it governs and the
        change bytes that made it (null for genesis); ``?version=V`` a past one."""
        body = await workers.run(lambda: config_json(node, version))
        if body is None:
            raise Problem(404, "not_found", f"no configuration version {version}")
        return JSONResponse(body)

    @app.get("/v1/config/proof", responses={
        **ok("section 6's config proof for height H: a step per change committed below it"),
        **problems(*LIMITED)})
    async def get_config_proof(to_height: int) -> JSONResponse:
        """``{"steps": [...]}``: every ``ledger.config`` record committed below
        ``to_height``, each in its certified block (SPEC section 6)."""

        def steps() -> list[dict[str, Any]]:
            records = [(c.height, c.index) for c in config_versions(node)[1]]
            return config_steps(cast("BlockStore", node.store), records, to_height)

        return JSONResponse({"steps": await workers.run(steps)})

    log_bounds = (400, "invalid_parameter", "not a non-negative integer, or outside its "
                  "bounds (the detail names the bound)")

    @app.get("/v1/log/inclusion", responses={
        **ok("`{index, size, proof}`: the RFC 9162 audit path of log leaf `index` in the log "
             "of `size` leaves, read from the stored Merkle nodes in O(log n) reads"),
        **problems(log_bounds, *LIMITED)})
    async def log_inclusion(
            index: str = Query(..., json_schema_extra=INTEGER,
                               description="log leaf, 0-based: `0 <= index < size`"),
            size: str = Query(..., json_schema_extra=INTEGER,
                              description="log size: `size <=` the tip's `log_size`"),
    ) -> JSONResponse:
        """Inclusion of one record (log leaf ``index``) in the log of ``size`` records (SPEC
        section 11): verify it against a checkpoint whose ``log_size`` is ``size``."""
        log_size = node.store.log.size
        m = parse_count("size", size, 1, log_size, "the log size at the tip")
        i = parse_count("index", index, 0, m - 1, "`size` - 1")
        return JSONResponse(await workers.run(
            checkpoints.log_inclusion, node.store.log_nodes, i, m))

    @app.get("/v1/log/consistency", responses={
        **ok("`{first, second, proof}`: the RFC 9162 consistency path between log sizes "
             "`first` and `second`, read from the stored Merkle nodes in O(log n) reads"),
        **problems(log_bounds, *LIMITED)})
    async def log_consistency(
            first: str = Query(..., json_schema_extra=INTEGER,
                               description="the earlier log size: `0 < first <= second`"),
            second: str = Query(..., json_schema_extra=INTEGER,
                                description="the later log size: `<=` the tip's `log_size`"),
    ) -> JSONResponse:
        """Proof that the log of ``second`` records extends the log of ``first`` (SPEC
        section 11); any sizes, not only block boundaries."""
        log_size = node.store.log.size
        m = parse_count("second", second, 1, log_size, "the log size at the tip")
        n = parse_count("first", first, 1, m, "`second`")
        return JSONResponse(await workers.run(
            checkpoints.log_consistency, node.store.log_nodes, n, m))

    @app.get("/v1/log/checkpoint", responses={
        **ok("`{height, header: b64, cert, witnesses}`: a header with its certificate (the "
             "validators in force sign the log's size and root); `cert` in a receipt's shape; "
             "`witnesses`: the cosignatures this node holds for that height, "
             "`[{pubkey: hex, sig: b64}]` ordered by key (`[]` when none)"),
        **problems(log_bounds, (404, "not_found", "the chain has no block yet"), *LIMITED)})
    async def log_checkpoint(
            height: str = Query(None, json_schema_extra=INTEGER,
                                description="a block height, `1 <= height <=` the tip "
                                            "(default: the tip)"),
    ) -> JSONResponse:
        """A checkpoint (SPEC section 11): verify its certificate under the configuration
        of its height (``GET /v1/config/proof?to_height=H``)."""
        tip = node.store.height
        if tip == 0:
            raise Problem(404, "not_found", "the chain has no block yet")
        h = parse_count("height", height, 1, tip, "the tip") if height else tip
        doc = await workers.run(lambda: checkpoints.stored_checkpoint(
            node.store.header_cert(h), node.store.cosignatures(h)))
        if doc is None:
            raise Problem(404, "not_found", f"no block at height {h}")
        return JSONResponse(doc)

    @app.get(COSIGNATURES, responses={
        **ok("`{from_height, to_height, cosignatures: [{height, pubkey: hex, sig: b64}], next}`:"
             " every cosignature this node holds for heights `from_height..to_height`, in "
             f"height then key order; at most {COSIGNATURE_PAGE_HEIGHTS} heights a page, "
             "`next` the `from_height` of the following page (null after the tip). What "
             "`ledger export --node` writes as a bundle's witnesses section"),
        **problems(log_bounds, (404, "not_found", "the chain has no block yet"), *LIMITED)})
    async def list_cosignatures(
            from_height: str = Query("1", json_schema_extra=INTEGER,
                                     description="the first height, `1 <= from_height <=` "
                                                 "the tip"),
            to_height: str = Query(None, json_schema_extra=INTEGER,
                                   description="the last height (default and at most: "
                                               f"from_height + {COSIGNATURE_PAGE_HEIGHTS - 1}"
                                               ", or the tip)"),
    ) -> JSONResponse:
        """Cosignatures by height range (our extension; SPEC section 11 lists them per
        height with checkpoints and receipts): a bundle's witnesses section, page by page."""
        tip = node.store.height
        if tip == 0:
            raise Problem(404, "not_found", "the chain has no block yet")
        lo = parse_count("from_height", from_height, 1, tip, "the tip")
        last = min(tip, lo + COSIGNATURE_PAGE_HEIGHTS - 1)
        bound = f"from_height + {COSIGNATURE_PAGE_HEIGHTS - 1} or the tip"
        hi = parse_count("to_height", to_height, lo, last, bound) if to_height else last
        rows = await workers.run(lambda: list(node.store.cosignatures_between(lo, hi)))
        return JSONResponse({
            "from_height": lo, "to_height": hi,
            "cosignatures": [{"height": h, "pubkey": pk.hex(), "sig": b64encode(sig)}
                             for h, pk, sig in rows],
            "next": hi + 1 if hi < tip else None})

    @app.post(COSIGNATURES, openapi_extra={"requestBody": COSIGNATURE_BODY}, responses={
        **ok("`{stored, height, block_hash}`: the cosignature holds over this node's block at "
             "that height and is kept (listed with the checkpoint, the block and receipts of "
             "that height); `stored` is false when this witness's cosignature of that height "
             "was already held"),
        **problems(
            (400, "malformed", "the body is not a JSON object"),
            (400, "bad_cosignature", "a field is missing or malformed, or the signature "
             "verifies neither over this node's block nor over the block the body names "
             "(with `log_size` and `log_root`); never stored"),
            (400, "unknown_witness", "the key is not a witness of the configuration "
             "governing that height; never stored"),
            (404, "unknown_height", "the height is beyond this node's tip (post it again "
             "once the node has the block)"),
            (409, "split_view", "the signature verifies over another block at that height "
             "than this node's: proof of a split view, kept (durably) and shown in "
             "`/v1/status` as `split_views`"),
            (413, "body_too_large", f"the body exceeds {COSIGNATURE_BODY_MAX} bytes"),
            (408, "body_timeout", "the body did not arrive within `api_body_timeout`"),
            *LIMITED)})
    async def post_cosignature(request: Request) -> JSONResponse:
        """A witness posts its cosignature of one block (SPEC section 11): kept if it holds
        over this node's block, evidence (409) if it holds over another, else refused."""
        chunks = request.scope.get(BODY)
        if chunks is None:  # only ApiGuard calls this app, and it receives every POST body
            raise Problem(500, "internal", "the body was not received")
        try:
            cosig, stored = await workers.run(judge_cosignature, node, chunks)
        except Problem as exc:
            node.metrics.count_cosignature(exc.code)
            raise
        node.metrics.count_cosignature("stored" if stored else "duplicate")
        return JSONResponse({"stored": stored, "height": cosig.height,
                             "block_hash": cosig.block_hash.hex()})

    @app.get("/v1/status", responses={**ok("this node's view of the chain"),
                                       **problems(*LIMITED)})
    async def status() -> JSONResponse:
        """Chain, node, tip, validators and connected peers; evidence of misbehaviour
        (``evidence``: validators' equivocations; ``split_views``: witnesses' cosignatures
        of another block than this node's)."""
        now = node.status()
        split_views = node.store.split_views()
        connected = set(now.peers)
        history = node.store.history
        config = node.genesis.config if history is None else history.latest
        if now.pubkey:  # peers named by key
            linked = {*now.peer_keys, now.pubkey}
        else:  # a service naming peers (and itself) by genesis index
            named = node.genesis.validators
            linked = {named[i].pubkey for i in (*connected, now.index)
                      if i is not None and 0 <= i < len(named)}
        return JSONResponse({
            "chain": node.genesis.chain_id, "node": node.name, "height": now.height,
            "last_block_hash": now.tip_hash.hex() if now.tip_hash else None,
            "genesis_hash": node.genesis.hash.hex(),
            "round": now.round, "mempool": now.mempool,
            "validators": [{"index": v.index, "name": v.name, "pubkey": v.pubkey.hex(),
                            "power": v.power, "api": v.api,
                            "connected": v.pubkey in linked}
                           for v in config.validators],
            "peers": sorted(connected), "evidence": list(now.evidence),
            "split_views": [json.loads(d) for d in split_views[-SPLIT_VIEWS_SHOWN:]],
            "split_view_count": len(split_views),
            "config_version": config.version,
            # whether this node votes at the height being decided (its index in that
            # height's set), or only follows the chain
            "validator": now.index is not None, "validator_index": now.index,
        })

    @app.get("/v1/subjects/{subject:path}/history", responses={
        **ok("one page of records, oldest first (`order=desc`: newest first): up to `limit`, "
             "fewer when they hold over 4 MiB of envelopes; each with its `log_index` (and "
             "with `proof=true` its RFC 9162 `proof`); `next` is the cursor for the "
             "following page (`after=next`, or `before=next` with `order=desc`), null on the "
             "last page; `checkpoint` `{height, log_size}` is the block the page was read "
             "at (the tip, or `at_height`): records with `log_index >= log_size` are not in "
             "it, and proofs are against its log root"),
        **problems((400, "invalid_parameter",
                    "`after`, `before`, `limit`, `order`, `since`, `until`, `at_height` or "
                    "`proof` out of range or not parsed, `since` after `until`, or a cursor "
                    "that does not go with `order` (`after` with `desc`, `before` with `asc`)"),
                   *LIMITED)})
    async def history(subject: str,
                      order: Literal["asc", "desc"] = Query(
                          "asc", description="`asc`: oldest first (the default); "
                                             "`desc`: newest first"),
                      after: int | None = Query(
                          None, ge=-1, le=2**62,
                          description="`order=asc`: records after this log index "
                                      "(the previous page's `next`)"),
                      before: int | None = Query(
                          None, ge=0, le=2**62,
                          description="`order=desc`: records before this log index "
                                      "(the previous page's `next`)"),
                      limit: int = Query(100, ge=1, le=1000, description=(
                          f"records per page, 1-1000 (at most {HISTORY_PROOF_PAGE} with "
                          "`proof=true`: a larger limit is cut to it)")),
                      since: str | None = Query(None, description=(
                          "only records of blocks whose time (`header.time_ms`) is at or "
                          "after this: milliseconds since the Unix epoch, or an RFC 3339 "
                          "date-time with an offset (`2026-11-30T08:00:00Z`)")),
                      until: str | None = Query(None, description=(
                          "only records of blocks whose time is at or before this (same "
                          "forms as `since`; `since <= until`)")),
                      at_height: str | None = Query(None, json_schema_extra=INTEGER,
                                                    description=(
                          "read the history as of this block, `1 <= at_height <=` the tip "
                          "(default: the tip): pass the first page's `checkpoint.height` to "
                          "keep every page of a walk, and its proofs, at one block")),
                      proof: bool = Query(False, description=(
                          "add each record's RFC 9162 inclusion `proof` (hex hashes) in the "
                          "log of `checkpoint.log_size` records; verify it against `GET "
                          "/v1/log/checkpoint?height=` of `checkpoint.height`")),
                      *, request: Request,
                      ) -> Response:
        """Committed records of one subject, oldest first or (``order=desc``) newest first,
        optionally within a block-time range and with an inclusion proof per record.

        Page on with ``after=next``, or ``before=next`` when newest first."""
        if order == "asc" and before is not None:
            raise Problem(400, "invalid_parameter", "`before` pages `order=desc`; use `after`")
        if order == "desc" and after is not None:
            raise Problem(400, "invalid_parameter", "`after` pages `order=asc`; use `before`")
        t0, t1 = time_range_ms(since, until)
        tip = node.store.height
        pinned = (parse_count("at_height", at_height, 1, max(tip, 1), "the tip")
                  if at_height is not None else None)
        if pinned is not None and pinned > tip:  # an empty chain: no height to read at
            raise Problem(400, "invalid_parameter", "`at_height`: the chain has no block yet")
        newest_first = order == "desc"
        if proof:
            limit = min(limit, HISTORY_PROOF_PAGE)
        reader = request_reader(node, request)

        def page() -> bytes:
            height = tip if pinned is None else pinned
            headers = HeaderReader(node)
            log_size = headers.log_size(height)
            low, high = headers.seq_range(height, t0, t1)  # [low, high) in the log
            rows_read: list[tuple[RecordLocation, Record]] = []
            views: dict[bytes, PayloadView | None] = {}
            seqs: list[int] = []
            size, full = 0, False
            if newest_first:
                cursor = high if before is None else min(before, high)
            else:
                cursor = max(-1 if after is None else after, low - 1)
            while not full:
                want = min(HISTORY_SLICE, limit - len(rows_read))
                if newest_first:
                    rows = node.store.subject_history_desc(subject, before_seq=cursor,
                                                           limit=want)
                else:
                    rows = node.store.subject_history(subject, after_seq=cursor, limit=want)
                ended = len(rows) < want
                in_range = []
                for loc, envelope in rows:
                    if not low <= loc.seq < high:  # past the range or the checkpoint
                        ended = True
                        break
                    in_range.append((loc, Record.from_wire(envelope), len(envelope)))
                # the pairs served with a slice count toward the page's bytes: a sealed
                # envelope is small whatever its payload (up to 64 KiB) weighs
                served = payload_views(node.store, reader, [r for _, r, _ in in_range])
                for loc, record, length in in_range:
                    view = served.get(record.id)
                    views[record.id] = view
                    rows_read.append((loc, record))
                    seqs.append(loc.seq)
                    pair = None if view is None else view.pair
                    cursor = loc.seq
                    size += length + (0 if pair is None else pair.size)
                    if len(rows_read) == limit or size >= HISTORY_PAGE_BYTES:
                        full = True
                        break
                if ended or full:
                    break
            records: list[dict[str, Any]] = []
            for loc, record in rows_read:
                item = record_json(record, "committed", loc.height, loc.index,
                                   views.get(record.id))
                item["log_index"] = loc.seq
                records.append(item)
            if proof and records:
                paths = checkpoints.log_inclusions(node.store.log_nodes, seqs, log_size)
                for item, path in zip(records, paths, strict=True):
                    item["proof"] = path
            return render_json({"subject": subject, "records": records,
                                "next": cursor if full else None,
                                "checkpoint": {"height": height, "log_size": log_size}})

        return Response(await workers.run(page), media_type="application/json",
                        headers=reader.headers)

    @app.get("/v1/payloads", responses={
        **ok("one page of the sealed payloads this node holds, in log order: `payloads` "
             "`[{index, id, payload_status, salt?, payload?}]`, `payload_status` `served` "
             "(with `salt` and `payload`, b64) or `withheld` (the read policy refused this "
             "reader: neither key); redacted records and pairs this node lacks are not "
             "listed. `next`: the `from_index` of the following page, null once the page "
             "reached `log_size` (the log size of the tip it was read at)"),
        **problems((400, "invalid_parameter", "`from_index` or `limit` out of range"),
                   *LIMITED)})
    async def list_payloads(
            request: Request,
            from_index: int = Query(0, ge=0, le=2**62, description=(
                "the first log index (0-based) to list from (the previous page's `next`)")),
            limit: int = Query(PAYLOAD_PAGE, ge=1, le=PAYLOAD_PAGE, description=(
                f"pairs per page, 1-{PAYLOAD_PAGE}; a page also ends after "
                f"{PAYLOAD_PAGE_BYTES >> 20} MiB of payloads or {PAYLOAD_SCAN} log "
                "indices scanned"))) -> Response:
        """The sealed payloads this node holds, for exports and audits (our extension):
        each pair checked by its reader against the record's ``payload_digest``; the read
        policy applies to each record as to ``GET /v1/records/{id}``."""
        reader = request_reader(node, request)

        def page() -> bytes:
            log_size = HeaderReader(node).log_size(node.store.height)
            items: list[dict[str, Any]] = []
            cursor, size = from_index, 0
            while cursor < log_size and len(items) < limit and size < PAYLOAD_PAGE_BYTES \
                    and cursor - from_index < PAYLOAD_SCAN:
                window = min(PAYLOAD_WINDOW, log_size - cursor)
                # pairs weigh up to 64 KiB each: read at most a slice of them at a time
                want = min(PAYLOAD_SLICE, limit - len(items))
                rows = node.store.payloads_between(cursor, window, want)
                cursor = rows[-1][0] + 1 if len(rows) == want else cursor + window
                for seq, rid, pair in rows:
                    envelope = node.store.envelope(rid)
                    if envelope is None:  # not possible for a held pair; never served
                        continue
                    record_type = Record.from_wire(envelope).body.type
                    item: dict[str, Any] = {"index": seq, "id": rid.hex()}
                    if reader.may_read(record_type):
                        item.update(payload_status="served", salt=b64encode(pair.salt),
                                    payload=b64encode(pair.payload))
                        size += pair.size
                    else:
                        item["payload_status"] = "withheld"
                    items.append(item)
                    if len(items) == limit or size >= PAYLOAD_PAGE_BYTES:
                        cursor = seq + 1
                        break
            return render_json({"payloads": items,
                                "next": cursor if cursor < log_size else None,
                                "log_size": log_size})

        return Response(await workers.run(page), media_type="application/json",
                        headers=reader.headers)

    @app.get("/v1/events", response_class=StreamingResponse, responses={
        **ok("an endless `text/event-stream`: `event: block`, `id: <height>`, "
             "`data: {height, hash, time_ms, record_count}`",
             {"text/event-stream": {"schema": {"type": "string"}}}),
        **problems((400, "invalid_parameter",
                    "`from_height` out of range, or `Last-Event-ID` not a height"), PER_SOURCE,
                   (503, "too_many_subscribers",
                    f"{MAX_SUBSCRIBERS} event streams are open (Retry-After)"))})
    async def events(request: Request,
                     from_height: int | None = Query(None, ge=1, le=2**62)) -> StreamingResponse:
        """Server-Sent Events: one ``block`` event per committed block."""
        last_id = parse_last_event_id(request.headers.get("last-event-id", ""))
        start = from_height or (last_id + 1 if last_id is not None else node.store.height + 1)

        def replay_events(first: int, last: int) -> list[str]:
            out = []
            for h in range(first, last + 1):
                event = past_events.get(h)
                if event is None:
                    data = node.store.block_bytes(h)
                    if data is None:
                        break
                    event = block_event(data)
                    past_events.put(h, event)
                out.append(event)
            return out

        async def stream() -> Any:
            nxt = start
            # subscribed here, not in the handler: a generator that never starts (the
            # client gone before the response starts) never runs its ``finally``
            subscription = node.feed.subscribe()
            try:
                yield ": ledger block events\n\n"
                while True:
                    while nxt <= node.store.height and not subscription.dropped:
                        # Past blocks are read a few at a time in a worker, by at most
                        # MAX_REPLAYS streams at once; the others wait their turn.
                        upto = min(node.store.height, nxt + REPLAY_BATCH - 1)
                        async with replays:
                            batch = await workers.run(replay_events, nxt, upto)
                        for event in batch:
                            yield event
                        expected, nxt = upto - nxt + 1, nxt + len(batch)
                        if len(batch) < expected:
                            break
                    if subscription.dropped:
                        return  # too slow: dropped; the client resumes with Last-Event-ID
                    if await subscription.next(KEEPALIVE_S) is None:
                        yield ": keep-alive\n\n"
            finally:
                subscription.close()

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

    @app.get("/healthz", responses=ok("the process serves (even with no peers); never "
                                      "limited or queued behind client requests"))
    async def healthz() -> JSONResponse:
        """Liveness: 200 while the process serves."""
        return JSONResponse({"status": "ok", "height": node.store.height})

    @app.get("/readyz", responses={
        **ok("caught up: linked with validators holding more than 2/3 of the voting power "
             "(itself included; a node that only follows needs no link) and within 1 height "
             "of what its peers report (docs/operations.md#readiness); never limited or "
             "queued behind client requests"),
        **problems((503, "not_ready", "not linked with a quorum, or more than 1 height "
                    "behind its peers; `detail` says which (the body also carries "
                    "`readiness`: heights and linked power)"))})
    async def readyz() -> JSONResponse:
        """Readiness: 200 once the node is caught up (``/healthz``: the process serves)."""
        probe = getattr(node, "readiness", None)
        if probe is None:  # a service with no peers (node.service.LocalService)
            return JSONResponse({"status": "ready", "reason": "no peers",
                                 "height": node.store.height})
        result = await probe.check()
        if result.ready:
            return JSONResponse(result.to_json())
        answer = problem(503, "not_ready", result.reason)
        doc = json.loads(bytes(answer.body))
        doc["readiness"] = result.to_json()
        return JSONResponse(doc, status_code=503, media_type=PROBLEM_JSON)

    @app.get("/metrics", response_class=PlainTextResponse, responses={
        **ok("Prometheus text format; never limited or queued behind client requests")})
    async def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        return PlainTextResponse(node.metrics_text(),
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
