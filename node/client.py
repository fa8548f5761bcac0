"""Python SDK for a ledger node (SPEC section 7): sign, submit, fetch, follow.

``LedgerClient`` is synchronous, ``AsyncLedgerClient`` the same over asyncio. Both sign
records with a client key (``identity``), submit batches as msgpack, and fetch records,
receipts, blocks, history and status; ``events()`` follows the Server-Sent Events stream of
blocks from a height, resuming where it stopped when the node drops a slow subscriber.
Failures raise ``NodeError``: ``status`` and the problem+json ``code`` (``problem_code``)
when the node answered, a one-line hint (``--ca``, https, "is the cluster running?") when it
could not be reached, and a clear message when something other than a node answered (an
HTML page from a proxy).

Why here and not in ``ledger/``: the SDK is an HTTP client, and ``ledger`` is the pure
library (no sockets, event loop or clock), so an auditor or another implementation can use
it without an HTTP stack; the import test in tests/unit/test_pure_core.py holds that.

How the two clients stay one (the h11 way): every operation is written once, below, as a
sans-io generator on ``_Protocol``. It yields a ``Call`` (method, path, query, headers, body:
no HTTP library involved), is sent back an ``Answer`` (status, headers, bytes), checks and
decodes it, and returns the result, or raises ``NodeError``. Errors are decoded in one place
(``_check``, ``_json_object``, ``unreachable``). ``LedgerClient`` and ``AsyncLedgerClient``
are drivers: each public method is one line handing an operation to ``_run``, which sends
the calls with httpx and, in the async client, awaits them. That is the only difference;
tests/unit/test_sdk.py compares the two clients' public methods and signatures. Which node
each request goes to, and when a call gives up, is written once too: ``_Protocol._route``
yields the attempts (``Step``: a node, a timeout, a pause) and is sent their answers; the
drivers only send and sleep.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from ledger import checkpoint as checkpoints
from ledger import httpsig, merkle
from ledger.checkpoint import VerifiedCheckpoint
from ledger.crypto import PrivateKey
from ledger.encoding import b64decode, decode, loads_json, packb
from ledger.errors import DecodeError, LedgerError, LogProofError, ReceiptError
from ledger.genesis import Genesis
from ledger.jsonview import jsonable
from ledger.receipts import TrustedCheckpoint, VerifiedReceipt, verify_receipt
from ledger.records import Record, SealedPayload, seal_record
from ledger.witness import Cosignature

MSGPACK = "application/msgpack"
T = TypeVar("T")


class NodeError(LedgerError):
    """A node could not be reached or answered with an error.

    ``status`` is the HTTP status (None when there was no answer), ``problem_code`` the
    problem+json ``code`` when the node gave one (``not_found``, ``mempool_full``, ...).
    """

    code = "node_error"

    def __init__(self, message: str, status: int | None = None,
                 problem_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem_code = problem_code


# -- the sans-io layer: what a request is, what an answer is --------------------------------

DEFAULT: Literal["default"] = "default"
"""``Call.timeout``: what is left of the deadline of the method call that sends it."""


@dataclass(frozen=True)
class Call:
    """One HTTP request an operation needs, described without any HTTP library.

    ``timeout``: ``DEFAULT`` (what is left of the method call's deadline), or None for none
    (event streams). ``commit_wait``: a ``wait=commit`` submission: each attempt asks the
    node (query ``timeout``) to wait for the commit for what is left of the deadline, less
    a margin to answer. ``not_yet``: for a read, whether an answer only says "not (yet)
    here" (a 404), which a node behind the height this client saw committed may give for
    a record that is committed: then the other nodes are asked (``_Protocol._catch_up``).
    """

    method: str
    path: str
    params: Mapping[str, str | int] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes | None = None
    timeout: float | Literal["default"] | None = DEFAULT
    commit_wait: bool = False
    not_yet: Callable[[Answer], bool] | None = None

    def where(self) -> str:
        """``GET /v1/status``: how error messages name the request."""
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Answer:
    """The node's answer to a ``Call``: status, headers (lower-case names), the whole body."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    reason: str = ""
    resent: bool = False  # the call was sent before, to another node (failover)
    node: str = ""  # the URL of the node that answered

    @property
    def content_type(self) -> str:
        """The media type, without parameters (``application/json``), or a placeholder."""
        return (self.headers.get("content-type") or "no content type").split(";")[0].strip()


Operation = Generator[Call, Answer, T]
"""A sans-io operation: yields calls, is sent their answers, returns the result."""


def _problem(answer: Answer) -> tuple[str | None, str | None]:
    """(code, detail) of a problem+json answer, or (None, None) for anything else."""
    try:
        doc = loads_json(answer.content)
    except DecodeError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    code, detail = doc.get("code"), doc.get("detail")
    return (code if isinstance(code, str) else None,
            detail if isinstance(detail, str) else None)


def _check(call: Call, answer: Answer, ok: tuple[int, ...] = (200,)) -> Answer:
    """The answer if its status is one of ``ok``; else NodeError, the one place that turns an
    error answer into a message: the node's problem code and detail, or, for an answer that
    is not a node's (a proxy's HTML page), what came instead."""
    if answer.status in ok:
        return answer
    code, detail = _problem(answer)
    if code is None and detail is None:
        detail = (f"{answer.reason or 'error'} ({answer.content_type}, not a ledger node's "
                  "answer: a proxy in between, or not a ledger node?)")
    said = " ".join(part for part in (str(answer.status), code, detail) if part)
    raise NodeError(f"{call.where()}: {said}", answer.status, code)


def _json(call: Call, answer: Answer) -> Any:
    """The body as JSON, or NodeError naming what came instead (an HTML page, say)."""
    try:
        return loads_json(answer.content)
    except DecodeError as exc:
        raise NodeError(f"{call.where()}: {answer.status} answer is {answer.content_type}, "
                        "not JSON (not a ledger node?)", answer.status) from exc


def _json_object(call: Call, answer: Answer, *keys: str) -> dict[str, Any]:
    """The body as a JSON object holding ``keys``, or NodeError."""
    doc = _json(call, answer)
    if not isinstance(doc, dict):
        raise NodeError(f"{call.where()}: {answer.status} answer is not a JSON object",
                        answer.status)
    missing = [k for k in keys if k not in doc]
    if missing:
        raise NodeError(f"{call.where()}: {answer.status} answer has no {missing[0]!r}",
                        answer.status)
    return doc


# -- reaching the node: one message, with a hint, for every way it can fail -------------------

FAILOVER_ROUNDS = 2
"""With several node URLs: a call is tried on every node this many times over, in turn."""
FAILOVER_PAUSE_S = 0.5
"""... pausing this long (times the round) before each round after the first."""
FAILOVER_CONNECT_S = 5.0
"""With several node URLs: an attempt's connection must be made within this many seconds
(or what is left of the deadline, if less), so that a host that drops packets leaves time
for the next node."""
COMMIT_ANSWER_MARGIN_S = 1.0
"""``wait=commit``: the node is asked to wait for the commit this much less than what is
left of the deadline (at most a quarter of it), so that its answer (504 ``commit_timeout``)
arrives before the deadline."""
CATCH_UP_S = 2.0
"""A read answered "not found" by a node behind the height this client saw committed:
how long the client goes on asking the nodes (within the call's deadline) ..."""
CATCH_UP_PAUSE_S = 0.2
"""... pausing this long between rounds over them."""


@dataclass(frozen=True)
class Step:
    """One attempt of a call: send ``call`` to the node at ``url`` after ``pause`` seconds,
    within ``timeout`` seconds (``connect`` for the connection; None: no timeout)."""

    url: str
    call: Call
    timeout: float | None
    connect: float | None
    pause: float = 0.0


Route = Generator[Step, Answer | BaseException, Answer]
"""A call's way over the nodes (``_Protocol._route``): yields attempts, is sent each one's
answer or the exception that stopped it, returns the answer (or raises NodeError)."""


def node_urls(base_url: str | Sequence[str]) -> list[str]:
    """The node URLs a client is given: one URL, a comma-separated list, or a sequence."""
    items = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for u in items if u.strip()]
    if not urls:
        raise NodeError("no node URL given")
    return urls


def fails_over(answer: Answer) -> bool:
    """Whether an answer sends a client with several nodes to the next one: a server error
    or unavailability (503: the mempool is full, overloaded, not a validator, stopping),
    not a commit timeout (504 ``commit_timeout``: the chain's answer, not the node's; the
    records stay pending)."""
    if answer.status not in (500, 502, 503, 504):
        return False
    return not (answer.status == 504 and _problem(answer)[0] == "commit_timeout")


