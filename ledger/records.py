"""Records: what clients sign and submit (SPEC section 2).

``RecordBody`` is the signed map of exactly seven keys; ``Record`` is the envelope
``[body, sig]`` with the body bytes kept exactly as sent — nodes never re-encode a body,
because the signature and the id cover those bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256 as _sha256
from typing import Any

from ledger.config import CONFIG_TYPE
from ledger.crypto import (
    PUBLIC_KEY_SIZE,
    RECORD_TAG,
    SIGNATURE_SIZE,
    PrivateKey,
    is_valid_signature,
    sha256,
)
from ledger.encoding import (
    MAX_DEPTH,
    MapPairs,
    bin_span,
    decode,
    decode_plain,
    expect_array,
    expect_bytes,
    expect_int,
    expect_str,
    fail,
    kind_of,
    map_str_value,
    map_value_sizes,
    packb,
    require_canonical,
    scan,
    unpack_exact,
)
from ledger.errors import (
    InvalidBodyError,
    LedgerError,
    PayloadMismatchError,
    SignatureError,
    TooLargeError,
)

#: A payload's encoded size at most (SPEC section 2), for every type but ``ledger.config``.
MAX_PAYLOAD_BYTES = 64 * 1024
#: A ``ledger.config`` payload's encoded size at most (SPEC section 9): the one constant every
#: other size bound (record decoding, the explorer's ledger.js, block, frame and request
#: limits) derives from or is checked against.
MAX_CONFIG_PAYLOAD_BYTES = 1024 * 1024
#: A body is seven short fields around the payload; this bounds everything but the payload.
BODY_OVERHEAD = 2048
ENVELOPE_OVERHEAD = 128
MAX_BODY_BYTES = MAX_PAYLOAD_BYTES + BODY_OVERHEAD
MAX_ENVELOPE_BYTES = MAX_BODY_BYTES + ENVELOPE_OVERHEAD
#: The largest body and envelope of any record (a ``ledger.config`` one).
MAX_CONFIG_BODY_BYTES = MAX_CONFIG_PAYLOAD_BYTES + BODY_OVERHEAD
MAX_RECORD_ENVELOPE_BYTES = MAX_CONFIG_BODY_BYTES + ENVELOPE_OVERHEAD
#: msgpack elements a body beyond MAX_BODY_BYTES (necessarily a ``ledger.config`` one) may
#: decode to: no more than a 64 KiB payload can hold, so a 1 MiB body of empty maps is
#: refused before it is built. A valid change holds far fewer (docs/protocol.md).
MAX_LARGE_BODY_ELEMENTS = MAX_PAYLOAD_BYTES
#: How deep a payload may nest (a validity rule, docs/protocol.md): 64 levels of arrays/maps.
MAX_PAYLOAD_DEPTH = MAX_DEPTH
MAX_SUBJECT_BYTES = 256
MAX_CHAIN_BYTES = 64
TYPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
BODY_KEYS = ("chain", "type", "subject", "payload", "ts", "nonce", "signer")
#: A sealed body (SPEC section 10): ``payload_digest`` in place of ``payload``.
SEALED_BODY_KEYS = ("chain", "type", "subject", "payload_digest", "ts", "nonce", "signer")
_BODY_KEY_SET = frozenset(BODY_KEYS)
_SEALED_KEY_SET = frozenset(SEALED_BODY_KEYS)
_BOTH_KEY_SET = _BODY_KEY_SET | _SEALED_KEY_SET
DIGEST_SIZE = 32

#: Bytes one decoded msgpack element may take in Python at most (an empty dict in a list is
#: 64 + 8 bytes on CPython 3.11; tests/unit/test_mempool.py measures it) and the objects
#: around one record (Record, RecordBody, mempool entries, the verified-signature cache).
ELEMENT_COST = 96
RECORD_OVERHEAD = 1024
#: Bodies up to this size are decoded by msgpack first (``decode_plain``), which builds the
#: value before judging it: at most a few thousand elements, where the strict decoder's
#: scan would refuse a bad one before building anything. Typical bodies are ~200-500 bytes.
PLAIN_BODY_BYTES = 8 * 1024
#: A body is one map around the payload: one level more than a payload may nest.
MAX_BODY_DEPTH = MAX_PAYLOAD_DEPTH + 1


@dataclass(frozen=True, slots=True)
class RecordBody:
    """The seven signed fields of a record."""

    chain: str
    type: str
    subject: str
    payload: Any
    ts: int
    nonce: int
    signer: bytes
    #: A sealed body's digest (SPEC section 10); then ``payload`` is None and not signed.
    payload_digest: bytes | None = None

    @property
    def sealed(self) -> bool:
        """True iff the body carries ``payload_digest`` instead of ``payload``."""
        return self.payload_digest is not None

    def to_wire(self) -> bytes:
        """The body map in SPEC key order (what a client signs)."""
        keys = SEALED_BODY_KEYS if self.sealed else BODY_KEYS
        return packb({k: getattr(self, k) for k in keys})

    def validate_basic(self) -> None:
        """Check every field's shape; needs no state."""
        chain, rtype, subject, ts, nonce, signer, digest = (
            self.chain, self.type, self.subject, self.ts, self.nonce, self.signer,
            self.payload_digest)
        if (type(chain) is str and type(rtype) is str and type(subject) is str
                and type(ts) is int and type(nonce) is int and type(signer) is bytes
                and 1 <= len(chain.encode()) <= MAX_CHAIN_BYTES
                and 1 <= len(subject.encode()) <= MAX_SUBJECT_BYTES
                and -(2**63) <= ts <= 2**63 - 1 and 0 <= nonce <= 2**64 - 1
                and len(signer) == PUBLIC_KEY_SIZE and TYPE_PATTERN.fullmatch(rtype)
                and (digest is None or (type(digest) is bytes and len(digest) == DIGEST_SIZE))):
            return  # every check below passes: the common case in one expression
        what = "record body"
        expect_str(self.chain, f"{what}.chain")
        if not 1 <= len(self.chain.encode()) <= MAX_CHAIN_BYTES:
            fail(f"{what}.chain", f"must be 1..{MAX_CHAIN_BYTES} bytes")
        expect_str(self.type, f"{what}.type")
        if not TYPE_PATTERN.fullmatch(self.type):
            fail(f"{what}.type", f"{self.type!r} does not match ^[a-z0-9][a-z0-9._-]{{0,63}}$")
        expect_str(self.subject, f"{what}.subject")
        if not 1 <= len(self.subject.encode()) <= MAX_SUBJECT_BYTES:
            fail(f"{what}.subject", f"must be 1..{MAX_SUBJECT_BYTES} bytes of UTF-8")
        expect_int(self.ts, f"{what}.ts", lo=-(2**63), hi=2**63 - 1)
        expect_int(self.nonce, f"{what}.nonce")
        expect_bytes(self.signer, f"{what}.signer", PUBLIC_KEY_SIZE)
        if self.payload_digest is not None:
            expect_bytes(self.payload_digest, f"{what}.payload_digest", DIGEST_SIZE)

    @classmethod
    def from_wire(cls, data: bytes) -> RecordBody:
        """Decode a body strictly: a map of exactly the seven keys, each of its type."""
        return cls.decode(data)[0]

    @classmethod
    def decode(cls, data: bytes) -> tuple[RecordBody, int]:
        """``from_wire`` and the number of msgpack elements the body decoded to: the
        strict decoder's verdict (``decode``), reached by msgpack's C decoder for a body in
        canonical encoding with str-keyed maps (``decode_plain``, the same value and count)."""
        what = "record body"
        if len(data) > MAX_BODY_BYTES:
            _check_large_body(data, what)
        plain = (decode_plain(data, MAX_BODY_DEPTH)
                 if type(data) is bytes and len(data) <= PLAIN_BODY_BYTES else None)
        fields, elements = plain or decode(data, what, max_depth=MAX_BODY_DEPTH)
        if type(fields) is not dict:
            if type(fields) is MapPairs:
                fail(what, f"unexpected key {_first_odd_key(fields)!r}")
            fail(what, f"expected a map of {len(BODY_KEYS)} keys, got {kind_of(fields)}")
        keys = fields.keys()
        if keys == _BOTH_KEY_SET:
            raise InvalidBodyError(f"{what}: holds both payload and payload_digest (a sealed "
                                   "body has payload_digest in place of payload)")
        if keys != _BODY_KEY_SET and keys != _SEALED_KEY_SET:
            if len(fields) != len(BODY_KEYS):
                fail(what, f"expected a map of {len(BODY_KEYS)} keys, got {len(fields)}")
            fail(what, f"unexpected key {_first_odd_key(MapPairs(list(fields.items())))!r}")
        if "payload_digest" in fields:
            digest = fields.pop("payload_digest")
            if type(digest) is not bytes:
                fail(f"{what}.payload_digest", f"expected bin, got {kind_of(digest)}")
            if cls is RecordBody:
                body = _new_body(fields["chain"], fields["type"], fields["subject"], None,
                                 fields["ts"], fields["nonce"], fields["signer"], digest)
            else:
                body = cls(**fields, payload=None, payload_digest=digest)
        elif cls is RecordBody:
            body = _new_body(fields["chain"], fields["type"], fields["subject"],
                             fields["payload"], fields["ts"], fields["nonce"], fields["signer"])
        else:
            body = cls(**fields)
        body.validate_basic()
        if len(data) > MAX_PAYLOAD_BYTES:  # else the payload cannot exceed its limit
            _check_payload_size(data, body)
        return body, elements


