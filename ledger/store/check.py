"""Checking a store against itself and genesis: quickly on every start, fully offline.

``check_recent`` looks at the tip and the last blocks: the tip's certificate, the hash links,
and that every index row of their records (and the ``sealed`` row of a sealed one) agrees
with the envelopes, and that every payload pair held is a sealed record's, matches its digest
and is not redacted. ``check_indexes``
does the same index comparison for every record. (The full chain audit — signatures,
roots, policy — is ``ledger.audit``.) Problems raise ``CorruptStoreError`` naming the height.
"""

from __future__ import annotations

from ledger.blocks import Block
from ledger.config import ValidatorSet
from ledger.errors import CorruptStoreError, LedgerError
from ledger.genesis import Genesis
from ledger.records import Record
from ledger.store.sqlite import SqliteStore, from_signed64


def _block(store: SqliteStore, height: int) -> Block:
    try:
        block = store.block(height)
    except LedgerError as exc:
        raise CorruptStoreError(f"block does not decode ({exc})", height) from exc
    if block is None:
        raise CorruptStoreError("block is missing", height)
    return block


def check_recent(store: SqliteStore, genesis: Genesis, depth: int = 16, *,
                 validators: ValidatorSet | None = None) -> None:
    """The tip's certificate, the links and the indexes of the last ``depth`` blocks.
    ``validators`` is the set in force at the tip (``ConfigHistory.validators_at``); the
    genesis set if omitted (a chain without configuration changes)."""
    if store.height == 0:
        return
    if store.genesis_hash is not None and store.genesis_hash != genesis.hash:
        raise CorruptStoreError("the store belongs to another genesis")
    tip = _block(store, store.height)
    if tip.hash != store.tip_hash():
        raise CorruptStoreError("tip block does not hash to the stored tip hash", tip.height)
    try:
        tip.validate_basic()
        tip.cert.verify(genesis.chain_id, validators or genesis.validators)
    except LedgerError as exc:
        raise CorruptStoreError(f"tip certificate or roots invalid ({exc})", tip.height) from exc
    start = max(1, store.height - depth + 1)
    later = tip
    for height in range(store.height - 1, start - 1, -1):
        block = _block(store, height)
        if later.header.prev_hash != block.hash:
            raise CorruptStoreError(f"block {later.height} does not link to it", height)
        later = block
    if start == 1 and later.header.prev_hash != genesis.hash:
        raise CorruptStoreError("block 1 does not link to the genesis hash", 1)
    check_indexes(store, start)


def check_indexes(store: SqliteStore, start: int = 1) -> None:
    """Every record row from height ``start`` agrees with its envelope and its block."""
    count = store.stored_record_count()
    if count != store.log.size:
        raise CorruptStoreError(f"{count} record rows but the log holds {store.log.size}",
                                store.height)
    indexed = store.indexed_id_count()
    if indexed != count:
        raise CorruptStoreError(f"the id index holds {indexed} ids for {count} records",
                                store.height)
    digests = store.indexed_digest_count()
    sealed_count = store.sealed_count()
    if digests != sealed_count:
        raise CorruptStoreError(f"the digest index holds {digests} digests for "
                                f"{sealed_count} sealed records", store.height)
    for height, first_seq, n in store.block_rows(start):
        rows = store.record_rows(first_seq, n)
        if len(rows) != n:
            raise CorruptStoreError(f"{n - len(rows)} record rows are missing", height)
        sealed = store.sealed_rows(first_seq, n)
        records: dict[int, Record] = {}
        for i, (seq, rid, h, idx, signer, nonce, subject, envelope) in enumerate(rows):
            try:
                r = Record.from_wire(envelope)
            except LedgerError as exc:
                raise CorruptStoreError(f"record {i} does not decode ({exc})", height) from exc
            if (seq, h, idx) != (first_seq + i, height, i) or bytes(rid) != r.id or (
                    not store.id_indexed(r.id, seq)) or (
                    bytes(signer), from_signed64(nonce), subject) != (
                    r.body.signer, r.body.nonce, r.body.subject):
                raise CorruptStoreError(f"index row of record {i} disagrees with its envelope",
                                        height)
            digest = r.body.payload_digest
            if sealed.get(seq) != digest:
                raise CorruptStoreError(f"sealed row of record {i} disagrees with its envelope",
                                        height)
            if digest is not None and not store.digest_indexed(digest, seq):
                raise CorruptStoreError(f"the digest index lacks record {i}'s digest", height)
            records[seq] = r
        pairs = store.payloads_between(first_seq, n)
        redacted = store.redacted([rid for _, rid, _ in pairs])
        for seq, rid, pair in pairs:
            i = seq - first_seq
            if rid in redacted:
                raise CorruptStoreError(f"the payload of record {i} is held although a "
                                        "redaction names it", height)
            try:
                pair.check(records[seq])
            except LedgerError as exc:
                raise CorruptStoreError(f"the payload held for record {i} is not its own "
                                        f"({exc})", height) from exc
