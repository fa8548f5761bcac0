"""Starting a node from an export bundle (SPEC section 12) instead of syncing from peers.

``import_bundle`` writes a bundle's blocks into a node's SQLite store. Nothing in the file is
trusted: the blocks go through the audit exactly as ``ledger audit --file`` runs it
(``ledger.audit.audit_chunks``: ``check_block_alone`` — certificate under the configuration
in force at each height, records, signatures — in worker processes, then
``ChainVerifier.extend``, the chain-extension rule, in height order), and each block the audit
passed is then appended by the store's own ``append`` (which applies that same
``check_extends`` rule against what the store holds). There is no other validation path.

Blocks are written in large transactions (``SqliteStore.bulk``: one commit and one fsync per
batch of about ``BATCH_RECORDS`` records), each batch holding only blocks the audit already
passed, so a store is always a valid prefix of the chain: after a crash or a kill mid-import
it holds every batch committed before it, and running the import again continues (the
blocks it holds are verified again — the audit's state needs them — and compared with the
bundle's by hash; only the others are written). A bad block stops the import with
``height N: <reason>`` (``AuditError``), after the good blocks before it are committed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from ledger.audit import BlockSummary, BytesChunk, audit_chunks
from ledger.blocks import Block, Header
from ledger.errors import AuditError, LedgerError
from ledger.genesis import Genesis
from ledger.records import Record, SealedPayload
from ledger.store.sqlite import SqliteStore
from node.export import Bundle, check_witnesses

#: Records (plus one per block) written per transaction, at most; and a transaction is
#: committed at least this often (a killed import loses at most that much work).
BATCH_RECORDS = 20_000
BATCH_SECONDS = 2.0
#: Blocks handed to an audit worker at once.
CHUNK_BLOCKS = 32


class RestoreError(LedgerError):
    """The bundle cannot be imported into this store (another genesis, another history)."""

    code = "restore"


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did."""

    #: blocks already in the store (verified again, not written)
    kept: int
    #: blocks written
    written: int
    #: the store's height after the import
    height: int
    records: int
    tip_hash: bytes
    seconds: float
    #: witness cosignatures of the witnesses section, verified and kept
    cosignatures: int = 0
    #: sealed payloads of the payloads section, checked and kept
    payloads: int = 0


def _chunks(blocks: Iterator[bytes], pending: dict[int, bytes],
            failed: list[LedgerError]) -> Iterator[BytesChunk]:
    """The bundle's blocks in chunks for the audit, each block's bytes also kept in
    ``pending`` (by height) until the audit has passed it and it is written. An error of
    the file itself (truncated, no end marker, not msgpack) ends the chunks after the
    blocks read before it, and is put in ``failed``: those blocks are audited and kept."""
    start, chunk = 1, list[bytes | None]()
    try:
        for data in blocks:
            pending[start + len(chunk)] = data
            chunk.append(data)
            if len(chunk) == CHUNK_BLOCKS:
                yield BytesChunk(start, list(chunk))
                start, chunk = start + len(chunk), []
    except LedgerError as exc:
        failed.append(exc)
    if chunk:
        yield BytesChunk(start, list(chunk))


def count_hint(path: Path) -> int | None:
    """The block count the end marker at the file's end names (for a progress bar; the
    import checks it), or None if the file does not end with one."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
            tail = f.read()
    except OSError:
        return None
    at = tail.rfind(b"\x93\xa3end")
    try:
        obj = msgpack.unpackb(tail[at:], raw=False) if at >= 0 else None
    except (ValueError, msgpack.UnpackException):
        return None
    ok = isinstance(obj, list) and len(obj) == 3 and isinstance(obj[1], int)
    return obj[1] if ok else None  # type: ignore[index]


def check_genesis(bundle: Bundle, genesis: Genesis, genesis_path: Path | str) -> None:
    """Refuse, in one line, a bundle whose genesis.json is not the node's (byte for byte)."""
    if bundle.genesis_raw != genesis.raw:
        raise RestoreError(f"{bundle.path}: the bundle's genesis.json is not the bytes of "
                           f"{genesis_path} (another chain or an edited genesis); nothing "
                           f"imported")


def _import_witnesses(bundle: Bundle, store: SqliteStore, genesis: Genesis) -> int:
    """Verify the bundle's witnesses section as ``ledger audit --file`` does
    (``node.export.check_witnesses``, over the headers of the blocks now in the store, under
    the configuration governing each height) and keep its cosignatures in the store, in one
    transaction. AuditError (``height N:``) at a bad entry: then none is kept."""
    if not bundle.witnesses:
        return 0
    for height in bundle.witnesses:
        stored = store.header_cert(height)
        if stored is not None:  # a height beyond the chain: check_witnesses names it
            bundle.headers[height] = Header.from_wire(stored[0])
    cosigned = check_witnesses(bundle, genesis, store.history)
    with store.bulk():
        for height, pairs in sorted(bundle.witnesses.items()):
            for pubkey, sig in pairs:
                store.add_cosignature(height, pubkey, sig)
    return cosigned


