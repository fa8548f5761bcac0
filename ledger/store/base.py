"""The block-store protocol and the logic both stores share."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgpack

from ledger import merkle
from ledger.blocks import Block, Certificate
from ledger.errors import BlockError, ValidationError
from ledger.validation import ChainTip, Lookup, NonceLookup
from ledger.validation import check_extends as check_chain_extension


@dataclass(frozen=True, slots=True)
class RecordLocation:
    """Where a committed record sits: block height, index in the block, index in the log."""

    height: int
    index: int
    seq: int


class BlockStore(Protocol):
    """What the node, the audit and receipts need from storage."""

    @property
    def height(self) -> int:
        """Height of the last committed block (0 when empty)."""

    @property
    def log(self) -> merkle.CompactRange:
        """The Merkle log over every committed envelope (do not mutate)."""

    def append(self, block: Block, last_cert: Certificate | None = None) -> None:
        """Durably add ``block`` as the next height, atomically with all its indexes;
        with ``last_cert``, replace the previous block's certificate in the same write."""

    def block_bytes(self, height: int) -> bytes | None:
        """The exact msgpack bytes of the block at ``height`` (SPEC section 4)."""

    def block(self, height: int) -> Block | None:
        """The decoded block at ``height``."""

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

    def close(self) -> None:
        """Release the store."""


def check_extends(block: Block, tip: ChainTip, last_cert: Certificate | None = None, *,
                  seen_ids: Lookup | None = None, seen_nonces: NonceLookup | None = None,
                  ) -> tuple[merkle.CompactRange, list[merkle.CompletedNode]]:
    """Check ``block`` extends a store whose tip is ``tip``; return the new log and its new
    nodes. The rule is ``ledger.validation.check_extends``, the one consensus and the audit
    call: a store can never hold a chain that breaks it. Also: the previous block's
    certificate, when given, certifies the tip."""
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
            seen_ids=seen_ids, seen_nonces=seen_nonces)
    except ValidationError as exc:
        raise type(exc)(f"height {h.height}: {exc}") from exc


def join_block(header: bytes, envelopes: Iterable[bytes], count: int, cert: bytes) -> bytes:
    """Assemble block wire bytes from stored parts without decoding them."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(3), header, packer.pack_array_header(count)]
    parts.extend(packer.pack(e) for e in envelopes)
    parts.append(cert)
    return b"".join(parts)

