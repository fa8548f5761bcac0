"""Validity rules shared by consensus, the audit and the store (SPEC sections 2 and 4).

Each check raises a typed ValidationError naming what is wrong (expected and got).
``verify`` is the signature check to use, so a node can pass one backed by its
verified-signature cache. ``check_extends`` is the one chain-extension rule: consensus
(``ConsensusCore._check_block``), the audit (``ChainVerifier.extend``) and both stores
(``append``) all call it, so none can accept a block another refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ledger import merkle
from ledger.blocks import Header
from ledger.crypto import RECORD_TAG, is_valid_signature
from ledger.errors import (
    BlockError,
    DuplicateError,
    SignatureError,
    UnauthorisedError,
    WrongChainError,
)
from ledger.genesis import Genesis, ValidatorSet
from ledger.records import Record

Verifier = Callable[[bytes, bytes, bytes], bool]


def check_record(genesis: Genesis, record: Record, verify: Verifier = is_valid_signature) -> None:
    """A decoded record is valid on this chain: chain, signature, authorisation."""
    body = record.body
    if body.chain != genesis.chain_id:
        raise WrongChainError(f"record {record.id.hex()} names chain {body.chain!r}")
    if not verify(body.signer, RECORD_TAG + record.body_bytes, record.sig):
        raise SignatureError(f"record {record.id.hex()}: signature does not verify")
    refusal = genesis.refusal(body.signer, body.type)
    if refusal is not None:  # no record id: the API answers it beside, the audit by index
        raise UnauthorisedError(refusal)


def check_unique_within(records: Sequence[Record]) -> None:
    """No record id or (signer, nonce) appears twice among ``records``."""
    ids = {r.id for r in records}
    if len(ids) != len(records):
        raise DuplicateError("a record appears twice in the block")
    if len({(r.body.signer, r.body.nonce) for r in records}) != len(records):
        raise DuplicateError("two records in the block share a (signer, nonce)")


def check_header_fields(genesis: Genesis, header: Header,
                        validators: ValidatorSet | None = None) -> None:
    """Header fields fixed by genesis and the height's validator set (``validators``; the
    genesis set when not given): chain id, validator set hash, proposer index."""
    if header.chain != genesis.chain_id:
        raise WrongChainError(f"header names chain {header.chain!r}, genesis is "
                              f"{genesis.chain_id!r}")
    vs = genesis.validators if validators is None else validators
    if header.validators_hash != vs.hash:
        raise BlockError("validators_hash does not match the validator set in force")
    if header.proposer >= len(vs):
        raise BlockError(f"proposer {header.proposer} is not a validator index")


def check_records(genesis: Genesis, records: Iterable[Record],
                  verify: Verifier = is_valid_signature) -> None:
    """Every record valid, in block order; the first bad one raises, naming its index."""
    for i, record in enumerate(records):
        try:
            check_record(genesis, record, verify)
        except (WrongChainError, SignatureError, UnauthorisedError) as exc:
            raise type(exc)(f"record {i} ({exc})") from exc


@dataclass(frozen=True, slots=True)
class ChainTip:
    """What the next block must extend: the chain's height, its tip hash (the genesis hash
    at height 0; None where the anchor is unknown, e.g. a store opened without genesis),
    the tip's time (-1 at height 0) and the Merkle log of every envelope so far."""

    height: int
    hash: bytes | None
    time_ms: int
    log: merkle.CompactRange


class Extending(Protocol):
    """The header fields the chain-extension rule reads (a Header, or the audit's summary)."""

    @property
    def height(self) -> int: ...

    @property
    def prev_hash(self) -> bytes: ...

    @property
    def time_ms(self) -> int: ...

    @property
    def record_count(self) -> int: ...

    @property
    def log_size(self) -> int: ...

    @property
    def log_root(self) -> bytes: ...


Lookup = Callable[[list[bytes]], "set[bytes]"]
NonceLookup = Callable[[list[tuple[bytes, int]]], "set[tuple[bytes, int]]"]


def check_extends(tip: ChainTip, header: Extending, leaves: Sequence[bytes],
                  ids: Sequence[bytes] = (), nonces: Sequence[tuple[bytes, int]] = (), *,
                  seen_ids: Lookup | None = None, seen_nonces: NonceLookup | None = None,
                  ) -> tuple[merkle.CompactRange, list[merkle.CompletedNode]]:
    """The chain-extension rule: the block of ``header`` with these envelope ``leaves``
    (leaf hashes), record ``ids`` and (signer, nonce) pairs extends ``tip``: the next
    height, linked to the tip's hash, strictly later, its record count, no record id or
    (signer, nonce) already on the chain (``seen_*`` look them up), and the log size and
    root of the chain with it. Returns the new log and the log nodes it completed.
    Raises BlockError or DuplicateError naming what was expected and what was got."""
    h = header
    if h.height != tip.height + 1:
        raise BlockError(f"expected height {tip.height + 1}, got {h.height}")
    if tip.hash is not None and h.prev_hash != tip.hash:
        what = "the genesis hash" if tip.height == 0 else f"the hash of block {tip.height}"
        raise BlockError(f"prev_hash {h.prev_hash.hex()} is not {what} ({tip.hash.hex()})")
    if h.time_ms <= tip.time_ms:
        raise BlockError(f"time_ms {h.time_ms} is not after block {tip.height}'s "
                         f"{tip.time_ms}")
    if h.record_count != len(leaves):
        raise BlockError(f"header says {h.record_count} records, block holds {len(leaves)}")
    if seen_ids is not None and ids:
        seen = seen_ids(list(ids))
        for rid in ids:
            if rid in seen:
                raise DuplicateError(f"record {rid.hex()} was already committed earlier in "
                                     "the chain")
    if seen_nonces is not None and nonces:
        used = seen_nonces(list(nonces))
        for signer, nonce in nonces:
            if (signer, nonce) in used:
                raise DuplicateError(f"(signer {signer.hex()}, nonce {nonce}) was already used "
                                     "earlier in the chain")
    log = tip.log.copy()
    completed = log.extend(leaves)
    if h.log_size != log.size:
        raise BlockError(f"log_size {h.log_size}, but the chain holds {log.size} records")
    if h.log_root != log.root():
        raise BlockError(f"log_root {h.log_root.hex()} is not the root of the log "
                         f"({log.root().hex()})")
    return log, completed
