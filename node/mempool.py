"""The mempool: admission checks, a verified-signature cache, bounds, and reaping.

Admission is split so signature checks can run off the event loop: ``Mempool.precheck``
(in a worker thread: decode, then chain, signature and authorisation of every record the
node does not already hold pending, record by record, within the pool's room) then
``Mempool.admit`` (on the event loop: duplicates against the mempool and the store, clock
skew, bounds). A record's signature is verified once per node: the cache answers consensus'
block validation for every record admitted here, and admission for every record a proposal
brought first. The byte bound counts ``Record.cost``, what a record takes decoded.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from ledger.blocks import Block
from ledger.config import CONFIG_TYPE, REDACT_TYPE, Config
from ledger.crypto import RECORD_TAG, is_valid_signature
from ledger.encoding import BatchItem
from ledger.errors import (
    DecodeError,
    DigestReusedError,
    LedgerError,
    PayloadMissingError,
    ValidationError,
)
from ledger.genesis import Genesis
from ledger.records import Record, SealedPayload, new_pair
from ledger.store.base import BlockStore
from ledger.validation import (
    Authority,
    Redaction,
    Verifier,
    block_redactions,
    check_record,
    check_redaction_targets,
)


class MempoolFull(Exception):
    """The mempool is at its bound; the client should retry later."""


@dataclass(frozen=True, slots=True)
class AdmitResult:
    """The outcome of one envelope, as the API reports it."""

    id: bytes | None
    status: str  # accepted | duplicate | rejected
    error: str | None = None
    detail: str | None = None
    record: Record | None = None
    #: A ``ledger.redact`` record's own checks passed (``check_redaction``): what ``admit``
    #: judges against the chain.
    redaction: Redaction | None = None
    #: A sealed record's (salt, payload) pair, checked against its digest in ``precheck``;
    #: on a "duplicate" of a committed record, the pair to offer the store (resubmission
    #: heals a node that committed the record without it).
    pair: SealedPayload | None = None


_ADMIT_SLOTS = tuple(AdmitResult.__dict__[k].__set__ for k in (
    "id", "status", "error", "detail", "record", "redaction", "pair"))


def accepted(record: Record, pair: SealedPayload | None) -> AdmitResult:
    """``AdmitResult(record.id, "accepted", record=record, pair=pair)``, built by setting its
    slots directly (the generated ``__init__`` of a frozen dataclass goes through
    ``object.__setattr__``, twice the cost: one per record a node admits)."""
    result = object.__new__(AdmitResult)
    s_id, s_status, s_error, s_detail, s_record, s_redaction, s_pair = _ADMIT_SLOTS
    s_id(result, record.id)
    s_status(result, "accepted")
    s_error(result, None)
    s_detail(result, None)
    s_record(result, record)
    s_redaction(result, None)
    s_pair(result, pair)
    return result


#: Consensus signatures (votes, proposals, certificates) kept verified: a height's votes
#: are a few per validator, so this spans hundreds of heights.
VOTES_KEPT = 4096


class VerifiedCache:
    """Signatures already verified by this node (bounded, least recently used first out)."""

    def __init__(self, limit: int = 500_000) -> None:
        self.limit = limit
        self._seen: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()  # worker threads verify batches concurrently
        self.hits = 0

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """Like ``is_valid_signature``, answering from the cache when it can."""
        key = public_key + signature
        digest = hashlib.sha256(message).digest()
        if self._seen.get(key) == digest:
            self.hits += 1  # not exact under threads; a statistic only
            return True
        if not is_valid_signature(public_key, message, signature):
            return False
        self.add(key, digest)
        return True

    def add(self, key: bytes, digest: bytes) -> None:
        with self._lock:
            self._seen[key] = digest
            if len(self._seen) > self.limit:
                self._seen.popitem(last=False)

    def remember(self, record: Record) -> None:
        """Note that ``record``'s signature verified (done in a worker thread)."""
        self.add(record.body.signer + record.sig, hashlib.sha256(record.sign_bytes()).digest())

    def forget(self, record: Record) -> None:
        """``record`` left the mempool: its block has been validated and committed."""
        with self._lock:
            self._seen.pop(record.body.signer + record.sig, None)