def _check_payload_size(data: bytes, body: RecordBody) -> None:
    """The payload of the body ``data`` (decoded as ``body``) is within its type's limit."""
    size, limit = map_value_sizes(data).get("payload", 0), payload_limit(body.type)
    if size > limit:
        raise TooLargeError(f"record body.payload: {size} bytes exceeds {limit}")


PAYLOAD_TAG = b"ledger.payload.v1\x00"
SALT_SIZE = 32


def payload_digest(salt: bytes, payload_bytes: bytes) -> bytes:
    """A sealed record's ``payload_digest`` over ``salt`` and the payload's msgpack bytes
    (SPEC section 10)."""
    return sha256(PAYLOAD_TAG + salt + payload_bytes)


def sealed_payload_matches(digest: bytes, salt: bytes, payload_bytes: bytes) -> bool:
    """``check_sealed_payload``'s verdict for the common pair, without its error labels:
    True only for a pair it passes (a 32-byte salt, a payload of at most PLAIN_BODY_BYTES
    in canonical encoding with str-keyed maps: ``decode_plain``, the strict decoder's
    verdict, and the salted digest equal to ``digest``). False says only "not this fast
    way": ``check_sealed_payload`` then judges (and names what is wrong). Every node runs
    this once per sealed record it admits, so it makes no label and no call it can avoid
    (the digest is ``payload_digest``'s, inlined)."""
    return (type(payload_bytes) is bytes and len(salt) == SALT_SIZE
            and len(payload_bytes) <= PLAIN_BODY_BYTES
            and decode_plain(payload_bytes, MAX_PAYLOAD_DEPTH) is not None
            and _sha256(PAYLOAD_TAG + salt + payload_bytes).digest() == digest)