def _not_found(answer: Answer) -> bool:
    """A read's "not here" (404 ``not_found``): maybe not yet, on a node that is behind."""
    return answer.status == 404 and _problem(answer)[0] == "not_found"


def _uncommitted(answer: Answer) -> bool:
    """A receipt's "not here" (404) or "not committed here" (409)."""
    return _not_found(answer) or (answer.status == 409 and
                                  _problem(answer)[0] == "not_committed")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    item: BaseException | None = exc
    while item is not None and id(item) not in seen:
        seen.add(id(item))
        yield item
        item = item.__cause__ or item.__context__


def connection_hint(exc: BaseException, url: str) -> str | None:
    """One line naming the likely cause of a failed connection to ``url``, or None.

    An untrusted certificate (pass ``--ca``), https to a plain-http node, http to an https
    node, or nothing listening (is the cluster running?)."""
    url = url.rstrip("/")
    causes = list(_causes(exc))
    text = " ".join(str(e) for e in causes)
    https = url.startswith("https://")
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in causes) or \
            "CERTIFICATE_VERIFY_FAILED" in text:
        return (f"{url}: the node's TLS certificate is not trusted: pass --ca FILE (the "
                f"cluster's tls/ca.pem; verify= in the SDK) or set LEDGER_CA")
    if https and any(m in text for m in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE",
                                          "record layer failure", "packet length too long",
                                          "wrong version number")):
        return (f"{url}: no TLS there: the node serves plain http (try "
                f"{'http://' + url[len('https://'):]})")
    if any(isinstance(e, ConnectionRefusedError) for e in causes) or \
            "Connection refused" in text:
        return (f"cannot connect to {url}: is the cluster running? "
                "(make run / ledger cluster up)")
    if url.startswith("http://") and (
            "Server disconnected without sending a response" in text
            or "Connection reset by peer" in text
            or "illegal status line" in text.lower() or "invalid http" in text.lower()):
        return (f"{url}: the node closed the connection without an HTTP answer: does it "
                f"serve https? (try {'https://' + url[len('http://'):]} with --ca FILE)")
    return None


def unreachable(base_url: str, call: Call, exc: BaseException) -> NodeError:
    """The NodeError for a call that got no answer (connection, TLS, timeout, protocol)."""
    hint = connection_hint(exc, base_url)
    return NodeError(hint or f"{base_url}{call.path}: {exc or type(exc).__name__}")


# -- the event stream, parsed incrementally --------------------------------------------------

class EventFeed:
    """The sans-io half of ``events()``: the calls to make and the block events in the lines.

    ``next_call()`` is the first stream's request, then, after a stream ended, the request
    that resumes after the last block seen (None when that stream brought nothing: the node
    is not sending, so stop rather than spin). ``line()`` takes one line of the stream and
    returns a block event once one is complete.
    """

    def __init__(self, from_height: int | None) -> None:
        self._next = from_height
        self._started = False
        self._seen_this_stream = False
        self._event: str | None = None
        self._data: list[str] = []

    def next_call(self) -> Call | None:
        """The request to open (or reopen) the stream, or None to stop."""
        if self._started and not self._seen_this_stream:
            return None
        self._started, self._seen_this_stream = True, False
        self._event, self._data = None, []
        params = {"from_height": self._next} if self._next else {}
        return Call("GET", "/v1/events", params, {"Accept": "text/event-stream"}, timeout=None)

    def reopen(self) -> None:
        """The stream failed (another node is tried): ``next_call`` resumes after the last
        block seen even if that stream brought none."""
        self._started = False

    @staticmethod
    def opened(status: int, headers: Mapping[str, str]) -> bool:
        """Whether the answer is an event stream (else read it all and call ``refused``)."""
        media = (headers.get("content-type") or "").split(";")[0].strip()
        return status == 200 and media == "text/event-stream"

    @staticmethod
    def refused(call: Call, answer: Answer) -> NodeError:
        """The error for an answer that is not an event stream (an error, a proxy's page)."""
        try:
            _check(call, answer)
        except NodeError as exc:
            return exc
        return NodeError(f"{call.where()}: {answer.status} answer is {answer.content_type}, "
                         "not text/event-stream (not a ledger node?)", answer.status)

    def line(self, line: str) -> dict[str, Any] | None:
        """Feed one line (without its end); a complete ``block`` event, or None."""
        if line == "":
            event, data = self._event, self._data
            self._event, self._data = None, []
            if event == "block" and data:
                try:
                    doc = loads_json("\n".join(data))
                except DecodeError as exc:
                    raise NodeError(f"GET /v1/events: a block event is not JSON ({exc})"
                                    ) from exc
                if isinstance(doc, dict):
                    height = doc.get("height")
                    if type(height) is int:
                        self._next = height + 1
                    self._seen_this_stream = True
                    return doc
        elif line.startswith("event:"):
            self._event = line[6:].strip()
        elif line.startswith("data:"):
            self._data.append(line[5:].strip())
        return None


# -- a subject's history, walked page by page ------------------------------------------------

HISTORY_KEYS = ("id", "type", "subject", "signer", "ts", "nonce")


@dataclass
class HistoryWalk:
    """The state of one ``subject_history`` walk: the query, the cursor, and the block the
    walk reads at. The first page pins that block (its ``checkpoint.height``, or with
    ``proofs`` the verified checkpoint's): every later page asks ``at_height=`` it, so a walk
    is the history as of one block, whatever commits meanwhile; no record is repeated or
    skipped (cursors are log indexes, and the log only grows)."""

    subject: str
    order: Literal["asc", "desc"]
    since: int | str | None
    until: int | str | None
    limit: int
    proofs: bool
    genesis: Genesis | None
    checkpoint: VerifiedCheckpoint | None
    at_height: int | None = None
    cursor: int | None = None
    done: bool = False

    def __post_init__(self) -> None:
        if self.proofs and self.genesis is None and self.checkpoint is None:
            raise ValueError("subject_history(proofs=True) needs genesis= or checkpoint=")
        if self.checkpoint is not None:
            self.proofs, self.at_height = True, self.checkpoint.height

    def call(self) -> Call:
        """The next page's request."""
        params: dict[str, str | int] = {"order": self.order, "limit": self.limit}
        for name, value in (("since", self.since), ("until", self.until),
                            ("at_height", self.at_height)):
            if value is not None:
                params[name] = value
        if self.cursor is not None:
            params["after" if self.order == "asc" else "before"] = self.cursor
        if self.proofs:
            params["proof"] = "true"
        return Call("GET", f"/v1/subjects/{quote(self.subject, safe='')}/history", params)

    def fail(self, where: str, message: str) -> LedgerError:
        """What a page that breaks the walk's guarantees raises: LogProofError when it was
        to be proved, else NodeError."""
        text = f"{where}: {message}"
        return LogProofError(text) if self.proofs else NodeError(text)

    def take(self, call: Call, doc: dict[str, Any]) -> list[dict[str, Any]]:
        """Check one page and move the cursor; the page's records. Each record's fields
        must be its envelope's, its subject the walk's, its log index past the cursor in
        the walk's order and below the checkpoint's log size; with ``proofs`` each record's
        inclusion proof must verify against the verified checkpoint (RFC 9162)."""
        where = call.where()
        records, nxt, pinned = doc["records"], doc["next"], doc.get("checkpoint")
        if not isinstance(records, list) or not (nxt is None or type(nxt) is int):
            raise NodeError(f"{where}: 'records' is not a list or 'next' not an integer")
        if not isinstance(pinned, dict) or type(pinned.get("height")) is not int or \
                type(pinned.get("log_size")) is not int:
            raise NodeError(f"{where}: no 'checkpoint' {{height, log_size}}")
        if self.at_height is None:
            self.at_height = pinned["height"]
        if pinned["height"] != self.at_height:
            raise self.fail(where, f"read at height {pinned['height']}, not {self.at_height}")
        size = pinned["log_size"]
        if self.checkpoint is not None and size != self.checkpoint.log_size:
            raise self.fail(where, f"log size {size} is not the checkpoint's "
                                   f"{self.checkpoint.log_size}")
        last = self.cursor
        for item in records:
            last = self._check_item(where, item, last, size)
        if nxt is not None and (not records or nxt != last):
            raise self.fail(where, f"'next' {nxt} is not the last record's log index")
        self.cursor, self.done = nxt, nxt is None
        return records

    def _check_item(self, where: str, item: Any, last: int | None, size: int) -> int:
        if not isinstance(item, dict) or type(item.get("log_index")) is not int or \
                not isinstance(item.get("envelope"), str):
            raise NodeError(f"{where}: a record without 'log_index' and 'envelope'")
        index: int = item["log_index"]
        where = f"{where}: record at log index {index}"
        ahead = last is None or (index > last if self.order == "asc" else index < last)
        if not (ahead and 0 <= index < size):
            raise self.fail(where, f"out of order after {last}, or not below the log size "
                                   f"{size}")
        try:
            envelope = b64decode(item["envelope"], "envelope")
            record = Record.from_wire(envelope)
        except LedgerError as exc:
            raise self.fail(where, f"its envelope does not decode ({exc})") from exc
        body = record.body
        shown = {"id": record.id.hex(), "type": body.type, "subject": body.subject,
                 "signer": body.signer.hex(), "ts": body.ts, "nonce": body.nonce}
        if any(item.get(k) != v for k, v in shown.items()) or body.subject != self.subject \
                or (not body.sealed and item.get("payload") != jsonable(body.payload)):
            raise self.fail(where, "its fields are not its envelope's, or its subject is "
                                   f"not {self.subject!r}")
        try:
            served_pair(item, record)  # a served payload must match the digest signed
        except LedgerError as exc:
            raise self.fail(where, str(exc)) from exc
        if self.checkpoint is not None:
            checkpoints.verify_log_inclusion(
                self.checkpoint, index, merkle.leaf_hash(envelope),
                {"index": index, "size": size, "proof": item.get("proof")})
        return index