def decode(envelope: bytes, pair: SealedPayload | None = None) -> AdmitResult:
    """Decode one envelope: a candidate ("accepted" so far, holding ``pair``, the (salt,
    payload) sent with it, unchecked until ``with_pair``) or rejected as malformed (or
    ``invalid_body``: a body holding both ``payload`` and ``payload_digest``)."""
    try:
        record = Record.from_wire(envelope)
    except DecodeError as exc:
        return AdmitResult(None, "rejected", exc.code, str(exc))
    return accepted(record, pair)


def with_pair(candidate: AdmitResult) -> AdmitResult:
    """SPEC section 10 on a decoded candidate and the pair it holds: a sealed record needs
    its pair and the pair must match its digest (``payload_missing``, ``payload_mismatch``);
    an inline record takes none (``invalid_body``). Hashes the payload: runs in a worker
    thread. The candidate itself comes back when it passes (the pair marked as checked,
    so the store's append need not check it again)."""
    record, pair = candidate.record, candidate.pair
    if record is None:
        return candidate
    try:
        if pair is not None:
            pair.check(record)
        elif record.body.payload_digest is not None:
            raise PayloadMissingError(
                f"record {record.id.hex()} is sealed: submit it as [envelope, salt, "
                "payload_bytes] (JSON: envelope, salt and payload)")
    except LedgerError as exc:
        return AdmitResult(record.id, "rejected", exc.code, str(exc))
    return candidate


def check(source: Authority, candidate: AdmitResult,
          verify: Verifier = is_valid_signature) -> AdmitResult:
    """Chain, signature and authorisation of a decoded candidate under ``source``, the
    configuration governing the next height (a ``ledger.config`` record: SPEC section 9's
    rules, with their codes: config_version, approvals_insufficient, ...)."""
    record = candidate.record
    if record is None:
        return candidate
    try:
        result = check_record(source, record, verify)
    except LedgerError as exc:
        return AdmitResult(record.id, "rejected", exc.code, str(exc))
    if isinstance(result, Redaction):
        return replace(candidate, redaction=result)
    return candidate


@dataclass(frozen=True, slots=True)
class Prechecked:
    """``Mempool.precheck``'s answer: per-envelope results, and the store height its
    duplicate checks saw (``admit`` repeats them only if a block committed since)."""

    results: list[AdmitResult]
    store_height: int
    seen_ids: set[bytes]
    seen_pairs: set[tuple[bytes, int]]
    #: Sealed digests the store holds; of the ids redactions name, the sealed records the
    #: store holds (with signers) and those already redacted.
    seen_digests: set[bytes] = field(default_factory=set)
    sealed_signers: dict[bytes, bytes] = field(default_factory=dict)
    redacted: set[bytes] = field(default_factory=set)