def check_sealed_payload(digest: bytes, salt: bytes, payload_bytes: bytes, what: str) -> None:
    """The one rule for a sealed payload (SPEC section 10): a 32-byte salt, payload bytes
    that are one payload by section 2's rules (kept as sent), and their digest equal to the
    record's ``payload_digest``. PayloadMismatchError names ``what`` otherwise."""
    if sealed_payload_matches(digest, salt, payload_bytes):
        return
    if len(salt) != SALT_SIZE:
        raise PayloadMismatchError(f"{what}: the salt is {len(salt)} bytes, not {SALT_SIZE}")
    if len(payload_bytes) > MAX_PAYLOAD_BYTES:
        raise PayloadMismatchError(f"{what}: the payload is {len(payload_bytes)} bytes, more "
                                   f"than {MAX_PAYLOAD_BYTES}")
    # The strict decoder's verdict, reached by msgpack's C decoder for a payload in
    # canonical encoding with str-keyed maps (``decode_plain``: the same verdict, as for a
    # body's; ``decode`` alone says what is wrong with any other bytes).
    if (type(payload_bytes) is not bytes or len(payload_bytes) > PLAIN_BODY_BYTES
            or decode_plain(payload_bytes, MAX_PAYLOAD_DEPTH) is None):
        try:
            decode(payload_bytes, f"{what}.payload", max_depth=MAX_PAYLOAD_DEPTH)
        except LedgerError as exc:
            raise PayloadMismatchError(str(exc)) from exc
    if payload_digest(salt, payload_bytes) != digest:
        raise PayloadMismatchError(f"{what}: sha256 of the salt and payload is not the "
                                   f"record's payload_digest {digest.hex()}")


