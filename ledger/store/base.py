"""The block-store protocol and the logic both stores share."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgpack

from ledger import merkle
from ledger.blocks import Block, Certificate
from ledger.config import (
    CONFIG_TYPE,
    REDACT_TYPE,
    Config,
    ConfigHistory,
    parse_change,
    parse_payload,
)
from ledger.errors import BlockError, ConfigInvalidError, PayloadMismatchError, ValidationError
from ledger.records import SealedPayload, check_sealed_payload
from ledger.validation import (
    ChainTip,
    Lookup,
    NonceLookup,
    Redaction,
    SignerLookup,
    block_redactions,
    check_header_fields,
)
from ledger.validation import check_extends as check_chain_extension

#: Split-view evidence entries a store keeps (each needs a witness key's valid signature over
#: a block this node does not have, so only a misbehaving witness makes them; the first ones
#: prove it as well as any more would).
MAX_SPLIT_VIEWS = 1000
#: ... and at most this many of any one witness (``"witness"`` in the entry's JSON), so one
#: witness key cosigning made-up blocks cannot fill the store and have another witness's
#: split view dropped.
MAX_SPLIT_VIEWS_PER_WITNESS = 16


def split_view_witness(cosig_json: bytes) -> str | None:
    """The ``"witness"`` (hex key) a split-view entry names, None if it names none."""
    try:
        doc = json.loads(cosig_json)
    except ValueError:
        return None
    witness = doc.get("witness") if isinstance(doc, dict) else None
    return witness if isinstance(witness, str) else None


@dataclass(frozen=True, slots=True)
class PayloadsPut:
    """What ``put_payloads`` did: ids whose pair it stored, and ids whose pair did not
    match the record's digest (a peer that sends those misbehaves)."""

    stored: tuple[bytes, ...] = ()
    mismatched: tuple[bytes, ...] = ()


def block_payload_rows(block: Block, first_seq: int,
                       payloads: Mapping[bytes, SealedPayload] | None,
                       ) -> list[tuple[int, bytes, bytes]]:
    """``(log index, salt, payload_bytes)`` of the pairs ``payloads`` holds for ``block``'s
    sealed records, each checked against its digest (PayloadMismatchError: the caller
    admitted a pair it should not have). Pairs of inline or other records are ignored."""
    if not payloads:
        return []
    rows = []
    for i, r in enumerate(block.records):
        digest = r.body.payload_digest
        pair = payloads.get(r.id) if digest is not None else None
        if pair is not None:
            if pair.checked_for != digest:  # a mempool pair was checked at admission
                pair.check(r)
            rows.append((first_seq + i, pair.salt, pair.payload))
    return rows


def block_sealed_rows(block: Block, first_seq: int,
                      payloads: Mapping[bytes, SealedPayload] | None,
                      ) -> list[tuple[int, bytes, bytes | None, bytes | None]]:
    """``(log index, payload_digest, salt, payload_bytes)`` of each of ``block``'s sealed
    records, with the pair ``payloads`` holds for it (checked as by ``block_payload_rows``)
    or ``(None, None)``: one pass for the store whose ``sealed`` rows hold the pairs."""
    rows: list[tuple[int, bytes, bytes | None, bytes | None]] = []
    get = payloads.get if payloads else None
    for i, r in enumerate(block.records):
        digest = r.body.payload_digest
        if digest is None:
            continue
        pair = get(r.id) if get is not None else None
        if pair is None:
            rows.append((first_seq + i, digest, None, None))
            continue
        if pair.checked_for != digest:  # a mempool pair was checked at admission
            pair.check(r)
        rows.append((first_seq + i, digest, pair.salt, pair.payload))
    return rows


