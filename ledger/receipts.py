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
from ledger.blocks import Block, Certificate, Header
from ledger.config import CONFIG_TYPE, Config
from ledger.encoding import b64decode, b64encode, hex_decode, loads_json
from ledger.errors import (
    DecodeError,
    LedgerError,
    ReceiptError,
    UnauthorisedError,
    WitnessError,
)
from ledger.genesis import Genesis
from ledger.records import Record, SealedPayload
from ledger.store.base import BlockStore
from ledger.validation import check_record
from ledger.witness import count_witnesses, parse_witnesses, require_witnesses, witnesses_json

RECEIPT_KEYS = ("chain", "record_id", "envelope", "height", "index", "header", "audit_path",
                "cert")


def build_receipt(store: BlockStore, record_id: bytes,
                  config_records: list[tuple[int, int]] | None = None, *,
                  witnesses: bool = False) -> dict[str, Any] | None:
    """The receipt of a committed record, or None if the store does not hold it.

    ``config_records`` are the (height, index) of every ``ledger.config`` record on the
    chain, in chain order: given, the receipt carries ``config_proof`` (SPEC section 6, v1.1)
    with a step for each below the record's height; omitted, it has no ``config_proof``,
    which verifiers read as ``[]`` (right for a chain without changes). With ``witnesses``,
    it carries the witness cosignatures the store holds for its height (SPEC section 11,
    ``[{"pubkey": hex, "sig": b64}]``)."""
    loc = store.locate(record_id)
    if loc is None:
        return None
    block = store.block(loc.height)
    if block is None:
        raise ReceiptError(f"record {record_id.hex()} points at missing block {loc.height}")
    receipt: dict[str, Any] = {"chain": block.header.chain, "record_id": record_id.hex(),
                               **_step(block, loc.index)}
    if config_records is not None:
        receipt["config_proof"] = config_steps(store, config_records, loc.height)
    if witnesses:
        receipt["witnesses"] = witnesses_json(store.cosignatures(loc.height))
    return receipt


def config_steps(store: BlockStore, config_records: list[tuple[int, int]],
                 below: int) -> list[dict[str, Any]]:
    """Section 6's config proof for a height ``below``: a step for every ``ledger.config``
    record (``config_records``: (height, index) in chain order) committed below it."""
    steps = []
    for height, index in config_records:
        if height >= below:
            break
        step_block = store.block(height)
        if step_block is None:
            raise ReceiptError(f"configuration change at missing block {height}")
        steps.append(_step(step_block, index))
    return steps


def _step(block: Block, index: int) -> dict[str, Any]:
    """A record's place in a certified block, shaped as a receipt (and a config_proof
    step)."""
    return {
        "envelope": b64encode(block.records[index].envelope),
        "height": block.header.height,
        "index": index,
        "header": b64encode(block.header.to_wire()),
        "audit_path": [h.hex() for h in merkle.inclusion_proof(block.leaf_hashes(), index)],
        "cert": cert_json(block.cert),
    }


def cert_json(cert: Certificate) -> dict[str, Any]:
    """A certificate as receipts (and checkpoints) carry it: ``{"round", "signatures":
    [{"validator", "sig": b64}]}`` (height and block hash are the header's)."""
    return {"round": cert.round,
            "signatures": [{"validator": i, "sig": b64encode(sig)} for i, sig in cert.signatures]}