@dataclass(frozen=True, slots=True)
class SealedPayload:
    """What a sealed record keeps off the chain (SPEC section 10): its salt and the payload's
    msgpack bytes, exactly as submitted (the digest covers those bytes)."""

    salt: bytes
    payload: bytes
    #: Set by ``check`` alone (in place: the pair's value is unchanged, and a new frozen
    #: object per record is what admission cannot afford): the digest this pair was found
    #: to match, so a later holder (the store's append of the node's own mempool pairs)
    #: compares 32 bytes instead of decoding and hashing the payload again. Not part of
    #: the pair's value.
    checked_for: bytes | None = field(default=None, compare=False, repr=False)

    def check(self, record: Record) -> SealedPayload:
        """``check_sealed_payload`` for ``record`` (which must be sealed); InvalidBodyError
        if it is an inline record. Returns this pair, marked as checked for its digest."""
        digest = record.body.payload_digest
        if digest is None:
            raise InvalidBodyError(f"record {record.id.hex()} is not sealed: a salt and "
                                   "payload belong only with a body holding payload_digest")
        if self.checked_for != digest:
            if not sealed_payload_matches(digest, self.salt, self.payload):  # the label
                check_sealed_payload(digest, self.salt, self.payload,  # only if needed
                                     f"record {record.id.hex()}")
            _set_checked_for(self, digest)
        return self

    @property
    def size(self) -> int:
        return len(self.salt) + len(self.payload)


def seal_record(key: PrivateKey, *, chain: str, type: str, subject: str, payload: Any,
                ts: int, nonce: int, salt: bytes | None = None,
                ) -> tuple[Record, SealedPayload]:
    """Build and sign a sealed record of ``payload`` (SPEC section 10): a fresh random salt
    (unless given), the payload's msgpack bytes, and the body with their digest in place of
    the payload. Returns the record and the pair to submit with it."""
    salt = os.urandom(SALT_SIZE) if salt is None else salt
    payload_bytes = packb(payload)
    pair = SealedPayload(salt, payload_bytes)
    check_sealed_payload(payload_digest(salt, payload_bytes), salt, payload_bytes,
                         "sealed payload")  # the payload's own rules (size, depth, no ext)
    body = RecordBody(chain, type, subject, None, ts, nonce, key.public,
                      payload_digest=payload_digest(salt, payload_bytes))
    body.validate_basic()
    body_bytes = body.to_wire()
    sig = key.sign(RECORD_TAG + body_bytes)
    return (Record(body, body_bytes, sig, packb([body_bytes, sig]), sha256(body_bytes),
                   scan(body_bytes, "record body", max_depth=MAX_BODY_DEPTH)), pair)


def payload_limit(record_type: str) -> int:
    """The encoded size a payload of ``record_type`` may reach (SPEC sections 2 and 9)."""
    return MAX_CONFIG_PAYLOAD_BYTES if record_type == CONFIG_TYPE else MAX_PAYLOAD_BYTES


def _check_large_body(data: bytes, what: str) -> None:
    """A body over MAX_BODY_BYTES is admitted to decoding only if it is at most
    MAX_CONFIG_BODY_BYTES, its structure scans (allocating nothing), it decodes to at most
    MAX_LARGE_BODY_ELEMENTS elements and it is a map whose ``type`` is ``ledger.config``:
    any other record that large is ``too_large`` before a single object is built."""
    if len(data) > MAX_CONFIG_BODY_BYTES:
        raise TooLargeError(f"{what}: {len(data)} bytes exceeds {MAX_CONFIG_BODY_BYTES}")
    elements = scan(data, what, max_depth=MAX_BODY_DEPTH)
    if elements > MAX_LARGE_BODY_ELEMENTS:
        raise TooLargeError(f"{what}: {len(data)} bytes of {elements} msgpack elements: a body "
                            f"over {MAX_BODY_BYTES} bytes may hold {MAX_LARGE_BODY_ELEMENTS}")
    if map_str_value(data, "type") != CONFIG_TYPE:
        raise TooLargeError(f"{what}: {len(data)} bytes exceeds {MAX_BODY_BYTES} "
                            f"(only a {CONFIG_TYPE} payload may exceed {MAX_PAYLOAD_BYTES})")