class Mempool:
    """Records admitted but not yet committed, in arrival order, bounded by count and by what
    they cost in memory decoded (``Record.cost``, not envelope bytes: a payload of empty maps
    decodes to about 70 times its size)."""

    def __init__(self, genesis: Genesis, store: BlockStore, *, max_records: int = 100_000,
                 max_bytes: int = 128 * 1024 * 1024, max_skew_ms: int = 10 * 60 * 1000) -> None:
        self.genesis = genesis
        self.store = store
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_skew_ms = max_skew_ms
        # Pending records' signatures (and those of records first seen in a proposal, until
        # their commit): the LRU bound is only a backstop, ``remove_committed``/``_drop``
        # empty it as records leave.
        self.cache = VerifiedCache(limit=max_records + 50_000)
        # Votes', proposals' and certificates' signatures (consensus's ``verify``), in their
        # own small LRU: they never leave the pool, so in ``cache`` they piled up to its
        # 150,000-entry bound (~7 a height, ~430 bytes each: ~64 MB a node; issue 17).
        self.vote_cache = VerifiedCache(limit=VOTES_KEPT)
        self.pending: OrderedDict[bytes, Record] = OrderedDict()
        self.by_envelope: dict[bytes, Record] = {}  # the same records, by envelope bytes
        self.nonces: set[tuple[bytes, int]] = set()
        self.digests: set[bytes] = set()  # the pending sealed records' payload digests
        # ids named by pending redactions -> the redaction's id (SPEC section 10: a second
        # redaction of an id would be invalid once the first commits)
        self.redacting: dict[bytes, bytes] = {}
        # the pending sealed records' (salt, payload) pairs: every pending sealed record has
        # one (admission requires it), so whatever ``reap`` proposes, this node can pass on
        self.pairs: dict[bytes, SealedPayload] = {}
        self.bytes = 0  # the pending records' Record.cost, and their pairs' sizes

    def __len__(self) -> int:
        return len(self.pending)

    def config(self) -> Config:
        """The configuration governing the next height: what admission checks against (the
        store's latest when it follows changes, else genesis's)."""
        history = self.store.history
        return self.genesis.config if history is None else history.latest

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """The verifier consensus uses: a record's signature from (and into) ``cache``,
        where admission put it; a vote's, proposal's or certificate's from the small
        ``vote_cache`` (the signed bytes' tag tells them apart)."""
        cache = self.cache if message[:len(RECORD_TAG)] == RECORD_TAG else self.vote_cache
        return cache.verify(public_key, message, signature)

    def is_full(self) -> bool:
        """True when no more records fit."""
        return len(self.pending) >= self.max_records or self.bytes >= self.max_bytes

    def precheck(self, items: Sequence[BatchItem]) -> Prechecked:
        """Decode a batch and check chain, signature, authorisation and, for a sealed
        record, its (salt, payload) pair (``with_pair``) of each item, one at a time: a
        rejected record is dropped at once, so a batch of records nobody may submit never
        holds more than one decoded. An envelope already pending is not decoded again
        (``admit`` calls it a duplicate). The records that pass may cost (see
        ``Record.cost``, plus their pairs' bytes) at most the room left in the pool, else
        MempoolFull: the batch would not fit, and holding it decoded is what the bound
        exists to prevent. The signature check asks the verified cache, so a record that
        reached this node first in a proposal is not verified twice. Runs in a worker
        thread; only reads the mempool (``admit``, on the event loop, decides)."""
        room = self.max_bytes - self.bytes
        spent = 0
        results = []
        config = self.config()
        held, verify = self.by_envelope.get, self.cache.verify
        for item in items:
            if isinstance(item, bytes):
                envelope, pair = item, None
            else:  # [envelope, salt, payload]: a sealed record and its pair
                envelope, salt, payload = item
                pair = new_pair(salt, payload)
            pending = held(envelope)
            if pending is not None:
                results.append(AdmitResult(pending.id, "accepted", record=pending))
                continue
            candidate = with_pair(check(config, decode(envelope, pair), verify))
            if candidate.record is not None:
                spent += candidate.record.cost + (pair.size if pair is not None else 0)
                if spent > room:
                    self._forget([x.record for x in [*results, candidate]
                                  if x.record is not None])
                    raise MempoolFull(
                        f"the batch's records cost {spent} bytes decoded, more than the "
                        f"{max(room, 0)} bytes left in the mempool")
            results.append(candidate)
        return self._look_up(results)

    def _look_up(self, results: list[AdmitResult]) -> Prechecked:
        """Which of the candidates' ids, (signer, nonce) pairs and sealed digests the store
        holds, and what it holds of the ids the candidate redactions name."""
        candidates = [c.record for c in results if c.record is not None]
        digests = [r.body.payload_digest for r in candidates if r.body.payload_digest]
        named = [rid for c in results if c.record is not None and c.redaction is not None
                 for rid in c.redaction.ids]
        height = self.store.height  # read before the queries: a commit after it shows
        return Prechecked(
            results, height, self.store.seen_ids([r.id for r in candidates]),
            self.store.seen_nonces([(r.body.signer, r.body.nonce) for r in candidates]),
            self.store.seen_digests(digests) if digests else set(),
            self.store.sealed_signers(named) if named else {},
            self.store.redacted(named) if named else set())

    def admit(self, checked: Prechecked, now_ms: int) -> list[AdmitResult]:
        """Stateful checks for checked records; add the good ones, in input order. The
        store is asked again only if a block committed since ``precheck`` asked it."""
        if checked.store_height != self.store.height:
            checked = self._look_up(checked.results)
        seen_ids, seen_pairs = checked.seen_ids, checked.seen_pairs
        out = []
        # ``precheck`` put every candidate's signature in the cache: those not admitted (a
        # committed record's gossip arriving after its commit, a reused nonce, ...) leave it
        # again, else they would stay until its LRU bound (issue 17)
        refused: list[Record] = []
        for i, c in enumerate(checked.results):
            r = c.record
            if r is None:
                out.append(c)
                continue
            pair = (r.body.signer, r.body.nonce)
            digest = r.body.payload_digest
            refusal = None if c.redaction is None else self._redaction_refusal(c.redaction,
                                                                               checked)
            if r.id in self.pending:
                out.append(AdmitResult(r.id, "duplicate"))
            elif r.id in seen_ids:  # committed: its pair may heal a node lacking it
                out.append(AdmitResult(r.id, "duplicate", pair=c.pair))
            elif pair in self.nonces or pair in seen_pairs:
                out.append(AdmitResult(r.id, "rejected", "nonce_reused",
                                       f"signer {r.body.signer.hex()} already used nonce "
                                       f"{r.body.nonce}"))
            elif digest is not None and (digest in self.digests
                                         or digest in checked.seen_digests):
                where = "pending" if digest in self.digests else "committed"
                out.append(AdmitResult(r.id, "rejected", DigestReusedError.code,
                                       f"payload_digest {digest.hex()} is already {where} (a "
                                       "digest may appear once on a chain)"))
            elif refusal is not None:
                out.append(AdmitResult(r.id, "rejected", refusal.code, str(refusal)))
            elif abs(r.body.ts - now_ms) > self.max_skew_ms:
                out.append(AdmitResult(r.id, "rejected", "clock_skew",
                                       f"ts {r.body.ts} is more than {self.max_skew_ms} ms "
                                       f"from the node's clock {now_ms}"))
            elif self.is_full():
                self._forget(refused + [x.record for x in checked.results[i:]
                                        if x.record is not None])
                raise MempoolFull(f"mempool holds {len(self.pending)} records")
            else:
                self.pending[r.id] = r
                self.by_envelope[r.envelope] = r
                self.nonces.add(pair)
                if digest is not None:
                    self.digests.add(digest)
                if c.pair is not None:
                    self.pairs[r.id] = c.pair
                for rid in c.redaction.ids if c.redaction is not None else ():
                    self.redacting[rid] = r.id
                self.bytes += r.cost + (c.pair.size if c.pair is not None else 0)
                # its signature is in the verified cache already: ``precheck`` asked the
                # cache, which keeps every signature it verifies (no second sha256 here)
                out.append(c if c.redaction is None
                           else AdmitResult(r.id, "accepted", record=r, pair=c.pair))
            if out[-1].status != "accepted":
                refused.append(r)
        if refused:
            self._forget(refused)
        return out

    def _forget(self, records: list[Record]) -> None:
        """Forget the verified signatures of ``records`` that are not pending."""
        for r in records:
            if r.id not in self.pending:
                self.cache.forget(r)

    def _redaction_refusal(self, redaction: Redaction,
                           checked: Prechecked) -> ValidationError | None:
        """Why the chain-extension rule would refuse ``redaction`` in the next block
        (``check_redaction_targets`` under the configuration governing it), or None. A
        target still pending is not committed at a lower height; one a pending redaction
        names counts as redacted (whichever commits first, the other is then invalid)."""
        try:
            check_redaction_targets(
                self.config(), redaction, checked.sealed_signers.get,
                lambda rid: rid in checked.redacted or rid in self.redacting)
        except ValidationError as exc:
            return exc
        return None

    def known(self, envelope: bytes) -> Record | None:
        """The pending record decoded from exactly these envelope bytes, if any (spares
        decoding a proposal's records again)."""
        return self.by_envelope.get(envelope)

    def get(self, record_id: bytes) -> Record | None:
        """A pending record by id."""
        return self.pending.get(record_id)

    def pair(self, record_id: bytes) -> SealedPayload | None:
        """The (salt, payload) pair of a pending sealed record."""
        return self.pairs.get(record_id)

    def pairs_for(self, records: Iterable[Record]) -> dict[bytes, SealedPayload]:
        """The pairs this mempool holds for ``records`` (a block about to be committed)."""
        pairs = self.pairs
        return {r.id: p for r in records if (p := pairs.get(r.id)) is not None}

    def batch_item(self, record: Record) -> BatchItem:
        """``record`` as a batch item: its envelope, with its pair if sealed (gossip)."""
        p = self.pairs.get(record.id)
        return record.envelope if p is None else (record.envelope, p.salt, p.payload)

    def reap(self, max_records: int, max_bytes: int) -> list[Record]:
        """The oldest pending records within the limits (they stay until committed). A
        sealed record is proposed only with its pair held here (SPEC section 10; admission
        guarantees it, the check keeps it so)."""
        out: list[Record] = []
        size = 0
        pairs = self.pairs
        for r in self.pending.values():
            if len(out) >= max_records or size + len(r.envelope) > max_bytes:
                break
            if r.body.payload_digest is not None and r.id not in pairs:
                continue
            out.append(r)
            size += len(r.envelope)
        return out

    def remove_committed(self, block: Block) -> None:
        """Forget records that ``block`` committed, and any pending record it conflicts with."""
        pairs = {(r.body.signer, r.body.nonce) for r in block.records}
        for r in block.records:
            if not self._drop(r.id):
                self.cache.forget(r)  # those this node first saw in a proposal
        if pairs & self.nonces:
            for rid in [i for i, r in self.pending.items()
                        if (r.body.signer, r.body.nonce) in pairs]:
                self._drop(rid)
        digests = {r.body.payload_digest for r in block.records if r.body.payload_digest}
        if digests & self.digests:
            for rid in [i for i, r in self.pending.items() if r.body.payload_digest in digests]:
                self._drop(rid)
        redacting = self.redacting  # pending redactions of ids the block redacted
        if redacting and any(r.body.type == REDACT_TYPE for r in block.records):
            named = {rid for red in block_redactions(None, block.records) for rid in red.ids}
            for rid in {redacting[i] for i in named if i in redacting}:
                self._drop(rid)
        if any(r.body.type == CONFIG_TYPE for r in block.records):
            self.recheck()

    def recheck(self) -> list[bytes]:
        """After a configuration change committed: drop pending records the configuration
        now in force refuses (a revoked key's, a change for the replaced version), so no
        proposal carries them. Returns their ids. Signatures answer from the cache."""
        config = self.config()
        dropped = []
        for rid, r in list(self.pending.items()):
            try:
                check_record(config, r, self.cache.verify)
            except LedgerError:
                dropped.append(rid)
                self._drop(rid)
        return dropped

    def _drop(self, record_id: bytes) -> bool:
        """Forget a pending record (and its signature); False if it was not pending."""
        r = self.pending.pop(record_id, None)
        if r is not None:
            del self.by_envelope[r.envelope]
            self.cache.forget(r)
            self.nonces.discard((r.body.signer, r.body.nonce))
            if r.body.payload_digest is not None:
                self.digests.discard(r.body.payload_digest)
            p = self.pairs.pop(record_id, None)
            if p is not None:
                self.bytes -= p.size
            if r.body.type == REDACT_TYPE:
                for rid in [i for i, by in self.redacting.items() if by == record_id]:
                    del self.redacting[rid]
            self.bytes -= r.cost
            return True
        return False

    def ids(self) -> Iterable[bytes]:
        """Pending ids, oldest first."""
        return self.pending.keys()