def judge_payloads(pairs: Mapping[bytes, SealedPayload],
                   digests: Mapping[bytes, tuple[int, bytes]],
                   ) -> tuple[list[tuple[int, bytes, SealedPayload]], list[bytes]]:
    """Of ``pairs`` (by id), given ``digests`` (id -> (log index, payload_digest) of the
    committed sealed records among them that are not redacted and have no pair held yet):
    the ``(log index, id, pair)`` to store and the ids whose pair does not match."""
    keep: list[tuple[int, bytes, SealedPayload]] = []
    bad: list[bytes] = []
    for rid, pair in pairs.items():
        found = digests.get(rid)
        if found is None:
            continue
        try:
            if pair.checked_for != found[1]:  # a resubmitted pair admission checked
                check_sealed_payload(found[1], pair.salt, pair.payload, f"record {rid.hex()}")
        except PayloadMismatchError:
            bad.append(rid)
            continue
        keep.append((found[0], rid, pair))
    keep.sort(key=lambda row: row[0])
    return keep, bad


@dataclass(frozen=True, slots=True)
class RecordLocation:
    """Where a committed record sits: block height, index in the block, index in the log."""

    height: int
    index: int
    seq: int


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A committed configuration change: the block height and record index of its
    ``ledger.config`` record, and the change map bytes (it governs from ``height + 1``)."""

    height: int
    index: int
    change: bytes


def block_change(block: Block) -> ConfigChange | None:
    """The configuration change ``block`` carries (at most one: SPEC section 9), if any.
    Only the payload's shape is read here; its validity is consensus's."""
    for i, record in enumerate(block.records):
        if record.body.type == CONFIG_TYPE and not record.body.sealed:
            try:
                payload = parse_payload(record.body.payload)
            except ConfigInvalidError as exc:
                raise ConfigInvalidError(f"height {block.height}: record {i} ({exc})") from exc
            return ConfigChange(block.height, i, payload.change)
    return None


def next_config(history: ConfigHistory | None, change: ConfigChange | None) -> Config | None:
    """The configuration ``change`` makes on top of ``history`` (None without either)."""
    if history is None or change is None:
        return None
    try:
        return parse_change(history.latest, change.change)
    except ValidationError as exc:
        raise type(exc)(f"height {change.height}: record {change.index} ({exc})") from exc


def rebuild_history(genesis_config: Config, changes: Iterable[ConfigChange]) -> ConfigHistory:
    """The history from version 0 through the recorded ``changes`` (oldest first). The
    changes were checked (approvals and all) when their blocks were; this only re-parses
    each on top of the one before, so opening a store stays cheap."""
    history = ConfigHistory(genesis_config)
    for change in changes:
        config = next_config(history, change)
        assert config is not None
        history.append(change.height, config)
    return history


def store_redactions(history: ConfigHistory | None, block: Block) -> tuple[Redaction, ...]:
    """The redactions ``block`` carries, each checked alone under the configuration in force
    at its height when the store follows one (``ledger.validation.block_redactions``; a
    few approval signatures, and only for a block that carries a redaction)."""
    if not any(r.body.type == REDACT_TYPE for r in block.records):
        return ()
    config = None if history is None else history.at(block.height)
    try:
        return block_redactions(config, block.records)
    except ValidationError as exc:
        raise type(exc)(f"height {block.height}: {exc}") from exc


def check_governed(history: ConfigHistory | None, block: Block) -> None:
    """The header fields fixed by the configuration in force at the block's height
    (chain, validator set hash, proposer index), when the store follows one."""
    if history is None:
        return
    try:
        check_header_fields(history.at(block.height), block.header,
                            history.validators_at(block.height))
    except ValidationError as exc:
        raise type(exc)(f"height {block.height}: {exc}") from exc


class BlockStore(Protocol):
    """What the node, the audit and receipts need from storage."""

    @property
    def height(self) -> int:
        """Height of the last committed block (0 when empty)."""

    @property
    def log(self) -> merkle.CompactRange:
        """The Merkle log over every committed envelope (do not mutate)."""

    def append(self, block: Block, last_cert: Certificate | None = None,
               payloads: Mapping[bytes, SealedPayload] | None = None) -> None:
        """Durably add ``block`` as the next height, atomically with all its indexes;
        with ``last_cert``, replace the previous block's certificate in the same write.
        ``payloads``: the pairs held for the block's sealed records (by id), each checked
        against its digest (``SealedPayload.check``; PayloadMismatchError, nothing written)
        and kept in the same write; pairs of other records are ignored. The pairs of the
        records a redaction in the block names are deleted in the same write (no longer
        served; their bytes may stay in the files until ``scrub`` completes)."""

    def block_bytes(self, height: int) -> bytes | None:
        """The exact msgpack bytes of the block at ``height`` (SPEC section 4)."""

    def block(self, height: int) -> Block | None:
        """The decoded block at ``height``."""

    def header_cert(self, height: int) -> tuple[bytes, bytes] | None:
        """The header and certificate bytes of the block at ``height`` (a checkpoint)."""

    def tip_hash(self) -> bytes | None:
        """The hash of the last block, if any."""

    def locate(self, record_id: bytes) -> RecordLocation | None:
        """Where record ``record_id`` was committed."""

    def envelope(self, record_id: bytes) -> bytes | None:
        """The envelope of a committed record."""

    def seen_ids(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` are already committed."""

    def seen_nonces(self, pairs: Iterable[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Which (signer, nonce) pairs are already committed."""

    def seen_digests(self, digests: Iterable[bytes]) -> set[bytes]:
        """Which sealed ``payload_digest`` values are already committed (SPEC section 10)."""

    def sealed_signers(self, ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """Which of ``ids`` are committed sealed records, each with its signer."""

    def redacted(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` a committed ``ledger.redact`` record names."""

    def redaction_heights(self, ids: Iterable[bytes]) -> dict[bytes, int]:
        """Those of ``ids`` a committed redaction names, each with the redaction's height."""

    def redacted_at(self, record_id: bytes) -> int | None:
        """The height of the redaction that names ``record_id``, if one committed."""

    def subject_history(
        self, subject: str, after_seq: int = -1, limit: int = 100
    ) -> list[tuple[RecordLocation, bytes]]:
        """Committed records of ``subject`` with log index > ``after_seq``, oldest first."""

    def subject_history_desc(
        self, subject: str, before_seq: int | None = None, limit: int = 100
    ) -> list[tuple[RecordLocation, bytes]]:
        """Committed records of ``subject`` with log index < ``before_seq`` (all when None),
        newest first: the mirror of ``subject_history``."""

    def log_nodes(self, ids: Iterable[merkle.NodeId]) -> Mapping[merkle.NodeId, bytes]:
        """Perfect-subtree hashes of the Merkle log by (level, index)."""

    @property
    def history(self) -> ConfigHistory | None:
        """Every configuration version with the height it governs from (None when the store
        was opened without the genesis configuration). ``append`` extends it in step with
        the blocks: after a change-carrying block, ``history.latest`` governs the next
        height."""

    def config_changes(self) -> list[ConfigChange]:
        """Every committed configuration change, oldest first."""

    # -- sealed payloads (SPEC section 10) ------------------------------------------------
    # Kept beside the chain, never in it: a block never needs them, a redaction deletes them.

    def put_payloads(self, pairs: Mapping[bytes, SealedPayload]) -> PayloadsPut:
        """Durably keep pairs that arrived after their record committed (from a peer, a
        bundle): only for committed sealed records not redacted, each checked against its
        digest; pairs already held are skipped. Says which were stored and which did not
        match (the others: not sealed, not committed, redacted or held)."""

    def payloads(self, ids: Iterable[bytes]) -> dict[bytes, SealedPayload]:
        """The pairs held for those of ``ids`` that are committed."""

    def missing_payloads(self, after_seq: int = -1,
                         limit: int = 1000) -> list[tuple[int, bytes]]:
        """``(log index, id)`` of committed sealed records after ``after_seq`` whose pair
        this store does not hold and that no redaction names, oldest first."""

    def payloads_between(self, first_seq: int, count: int, limit: int | None = None,
                         ) -> list[tuple[int, bytes, SealedPayload]]:
        """``(log index, id, pair)`` of every pair held for records in ``[first_seq,
        first_seq + count)``, in log order (exports, ``ledger audit --payloads``); the
        first ``limit`` of them when given (a page never reads more pairs than it may
        serve: each is up to 64 KiB)."""

    def rebuild_pending(self) -> bool:
        """A committed redaction deleted pairs whose bytes may still be in the store's files
        until ``scrub(rebuild=True)`` runs its costly part (SQLite: a rebuild of the table,
        O(the pairs held); the caller decides how often). Never waits for a write."""

    def scrub(self, rebuild: bool = True) -> bool:
        """Make deleted payload bytes unrecoverable from the store's files (SQLite: with
        ``rebuild``, the rebuild ``rebuild_pending`` says is due, at most one per call; then
        the WAL checkpointed and truncated). The bytes are gone when it returns True; False
        if readers kept it from completing or a rebuild is still pending: call again
        later."""

    # -- witness cosignatures (SPEC section 11) ---------------------------------------------
    # Kept apart from the chain: they arrive over HTTP after their block commits, checked
    # by the caller (``ledger.witness.check_cosignature``); the store keeps bytes only.

    def add_cosignature(self, height: int, pubkey: bytes, sig: bytes) -> bool:
        """Durably keep witness ``pubkey``'s cosignature ``sig`` of the block at ``height``
        (already checked); False if one by that witness for that height is already held
        (the first is kept)."""

    def cosignatures(self, height: int) -> list[tuple[bytes, bytes]]:
        """The ``(pubkey, sig)`` cosignatures held for ``height``, ordered by key."""

    def cosignatures_between(self, lo: int, hi: int) -> Iterator[tuple[int, bytes, bytes]]:
        """``(height, pubkey, sig)`` of every cosignature held for heights ``lo..hi``
        (inclusive), in height then key order (for the export bundle)."""

    def add_split_view(self, cosig_json: bytes) -> bool:
        """Durably keep evidence of a split view (a witness's cosignature that verifies over
        another block than this store's at its height: the caller's JSON bytes); False if
        these exact bytes are already held, or ``MAX_SPLIT_VIEWS`` are, or
        ``MAX_SPLIT_VIEWS_PER_WITNESS`` of the witness it names (``split_view_witness``)."""

    def split_views(self) -> list[bytes]:
        """The split-view evidence held, oldest first."""

    def close(self) -> None:
        """Release the store."""


def check_extends(block: Block, tip: ChainTip, last_cert: Certificate | None = None, *,
                  seen_ids: Lookup | None = None, seen_nonces: NonceLookup | None = None,
                  seen_digests: Lookup | None = None, sealed_signers: SignerLookup | None = None,
                  redacted: Lookup | None = None, redactions: tuple[Redaction, ...] = (),
                  history: ConfigHistory | None = None,
                  ) -> tuple[merkle.CompactRange, list[merkle.CompletedNode]]:
    """Check ``block`` extends a store whose tip is ``tip``; return the new log and its new
    nodes. The rule is ``ledger.validation.check_extends``, the one consensus and the audit
    call: a store can never hold a chain that breaks it (``redactions``, from
    ``store_redactions``, are judged under ``history``'s configuration at the block when
    the store follows one). Also: the previous block's certificate, when given, certifies
    the tip."""
    h = block.header
    if last_cert is not None and (last_cert.height != tip.height
                                  or last_cert.block_hash != tip.hash):
        raise BlockError(f"height {h.height}: the previous block's certificate is for "
                         f"height {last_cert.height}, another block")
    records = block.records
    try:
        return check_chain_extension(
            tip, h, block.leaf_hashes(), [r.id for r in records],
            [(r.body.signer, r.body.nonce) for r in records],
            seen_ids=seen_ids, seen_nonces=seen_nonces,
            digests=[r.body.payload_digest for r in records
                     if r.body.payload_digest is not None],
            seen_digests=seen_digests, redactions=redactions,
            config=None if history is None else history.at(h.height),
            sealed_signers=sealed_signers, redacted=redacted)
    except ValidationError as exc:
        raise type(exc)(f"height {h.height}: {exc}") from exc


def join_block(header: bytes, envelopes: Iterable[bytes], count: int, cert: bytes) -> bytes:
    """Assemble block wire bytes from stored parts without decoding them."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(3), header, packer.pack_array_header(count)]
    parts.extend(packer.pack(e) for e in envelopes)
    parts.append(cert)
    return b"".join(parts)

