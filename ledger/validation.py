"""Validity rules shared by consensus, the audit and the store (SPEC sections 2, 4, 9, 10).

The rules of a block at height H take the configuration in force at H (a ``Config`` from
``ConfigHistory.at(H)``; a ``Genesis`` stands for its version 0, which is what a chain
without changes always has). ``check_records`` returns what the block changes: the
configuration governing H+1 if it carries a ``ledger.config`` record, and its redactions.

Each check raises a typed ValidationError naming what is wrong (expected and got).
``verify`` is the signature check to use, so a node can pass one backed by its
verified-signature cache. ``check_extends`` is the one chain-extension rule — including the
half of SPEC section 10's redaction rule that needs the chain: consensus
(``ConsensusCore._check_block``, proposals and block sync alike), the audit
(``ChainVerifier.extend``) and both stores (``append``) all call it, so none can accept a
block another refuses; admission (``node.mempool``) applies it to a redaction as if it were
the next block's only one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ledger import merkle
from ledger.blocks import Header
from ledger.config import (
    CONFIG_TYPE,
    REDACT_TAG,
    REDACT_TYPE,
    Config,
    apply_change,
    approval_message,
    check_approvals,
    is_reserved,
    parse_payload,
)
from ledger.crypto import HASH_SIZE, RECORD_TAG, is_valid_signature
from ledger.encoding import decode
from ledger.errors import (
    ApprovalsInsufficientError,
    BlockError,
    ConfigDuplicateError,
    ConfigInvalidError,
    DecodeError,
    DigestReusedError,
    DuplicateError,
    RedactionTargetError,
    ReservedTypeError,
    SignatureError,
    UnauthorisedError,
    ValidationError,
    WrongChainError,
)
from ledger.genesis import Genesis, ValidatorSet
from ledger.records import Record

Verifier = Callable[[bytes, bytes, bytes], bool]
#: What the rules of one height read: the configuration in force there (a Genesis means
#: its version 0).
Authority = Genesis | Config


def config_of(source: Authority) -> Config:
    """The configuration ``source`` stands for."""
    return source.config if isinstance(source, Genesis) else source


@dataclass(frozen=True, slots=True)
class Redaction:
    """A ``ledger.redact`` record that passed its own checks (SPEC section 10): its index in
    the block, the ids it names and the governing organisations whose admins approved.
    Whether the ids are sealed records committed earlier and not yet redacted, and the
    threshold-or-own-organisation rule, need the chain: ``check_extends`` applies them
    (through ``check_redaction_targets``)."""

    index: int
    ids: tuple[bytes, ...]
    orgs: frozenset[str]


@dataclass(frozen=True, slots=True)
class BlockEffects:
    """What a valid block changes: the configuration governing the next height if the block
    carries a change (else None), and its redactions."""

    config: Config | None = None
    redactions: tuple[Redaction, ...] = ()


def check_record(source: Authority, record: Record,
                 verify: Verifier = is_valid_signature) -> Config | Redaction | None:
    """A decoded record is valid on this chain where ``source`` is in force: chain,
    signature, authorisation — or, for a reserved type, SPEC section 9 or 10. Returns the
    new configuration a ``ledger.config`` record makes, the Redaction of a
    ``ledger.redact`` record, else None."""
    config = config_of(source)
    body = record.body
    if body.chain != config.chain_id:
        raise WrongChainError(f"record {record.id.hex()} names chain {body.chain!r}")
    if not verify(body.signer, RECORD_TAG + record.body_bytes, record.sig):
        raise SignatureError(f"record {record.id.hex()}: signature does not verify")
    if is_reserved(body.type):
        if body.sealed:
            raise ReservedTypeError(f"a {body.type} record always carries an inline payload")
        if body.type == CONFIG_TYPE:
            return apply_change(config, record, verify)
        if body.type == REDACT_TYPE:
            return check_redaction(config, record, -1, verify)
        raise ReservedTypeError(f"record type {body.type!r} is reserved (ledger.*) and not "
                                "defined by the protocol")
    refusal = config.refusal(body.signer, body.type)
    if refusal is not None:  # no record id: the API answers it beside, the audit by index
        raise UnauthorisedError(refusal)
    return None


def check_redaction(config: Config, record: Record, index: int,
                    verify: Verifier = is_valid_signature) -> Redaction:
    """The checks of a ``ledger.redact`` record that need only the configuration in force:
    signer a member, payload and change decode exactly, ids non-empty and distinct, every
    approval by a distinct governance member with a valid signature."""
    body = record.body
    if body.signer not in config.members:
        raise UnauthorisedError(f"signer {body.signer.hex()} of a redaction is not a member "
                                f"of configuration version {config.version}")
    payload = parse_payload(body.payload, ("change", "approvals"), "ledger.redact payload")
    anchor, ids = _redaction_change(payload.change)
    if anchor != config.genesis_hash:
        raise WrongChainError("redaction change names another genesis")
    orgs = check_approvals(config, payload.approvals,
                           approval_message(config.genesis_hash, payload.change, REDACT_TAG),
                           verify)
    return Redaction(index, ids, orgs)


def _redaction_change(change_bytes: bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """The genesis hash and ids of a redaction change, decoded exactly."""
    try:
        change: Any = decode(change_bytes, "redaction change")[0]
    except DecodeError as exc:
        raise ConfigInvalidError(str(exc)) from exc
    if (type(change) is not list or len(change) != 3 or type(change[0]) is not bytes
            or type(change[1]) is not list or type(change[2]) is not str):
        raise ConfigInvalidError("redaction change: expected [genesis_hash, [id, ...], reason]")
    ids = change[1]
    if not ids or not all(type(i) is bytes and len(i) == HASH_SIZE for i in ids):
        raise ConfigInvalidError("redaction change: ids must be a non-empty array of bin(32)")
    if len(set(ids)) != len(ids):
        raise ConfigInvalidError("redaction change: an id is listed twice")
    return change[0], tuple(ids)


def block_redactions(source: Authority | None, records: Sequence[Record],
                     verify: Verifier = is_valid_signature) -> tuple[Redaction, ...]:
    """The redactions among a block's ``records`` (what ``check_records`` returns in
    ``BlockEffects``), for a caller that does not run ``check_records`` itself: a store.
    With ``source``, the configuration in force at the block, each is checked alone
    (``check_redaction``: its approvals verify); without one (a store opened without the
    genesis configuration) only its ids are read, and ``orgs`` is empty."""
    out = []
    for i, record in enumerate(records):
        if record.body.type != REDACT_TYPE or record.body.sealed:
            continue
        try:
            if source is not None:
                out.append(check_redaction(config_of(source), record, i, verify))
            else:
                payload = parse_payload(record.body.payload, ("change", "approvals"),
                                        "ledger.redact payload")
                out.append(Redaction(i, _redaction_change(payload.change)[1], frozenset()))
        except ValidationError as exc:
            raise type(exc)(f"record {i} ({exc})") from exc
    return tuple(out)


SealedSigner = Callable[[bytes], "bytes | None"]
#: Which of these are already on the chain (ids, digests; a store's indexed lookup).
Lookup = Callable[[list[bytes]], "set[bytes]"]
NonceLookup = Callable[[list[tuple[bytes, int]]], "set[tuple[bytes, int]]"]
#: Which of these ids are sealed records already committed, with each one's signer.
SignerLookup = Callable[[list[bytes]], "dict[bytes, bytes]"]


def check_redaction_targets(config: Config | None, redaction: Redaction,
                            sealed_signer: SealedSigner,
                            redacted: Callable[[bytes], bool]) -> None:
    """The chain half of SPEC section 10's redaction rule, where ``config`` governs the
    redaction's height: every id is a sealed record committed at a lower height
    (``sealed_signer`` returns its signer, None if no such record) and not yet ``redacted``,
    and either the approvals meet the threshold or every listed record's signer is a
    member of one organisation of ``config`` whose admin approved. ``config`` None (a store
    opened without the genesis configuration) checks the ids only. Called by
    ``check_extends``, which every caller uses."""
    signers = []
    for rid in redaction.ids:
        signer = sealed_signer(rid)
        if signer is None:
            raise RedactionTargetError(f"redaction names {rid.hex()}, which is not a sealed "
                                       "record committed earlier")
        if redacted(rid):
            raise RedactionTargetError(f"redaction names {rid.hex()}, which is already "
                                       "redacted")
        signers.append(signer)
    if config is None:
        return
    if config.threshold and len(redaction.orgs) >= config.threshold:
        return
    orgs = {m.organization if (m := config.members.get(s)) else None for s in signers}
    if len(orgs) == 1 and None not in orgs and orgs <= redaction.orgs:
        return
    raise ApprovalsInsufficientError(
        f"redaction approved by {len(redaction.orgs)} governing organisation(s), below the "
        f"threshold {config.threshold}, and not by an admin of the one organisation of every "
        "listed record's signer")


def check_redactions(config: Config | None, redactions: Sequence[Redaction],
                     sealed_signers: SignerLookup, redacted: Lookup) -> None:
    """A block's ``redactions``, in block order, against the chain before it (the part of
    ``check_extends`` admission also calls): ``check_redaction_targets`` for each, an id
    named by an earlier one counting as already redacted. The lookups are asked once."""
    named = [rid for r in redactions for rid in r.ids]
    signers = sealed_signers(named)
    done = set(redacted(named))
    for redaction in redactions:
        try:
            check_redaction_targets(config, redaction, signers.get, done.__contains__)
        except ValidationError as exc:
            raise type(exc)(f"record {redaction.index} ({exc})") from exc
        done.update(redaction.ids)


def check_unique_within(records: Sequence[Record]) -> None:
    """No record id, (signer, nonce) or payload_digest appears twice among ``records``."""
    ids = {r.id for r in records}
    if len(ids) != len(records):
        raise DuplicateError("a record appears twice in the block")
    if len({(r.body.signer, r.body.nonce) for r in records}) != len(records):
        raise DuplicateError("two records in the block share a (signer, nonce)")
    digests = [r.body.payload_digest for r in records if r.body.payload_digest is not None]
    if len(set(digests)) != len(digests):
        raise DigestReusedError("two sealed records in the block share a payload_digest")


def check_header_fields(source: Authority, header: Header,
                        validators: ValidatorSet | None = None) -> None:
    """Header fields fixed by the configuration in force at the header's height: chain id,
    validator set hash, proposer index. ``validators``, when given, is the height's set as
    the caller knows it (consensus: ``validators_at(height)``)."""
    config = config_of(source)
    if header.chain != config.chain_id:
        raise WrongChainError(f"header names chain {header.chain!r}, genesis is "
                              f"{config.chain_id!r}")
    vs = config.validators if validators is None else validators
    if header.validators_hash != vs.hash:
        known = validators is None and config.version > 0
        raise BlockError("validators_hash does not match the validator set in force"
                         + (f" (configuration version {config.version})" if known else ""))
    if header.proposer >= len(vs):
        raise BlockError(f"proposer {header.proposer} is not a validator index")


def check_records(source: Authority, records: Iterable[Record],
                  verify: Verifier = is_valid_signature) -> BlockEffects:
    """Every record valid under the configuration in force, in block order, at most one
    ``ledger.config`` among them; the first bad one raises, naming its index. Returns what
    the block changes."""
    new: Config | None = None
    seen_change = False
    redactions: list[Redaction] = []
    for i, record in enumerate(records):
        try:
            if record.body.type == CONFIG_TYPE:
                if seen_change:
                    raise ConfigDuplicateError("a second ledger.config record in one block")
                seen_change = True
            result = check_record(source, record, verify)
        except ValidationError as exc:
            raise type(exc)(f"record {i} ({exc})") from exc
        if isinstance(result, Config):
            new = result
        elif isinstance(result, Redaction):
            redactions.append(Redaction(i, result.ids, result.orgs))
    return BlockEffects(new, tuple(redactions))


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


def check_extends(tip: ChainTip, header: Extending, leaves: Sequence[bytes],
                  ids: Sequence[bytes] = (), nonces: Sequence[tuple[bytes, int]] = (), *,
                  seen_ids: Lookup | None = None, seen_nonces: NonceLookup | None = None,
                  digests: Sequence[bytes] = (), seen_digests: Lookup | None = None,
                  redactions: Sequence[Redaction] = (), config: Config | None = None,
                  sealed_signers: SignerLookup | None = None, redacted: Lookup | None = None,
                  ) -> tuple[merkle.CompactRange, list[merkle.CompletedNode]]:
    """The chain-extension rule: the block of ``header`` with these envelope ``leaves``
    (leaf hashes), record ``ids`` and (signer, nonce) pairs extends ``tip``: the next
    height, linked to the tip's hash, strictly later, its record count, no record id or
    (signer, nonce) or sealed ``payload_digest`` already on the chain (``seen_*`` look them
    up), every one of its ``redactions`` valid against the chain (SPEC section 10:
    ``check_redaction_targets`` under ``config``, the configuration in force at the block;
    ``sealed_signers`` and ``redacted`` look the named ids up; in block order, so a second
    redaction of an id in the same block names an already redacted record), and the log
    size and root of the chain with it. Returns the new log and the log nodes it completed.
    Raises BlockError, DuplicateError, RedactionTargetError or ApprovalsInsufficientError
    naming what was expected and what was got."""
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
    if seen_digests is not None and digests:
        used_digests = seen_digests(list(digests))
        for digest in digests:
            if digest in used_digests:
                raise DigestReusedError(f"payload_digest {digest.hex()} was already used "
                                        "earlier in the chain")
    if redactions and sealed_signers is not None and redacted is not None:
        check_redactions(config, redactions, sealed_signers, redacted)
    log = tip.log.copy()
    completed = log.extend(leaves)
    if h.log_size != log.size:
        raise BlockError(f"log_size {h.log_size}, but the chain holds {log.size} records")
    if h.log_root != log.root():
        raise BlockError(f"log_root {h.log_root.hex()} is not the root of the log "
                         f"({log.root().hex()})")
    return log, completed