def _import_payloads(bundle: Bundle, store: SqliteStore) -> int:
    """Keep the bundle's payloads section in the store (``store.put_payloads``, which checks
    each pair against its record's digest in one write), after refusing, as ``ledger audit
    --file`` does, a pair of no sealed record of the chain, of a redacted record, or one
    that does not match (AuditError ``height N:``; then none is kept). Pairs the store
    already holds are left as they are. Returns how many pairs the store holds of them."""
    if not bundle.payloads:
        return 0
    after = store.height + 1
    pairs: dict[bytes, SealedPayload] = {}
    for i, (rid, salt, payload) in enumerate(bundle.payloads):
        where = f"{bundle.path}: payloads entry {i} (record {rid.hex()})"
        loc = store.locate(rid)
        envelope = store.envelope(rid) if loc is not None else None
        if loc is None or envelope is None:
            raise AuditError(after, f"{where}: not a record of the bundle's chain")
        if rid in pairs:
            raise AuditError(loc.height, f"{where}: listed twice")
        redacted = store.redacted_at(rid)
        if redacted is not None:
            raise AuditError(redacted, f"{where}: redacted at height {redacted}, so its "
                             f"payload must not be exported")
        pair = SealedPayload(salt, payload)
        try:
            pair.check(Record.from_wire(envelope))
        except LedgerError as exc:
            raise AuditError(loc.height, f"{where}: {exc}") from exc
        pairs[rid] = pair
    put = store.put_payloads(pairs)
    if put.mismatched:  # checked above: only a store that changed under us
        rid = next(iter(put.mismatched))
        raise AuditError(after, f"{bundle.path}: record {rid.hex()}: the store refused "
                         f"its pair")
    return len(store.payloads(pairs))


def import_bundle(bundle_path: Path, store_path: Path, genesis: Genesis,
                  genesis_path: Path | str = "genesis.json", *, workers: int | None = None,
                  on_blocks: Callable[[int], None] | None = None,
                  batch_records: int | None = None) -> ImportReport:
    """Verify the bundle at ``bundle_path`` and write its blocks into the store at
    ``store_path`` (created if missing; an existing one must hold a prefix of the bundle's
    chain; one longer than the bundle is left as it is once the bundle's blocks are found in
    it). ``on_blocks(n)`` is called as n blocks are verified and kept or written.
    Raises RestoreError (another genesis or another history), AuditError (``height N:``, the
    first bad block; the good ones before it are written), BundleError (not a bundle)."""
    started = time.monotonic()
    batch_records = batch_records or BATCH_RECORDS
    bundle = Bundle(bundle_path)
    check_genesis(bundle, genesis, genesis_path)
    store = SqliteStore(store_path, genesis_hash=genesis.hash, config=genesis.config)
    try:
        have = store.height
        pending: dict[int, bytes] = {}
        batch: list[bytes] = []
        size = 0
        kept = written = 0
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal size, written, last_flush
            last_flush = time.monotonic()
            if not batch:
                return
            with store.bulk():
                for data in batch:
                    store.append(Block.from_wire(data))
            written += len(batch)
            if on_blocks is not None:
                on_blocks(len(batch))
            batch.clear()
            size = 0

        def on_block(summary: BlockSummary) -> None:
            nonlocal size, kept
            data = pending.pop(summary.height)
            if summary.height <= have:
                stored = store.header_cert(summary.height)
                if stored is None or Header.from_wire(stored[0]).hash != summary.hash:
                    raise RestoreError(
                        f"height {summary.height}: {store_path} holds another block at this "
                        f"height than the bundle (another history); nothing imported")
                kept += 1
                if on_blocks is not None:
                    on_blocks(1)
                return
            batch.append(data)
            size += summary.record_count + 1
            if size >= batch_records or time.monotonic() - last_flush >= BATCH_SECONDS:
                flush()

        failed: list[LedgerError] = []
        try:
            report = audit_chunks(genesis, _chunks(bundle.blocks(), pending, failed),
                                  workers=workers, on_block=on_block)
        except AuditError:
            flush()  # the blocks before the bad one passed: keep them
            raise
        flush()
        if failed:
            raise failed[0]
        count, tip = bundle.end
        if report.tip_hash != tip:
            raise AuditError(count, f"{bundle.path}: the bundle's end marker names tip "
                             f"{tip.hex()}, the last block's hash is {report.tip_hash.hex()}")
        cosigned = _import_witnesses(bundle, store, genesis)
        payloads = _import_payloads(bundle, store)
        return ImportReport(kept, written, store.height, report.records, report.tip_hash,
                            time.monotonic() - started, cosigned, payloads)
    finally:
        try:
            # a redaction among the blocks written cleared pairs the store held: their
            # copies leave the files now (``scrub``'s rebuild), not at the node's next open
            if store.rebuild_pending():
                store.scrub()
        finally:
            store.close()
