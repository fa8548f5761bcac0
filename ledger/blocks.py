"""Block headers, votes, commit certificates and blocks (SPEC section 4).

Each type owns its wire form (``to_wire``/``from_wire``, or ``to_obj``/``from_obj`` where
it is nested inside another array), decodes strictly, and has a stateless
``validate_basic``. Checks against a validator set or the chain so far live with their
callers (``verify`` here for certificates, ``ledger.audit`` for the chain).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import msgpack

from ledger import merkle
from ledger.crypto import (
    HASH_SIZE,
    SIGNATURE_SIZE,
    VOTE_TAG,
    PrivateKey,
    is_valid_signature,
    sha256,
)
from ledger.encoding import (
    decode_plain,
    expect_array,
    expect_bytes,
    expect_int,
    expect_str,
    fail,
    packb,
    require_canonical,
    unpack_exact,
)
from ledger.errors import BlockError, CertificateError
from ledger.genesis import ValidatorSet
from ledger.records import KnownRecords, Record, records_from_obj

HEADER_VERSION = 1
PREVOTE = 1
PRECOMMIT = 2
MAX_ROUND = 2**32 - 1


@dataclass(frozen=True)
class Header:
    """A block header; ``hash`` is the block hash."""

    chain: str
    height: int
    time_ms: int
    prev_hash: bytes
    records_root: bytes
    record_count: int
    log_root: bytes
    log_size: int
    proposer: int
    validators_hash: bytes
    version: int = HEADER_VERSION

    def to_obj(self) -> list[Any]:
        """The header array of SPEC section 4."""
        return [self.version, self.chain, self.height, self.time_ms, self.prev_hash,
                self.records_root, self.record_count, self.log_root, self.log_size,
                self.proposer, self.validators_hash]

    def to_wire(self) -> bytes:
        """``packb(header)``: what the block hash covers."""
        return packb(self.to_obj())

    @cached_property
    def hash(self) -> bytes:
        """The block hash: ``sha256(packb(header))``."""
        return sha256(self.to_wire())

    @classmethod
    def from_obj(cls, obj: Any) -> Header:
        """Build from a decoded header array, checking every field's type."""
        w = "header"
        items = expect_array(obj, w, 11)
        version = expect_int(items[0], f"{w}.version")
        if version != HEADER_VERSION:
            fail(f"{w}.version", f"unsupported version {version}")
        return cls(
            chain=expect_str(items[1], f"{w}.chain"),
            height=expect_int(items[2], f"{w}.height", lo=1),
            time_ms=expect_int(items[3], f"{w}.time_ms", lo=0, hi=2**63 - 1),
            prev_hash=expect_bytes(items[4], f"{w}.prev_hash", HASH_SIZE),
            records_root=expect_bytes(items[5], f"{w}.records_root", HASH_SIZE),
            record_count=expect_int(items[6], f"{w}.record_count"),
            log_root=expect_bytes(items[7], f"{w}.log_root", HASH_SIZE),
            log_size=expect_int(items[8], f"{w}.log_size"),
            proposer=expect_int(items[9], f"{w}.proposer"),
            validators_hash=expect_bytes(items[10], f"{w}.validators_hash", HASH_SIZE),
            version=version,
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Header:
        """Decode ``packb(header)`` strictly (canonical encoding required)."""
        obj = unpack_exact(data, "header")
        require_canonical(data, obj, "header")
        return cls.from_obj(obj)

    def validate_basic(self) -> None:
        """Stateless checks beyond field types."""
        if self.log_size < self.record_count:
            raise BlockError(f"log_size {self.log_size} < record_count {self.record_count}")


@dataclass(frozen=True, slots=True)
class Vote:
    """A prevote or precommit for a block hash (or nil) at (height, round)."""

    chain: str
    kind: int
    height: int
    round: int
    block_hash: bytes | None

    def to_wire(self) -> bytes:
        """``packb([chain, kind, height, round, block_hash | nil])``."""
        return packb([self.chain, self.kind, self.height, self.round, self.block_hash])

    def sign_bytes(self) -> bytes:
        """The vote tag and the vote bytes."""
        return VOTE_TAG + self.to_wire()

    @classmethod
    def from_wire(cls, data: bytes) -> Vote:
        """Decode a vote strictly."""
        w = "vote"
        items = expect_array(unpack_exact(data, w), w, 5)
        require_canonical(data, items, w)
        kind = expect_int(items[1], f"{w}.kind")
        if kind not in (PREVOTE, PRECOMMIT):
            fail(f"{w}.kind", f"expected 1 (prevote) or 2 (precommit), got {kind}")
        block_hash = items[4]
        return cls(
            chain=expect_str(items[0], f"{w}.chain"),
            kind=kind,
            height=expect_int(items[2], f"{w}.height", lo=1),
            round=expect_int(items[3], f"{w}.round", hi=MAX_ROUND),
            block_hash=None if block_hash is None
            else expect_bytes(block_hash, f"{w}.block_hash", HASH_SIZE),
        )


@dataclass(frozen=True, slots=True)
class Certificate:
    """A commit certificate: precommit signatures for one block, ascending by index."""

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[int, bytes], ...]

    def to_obj(self) -> list[Any]:
        """The certificate array of SPEC section 4."""
        return [self.height, self.round, self.block_hash,
                [[index, sig] for index, sig in self.signatures]]

    def to_wire(self) -> bytes:
        """``packb(cert)``."""
        return packb(self.to_obj())

    @classmethod
    def from_obj(cls, obj: Any) -> Certificate:
        """Build from a decoded certificate array, checking every field's type."""
        w = "certificate"
        items = expect_array(obj, w, 4)
        sigs = []
        for i, entry in enumerate(expect_array(items[3], f"{w}.signatures")):
            pair = expect_array(entry, f"{w}.signatures[{i}]", 2)
            sigs.append((
                expect_int(pair[0], f"{w}.signatures[{i}].validator"),
                expect_bytes(pair[1], f"{w}.signatures[{i}].sig", SIGNATURE_SIZE),
            ))
        return cls(
            height=expect_int(items[0], f"{w}.height", lo=1),
            round=expect_int(items[1], f"{w}.round", hi=MAX_ROUND),
            block_hash=expect_bytes(items[2], f"{w}.block_hash", HASH_SIZE),
            signatures=tuple(sigs),
        )

    @classmethod
    def from_wire(cls, data: bytes) -> Certificate:
        """Decode ``packb(cert)`` strictly."""
        obj = unpack_exact(data, "certificate")
        require_canonical(data, obj, "certificate")
        return cls.from_obj(obj)

    def validate_basic(self) -> None:
        """Signatures present, listed by strictly ascending validator index."""
        if not self.signatures:
            raise CertificateError("certificate has no signatures")
        indices = [index for index, _ in self.signatures]
        if any(a >= b for a, b in itertools.pairwise(indices)):
            raise CertificateError(
                "certificate signatures are not in strictly ascending validator order"
            )

    def precommit(self, chain: str) -> Vote:
        """The precommit every signature in this certificate must sign."""
        return Vote(chain, PRECOMMIT, self.height, self.round, self.block_hash)

    def verify(self, chain: str, validators: ValidatorSet,
               is_valid: Callable[[bytes, bytes, bytes], bool] = is_valid_signature) -> None:
        """Raise CertificateError unless this certifies ``block_hash`` under ``validators``.

        Every listed signature must be a valid precommit by a distinct validator of the set
        (one bad signature fails the certificate, even if the rest would be a quorum), and
        the signers' power must be more than 2/3 of the total.
        """
        self.validate_basic()
        message = self.precommit(chain).sign_bytes()
        power = 0
        for index, sig in self.signatures:
            if not 0 <= index < len(validators):
                raise CertificateError(
                    f"certificate names validator {index}, but the set has {len(validators)}"
                )
            validator = validators[index]
            if not is_valid(validator.pubkey, message, sig):
                raise CertificateError(
                    f"certificate signature of validator {index} ({validator.name}) "
                    "does not verify"
                )
            power += validator.power
        if not validators.is_quorum(power):
            raise CertificateError(
                f"certificate signers hold power {power} of {validators.total_power}; "
                "more than 2/3 is required"
            )


