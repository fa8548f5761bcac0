"""Receipts: offline proof that a record is on the chain (SPEC section 6).

``build_receipt`` reads a store; ``verify_receipt`` needs nothing but ``genesis.json``.
Verification is strict on purpose — every field is checked, hex must be lowercase, base64
canonical, integers real integers — so that changing any byte of a receipt either breaks
its JSON or changes something the verifier checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ledger import merkle
from ledger.blocks import Certificate, Header
from ledger.encoding import b64decode, b64encode, hex_decode, loads_json
from ledger.errors import DecodeError, LedgerError, ReceiptError
from ledger.genesis import Genesis
from ledger.records import Record
from ledger.store.base import BlockStore

RECEIPT_KEYS = ("chain", "record_id", "envelope", "height", "index", "header", "audit_path",
                "cert")


def build_receipt(store: BlockStore, record_id: bytes) -> dict[str, Any] | None:
    """The receipt of a committed record, or None if the store does not hold it."""
    loc = store.locate(record_id)
    if loc is None:
        return None
    block = store.block(loc.height)
    if block is None:
        raise ReceiptError(f"record {record_id.hex()} points at missing block {loc.height}")
    leaves = block.leaf_hashes()
    record = block.records[loc.index]
    return {
        "chain": block.header.chain,
        "record_id": record.id.hex(),
        "envelope": b64encode(record.envelope),
        "height": loc.height,
        "index": loc.index,
        "header": b64encode(block.header.to_wire()),
        "audit_path": [h.hex() for h in merkle.inclusion_proof(leaves, loc.index)],
        "cert": {
            "round": block.cert.round,
            "signatures": [{"validator": i, "sig": b64encode(sig)}
                           for i, sig in block.cert.signatures],
        },
    }


def dumps_receipt(receipt: dict[str, Any]) -> str:
    """Compact JSON, as the API serves it."""
    return json.dumps(receipt, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a valid receipt proves."""

    record: Record
    header: Header
    index: int
    signers: tuple[int, ...]


def parse_receipt(text: str | bytes) -> dict[str, Any]:
    """Parse receipt JSON, rejecting repeated keys."""
    try:
        doc = loads_json(text)
    except DecodeError as exc:
        raise ReceiptError(str(exc)) from exc
    if not isinstance(doc, dict):
        raise ReceiptError("expected a JSON object")
    return doc


def _field(doc: dict[str, Any], key: str, kind: type, where: str = "receipt") -> Any:
    if key not in doc:
        raise ReceiptError(f"{where}: missing {key!r}")
    value = doc[key]
    if type(value) is not kind:
        raise ReceiptError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def verify_receipt(doc: dict[str, Any] | str | bytes, genesis: Genesis) -> VerifiedReceipt:
    """Check a receipt against genesis alone; ReceiptError says the first thing wrong."""
    if not isinstance(doc, dict):
        doc = parse_receipt(doc)
    try:
        return _verify(doc, genesis)
    except ReceiptError:
        raise
    except LedgerError as exc:
        raise ReceiptError(str(exc)) from exc


def _verify(doc: dict[str, Any], genesis: Genesis) -> VerifiedReceipt:
    chain = _field(doc, "chain", str)
    if chain != genesis.chain_id:
        raise ReceiptError(f"receipt is for chain {chain!r}, genesis is {genesis.chain_id!r}")
    record_id = hex_decode(_field(doc, "record_id", str), "receipt.record_id", 32)
    record = Record.from_wire(b64decode(_field(doc, "envelope", str), "receipt.envelope"))
    if record.id != record_id:
        raise ReceiptError("record_id is not the sha256 of the envelope's body")
    if record.body.chain != chain:
        raise ReceiptError(f"record names chain {record.body.chain!r}")
    record.verify_signature()
    refusal = genesis.refusal(record.body.signer, record.body.type)
    if refusal is not None:
        raise ReceiptError(refusal)

    height = _field(doc, "height", int)
    index = _field(doc, "index", int)
    header = Header.from_wire(b64decode(_field(doc, "header", str), "receipt.header"))
    if header.height != height:
        raise ReceiptError(f"height {height} but the header is for height {header.height}")
    if header.chain != chain:
        raise ReceiptError(f"header names chain {header.chain!r}")
    if header.validators_hash != genesis.validators.hash:
        raise ReceiptError("header's validators_hash does not match genesis")
    if header.height == 1 and header.prev_hash != genesis.hash:
        raise ReceiptError(f"block 1 links to genesis {header.prev_hash.hex()}, not this one")
    path = _field(doc, "audit_path", list)
    proof = [hex_decode(h, f"receipt.audit_path[{i}]", 32) for i, h in enumerate(path)]
    if not 0 <= index < header.record_count:
        raise ReceiptError(f"index {index} outside the block's {header.record_count} records")
    merkle.verify_inclusion(index, header.record_count, merkle.leaf_hash(record.envelope),
                            proof, header.records_root)

    cert_doc = _field(doc, "cert", dict)
    round_ = _field(cert_doc, "round", int, "receipt.cert")
    if round_ < 0:
        raise ReceiptError("receipt.cert.round: must not be negative")
    sigs = []
    for i, entry in enumerate(_field(cert_doc, "signatures", list, "receipt.cert")):
        where = f"receipt.cert.signatures[{i}]"
        if not isinstance(entry, dict):
            raise ReceiptError(f"{where}: expected an object")
        validator = _field(entry, "validator", int, where)
        if validator < 0:
            raise ReceiptError(f"{where}.validator: must not be negative")
        sigs.append((validator, b64decode(_field(entry, "sig", str, where), f"{where}.sig")))
    cert = Certificate(header.height, round_, header.hash, tuple(sigs))
    cert.verify(chain, genesis.validators)
    return VerifiedReceipt(record, header, index, tuple(i for i, _ in sigs))