# -- the operations, written once -----------------------------------------------------------

def served_pair(doc: Mapping[str, Any], record: Record | None = None) -> SealedPayload | None:
    """The (salt, payload bytes) a sealed record's JSON, a receipt or a payload listing
    item carries (``payload`` and ``salt``, b64), checked against the record's
    ``payload_digest`` (of ``record``, else of ``doc``'s ``envelope``): PayloadMismatchError
    if they do not match, DecodeError if malformed. None when ``doc`` carries none (withheld,
    missing, redacted) or the record is inline."""
    if record is None:
        record = Record.from_wire(b64decode(doc.get("envelope"), "envelope"))
    if not record.body.sealed or ("payload" not in doc and "salt" not in doc):
        return None
    pair = SealedPayload(b64decode(doc.get("salt"), "salt"),
                         b64decode(doc.get("payload"), "payload"))
    pair.check(record)
    return pair


def decode_payload(pair: SealedPayload) -> Any:
    """A sealed payload's value: its msgpack bytes decoded (the strict decoder)."""
    return decode(pair.payload, "sealed payload")[0]


def sign_record(identity: PrivateKey, *, chain: str, type: str, subject: str, payload: Any,
                ts: int | None = None, nonce: int | None = None) -> Record:
    """A record signed by ``identity``: ``ts`` defaults to now (ms), ``nonce`` to random."""
    return Record.create(identity, chain=chain, type=type, subject=subject, payload=payload,
                         ts=time.time_ns() // 1_000_000 if ts is None else ts,
                         nonce=secrets.randbits(63) if nonce is None else nonce)


def sign_sealed(identity: PrivateKey, *, chain: str, type: str, subject: str, payload: Any,
                ts: int | None = None, nonce: int | None = None,
                ) -> tuple[Record, SealedPayload]:
    """A sealed record signed by ``identity`` and its (salt, payload) pair (SPEC section
    10, ``ledger.records.seal_record``): ``ts`` defaults to now (ms), ``nonce`` to random."""
    return seal_record(identity, chain=chain, type=type, subject=subject, payload=payload,
                       ts=time.time_ns() // 1_000_000 if ts is None else ts,
                       nonce=secrets.randbits(63) if nonce is None else nonce)