@dataclass(frozen=True)
class Block:
    """A block: header, records in order, and the certificate that committed it."""

    header: Header
    records: tuple[Record, ...]
    cert: Certificate

    def to_obj(self) -> list[Any]:
        """The block array of SPEC section 4 (envelopes as bin)."""
        return [self.header.to_obj(), [r.envelope for r in self.records], self.cert.to_obj()]

    def to_wire(self) -> bytes:
        """The exact bytes ``GET /v1/blocks/{h}`` serves as msgpack."""
        return packb(self.to_obj())

    @property
    def height(self) -> int:
        """The block's height."""
        return self.header.height

    @property
    def hash(self) -> bytes:
        """The block hash."""
        return self.header.hash

    @classmethod
    def from_wire(cls, data: bytes, known: KnownRecords | None = None) -> Block:
        """Decode block bytes strictly: shape and canonical encoding, no signature checks
        (``known``: see ``records_from_obj``)."""
        return BlockShell.from_wire(data).decode(known)

    def leaf_hashes(self) -> list[bytes]:
        """Merkle leaf hashes of the envelopes, in block order."""
        return list(self._leaves)

    @cached_property
    def _leaves(self) -> tuple[bytes, ...]:
        # hashed once per block: validate_basic, the audit's summary and a store's append
        # all ask for them
        leaf = merkle.leaf_hash
        return tuple(leaf(r.envelope) for r in self.records)

    def validate_basic(self) -> None:
        """Stateless consistency: record count, records root, certificate binding."""
        h = self.header
        h.validate_basic()
        check_contents(h, self.leaf_hashes())
        if self.cert.height != h.height:
            raise CertificateError(f"certificate is for height {self.cert.height}")
        if self.cert.block_hash != h.hash:
            raise CertificateError("certificate is for another block hash")
        self.cert.validate_basic()


