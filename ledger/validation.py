"""Validity rules shared by the audit and consensus (SPEC sections 2 and 4).

Each check raises a typed ValidationError naming what is wrong. ``verify`` is the signature
check to use, so a node can pass one backed by its verified-signature cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ledger.blocks import Header
from ledger.crypto import RECORD_TAG, is_valid_signature
from ledger.errors import (
    BlockError,
    DuplicateError,
    SignatureError,
    UnauthorisedError,
    WrongChainError,
)
from ledger.genesis import Genesis
from ledger.records import Record

Verifier = Callable[[bytes, bytes, bytes], bool]


def check_record(genesis: Genesis, record: Record, verify: Verifier = is_valid_signature) -> None:
    """A decoded record is valid on this chain: chain, signature, authorisation."""
    body = record.body
    if body.chain != genesis.chain_id:
        raise WrongChainError(f"record {record.id.hex()} names chain {body.chain!r}")
    if not verify(body.signer, RECORD_TAG + record.body_bytes, record.sig):
        raise SignatureError(f"record {record.id.hex()}: signature does not verify")
    if not genesis.may_submit(body.signer, body.type):
        raise UnauthorisedError(f"record {record.id.hex()}: signer {body.signer.hex()} is not "
                                f"authorised for type {body.type!r}")


def check_unique_within(records: Sequence[Record]) -> None:
    """No record id or (signer, nonce) appears twice among ``records``."""
    ids = {r.id for r in records}
    if len(ids) != len(records):
        raise DuplicateError("a record appears twice in the block")
    if len({(r.body.signer, r.body.nonce) for r in records}) != len(records):
        raise DuplicateError("two records in the block share a (signer, nonce)")


def check_header_fields(genesis: Genesis, header: Header) -> None:
    """Header fields fixed by genesis: chain id, validator set hash, proposer index."""
    if header.chain != genesis.chain_id:
        raise WrongChainError(f"header names chain {header.chain!r}, genesis is "
                              f"{genesis.chain_id!r}")
    if header.validators_hash != genesis.validators.hash:
        raise BlockError("validators_hash does not match the genesis validator set")
    if header.proposer >= len(genesis.validators):
        raise BlockError(f"proposer {header.proposer} is not a validator index")


def check_records(genesis: Genesis, records: Iterable[Record],
                  verify: Verifier = is_valid_signature) -> None:
    """Every record valid, in block order; the first bad one raises, naming its index."""
    for i, record in enumerate(records):
        try:
            check_record(genesis, record, verify)
        except (WrongChainError, SignatureError, UnauthorisedError) as exc:
            raise type(exc)(f"record {i} ({exc})") from exc