def _first_odd_key(fields: MapPairs) -> Any:
    keys = _SEALED_KEY_SET if any(k == "payload_digest" for k, _ in fields.pairs) \
        else _BODY_KEY_SET
    return next(k for k, _ in fields.pairs if k not in keys)


@dataclass(frozen=True, slots=True)
class Record:
    """A signed record: the envelope ``[body, sig]`` and what it decodes to."""

    body: RecordBody
    body_bytes: bytes
    sig: bytes
    envelope: bytes
    id: bytes
    #: msgpack elements the body decoded to (what ``cost`` charges for the decoded payload).
    elements: int = field(default=0, compare=False)

    @property
    def cost(self) -> int:
        """What holding this record decoded costs in memory, in bytes (an upper estimate):
        the envelope and body bytes, every decoded element, and the objects around them.
        Bounds that hold records decoded (the mempool) count this, not envelope bytes: a
        64 KiB payload of empty maps decodes to about 70 times its size."""
        return (len(self.envelope) + len(self.body_bytes) + ELEMENT_COST * self.elements
                + RECORD_OVERHEAD)

    @classmethod
    def create(cls, key: PrivateKey, *, chain: str, type: str, subject: str, payload: Any,
               ts: int, nonce: int) -> Record:
        """Build and sign a record with ``key``."""
        body = RecordBody(chain, type, subject, payload, ts, nonce, key.public)
        body.validate_basic()
        body_bytes = body.to_wire()
        limit = MAX_CONFIG_BODY_BYTES if type == CONFIG_TYPE else MAX_BODY_BYTES
        if len(body_bytes) > limit:
            raise TooLargeError(f"record body: {len(body_bytes)} bytes exceeds {limit}")
        sig = key.sign(RECORD_TAG + body_bytes)
        elements = scan(body_bytes, "record body", max_depth=MAX_BODY_DEPTH)
        return cls(body, body_bytes, sig, packb([body_bytes, sig]), sha256(body_bytes),
                   elements)

    @classmethod
    def from_wire(cls, envelope: bytes) -> Record:
        """Decode an envelope strictly (shape only: the signature is not checked here)."""
        what = "record envelope"
        if len(envelope) > MAX_RECORD_ENVELOPE_BYTES:
            raise TooLargeError(
                f"{what}: {len(envelope)} bytes exceeds {MAX_RECORD_ENVELOPE_BYTES}")
        parts = _envelope_parts(envelope) if type(envelope) is bytes else None
        if parts is not None:
            body_bytes, sig = parts
            body, elements = RecordBody.decode(body_bytes)
            if cls is Record:
                return _new_record(body, body_bytes, sig, envelope, sha256(body_bytes),
                                   elements)
            return cls(body, body_bytes, sig, envelope, sha256(body_bytes), elements)
        items = expect_array(unpack_exact(envelope, what), what, 2)
        body_bytes = expect_bytes(items[0], f"{what}.body")
        sig = expect_bytes(items[1], f"{what}.sig", SIGNATURE_SIZE)
        require_canonical(envelope, items, what)
        body, elements = RecordBody.decode(body_bytes)
        return cls(body, body_bytes, sig, bytes(envelope), sha256(body_bytes), elements)

    def to_wire(self) -> bytes:
        """The envelope bytes."""
        return self.envelope

    def sign_bytes(self) -> bytes:
        """What the signer signed: the record tag and the body bytes as sent."""
        return RECORD_TAG + self.body_bytes

    def has_valid_signature(self) -> bool:
        """True iff the signature verifies under the body's signer."""
        return is_valid_signature(self.body.signer, self.sign_bytes(), self.sig)

    def verify_signature(self) -> None:
        """Raise SignatureError unless the signature verifies."""
        if not self.has_valid_signature():
            raise SignatureError(f"record {self.id.hex()}: signature does not verify")