@dataclass(frozen=True)
class BlockShell:
    """A block decoded up to its records: header, certificate and the envelopes as bytes.

    What a node checks a block it did not ask to trust against *before* paying for decoding
    its records (block sync): sizes, the certificate's binding to the header, and the
    certificate's signatures. ``decode`` then gives the Block.
    """

    header: Header
    envelopes: tuple[bytes, ...]
    cert: Certificate

    @classmethod
    def from_wire(cls, data: bytes) -> BlockShell:
        """Decode block bytes strictly (shape, canonical encoding), records left as bytes."""
        w = "block"
        plain = decode_plain(data) if type(data) is bytes else None
        if plain is not None:  # decoded strictly and canonical (it re-encodes to ``data``)
            obj = plain[0]
        else:  # anything else: the strict decoder and the canonical check say what is wrong
            obj = unpack_exact(data, w)
            require_canonical(data, obj, w)
        items = expect_array(obj, w, 3)
        header = Header.from_obj(items[0])
        envelopes = expect_array(items[1], f"{w}.records")
        for i, e in enumerate(envelopes):
            if type(e) is not bytes:
                fail(f"{w}.records[{i}]", "expected bin")
        return cls(header, tuple(envelopes), Certificate.from_obj(items[2]))

    @property
    def records_bytes(self) -> int:
        """Total size of the envelopes."""
        return sum(len(e) for e in self.envelopes)

    def check(self, chain: str, validators: ValidatorSet, *, max_records: int, max_bytes: int,
              is_valid: Callable[[bytes, bytes, bytes], bool] = is_valid_signature) -> None:
        """Raise BlockError/CertificateError unless the sizes are within the bounds, the
        record count matches the header, and the certificate certifies this header under
        ``validators`` (every signature checked). Cheap next to decoding the records."""
        h = self.header
        if len(self.envelopes) != h.record_count:
            raise BlockError(f"header says {h.record_count} records, "
                             f"block holds {len(self.envelopes)}")
        if h.record_count > max_records:
            raise BlockError(f"{h.record_count} records: more than {max_records}")
        if self.records_bytes > max_bytes:
            raise BlockError(f"{self.records_bytes} bytes of records: more than {max_bytes}")
        if self.cert.height != h.height or self.cert.block_hash != h.hash:
            raise CertificateError("the certificate is for another block")
        self.cert.verify(chain, validators, is_valid)

    def decode(self, known: KnownRecords | None = None) -> Block:
        """Decode the records (strictly; ``known``: see ``records_from_obj``)."""
        return Block(self.header, records_from_obj(list(self.envelopes), "block.records",
                                                   known), self.cert)


