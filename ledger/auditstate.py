"""The saved state of an incremental audit (``ledger audit --state FILE``, SPEC section 8).

A passing audit saves what it verified so a later run checks only what was added: the
genesis hash (a state for another chain is refused), every block hash (so a later run can
name the first height where a served history differs), the tip (height, hash, time), the
Merkle log's compact range (so the log continues without re-reading it), every
configuration change followed (so the history is rebuilt and changes keep being followed),
and what the uniqueness rules need: record ids, ``(signer, nonce)`` pairs, sealed record ids
with their signers, sealed payload digests and redacted ids — exactly ``ChainVerifier``'s
state.

Format (version 1): ``MAGIC``, then one msgpack map, then the SHA-256 of everything before
it (a truncated or altered file is refused, never half-loaded). The large sets are flat byte
columns of fixed-width entries, not msgpack arrays: 32 bytes per block hash, record id,
digest or redacted id; 40 per ``(signer, nonce)`` (nonce big-endian uint64); 64 per sealed
``id || signer``. At a million records that is about 72 bytes a record, with no per-entry
msgpack overhead; the sets' columns are in no particular order (sorting a million entries
would cost more than writing them).

This module only converts to and from bytes; writing the file (atomically) is the CLI's.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from typing import Any

import msgpack

from ledger import merkle
from ledger.audit import ChainVerifier
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from ledger.store.base import ConfigChange, rebuild_history

MAGIC = b"ledger-audit-state\n"
STATE_VERSION = 1
HASH = 32
_NONCE = struct.Struct(">32sQ")
_KEYS = ("version", "genesis_hash", "chain_id", "height", "records", "tip_hash",
         "last_time_ms", "log_size", "log_hashes", "changes", "block_hashes", "ids",
         "nonces", "sealed", "digests", "redacted")


class AuditStateError(LedgerError):
    """A saved audit state cannot be used: unreadable, truncated, altered, of another
    version, or of another chain."""

    code = "bad_audit_state"


def _column(items: Iterable[bytes]) -> bytes:
    return b"".join(list(items))


def _split(data: Any, width: int, what: str) -> list[bytes]:
    if type(data) is not bytes or len(data) % width:
        raise AuditStateError(f"audit state: {what} is not a column of {width}-byte entries")
    return [data[i:i + width] for i in range(0, len(data), width)]


def state_to_bytes(verifier: ChainVerifier, block_hashes: bytes) -> bytes:
    """The bytes of ``verifier``'s state after a passing audit; ``block_hashes`` is the
    hash of every block 1..height, 32 bytes each, in height order."""
    if len(block_hashes) != HASH * verifier.height:
        raise ValueError(f"{len(block_hashes) // HASH} block hashes for height "
                         f"{verifier.height}")
    doc = {
        "version": STATE_VERSION,
        "genesis_hash": verifier.genesis.hash,
        "chain_id": verifier.genesis.chain_id,
        "height": verifier.height,
        "records": verifier.records,
        "tip_hash": verifier.tip_hash,
        "last_time_ms": verifier.last_time_ms,
        "log_size": verifier.log.size,
        "log_hashes": list(verifier.log.hashes()),
        "changes": [[height, change] for height, change in verifier.changes],
        "block_hashes": block_hashes,
        "ids": _column(verifier.seen_ids),
        "nonces": _column(s + n.to_bytes(8, "big") for s, n in verifier.seen_nonces),
        "sealed": _column(rid + signer for rid, signer in verifier.sealed.items()),
        "digests": _column(verifier.digests),
        "redacted": _column(verifier.redacted),
    }
    return seal(MAGIC, doc)


def seal(magic: bytes, doc: dict[str, Any]) -> bytes:
    """A state file's bytes: ``magic``, ``doc`` as msgpack, and the sha256 of both (the
    audit state's layout, which the witness state shares)."""
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    body = magic + packed
    return body + hashlib.sha256(body).digest()


def unseal(data: bytes, magic: bytes, what: str, error: type[LedgerError]) -> Any:
    """The document ``seal`` made of ``data`` (not yet shape-checked); ``error`` naming
    ``what`` (e.g. "audit state") if the header, checksum or msgpack is wrong."""
    if not data.startswith(magic):
        article = "an" if what[:1] in "aeiou" else "a"
        raise error(f"not {article} {what} file (no header)")
    body, digest = data[:-HASH], data[-HASH:]
    if len(data) < len(magic) + HASH or hashlib.sha256(body).digest() != digest:
        raise error(f"{what} is truncated or corrupt (checksum mismatch)")
    try:
        return msgpack.unpackb(body[len(magic):], raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise error(f"{what} does not decode ({exc})") from exc


def state_from_bytes(data: bytes, genesis: Genesis) -> tuple[ChainVerifier, bytes]:
    """The verifier a saved state continues, and its block hashes column (32 bytes per
    height); AuditStateError if the bytes are not a whole, intact state of ``genesis``'s
    chain."""
    doc = unseal(data, MAGIC, "audit state", AuditStateError)
    if type(doc) is not dict or doc.get("version") != STATE_VERSION:
        version = doc.get("version") if type(doc) is dict else None
        raise AuditStateError(f"audit state version {version!r} is not {STATE_VERSION}")
    missing = [k for k in _KEYS if k not in doc]
    if missing:
        raise AuditStateError(f"audit state lacks {', '.join(missing)}")
    if doc["genesis_hash"] != genesis.hash:
        saved = doc["genesis_hash"]
        shown = saved.hex() if type(saved) is bytes else repr(saved)
        raise AuditStateError(f"audit state is of another chain ({doc['chain_id']!r}, genesis "
                              f"{shown}), not this genesis ({genesis.chain_id!r}, "
                              f"{genesis.hash.hex()})")
    try:
        verifier = ChainVerifier(genesis)
        height = doc["height"]
        verifier.height = height
        verifier.records = doc["records"]
        verifier.tip_hash = doc["tip_hash"]
        verifier.last_time_ms = doc["last_time_ms"]
        verifier.log = merkle.CompactRange.from_hashes(doc["log_size"], doc["log_hashes"])
        changes = [ConfigChange(h, -1, bytes(c)) for h, c in doc["changes"]]
        verifier.history = rebuild_history(genesis.config, changes)
        verifier.changes = [(c.height, c.change) for c in changes]
        hashes = doc["block_hashes"]
        if len(_split(hashes, HASH, "block_hashes")) != height:
            raise AuditStateError(f"audit state has {len(hashes) // HASH} block hashes for "
                                  f"height {height}")
        if height and hashes[-HASH:] != verifier.tip_hash:
            raise AuditStateError("audit state's tip hash is not its last block hash")
        verifier.seen_ids = set(_split(doc["ids"], HASH, "ids"))
        verifier.seen_nonces = {_NONCE.unpack(e) for e in _split(doc["nonces"], 40, "nonces")}
        verifier.sealed = {e[:HASH]: e[HASH:] for e in _split(doc["sealed"], 64, "sealed")}
        verifier.digests = set(_split(doc["digests"], HASH, "digests"))
        verifier.redacted = set(_split(doc["redacted"], HASH, "redacted"))
    except AuditStateError:
        raise
    except (LedgerError, TypeError, ValueError, KeyError) as exc:
        raise AuditStateError(f"audit state is inconsistent ({exc})") from exc
    if len(verifier.seen_ids) != verifier.records:
        raise AuditStateError(f"audit state has {len(verifier.seen_ids)} record ids for "
                              f"{verifier.records} records")
    return verifier, hashes