# The decoders' constructors of the two frozen, slotted dataclasses above: the same objects
# their generated ``__init__`` builds (every field given, no ``__post_init__``), with each
# slot set through its descriptor instead of ``object.__setattr__``: about half the cost,
# ~1.4 us of every record a node decodes (tests/unit/test_records.py compares them).
_new = object.__new__
_body_slots = tuple(RecordBody.__dict__[k].__set__ for k in (*BODY_KEYS, "payload_digest"))
_record_slots = tuple(Record.__dict__[k].__set__
                      for k in ("body", "body_bytes", "sig", "envelope", "id", "elements"))


def _new_body(chain: str, type_: str, subject: str, payload: Any, ts: int, nonce: int,
              signer: bytes, payload_digest: bytes | None = None) -> RecordBody:
    """``RecordBody(chain, type_, subject, payload, ts, nonce, signer, payload_digest)``."""
    body = _new(RecordBody)
    s_chain, s_type, s_subject, s_payload, s_ts, s_nonce, s_signer, s_digest = _body_slots
    s_chain(body, chain)
    s_type(body, type_)
    s_subject(body, subject)
    s_payload(body, payload)
    s_ts(body, ts)
    s_nonce(body, nonce)
    s_signer(body, signer)
    s_digest(body, payload_digest)
    return body


def _new_record(body: RecordBody, body_bytes: bytes, sig: bytes, envelope: bytes,
                record_id: bytes, elements: int) -> Record:
    """``Record(body, body_bytes, sig, envelope, record_id, elements)``."""
    record = _new(Record)
    s_body, s_body_bytes, s_sig, s_envelope, s_id, s_elements = _record_slots
    s_body(record, body)
    s_body_bytes(record, body_bytes)
    s_sig(record, sig)
    s_envelope(record, envelope)
    s_id(record, record_id)
    s_elements(record, elements)
    return record


_pair_slots = tuple(SealedPayload.__dict__[k].__set__
                    for k in ("salt", "payload", "checked_for"))


_set_checked_for = _pair_slots[2]


def new_pair(salt: bytes, payload: bytes) -> SealedPayload:
    """``SealedPayload(salt, payload)`` built through its slots, as ``_new_body`` builds a
    body (the frozen dataclass's ``__init__`` costs ~1 µs per pair on every node's
    admission of a sealed item): the same value, equal and as immutable."""
    pair = _new(SealedPayload)
    s_salt, s_payload, s_checked = _pair_slots
    s_salt(pair, salt)
    s_payload(pair, payload)
    s_checked(pair, None)
    return pair


def _envelope_parts(envelope: bytes) -> tuple[bytes, bytes] | None:
    """(body bytes, sig) of an envelope in its one canonical layout, read from the bytes:
    ``[bin body, bin(64) sig]``, each bin with the smallest header for its length (what
    ``packb`` writes). None for any other bytes: the strict decoder and the canonical
    check (``Record.from_wire``) then judge them, and refuse every one but these."""
    size = len(envelope)
    if size < 69 or envelope[0] != 0x92:
        return None
    span = bin_span(envelope, 1)
    if span is None or not span[2]:
        return None
    start, end, _ = span
    if size != end + 2 + SIGNATURE_SIZE or envelope[end] != 0xc4 \
            or envelope[end + 1] != SIGNATURE_SIZE:
        return None
    return envelope[start:end], envelope[end + 2:]


KnownRecords = Callable[[bytes], "Record | None"]


def records_from_obj(envelopes: Any, what: str,
                     known: KnownRecords | None = None) -> tuple[Record, ...]:
    """Decode an array of envelopes (a block's or a proposal's records) strictly.

    ``known`` may return the Record already decoded from the very same envelope bytes (a
    node's mempool), which is what decoding them again would give: a proposal of records
    this node admitted costs a lookup per record instead of a decode.
    """
    out = []
    for i, e in enumerate(expect_array(envelopes, what)):
        envelope = expect_bytes(e, f"{what}[{i}]")
        record = known(envelope) if known is not None else None
        out.append(record if record is not None else Record.from_wire(envelope))
    return tuple(out)