def _block_unpacker(data: bytes) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    try:
        if unpacker.read_array_header() != 3:
            fail("block", "expected an array of 3")
    except (ValueError, msgpack.OutOfData, msgpack.StackError) as exc:
        fail("block", f"not a block ({exc})")
    return unpacker


def peek_header(data: bytes) -> Header:
    """The header of block bytes, without reading its records (they are not checked)."""
    unpacker = _block_unpacker(data)
    try:
        obj = unpacker.unpack()
    except (ValueError, msgpack.OutOfData, msgpack.StackError) as exc:
        fail("block.header", f"does not decode ({exc})")
    return Header.from_obj(obj)


def peek_cert_obj(data: bytes) -> Any:
    """The certificate array of (trusted, e.g. stored) block bytes, records skipped."""
    unpacker = _block_unpacker(data)
    try:
        unpacker.skip()
        unpacker.skip()
        return unpacker.unpack()
    except (ValueError, msgpack.OutOfData, msgpack.StackError) as exc:
        fail("block.cert", f"does not decode ({exc})")


def verify_block_cert(data: bytes, header: Header, chain: str, validators: ValidatorSet,
                      is_valid: Callable[[bytes, bytes, bytes], bool] = is_valid_signature
                      ) -> Certificate:
    """The certificate of block bytes whose ``header`` was peeked, read without touching
    the records, bound to that header and verified under ``validators``; raises
    CertificateError or DecodeError. What block sync checks before anything costly."""
    cert = Certificate.from_obj(peek_cert_obj(data))
    if cert.height != header.height or cert.block_hash != header.hash:
        raise CertificateError("the certificate is for another block")
    cert.verify(chain, validators, is_valid)
    return cert


def build_header(*, chain: str, height: int, time_ms: int, prev_hash: bytes,
                 records: Iterable[Record], log: merkle.CompactRange, proposer: int,
                 validators_hash: bytes) -> Header:
    """The header of a new block of ``records`` on top of a chain whose log is ``log``."""
    leaves = [merkle.leaf_hash(r.envelope) for r in records]
    extended = log.copy()
    extended.extend(leaves)
    return Header(chain=chain, height=height, time_ms=time_ms, prev_hash=prev_hash,
                  records_root=merkle.root_from_leaf_hashes(leaves), record_count=len(leaves),
                  log_root=extended.root(), log_size=extended.size, proposer=proposer,
                  validators_hash=validators_hash)


def sign_certificate(chain: str, header: Header, round: int,
                     keys: Mapping[int, PrivateKey]) -> Certificate:
    """A certificate for ``header`` signed by the validators whose ``keys`` are given."""
    vote = Vote(chain, PRECOMMIT, header.height, round, header.hash).sign_bytes()
    return Certificate(header.height, round, header.hash,
                       tuple((i, keys[i].sign(vote)) for i in sorted(keys)))


def check_contents(header: Header, leaves: list[bytes]) -> None:
    """The header commits to these records: their count and ``records_root`` over their
    leaf hashes (consensus checks a proposal, the audit a block, by this one rule)."""
    if header.record_count != len(leaves):
        raise BlockError(f"header says {header.record_count} records, block holds {len(leaves)}")
    root = merkle.root_from_leaf_hashes(leaves)
    if root != header.records_root:
        raise BlockError(
            f"records_root mismatch: header {header.records_root.hex()}, computed {root.hex()}")
