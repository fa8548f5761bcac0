"""Records: what clients sign and submit (SPEC section 2).

``RecordBody`` is the signed map of exactly seven keys; ``Record`` is the envelope
``[body, sig]`` with the body bytes kept exactly as sent — nodes never re-encode a body,
because the signature and the id cover those bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from ledger.crypto import (
    PUBLIC_KEY_SIZE,
    RECORD_TAG,
    SIGNATURE_SIZE,
    PrivateKey,
    is_valid_signature,
    sha256,
)
from ledger.encoding import (
    expect_array,
    expect_bytes,
    expect_int,
    expect_str,
    fail,
    packb,
    pairs_to_dict,
    reject_ext,
    require_canonical,
    unpack_exact,
)
from ledger.errors import DecodeError, SignatureError, TooLargeError

MAX_PAYLOAD_BYTES = 64 * 1024
#: A body is seven short fields around the payload; this bounds everything but the payload.
MAX_BODY_BYTES = MAX_PAYLOAD_BYTES + 2048
MAX_ENVELOPE_BYTES = MAX_BODY_BYTES + 128
MAX_SUBJECT_BYTES = 256
MAX_CHAIN_BYTES = 64
TYPE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
BODY_KEYS = ("chain", "type", "subject", "payload", "ts", "nonce", "signer")
_BODY_KEY_SET = frozenset(BODY_KEYS)

# Ext type -1 (the msgpack timestamp) is decoded by msgpack without calling ext_hook; these
# are its three possible headers, so a body without any of them cannot hold one.
_TIMESTAMP_MARKERS = re.compile(rb"\xd6\xff|\xd7\xff|\xc7\x0c\xff")


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

    def to_wire(self) -> bytes:
        """The body map in SPEC key order (what a client signs)."""
        return packb({k: getattr(self, k) for k in BODY_KEYS})

    def validate_basic(self) -> None:
        """Check every field's shape; needs no state."""
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

    @classmethod
    def from_wire(cls, data: bytes) -> RecordBody:
        """Decode a body strictly: a map of exactly the seven keys, each of its type."""
        if len(data) <= MAX_PAYLOAD_BYTES:
            # Fast path: one C-level unpack. A payload cannot exceed its limit inside a body
            # this small; anything unusual takes the key-by-key path, which names the error.
            try:
                fields = unpack_exact(data, "record body")
            except DecodeError:
                fields = None
            if type(fields) is dict and fields.keys() == _BODY_KEY_SET:
                return cls._checked(cls(**fields), data)
        return cls._from_wire_by_key(data)

    @classmethod
    def _checked(cls, body: RecordBody, data: bytes) -> RecordBody:
        body.validate_basic()
        if _TIMESTAMP_MARKERS.search(data):
            _reject_timestamps(body.payload)
        return body

    @classmethod
    def _from_wire_by_key(cls, data: bytes) -> RecordBody:
        what = "record body"
        if len(data) > MAX_BODY_BYTES:
            raise TooLargeError(f"{what}: {len(data)} bytes exceeds {MAX_BODY_BYTES}")
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, object_pairs_hook=pairs_to_dict,
            ext_hook=reject_ext, timestamp=0, max_buffer_size=max(len(data), 1),
        )
        unpacker.feed(data)
        fields: dict[str, Any] = {}
        try:
            count = unpacker.read_map_header()
            if count != len(BODY_KEYS):
                fail(what, f"expected a map of {len(BODY_KEYS)} keys, got {count}")
            for _ in range(count):
                key = unpacker.unpack()
                if key not in BODY_KEYS:
                    fail(what, f"unexpected key {key!r}")
                if key in fields:
                    fail(what, f"repeated key {key!r}")
                start = unpacker.tell()
                fields[key] = unpacker.unpack()
                if key == "payload" and unpacker.tell() - start > MAX_PAYLOAD_BYTES:
                    raise TooLargeError(
                        f"{what}.payload: {unpacker.tell() - start} bytes exceeds "
                        f"{MAX_PAYLOAD_BYTES}"
                    )
            if unpacker.tell() != len(data):
                fail(what, "trailing bytes after the map")
        except DecodeError:
            raise
        except Exception as exc:  # msgpack: ValueError, OutOfData, FormatError, StackError
            raise DecodeError(f"{what}: not valid msgpack ({type(exc).__name__}: {exc})") from exc
        return cls._checked(cls(**fields), data)


def _reject_timestamps(payload: Any) -> None:
    stack = [payload]
    while stack:
        value = stack.pop()
        if isinstance(value, msgpack.Timestamp):
            fail("record body.payload", "msgpack ext type -1 (timestamp) is not allowed")
        if isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())


@dataclass(frozen=True, slots=True)
class Record:
    """A signed record: the envelope ``[body, sig]`` and what it decodes to."""

    body: RecordBody
    body_bytes: bytes
    sig: bytes
    envelope: bytes
    id: bytes

    @classmethod
    def create(cls, key: PrivateKey, *, chain: str, type: str, subject: str, payload: Any,
               ts: int, nonce: int) -> Record:
        """Build and sign a record with ``key``."""
        body = RecordBody(chain, type, subject, payload, ts, nonce, key.public)
        body.validate_basic()
        body_bytes = body.to_wire()
        if len(body_bytes) > MAX_BODY_BYTES:
            raise TooLargeError(f"record body: {len(body_bytes)} bytes exceeds {MAX_BODY_BYTES}")
        sig = key.sign(RECORD_TAG + body_bytes)
        return cls(body, body_bytes, sig, packb([body_bytes, sig]), sha256(body_bytes))

    @classmethod
    def from_wire(cls, envelope: bytes) -> Record:
        """Decode an envelope strictly (shape only: the signature is not checked here)."""
        what = "record envelope"
        if len(envelope) > MAX_ENVELOPE_BYTES:
            raise TooLargeError(f"{what}: {len(envelope)} bytes exceeds {MAX_ENVELOPE_BYTES}")
        items = expect_array(unpack_exact(envelope, what), what, 2)
        body_bytes = expect_bytes(items[0], f"{what}.body")
        sig = expect_bytes(items[1], f"{what}.sig", SIGNATURE_SIZE)
        require_canonical(envelope, items, what)
        return cls(RecordBody.from_wire(body_bytes), body_bytes, sig, bytes(envelope),
                   sha256(body_bytes))

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