def dumps_receipt(receipt: dict[str, Any]) -> str:
    """Compact JSON, as the API serves it."""
    return json.dumps(receipt, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class TrustedCheckpoint:
    """A block the verifier already trusts (``ledger verify --checkpoint HEIGHT:BLOCK_HASH``):
    e.g. one it audited, or one published out of band.

    Offline, a receipt can be held against it only where the receipt shows that height's
    header: the receipt's own height (then the record is proven in the trusted block, whatever
    the certificates: the guard against SPEC section 6's retired-key fork) or a
    ``config_proof`` step's (then that configuration change is the trusted chain's). For any
    other height it proves nothing offline — the record's inclusion in that checkpoint's log
    would be needed (``ledger log prove --height H``) — so ``verify_receipt`` refuses it
    rather than pass unchecked."""

    height: int
    block_hash: bytes

    @classmethod
    def parse(cls, text: str) -> TrustedCheckpoint:
        """``HEIGHT:BLOCK_HASH`` (a positive height, 64 hex characters)."""
        height, sep, block_hash = text.strip().partition(":")
        if not sep or not height.isdigit() or int(height) < 1:
            raise ReceiptError(f"checkpoint {text!r}: expected HEIGHT:BLOCK_HASH with a "
                               "height >= 1")
        try:
            return cls(int(height), hex_decode(block_hash.lower(), "block hash", 32))
        except LedgerError as exc:
            raise ReceiptError(f"checkpoint {text!r}: expected HEIGHT:BLOCK_HASH, the hash "
                               f"64 hex characters ({exc})") from exc

    def __str__(self) -> str:
        return f"{self.height}:{self.block_hash.hex()}"


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a valid receipt proves."""

    record: Record
    header: Header
    index: int
    signers: tuple[int, ...]
    #: The configuration in force at the record's height, reached by following the
    #: receipt's ``config_proof`` from genesis (version 0 for a chain without changes).
    config: Config | None = None
    #: How many distinct witnesses of that configuration cosigned the receipt's header
    #: (SPEC section 11); None for a receipt without a ``witnesses`` list (v1.0).
    witnesses: int | None = None
    #: Where each trusted checkpoint given to ``verify_receipt`` matched: ``(checkpoint,
    #: where)`` with ``where`` "receipt" (the receipt's own block) or "config_proof[i]".
    checkpoints: tuple[tuple[TrustedCheckpoint, str], ...] = ()
    #: A sealed record's (salt, payload bytes) the receipt carried, checked against its
    #: ``payload_digest`` (SPEC section 10); None when it carried none.
    payload: SealedPayload | None = None

    @property
    def signer_names(self) -> tuple[str, ...]:
        """The certifying validators' names, from the set in force at the height."""
        if self.config is None:
            return tuple(str(i) for i in self.signers)
        return tuple(self.config.validators[i].name for i in self.signers)


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


def verify_receipt(doc: dict[str, Any] | str | bytes, genesis: Genesis, *, witnesses: int = 0,
                   checkpoints: tuple[TrustedCheckpoint, ...] = ()) -> VerifiedReceipt:
    """Check a receipt against genesis alone; ReceiptError says the first thing wrong.

    Every entry of its ``witnesses`` list (SPEC section 11), when it has one, must be a
    valid cosignature of its header by a distinct witness of the configuration governing its
    height; with ``witnesses=k`` at least ``k`` of them are required (a receipt without the
    list then fails). Each of ``checkpoints`` must match the header the receipt shows at its
    height (see ``TrustedCheckpoint``: one at a height the receipt does not show fails)."""
    if witnesses < 0:
        raise ValueError("witnesses must not be negative")
    if not isinstance(doc, dict):
        doc = parse_receipt(doc)
    try:
        return _verify(doc, genesis, witnesses, checkpoints)
    except ReceiptError:
        raise
    except WitnessError as exc:
        raise ReceiptError(str(exc), code=exc.code) from exc
    except LedgerError as exc:
        raise ReceiptError(str(exc)) from exc


def _verify(doc: dict[str, Any], genesis: Genesis, k: int,
            trusted: tuple[TrustedCheckpoint, ...]) -> VerifiedReceipt:
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
    height = _field(doc, "height", int)

    # SPEC section 6 (v1.1): follow every configuration change below the receipt's height.
    # A receipt without the key is one of a chain without changes (``[]``).
    steps = _field(doc, "config_proof", list) if "config_proof" in doc else []
    config = follow_config_proof(steps, chain, genesis, height, "receipt.config_proof")

    authority: Config | Genesis = genesis if config.version == 0 else config
    try:
        check_record(authority, record)
    except UnauthorisedError as exc:
        raise ReceiptError(str(exc)) from exc
    _, header, sigs = _in_block(doc, "receipt", chain, genesis, config, height, record)
    matched = _match_checkpoints(trusted, header, steps)
    cosigned = receipt_witnesses(doc, k, config, genesis, header)
    return VerifiedReceipt(record, header, _field(doc, "index", int), sigs, config, cosigned,
                           matched, receipt_payload(doc, record))


def receipt_payload(doc: dict[str, Any], record: Record) -> SealedPayload | None:
    """The ``payload`` and ``salt`` (b64) a sealed record's receipt carries for a reader
    its read policy allows, checked against the record's ``payload_digest``; None when the
    receipt has neither (withheld, redacted, or an inline record)."""
    if "payload" not in doc and "salt" not in doc:
        return None
    if record.body.payload_digest is None:
        raise ReceiptError("receipt carries a payload or salt, but its record is not sealed")
    pair = SealedPayload(b64decode(_field(doc, "salt", str), "receipt.salt"),
                         b64decode(_field(doc, "payload", str), "receipt.payload"))
    try:
        pair.check(record)
    except LedgerError as exc:
        raise ReceiptError(f"receipt.payload: {exc}", code=exc.code) from exc
    return pair


def receipt_witnesses(doc: dict[str, Any], k: int, config: Config, genesis: Genesis,
                      header: Header, where: str = "receipt") -> int | None:
    """The witnesses that cosigned a receipt's (or checkpoint's) ``header``, from its
    ``witnesses`` list: every entry checked (``ledger.witness.count_witnesses``), at least
    ``k`` required. None when ``doc`` has no list and ``k`` is 0 (a v1.0 receipt)."""
    if "witnesses" not in doc:
        if k:
            have = len(config.witnesses)
            raise WitnessError(f"{where}: no witness cosignatures ('witnesses' is missing); "
                               f"{k} required for height {header.height} (the configuration "
                               f"lists {have} witness{'es' if have != 1 else ''})",
                               code="witnesses_insufficient")
        return None
    pairs = parse_witnesses(doc["witnesses"], where)
    if k:
        return require_witnesses(pairs, k, config, genesis.hash, header, where)
    return count_witnesses(pairs, config, genesis.hash, header, where)


def _match_checkpoints(trusted: tuple[TrustedCheckpoint, ...], header: Header,
                       steps: list[Any]) -> tuple[tuple[TrustedCheckpoint, str], ...]:
    """Where each trusted checkpoint meets the receipt (the steps are verified already)."""
    shown = {header.height: ("receipt", header.hash)}
    for n, step in enumerate(steps):
        step_header = Header.from_wire(b64decode(step["header"], f"config_proof[{n}].header"))
        shown[step_header.height] = (f"config_proof[{n}]", step_header.hash)
    matched = []
    for point in trusted:
        if point.height not in shown:
            heights = ", ".join(str(h) for h in sorted(shown))
            raise ReceiptError(
                f"checkpoint at height {point.height} cannot be checked offline against this "
                f"receipt: it shows the headers of heights {heights} only (against another "
                f"height, prove the record online: ledger log prove --height H)",
                code="checkpoint_unprovable")
        where, block_hash = shown[point.height]
        if block_hash != point.block_hash:
            raise ReceiptError(
                f"{where}: block {block_hash.hex()} at height {point.height} is not the "
                f"trusted checkpoint's {point.block_hash.hex()}: another history",
                code="checkpoint_mismatch")
        matched.append((point, where))
    return tuple(matched)


def follow_config_proof(steps: list[Any], chain: str, genesis: Genesis, height: int,
                        where: str = "config_proof") -> Config:
    """The configuration in force at ``height``, reached from genesis by section 6's
    config proof ``steps`` (a receipt's ``config_proof``, or ``GET /v1/config/proof``'s
    ``steps``); ReceiptError names the first step that does not hold."""
    config = genesis.config
    below = 0
    for n, step in enumerate(steps):
        at = f"{where}[{n}]"
        if not isinstance(step, dict):
            raise ReceiptError(f"{at}: expected an object")
        step_height = _field(step, "height", int, at)
        if not below < step_height < height:
            raise ReceiptError(f"{at}.height: {step_height} is not above {below} and "
                               f"below height {height}")
        below = step_height
        step_record, _, _ = _in_block(step, at, chain, genesis, config, step_height)
        if step_record.body.type != CONFIG_TYPE:
            raise ReceiptError(f"{at}: the record is a {step_record.body.type!r}, not a "
                               "configuration change")
        try:
            new = check_record(config, step_record)
        except LedgerError as exc:
            raise ReceiptError(f"{at}: {exc}") from exc
        if not isinstance(new, Config):  # check_record makes one of every valid change
            raise ReceiptError(f"{at}: not a configuration change")
        config = new
    return config


def certified_header(doc: dict[str, Any], where: str, chain: str, genesis: Genesis,
                     config: Config, height: int) -> tuple[Header, tuple[int, ...]]:
    """The header of ``doc`` (``header``, b64) for ``height``, with its certificate
    (``cert``, the receipt's shape) valid under ``config``'s validators: a receipt's, a
    config_proof step's or a checkpoint's (SPEC section 11). Returns the header and the
    certifying validator indexes."""
    header = _header(doc, where, chain, genesis, config, height)
    return header, _cert(doc, where, chain, config, header)


def _header(doc: dict[str, Any], where: str, chain: str, genesis: Genesis, config: Config,
            height: int) -> Header:
    header = Header.from_wire(b64decode(_field(doc, "header", str, where), f"{where}.header"))
    if header.height != height:
        raise ReceiptError(f"height {height} but the header is for height {header.height}")
    if header.chain != chain:
        raise ReceiptError(f"header names chain {header.chain!r}")
    if header.validators_hash != config.validators.hash:
        if config.version == 0:
            raise ReceiptError(f"{where}: header's validators_hash does not match genesis")
        raise ReceiptError(f"{where}: header's validators_hash does not match the validator "
                           f"set in force (configuration version {config.version})")
    if header.height == 1 and header.prev_hash != genesis.hash:
        raise ReceiptError(f"block 1 links to genesis {header.prev_hash.hex()}, not this one")
    return header


def _cert(doc: dict[str, Any], where: str, chain: str, config: Config,
          header: Header) -> tuple[int, ...]:
    cert_doc = _field(doc, "cert", dict, where)
    round_ = _field(cert_doc, "round", int, f"{where}.cert")
    if round_ < 0:
        raise ReceiptError(f"{where}.cert.round: must not be negative")
    sigs = []
    for i, entry in enumerate(_field(cert_doc, "signatures", list, f"{where}.cert")):
        swhere = f"{where}.cert.signatures[{i}]"
        if not isinstance(entry, dict):
            raise ReceiptError(f"{swhere}: expected an object")
        validator = _field(entry, "validator", int, swhere)
        if validator < 0:
            raise ReceiptError(f"{swhere}.validator: must not be negative")
        sigs.append((validator, b64decode(_field(entry, "sig", str, swhere), f"{swhere}.sig")))
    cert = Certificate(header.height, round_, header.hash, tuple(sigs))
    cert.verify(chain, config.validators)
    return tuple(i for i, _ in sigs)


def _in_block(doc: dict[str, Any], where: str, chain: str, genesis: Genesis, config: Config,
              height: int, record: Record | None = None
              ) -> tuple[Record, Header, tuple[int, ...]]:
    """Check that the envelope of ``doc`` is at ``index`` of a block of ``height`` whose
    header is certified by ``config``'s validators: the receipt's own fields, or a
    config_proof step's."""
    if record is None:
        record = Record.from_wire(b64decode(_field(doc, "envelope", str, where),
                                            f"{where}.envelope"))
        if record.body.chain != chain:
            raise ReceiptError(f"{where}: record names chain {record.body.chain!r}")
    index = _field(doc, "index", int, where)
    header = _header(doc, where, chain, genesis, config, height)
    path = _field(doc, "audit_path", list, where)
    proof = [hex_decode(h, f"{where}.audit_path[{i}]", 32) for i, h in enumerate(path)]
    if not 0 <= index < header.record_count:
        raise ReceiptError(f"index {index} outside the block's {header.record_count} records")
    merkle.verify_inclusion(index, header.record_count, merkle.leaf_hash(record.envelope),
                            proof, header.records_root)
    return record, header, _cert(doc, where, chain, config, header)