class _Protocol:
    """What both clients are, minus the sending: their state and every operation."""

    def __init__(self, base_url: str | Sequence[str], identity: PrivateKey | None,
                 chain: str | None, read_identity: PrivateKey | None = None,
                 timeout: float = 30.0) -> None:
        self.base_urls = node_urls(base_url)
        self.base_url = self.base_urls[0]  # the node in use (the last one that answered)
        self.committed_height = 0  # the highest committed height this client has seen
        self.identity = identity
        self.chain = chain
        self.read_identity = read_identity
        self.timeout = timeout
        # Guards base_url and committed_height. Each call picks its nodes itself, from
        # base_url when it starts (see _route), so threads (or tasks) sharing a client never
        # move each other's attempts; only the node a next call starts with is shared.
        self._lock = threading.Lock()

    def _args(self, step: Step) -> dict[str, Any]:
        """httpx's ``build_request`` arguments for one attempt (a GET signed when there is a
        read identity). Built, then sent: the timeout travels in the request (a starlette
        TestClient passed as ``http`` warns at ``request(timeout=)``, and ignores it)."""
        args = _request_args(step.url, step.call, self.read_identity)
        args["timeout"] = (None if step.timeout is None
                           else httpx.Timeout(step.timeout, connect=step.connect))
        return args

    def _deadline(self, timeout: float | None) -> float:
        """The monotonic time by which a method call must end: ``timeout`` seconds from now,
        or the client's ``timeout``."""
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _attempts(self) -> int:
        """How many times one call may be sent: once with one node; with several, to each
        node in turn, ``FAILOVER_ROUNDS`` times over."""
        n = len(self.base_urls)
        return 1 if n == 1 else n * FAILOVER_ROUNDS

    def _pause(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt`` (0, 1, ...) of a call: a pause before
        each new round over the nodes."""
        n = len(self.base_urls)
        return FAILOVER_PAUSE_S * (attempt // n) if attempt and attempt % n == 0 else 0.0

    def _first(self) -> int:
        """The index of the node a call starts with: the last one that answered."""
        with self._lock:
            return self.base_urls.index(self.base_url)

    def _use(self, url: str) -> None:
        """``url`` answered: later calls start there."""
        with self._lock:
            self.base_url = url

    def _saw(self, height: Any) -> None:
        """A node said ``height`` is committed (a commit, a record's block, a tip)."""
        if type(height) is int:
            with self._lock:
                self.committed_height = max(self.committed_height, height)

    def _step(self, url: str, call: Call, deadline: float, pause: float = 0.0
              ) -> Step | None:
        """The attempt of ``call`` at ``url`` after ``pause`` s, given what is left of the
        deadline then; None when nothing is left."""
        left = deadline - time.monotonic() - pause
        if left <= 0:
            return None
        if call.commit_wait:  # the node answers before the deadline, however this ends
            wait = max(left - min(COMMIT_ANSWER_MARGIN_S, left / 4), 0.001)
            call = replace(call, params={**call.params, "timeout": f"{wait:.3f}"})
        several = len(self.base_urls) > 1
        return Step(url, call, left, min(left, FAILOVER_CONNECT_S) if several else left,
                    pause)

    def _route(self, call: Call, deadline: float) -> Route:
        """Send ``call`` to the node in use, and after a failure (no answer, a 5xx that
        ``fails_over``) to each next one in turn, ``FAILOVER_ROUNDS`` times over, all
        within ``deadline``: the first answer that does not fail over (a read's "not yet"
        checked by ``_catch_up``), or, when the rounds or the deadline run out, the last
        failure (an answer, or NodeError)."""
        urls, n = self.base_urls, len(self.base_urls)
        first = self._first()
        failure: Answer | tuple[str, BaseException] | None = None
        for attempt in range(self._attempts()):
            url = urls[(first + attempt) % n]
            step = self._step(url, call, deadline, self._pause(attempt))
            if step is None:
                break
            got = yield step
            if not isinstance(got, Answer):
                failure = (url, got)
                continue
            answer = replace(got, resent=attempt > 0, node=url)
            if fails_over(answer):
                failure = answer
                continue
            self._use(url)
            return (yield from self._catch_up(call, answer, deadline))
        if isinstance(failure, Answer):
            return failure
        if failure is None:
            raise NodeError(f"{call.where()}: no time left (the call's timeout)",
                            problem_code="commit_timeout" if call.commit_wait else None)
        url, exc = failure
        error = unreachable(url, call, exc)
        if call.commit_wait and isinstance(exc, httpx.TimeoutException):
            error = NodeError(f"{call.where()}: not known committed within the timeout "
                              f"({error})", problem_code="commit_timeout")
        raise error from exc

    def _catch_up(self, call: Call, answer: Answer, deadline: float) -> Route:
        """``answer`` to a read, or, if it says "not (yet) here" (``call.not_yet``) and its
        node's ``/healthz`` height is below the highest committed height this client has
        seen, the answer of a node that has it: each node in turn, and again after short
        pauses, for at most ``CATCH_UP_S`` within the deadline. A "not here" from a node at
        that height stands; with none found, ``answer``."""
        want = self.committed_height
        if call.not_yet is None or want == 0 or not call.not_yet(answer):
            return answer
        urls, n = self.base_urls, len(self.base_urls)
        first = urls.index(answer.node)
        until = min(deadline, time.monotonic() + CATCH_UP_S)
        health = Call("GET", "/healthz")
        for attempt in range(int(CATCH_UP_S / CATCH_UP_PAUSE_S) * n + n):
            url = urls[(first + attempt) % n]
            here = answer
            if attempt:
                pause = CATCH_UP_PAUSE_S if attempt % n == 0 else 0.0
                if (step := self._step(url, call, until, pause)) is None:
                    break
                got = yield step
                if not isinstance(got, Answer) or fails_over(got):
                    continue
                here = replace(got, node=url)
                if not call.not_yet(here):
                    self._use(url)
                    return here
            if (probe := self._step(url, health, until)) is None:
                break
            said = yield probe
            if isinstance(said, Answer) and said.status == 200:
                try:
                    height = loads_json(said.content).get("height")
                except (DecodeError, AttributeError):
                    continue
                self._saw(height)
                if type(height) is int and height >= want:
                    return here  # a node at the height seen: its "not here" is the answer
        return answer

    def make_record(self, *, type: str, subject: str, payload: Any, chain: str,
                    ts: int | None = None, nonce: int | None = None) -> Record:
        """Sign a record with this client's identity (no request: ``chain`` is given)."""
        if self.identity is None:
            raise NodeError("this client has no identity to sign with")
        return sign_record(self.identity, chain=chain, type=type, subject=subject,
                           payload=payload, ts=ts, nonce=nonce)

    def make_sealed(self, *, type: str, subject: str, payload: Any, chain: str,
                    ts: int | None = None, nonce: int | None = None,
                    ) -> tuple[Record, SealedPayload]:
        """Seal and sign a record with this client's identity (SPEC section 10): the record
        (with ``payload_digest``) and the (salt, payload) pair to submit with it."""
        if self.identity is None:
            raise NodeError("this client has no identity to sign with")
        return sign_sealed(self.identity, chain=chain, type=type, subject=subject,
                           payload=payload, ts=ts, nonce=nonce)

    # Each ``_op_*`` is one operation: its requests, and the checks of their answers.

    def _op_status(self) -> Operation[dict[str, Any]]:
        call = Call("GET", "/v1/status")
        answer = _check(call, (yield call))
        doc = _json_object(call, answer, "height")
        if type(doc["height"]) is not int:
            raise NodeError(f"{answer.node}/v1/status: 'height' is not an integer")
        self._saw(doc["height"])
        return doc

    def _op_chain_id(self) -> Operation[str]:
        if self.chain is None:
            chain = (yield from self._op_status()).get("chain")
            if not isinstance(chain, str):
                raise NodeError(f"{self.base_url}/v1/status has no 'chain' string")
            self.chain = chain
        return self.chain

    def _op_health(self) -> Operation[dict[str, Any]]:
        call = Call("GET", "/healthz")
        doc = _json_object(call, _check(call, (yield call)), "status")
        self._saw(doc.get("height"))
        return doc

    def _op_config(self, version: int | None) -> Operation[dict[str, Any]]:
        call = Call("GET", "/v1/config", {} if version is None else {"version": version})
        return _json_object(call, _check(call, (yield call)), "version", "config")

    def _op_genesis(self) -> Operation[bytes]:
        call = Call("GET", "/v1/genesis")
        answer = _check(call, (yield call))
        _json_object(call, answer)  # JSON, not a proxy's page; returned as the exact bytes
        return answer.content

    def _op_submit(self, records: Sequence[Record], wait: bool,
                   payloads: Mapping[bytes, SealedPayload] | None = None,
                   ) -> Operation[list[dict[str, Any]]]:
        """The ``timeout`` of ``wait=commit`` is what is left of the method call's deadline
        at each attempt (``_Protocol._step``)."""
        pairs = payloads or {}
        items: list[Any] = [
            [r.envelope, pairs[r.id].salt, pairs[r.id].payload] if r.id in pairs
            else r.envelope for r in records]  # a sealed record with its pair (SPEC 7)
        call = Call("POST", "/v1/records", {"wait": "commit"} if wait else {},
                    {"Content-Type": MSGPACK}, packb(items), commit_wait=wait)
        answer = _check(call, (yield call), (202,))
        results = _json_object(call, answer, "results")["results"]
        if not isinstance(results, list) or len(results) != len(records) or \
                not all(isinstance(r, dict) for r in results):
            raise NodeError(f"{call.where()}: 202 answer has no 'results' list of "
                            f"{len(records)} objects", answer.status)
        if answer.resent:
            # Sent again to another node after a failure: a record that node already holds
            # (pending or committed) got there from the first attempt; it is on the chain
            # once (SPEC 7: an id is admitted once), so it was accepted.
            for result in results:
                if result.get("status") == "duplicate":
                    result["status"], result["resubmitted"] = "accepted", True
        for result in results:
            self._saw(result.get("height"))
        return results

    def _op_sign(self, type: str, subject: str, payload: Any, ts: int | None,
                 nonce: int | None) -> Operation[Record]:
        if self.identity is None:
            raise NodeError("this client has no identity to sign with")
        chain = yield from self._op_chain_id()
        return self.make_record(type=type, subject=subject, payload=payload, chain=chain,
                                ts=ts, nonce=nonce)

    def _op_write(self, type: str, subject: str, payload: Any, wait: bool,
                  ts: int | None, nonce: int | None, seal: bool = False,
                  ) -> Operation[dict[str, Any]]:
        if seal:
            record, pair = yield from self._op_seal(type, subject, payload, ts, nonce)
            return (yield from self._op_submit([record], wait, {record.id: pair}))[0]
        record = yield from self._op_sign(type, subject, payload, ts, nonce)
        return (yield from self._op_submit([record], wait))[0]

    def _op_seal(self, type: str, subject: str, payload: Any, ts: int | None,
                 nonce: int | None) -> Operation[tuple[Record, SealedPayload]]:
        if self.identity is None:
            raise NodeError("this client has no identity to sign with")
        chain = yield from self._op_chain_id()
        return self.make_sealed(type=type, subject=subject, payload=payload, chain=chain,
                                ts=ts, nonce=nonce)

    def _op_payload(self, record_id: str) -> Operation[Any]:
        doc = yield from self._op_record(record_id)
        where = f"{self.base_url}/v1/records/{record_id}"
        try:
            record = Record.from_wire(b64decode(doc.get("envelope"), "envelope"))
            if record.id.hex() != record_id:
                raise DecodeError(f"the envelope is of record {record.id.hex()}")
            pair = served_pair(doc, record)
        except LedgerError as exc:
            raise NodeError(f"{where}: {exc}", problem_code=exc.code) from exc
        if not record.body.sealed:
            return record.body.payload
        if pair is None:
            status = doc.get("payload_status")
            why = {"withheld": "withheld by the read policy (sign reads with a member key "
                               "holding a role it names)",
                   "missing": "not held by this node",
                   "redacted": "redacted"}.get(str(status), "not served")
            raise NodeError(f"{where}: the sealed payload is {why}",
                            problem_code=status if isinstance(status, str) else None)
        return decode_payload(pair)

    def _op_payloads(self, from_index: int, limit: int) -> Operation[dict[str, Any]]:
        call = Call("GET", "/v1/payloads", {"from_index": from_index, "limit": limit})
        doc = _json_object(call, _check(call, (yield call)), "payloads", "next")
        if not isinstance(doc["payloads"], list) or \
                not all(isinstance(i, dict) for i in doc["payloads"]):
            raise NodeError(f"{call.where()}: 'payloads' is not a list of objects")
        return doc

    def _op_get_object(self, path: str, *keys: str,
                       not_yet: Callable[[Answer], bool] | None = None
                       ) -> Operation[dict[str, Any]]:
        call = Call("GET", path, not_yet=not_yet)
        doc = _json_object(call, _check(call, (yield call)), *keys)
        if not_yet is not None:
            self._saw(doc.get("height"))
        return doc

    def _op_record(self, record_id: str) -> Operation[dict[str, Any]]:
        return (yield from self._op_get_object(f"/v1/records/{record_id}", "id", "status",
                                               not_yet=_not_found))

    def _op_receipt(self, record_id: str) -> Operation[dict[str, Any]]:
        return (yield from self._op_get_object(f"/v1/records/{record_id}/receipt",
                                               "header", "envelope", not_yet=_uncommitted))

    def _block_not_yet(self, height: int) -> Callable[[Answer], bool]:
        """A block's "not here": a 404 for a height this client saw committed (beyond it,
        a 404 is the answer: a follower polling for the next block asks nobody else)."""
        return lambda answer: height <= self.committed_height and _not_found(answer)

    def _op_block(self, height: int) -> Operation[dict[str, Any]]:
        return (yield from self._op_get_object(f"/v1/blocks/{height}", "height",
                                               not_yet=self._block_not_yet(height)))

    def _op_block_bytes(self, height: int) -> Operation[bytes | None]:
        call = Call("GET", f"/v1/blocks/{height}", headers={"Accept": MSGPACK},
                    not_yet=self._block_not_yet(height))
        answer = yield call
        if answer.status == 404 and _problem(answer)[0] == "not_found":
            return None
        _check(call, answer)
        if answer.content_type != MSGPACK:  # a proxy's page must not audit as a bad block
            raise NodeError(f"{call.where()}: {answer.status} answer is "
                            f"{answer.content_type}, not {MSGPACK} (not a ledger node?)",
                            answer.status)
        self._saw(height)
        return answer.content

    def _op_history(self, subject: str, order: Literal["asc", "desc"], after: int | None,
                    before: int | None, limit: int, since: int | str | None = None,
                    until: int | str | None = None, at_height: int | None = None,
                    proof: bool = False) -> Operation[dict[str, Any]]:
        params: dict[str, str | int] = {"order": order, "limit": limit}
        for name, value in (("after", after), ("before", before), ("since", since),
                            ("until", until), ("at_height", at_height)):
            if value is not None:
                params[name] = value
        if proof:
            params["proof"] = "true"
        # quoted whole, as the explorer's encodeURIComponent: '#', '?', '%' are subject bytes
        call = Call("GET", f"/v1/subjects/{quote(subject, safe='')}/history", params)
        doc = _json_object(call, _check(call, (yield call)), "records", "next")
        if not isinstance(doc["records"], list):
            raise NodeError(f"{call.where()}: 'records' is not a list")
        return doc

    def _op_subject_history(self, walk: HistoryWalk) -> Operation[list[dict[str, Any]]]:
        """One step of a ``subject_history`` walk: (with proofs, first the verified
        checkpoint at the tip) the next page, checked (``HistoryWalk.take``)."""
        if walk.proofs and walk.checkpoint is None:
            assert walk.genesis is not None
            try:
                walk.checkpoint = yield from self._op_verified_checkpoint(walk.genesis, None, 0)
            except NodeError as exc:
                if (exc.status, exc.problem_code) != (404, "not_found"):
                    raise
                walk.done = True  # no block yet: nothing committed, nothing to prove
                return []
            walk.at_height = walk.checkpoint.height
        call = walk.call()
        return walk.take(call, _json_object(call, _check(call, (yield call)), "records", "next"))

    # -- log proofs (SPEC section 11): fetched, and verified against genesis alone ----------

    def _op_log_inclusion(self, index: int, size: int) -> Operation[dict[str, Any]]:
        call = Call("GET", "/v1/log/inclusion", {"index": index, "size": size})
        return _json_object(call, _check(call, (yield call)), "index", "size", "proof")

    def _op_log_consistency(self, first: int, second: int) -> Operation[dict[str, Any]]:
        call = Call("GET", "/v1/log/consistency", {"first": first, "second": second})
        return _json_object(call, _check(call, (yield call)), "first", "second", "proof")

    def _op_checkpoint(self, height: int | None) -> Operation[dict[str, Any]]:
        call = Call("GET", "/v1/log/checkpoint", {} if height is None else {"height": height})
        return _json_object(call, _check(call, (yield call)), *checkpoints.CHECKPOINT_KEYS)

    def _op_cosignatures(self, from_height: int, to_height: int | None
                         ) -> Operation[dict[str, Any]]:
        params = {"from_height": from_height}
        if to_height is not None:
            params["to_height"] = to_height
        call = Call("GET", "/v1/log/cosignatures", params)
        doc = _json_object(call, _check(call, (yield call)), "cosignatures", "next")
        if not isinstance(doc["cosignatures"], list):
            raise NodeError(f"{call.where()}: 'cosignatures' is not a list")
        return doc

    def _op_post_cosignature(self, cosig: Cosignature | Mapping[str, Any]
                             ) -> Operation[dict[str, Any]]:
        body = cosig.to_json() if isinstance(cosig, Cosignature) else dict(cosig)
        call = Call("POST", "/v1/log/cosignatures", headers={"Content-Type": "application/json"},
                    content=json.dumps(body).encode())
        doc = _json_object(call, _check(call, (yield call)), "stored")
        if type(doc["stored"]) is not bool:
            raise NodeError(f"{call.where()}: 'stored' is not a boolean")
        return doc

    def _op_verified_checkpoint(self, genesis: Genesis, height: int | None,
                                witnesses: int) -> Operation[VerifiedCheckpoint]:
        doc = yield from self._op_checkpoint(height)
        at = doc["height"]
        if type(at) is not int or at < 1:
            raise LogProofError("checkpoint: 'height' is not a positive integer")
        call = Call("GET", "/v1/config/proof", {"to_height": at})
        steps = _json_object(call, _check(call, (yield call)), "steps")["steps"]
        return checkpoints.verify_checkpoint(doc, steps, genesis, height, witnesses=witnesses)

    def _op_verified_receipt(self, record_id: str, genesis: Genesis, witnesses: int,
                             trusted: Sequence[TrustedCheckpoint]
                             ) -> Operation[VerifiedReceipt]:
        doc = yield from self._op_receipt(record_id)
        result = verify_receipt(doc, genesis, witnesses=witnesses, checkpoints=tuple(trusted))
        if result.record.id.hex() != record_id.lower():
            raise ReceiptError(f"the node's receipt is of record {result.record.id.hex()}, not "
                               f"of record {record_id}")
        return result

    def _op_verify_inclusion(self, checkpoint: VerifiedCheckpoint, index: int,
                             leaf: bytes) -> Operation[None]:
        doc = yield from self._op_log_inclusion(index, checkpoint.log_size)
        checkpoints.verify_log_inclusion(checkpoint, index, leaf, doc)

    def _op_verify_consistency(self, old: VerifiedCheckpoint,
                               new: VerifiedCheckpoint) -> Operation[None]:
        doc = None
        if 0 < old.log_size <= new.log_size:  # else: nothing to ask (empty), or refused
            doc = yield from self._op_log_consistency(old.log_size, new.log_size)
        checkpoints.verify_log_consistency(old, new, doc)


# -- the drivers ----------------------------------------------------------------------------

def _ssl(verify: str | bool) -> ssl.SSLContext | bool:
    """httpx's verify: a CA file becomes a context trusting only it."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def _answer(resp: httpx.Response) -> Answer:
    return Answer(resp.status_code, resp.headers, resp.content, resp.reason_phrase)


def _request_args(base_url: str, call: Call,
                  read_identity: PrivateKey | None = None) -> dict[str, Any]:
    """httpx's arguments for ``call``; a GET is signed with ``read_identity`` when given.

    The one place reads are signed (SPEC 10, ledger.httpsig): the URL is built, with its
    query, before signing, and exactly that URL is sent, so the signed @path and @query are
    the bytes on the wire. ``created`` is this client's clock.
    """
    headers = dict(call.headers)
    if read_identity is not None and call.method == "GET":
        # httpx.URL(params={}) would drop a query already in the path: pass params only if any.
        url = (httpx.URL(base_url + call.path, params=dict(call.params)) if call.params
               else httpx.URL(base_url + call.path))
        headers.update(httpsig.sign_request(read_identity, call.method, str(url),
                                            int(time.time())))
        args: dict[str, Any] = {"url": url, "headers": headers, "content": call.content}
    else:
        args = {"url": base_url + call.path, "params": dict(call.params), "headers": headers,
                "content": call.content}
    if call.timeout != DEFAULT:
        args["timeout"] = call.timeout
    return {"method": call.method, **args}


class LedgerClient(_Protocol):
    """A synchronous client for a node, or several (failover); safe to share between
    threads.

    ``base_url``: a node's API URL, or several (a list, or comma-separated): a call that
    finds its node unreachable, timing out or answering a 5xx (not ``commit_timeout``) is
    sent again, the same bytes, to the next node (each in turn, ``FAILOVER_ROUNDS`` times
    over), and the client stays with the node that answered (``base_url`` names it).
    Resubmitting signed records is idempotent: a record the next node already holds is
    answered ``duplicate``, which ``submit``/``write`` report as ``accepted`` (with
    ``"resubmitted": true``); it is on the chain once.

    ``timeout``: the deadline of each method call, in seconds: every request it makes, every
    attempt on every node, and the pauses between rounds end within it (an attempt gets what
    is left; with several nodes its connection at most ``FAILOVER_CONNECT_S``), then the last
    failure is raised. ``submit``/``write`` with ``wait=True`` have their own ``timeout``
    instead (see ``submit``). One page of ``subject_history`` is one call; ``events()`` has
    none (it follows the chain until closed).

    Reads after a failover: ``committed_height`` is the highest committed height this
    client has seen (commits it waited for, ``status``, records, blocks, events). A ``record``,
    ``receipt`` or ``block`` answered "not found" (a receipt: also "not committed") by a
    node whose ``/healthz`` height is below it goes on to the other nodes, and with none
    holding it waits briefly (``CATCH_UP_S``, within the deadline) for one to catch up: a
    record this client saw committed does not read as missing from a node that is behind.

    Threads sharing a client: each call goes over the nodes itself, starting from the one
    that last answered (``base_url``, read and set under a lock); one thread's failover
    never moves another's attempts.

    ``verify``: True (system CAs), False, or a CA file (e.g. a cluster's tls/ca.pem).
    ``http``: an ``httpx.Client`` to send with instead of a new one (a proxy, a test
    transport); the client then neither configures nor closes it.
    ``read_identity``: a member key every GET is signed with (SPEC 10 read signatures,
    ``ledger.httpsig``), so a node's read policy can serve that member sealed payloads.
    """

    def __init__(self, base_url: str | Sequence[str], *, identity: PrivateKey | None = None,
                 chain: str | None = None, timeout: float = 30.0,
                 verify: str | bool = True, http: httpx.Client | None = None,
                 read_identity: PrivateKey | None = None) -> None:
        super().__init__(base_url, identity, chain, read_identity, timeout)
        self._owned = http is None
        self._http = http if http is not None else httpx.Client(
            timeout=timeout, verify=_ssl(verify), limits=httpx.Limits(max_connections=16))

    def _send(self, call: Call, deadline: float) -> Answer:
        route = self._route(call, deadline)
        try:
            step = next(route)
            while True:
                if step.pause:
                    time.sleep(step.pause)
                got: Answer | BaseException
                try:
                    got = _answer(self._http.send(self._http.build_request(
                        **self._args(step))))
                except httpx.HTTPError as exc:
                    got = exc
                step = route.send(got)
        except StopIteration as done:
            answer: Answer = done.value
            return answer

    def _run(self, op: Operation[T], timeout: float | None = None) -> T:
        deadline = self._deadline(timeout)
        try:
            call = next(op)
            while True:
                call = op.send(self._send(call, deadline))
        except StopIteration as done:
            result: T = done.value
            return result

    def status(self) -> dict[str, Any]:
        """``GET /v1/status``: chain, height, validators, peers."""
        return self._run(self._op_status())

    def chain_id(self) -> str:
        """The node's chain id (asked once)."""
        return self._run(self._op_chain_id())

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", "height"}`` while the node serves."""
        return self._run(self._op_health())

    def genesis(self) -> bytes:
        """``GET /v1/genesis``: the exact genesis.json bytes the node runs."""
        return self._run(self._op_genesis())

    def config(self, version: int | None = None) -> dict[str, Any]:
        """``GET /v1/config``: the configuration governing the next height (``version``, the
        first ``height`` it governs, its ``change`` bytes, ``config``), or a past version."""
        return self._run(self._op_config(version))

    def submit(self, records: Sequence[Record], *, wait: bool = False,
               timeout: float = 30.0, payloads: Mapping[bytes, SealedPayload] | None = None,
               ) -> list[dict[str, Any]]:
        """Submit signed records, one result per record; with ``wait``, return once all are
        committed (each result then has ``height``), or NodeError ``commit_timeout``.
        ``payloads``: the (salt, payload) pair of each sealed record, by id (``seal``).

        With ``wait``, ``timeout`` is this call's deadline, failovers included: it returns
        or raises within about ``timeout`` seconds. Each attempt asks its node to wait for
        the commit for what is left of it, less a margin (``COMMIT_ANSWER_MARGIN_S``) for
        the node's 504 ``commit_timeout`` to arrive first. Without ``wait``, the client's
        ``timeout`` is the deadline."""
        return self._run(self._op_submit(records, wait, payloads), timeout if wait else None)

    def seal(self, *, type: str, subject: str, payload: Any, ts: int | None = None,
             nonce: int | None = None) -> tuple[Record, SealedPayload]:
        """A sealed record signed with this client's identity for the node's chain, and its
        (salt, payload) pair; not submitted (``submit(records, payloads={id: pair})``)."""
        return self._run(self._op_seal(type, subject, payload, ts, nonce))

    def payload(self, record_id: str) -> Any:
        """A record's payload: an inline record's, or a sealed record's as served to this
        client's read identity, checked against its ``payload_digest`` and decoded.
        NodeError (``problem_code`` ``withheld``, ``missing`` or ``redacted``) when the node
        does not serve it; ``payload_mismatch`` when what it served is not what was signed."""
        return self._run(self._op_payload(record_id))

    def payloads(self, from_index: int = 0, limit: int = 1000) -> dict[str, Any]:
        """``GET /v1/payloads``: one page of the sealed payloads the node holds (unchecked:
        ``served_pair(item, record)`` checks one)."""
        return self._run(self._op_payloads(from_index, limit))

    def sign(self, *, type: str, subject: str, payload: Any, ts: int | None = None,
             nonce: int | None = None) -> Record:
        """A record signed with this client's identity for the node's chain; not submitted."""
        return self._run(self._op_sign(type, subject, payload, ts, nonce))

    def write(self, *, type: str, subject: str, payload: Any, wait: bool = False,
              timeout: float = 30.0, ts: int | None = None,
              nonce: int | None = None, seal: bool = False) -> dict[str, Any]:
        """Sign one record with this client's identity and submit it; with ``seal``, a
        sealed record (SPEC section 10: its digest on the chain, the payload beside it).
        With ``wait``, ``timeout`` is the whole call's deadline, failovers included (see
        ``submit``)."""
        return self._run(self._op_write(type, subject, payload, wait, ts, nonce, seal),
                         timeout if wait else None)

    def record(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}``: pending or committed."""
        return self._run(self._op_record(record_id))

    def receipt(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}/receipt`` (verify it with ``ledger.receipts``)."""
        return self._run(self._op_receipt(record_id))

    def block(self, height: int) -> dict[str, Any]:
        """The JSON view of a block."""
        return self._run(self._op_block(height))

    def block_bytes(self, height: int) -> bytes | None:
        """The exact block bytes (SPEC section 4), None beyond the tip."""
        return self._run(self._op_block_bytes(height))

    def history(self, subject: str, *, order: Literal["asc", "desc"] = "asc",
                after: int | None = None, before: int | None = None,
                limit: int = 100, since: int | str | None = None,
                until: int | str | None = None, at_height: int | None = None,
                proof: bool = False) -> dict[str, Any]:
        """One page of a subject's committed records, oldest first (``order="desc"``: newest
        first). ``next`` continues it: pass it as ``after`` (``before`` when newest first).
        ``since``/``until``: a block-time range; ``at_height``: read at that block;
        ``proof``: each record's inclusion proof, unverified (``subject_history`` walks
        every page and verifies them)."""
        return self._run(self._op_history(subject, order, after, before, limit, since, until,
                                          at_height, proof))

    def subject_history(self, subject: str, *, order: Literal["asc", "desc"] = "asc",
                        since: int | str | None = None, until: int | str | None = None,
                        proofs: bool = False, genesis: Genesis | None = None,
                        checkpoint: VerifiedCheckpoint | None = None,
                        limit: int = 100) -> Iterator[dict[str, Any]]:
        """Every committed record of ``subject``, page after page (``limit`` per request),
        oldest first (``order="desc"``: newest first), optionally only those of blocks whose
        time is within ``since``/``until`` (ms since the epoch, or RFC 3339 text). The walk
        reads the history as of the block of its first page: records committed meanwhile
        are not in it, and none is repeated or skipped. Each record's fields are checked
        against its envelope. With ``proofs``, every record's inclusion proof is verified
        against a checkpoint verified from ``genesis`` (the tip's), or against
        ``checkpoint``: LogProofError at the first that fails."""
        walk = HistoryWalk(subject, order, since, until, limit, proofs, genesis, checkpoint)
        while not walk.done:
            yield from self._run(self._op_subject_history(walk))

    def log_inclusion(self, index: int, size: int) -> dict[str, Any]:
        """``GET /v1/log/inclusion``: the audit path of log leaf ``index`` in the log of
        ``size`` records, unverified (``verify_inclusion`` checks one)."""
        return self._run(self._op_log_inclusion(index, size))

    def log_consistency(self, first: int, second: int) -> dict[str, Any]:
        """``GET /v1/log/consistency``: the consistency path between two log sizes,
        unverified (``verify_consistency`` checks one)."""
        return self._run(self._op_log_consistency(first, second))

    def checkpoint(self, height: int | None = None) -> dict[str, Any]:
        """``GET /v1/log/checkpoint``: the header and certificate at ``height`` (default:
        the tip), unverified (``verified_checkpoint`` checks one)."""
        return self._run(self._op_checkpoint(height))

    def cosignatures(self, from_height: int = 1, to_height: int | None = None
                     ) -> dict[str, Any]:
        """``GET /v1/log/cosignatures``: one page of the cosignatures the node holds by
        height range, unverified (``ledger audit --file`` checks a bundle's)."""
        return self._run(self._op_cosignatures(from_height, to_height))

    def post_cosignature(self, cosig: Cosignature | Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/log/cosignatures``: a witness's cosignature of one block (SPEC section
        11; ``ledger.witness.for_header`` makes one). ``{"stored": bool, "height",
        "block_hash"}`` when it holds over the node's block (``stored`` false: already
        held); NodeError otherwise, with ``problem_code`` ``split_view`` (409: the node has
        another block at that height), ``unknown_height`` (404: beyond its tip),
        ``unknown_witness`` or ``bad_cosignature`` (400)."""
        return self._run(self._op_post_cosignature(cosig))

    def verified_checkpoint(self, genesis: Genesis, height: int | None = None, *,
                            witnesses: int = 0) -> VerifiedCheckpoint:
        """The checkpoint at ``height`` (default: the tip), its certificate verified under
        the configuration of its height, reached from ``genesis`` by ``GET
        /v1/config/proof``, and every witness cosignature it lists checked (``.witnesses``
        counts them; ``witnesses=k`` demands k); LogProofError if it does not verify."""
        return self._run(self._op_verified_checkpoint(genesis, height, witnesses))

    def verified_receipt(self, record_id: str, genesis: Genesis, *, witnesses: int = 0,
                         checkpoints: Sequence[TrustedCheckpoint] = ()) -> VerifiedReceipt:
        """``GET /v1/records/{id}/receipt``, verified with ``genesis`` alone
        (``ledger.receipts.verify_receipt``): ``witnesses=k`` demands k witness
        cosignatures of its block, ``checkpoints`` blocks you already trust; ReceiptError
        if it does not verify."""
        return self._run(self._op_verified_receipt(record_id, genesis, witnesses,
                                                   checkpoints))

    def verify_inclusion(self, checkpoint: VerifiedCheckpoint, index: int,
                         leaf: bytes) -> None:
        """Check that leaf hash ``leaf`` is log leaf ``index`` under a verified
        checkpoint's log root (RFC 9162); LogProofError if the node's proof is wrong."""
        return self._run(self._op_verify_inclusion(checkpoint, index, leaf))

    def verify_consistency(self, old: VerifiedCheckpoint, new: VerifiedCheckpoint) -> None:
        """Check that ``new``'s log extends ``old``'s (RFC 9162); LogProofError if the
        node's proof is wrong, or the logs differ."""
        return self._run(self._op_verify_consistency(old, new))

    def events(self, from_height: int | None = None) -> Iterator[dict[str, Any]]:
        """Follow committed blocks (SSE) from ``from_height`` (default: the next one);
        resumes after the last block when the node ends the stream; runs until closed."""
        feed = EventFeed(from_height)
        failures, at = 0, self._first()
        while (call := feed.next_call()) is not None:
            url = self.base_urls[at]
            try:
                with self._http.stream(**_request_args(url, call, self.read_identity)) as resp:
                    if not feed.opened(resp.status_code, resp.headers):
                        resp.read()
                        raise feed.refused(call, _answer(resp))
                    for line in resp.iter_lines():
                        if (event := feed.line(line)) is not None:
                            failures = 0
                            self._saw(event.get("height"))
                            yield event
            except httpx.HTTPError as exc:
                failures += 1
                if failures >= self._attempts():
                    raise unreachable(url, call, exc) from exc
                at = (at + 1) % len(self.base_urls)  # this stream's next node, its own
                time.sleep(self._pause(failures))  # resume there after the last block
                feed.reopen()

    def close(self) -> None:
        """Close the connection pool (unless it was passed in as ``http``)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLedgerClient(_Protocol):
    """The asyncio twin of ``LedgerClient``: the same methods, awaited; several node URLs
    fail over as there, ``timeout`` is each call's deadline as there, reads catch up as
    there, and tasks sharing a client each go over the nodes themselves (one task's
    failover never moves another's attempts)."""

    def __init__(self, base_url: str | Sequence[str], *, identity: PrivateKey | None = None,
                 chain: str | None = None, timeout: float = 30.0,
                 verify: str | bool = True, http: httpx.AsyncClient | None = None,
                 read_identity: PrivateKey | None = None) -> None:
        super().__init__(base_url, identity, chain, read_identity, timeout)
        self._owned = http is None
        self._http = http if http is not None else httpx.AsyncClient(
            timeout=timeout, verify=_ssl(verify), limits=httpx.Limits(max_connections=16))

    async def _send(self, call: Call, deadline: float) -> Answer:
        route = self._route(call, deadline)
        try:
            step = next(route)
            while True:
                if step.pause:
                    await asyncio.sleep(step.pause)
                got: Answer | BaseException
                try:
                    got = _answer(await self._http.send(self._http.build_request(
                        **self._args(step))))
                except httpx.HTTPError as exc:
                    got = exc
                step = route.send(got)
        except StopIteration as done:
            answer: Answer = done.value
            return answer

    async def _run(self, op: Operation[T], timeout: float | None = None) -> T:
        deadline = self._deadline(timeout)
        try:
            call = next(op)
            while True:
                call = op.send(await self._send(call, deadline))
        except StopIteration as done:
            result: T = done.value
            return result

    async def status(self) -> dict[str, Any]:
        """``GET /v1/status``: chain, height, validators, peers."""
        return await self._run(self._op_status())

    async def chain_id(self) -> str:
        """The node's chain id (asked once)."""
        return await self._run(self._op_chain_id())

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", "height"}`` while the node serves."""
        return await self._run(self._op_health())

    async def genesis(self) -> bytes:
        """``GET /v1/genesis``: the exact genesis.json bytes the node runs."""
        return await self._run(self._op_genesis())

    async def config(self, version: int | None = None) -> dict[str, Any]:
        """``GET /v1/config``: the configuration governing the next height (``version``, the
        first ``height`` it governs, its ``change`` bytes, ``config``), or a past version."""
        return await self._run(self._op_config(version))

    async def submit(self, records: Sequence[Record], *, wait: bool = False,
                     timeout: float = 30.0,
                     payloads: Mapping[bytes, SealedPayload] | None = None,
                     ) -> list[dict[str, Any]]:
        """Submit signed records, one result per record; with ``wait``, return once all are
        committed (each result then has ``height``), or NodeError ``commit_timeout``.
        ``payloads``: the (salt, payload) pair of each sealed record, by id (``seal``).
        With ``wait``, ``timeout`` is this call's deadline, failovers included (see
        ``LedgerClient.submit``)."""
        return await self._run(self._op_submit(records, wait, payloads),
                               timeout if wait else None)

    async def seal(self, *, type: str, subject: str, payload: Any, ts: int | None = None,
                   nonce: int | None = None) -> tuple[Record, SealedPayload]:
        """A sealed record signed with this client's identity for the node's chain, and its
        (salt, payload) pair; not submitted (``submit(records, payloads={id: pair})``)."""
        return await self._run(self._op_seal(type, subject, payload, ts, nonce))

    async def payload(self, record_id: str) -> Any:
        """A record's payload, a sealed one checked against its digest (``LedgerClient``)."""
        return await self._run(self._op_payload(record_id))

    async def payloads(self, from_index: int = 0, limit: int = 1000) -> dict[str, Any]:
        """``GET /v1/payloads``: one page of the sealed payloads the node holds."""
        return await self._run(self._op_payloads(from_index, limit))

    async def sign(self, *, type: str, subject: str, payload: Any, ts: int | None = None,
                   nonce: int | None = None) -> Record:
        """A record signed with this client's identity for the node's chain; not submitted."""
        return await self._run(self._op_sign(type, subject, payload, ts, nonce))

    async def write(self, *, type: str, subject: str, payload: Any, wait: bool = False,
                    timeout: float = 30.0, ts: int | None = None,
                    nonce: int | None = None, seal: bool = False) -> dict[str, Any]:
        """Sign one record with this client's identity and submit it; with ``seal``, a
        sealed record (SPEC section 10: its digest on the chain, the payload beside it).
        With ``wait``, ``timeout`` is the whole call's deadline, failovers included (see
        ``submit``)."""
        return await self._run(self._op_write(type, subject, payload, wait, ts, nonce, seal),
                               timeout if wait else None)

    async def record(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}``: pending or committed."""
        return await self._run(self._op_record(record_id))

    async def receipt(self, record_id: str) -> dict[str, Any]:
        """``GET /v1/records/{id}/receipt`` (verify it with ``ledger.receipts``)."""
        return await self._run(self._op_receipt(record_id))

    async def block(self, height: int) -> dict[str, Any]:
        """The JSON view of a block."""
        return await self._run(self._op_block(height))

    async def block_bytes(self, height: int) -> bytes | None:
        """The exact block bytes (SPEC section 4), None beyond the tip."""
        return await self._run(self._op_block_bytes(height))

    async def history(self, subject: str, *, order: Literal["asc", "desc"] = "asc",
                      after: int | None = None, before: int | None = None,
                      limit: int = 100, since: int | str | None = None,
                      until: int | str | None = None, at_height: int | None = None,
                      proof: bool = False) -> dict[str, Any]:
        """One page of a subject's committed records, oldest first (``order="desc"``: newest
        first). ``next`` continues it: pass it as ``after`` (``before`` when newest first).
        ``since``/``until``: a block-time range; ``at_height``: read at that block;
        ``proof``: each record's inclusion proof, unverified (``subject_history`` walks
        every page and verifies them)."""
        return await self._run(self._op_history(subject, order, after, before, limit, since,
                                                until, at_height, proof))

    async def subject_history(self, subject: str, *, order: Literal["asc", "desc"] = "asc",
                              since: int | str | None = None, until: int | str | None = None,
                              proofs: bool = False, genesis: Genesis | None = None,
                              checkpoint: VerifiedCheckpoint | None = None,
                              limit: int = 100) -> AsyncIterator[dict[str, Any]]:
        """Every committed record of ``subject``, page after page (``limit`` per request),
        oldest first (``order="desc"``: newest first), optionally only those of blocks whose
        time is within ``since``/``until`` (ms since the epoch, or RFC 3339 text). The walk
        reads the history as of the block of its first page: records committed meanwhile
        are not in it, and none is repeated or skipped. Each record's fields are checked
        against its envelope. With ``proofs``, every record's inclusion proof is verified
        against a checkpoint verified from ``genesis`` (the tip's), or against
        ``checkpoint``: LogProofError at the first that fails."""
        walk = HistoryWalk(subject, order, since, until, limit, proofs, genesis, checkpoint)
        while not walk.done:
            for record in await self._run(self._op_subject_history(walk)):
                yield record

    async def log_inclusion(self, index: int, size: int) -> dict[str, Any]:
        """``GET /v1/log/inclusion``: the audit path of log leaf ``index`` in the log of
        ``size`` records, unverified (``verify_inclusion`` checks one)."""
        return await self._run(self._op_log_inclusion(index, size))

    async def log_consistency(self, first: int, second: int) -> dict[str, Any]:
        """``GET /v1/log/consistency``: the consistency path between two log sizes,
        unverified (``verify_consistency`` checks one)."""
        return await self._run(self._op_log_consistency(first, second))

    async def checkpoint(self, height: int | None = None) -> dict[str, Any]:
        """``GET /v1/log/checkpoint``: the header and certificate at ``height`` (default:
        the tip), unverified (``verified_checkpoint`` checks one)."""
        return await self._run(self._op_checkpoint(height))

    async def cosignatures(self, from_height: int = 1, to_height: int | None = None
                           ) -> dict[str, Any]:
        """``GET /v1/log/cosignatures``: see ``LedgerClient.cosignatures``."""
        return await self._run(self._op_cosignatures(from_height, to_height))

    async def post_cosignature(self, cosig: Cosignature | Mapping[str, Any]
                               ) -> dict[str, Any]:
        """``POST /v1/log/cosignatures``: see ``LedgerClient.post_cosignature``."""
        return await self._run(self._op_post_cosignature(cosig))

    async def verified_checkpoint(self, genesis: Genesis, height: int | None = None, *,
                                  witnesses: int = 0) -> VerifiedCheckpoint:
        """The checkpoint at ``height`` (default: the tip), its certificate verified under
        the configuration of its height, reached from ``genesis`` by ``GET
        /v1/config/proof``, and every witness cosignature it lists checked (``.witnesses``
        counts them; ``witnesses=k`` demands k); LogProofError if it does not verify."""
        return await self._run(self._op_verified_checkpoint(genesis, height, witnesses))

    async def verified_receipt(self, record_id: str, genesis: Genesis, *, witnesses: int = 0,
                               checkpoints: Sequence[TrustedCheckpoint] = ()
                               ) -> VerifiedReceipt:
        """``GET /v1/records/{id}/receipt``, verified with ``genesis`` alone
        (``ledger.receipts.verify_receipt``): ``witnesses=k`` demands k witness
        cosignatures of its block, ``checkpoints`` blocks you already trust; ReceiptError
        if it does not verify."""
        return await self._run(self._op_verified_receipt(record_id, genesis, witnesses,
                                                         checkpoints))

    async def verify_inclusion(self, checkpoint: VerifiedCheckpoint, index: int,
                         leaf: bytes) -> None:
        """Check that leaf hash ``leaf`` is log leaf ``index`` under a verified
        checkpoint's log root (RFC 9162); LogProofError if the node's proof is wrong."""
        return await self._run(self._op_verify_inclusion(checkpoint, index, leaf))

    async def verify_consistency(self, old: VerifiedCheckpoint, new: VerifiedCheckpoint) -> None:
        """Check that ``new``'s log extends ``old``'s (RFC 9162); LogProofError if the
        node's proof is wrong, or the logs differ."""
        return await self._run(self._op_verify_consistency(old, new))

    async def events(self, from_height: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Follow committed blocks (SSE) from ``from_height`` (default: the next one);
        resumes after the last block when the node ends the stream; runs until closed."""
        feed = EventFeed(from_height)
        failures, at = 0, self._first()
        while (call := feed.next_call()) is not None:
            url = self.base_urls[at]
            try:
                async with self._http.stream(**_request_args(url, call,
                                                             self.read_identity)) as resp:
                    if not feed.opened(resp.status_code, resp.headers):
                        await resp.aread()
                        raise feed.refused(call, _answer(resp))
                    async for line in resp.aiter_lines():
                        if (event := feed.line(line)) is not None:
                            failures = 0
                            self._saw(event.get("height"))
                            yield event
            except httpx.HTTPError as exc:
                failures += 1
                if failures >= self._attempts():
                    raise unreachable(url, call, exc) from exc
                at = (at + 1) % len(self.base_urls)  # this stream's next node, its own
                await asyncio.sleep(self._pause(failures))  # resume after the last block
                feed.reopen()

    async def close(self) -> None:
        """Close the connection pool (unless it was passed in as ``http``)."""
        if self._owned:
            await self._http.aclose()

    async def aclose(self) -> None:
        """``close()``, under the name asyncio code expects."""
        await self.close()

    async def __aenter__(self) -> AsyncLedgerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
