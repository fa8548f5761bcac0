"""An in-memory BlockStore with the same behaviour as SQLite's, for tests and simulation."""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Iterator, Mapping

from ledger import merkle
from ledger.blocks import Block, BlockShell, Certificate
from ledger.config import Config, ConfigHistory
from ledger.errors import DuplicateError
from ledger.records import Record, SealedPayload
from ledger.store.base import (
    MAX_SPLIT_VIEWS,
    MAX_SPLIT_VIEWS_PER_WITNESS,
    ConfigChange,
    PayloadsPut,
    RecordLocation,
    block_change,
    block_payload_rows,
    check_extends,
    check_governed,
    judge_payloads,
    next_config,
    split_view_witness,
    store_redactions,
)
from ledger.validation import ChainTip


class MemoryStore:
    """A BlockStore in dicts and lists; nothing survives the process."""

    def __init__(self, genesis_hash: bytes | None = None, *,
                 config: Config | None = None) -> None:
        """With ``config`` (genesis's version 0), the store follows configuration changes
        (``history``) and checks each block's header fields against the one in force."""
        self.genesis_hash = genesis_hash
        self._history = None if config is None else ConfigHistory(config)
        self._changes: list[ConfigChange] = []
        self._blocks: list[bytes] = []
        self._hashes: list[bytes] = []
        self._tip_time = -1
        self._envelopes: list[bytes] = []
        self._locations: list[RecordLocation] = []
        self._by_id: dict[bytes, RecordLocation] = {}
        self._nonces: set[tuple[bytes, int]] = set()
        self._sealed: dict[bytes, bytes] = {}  # sealed record id -> signer
        self._digests: set[bytes] = set()  # their payload digests
        self._redacted: dict[bytes, int] = {}  # redacted id -> height of the redaction
        self._payloads: dict[int, SealedPayload] = {}  # log index -> pair (SPEC section 10)
        self._sealed_seqs: list[int] = []  # log indexes of sealed records, in order
        self._subjects: dict[str, list[int]] = {}
        self._nodes: dict[merkle.NodeId, bytes] = {}
        self._log = merkle.CompactRange()
        # witness cosignatures and split views: written from the API's worker threads
        self._cosigs: dict[int, dict[bytes, bytes]] = {}
        self._split_views: list[bytes] = []
        self._witness_lock = threading.Lock()

    @property
    def height(self) -> int:
        """Height of the last committed block (0 when empty)."""
        return len(self._blocks)

    @property
    def log(self) -> merkle.CompactRange:
        """The Merkle log over every committed envelope."""
        return self._log

    def tip_hash(self) -> bytes | None:
        """Hash of the last block."""
        return self._hashes[-1] if self._hashes else None

    def append(self, block: Block, last_cert: Certificate | None = None,
               payloads: Mapping[bytes, SealedPayload] | None = None) -> None:
        """Add ``block``; all or nothing, like the SQLite store's transaction."""
        h = block.header
        ids = [r.id for r in block.records]
        pairs = [(r.body.signer, r.body.nonce) for r in block.records]
        if len(set(ids)) != len(ids) or len(set(pairs)) != len(pairs):
            raise DuplicateError(f"height {h.height}: a record id or (signer, nonce) appears "
                                 "twice in the block")
        redactions = store_redactions(self._history, block)
        new_log, completed = check_extends(
            block, ChainTip(self.height, self.tip_hash() or self.genesis_hash,
                            self._tip_time, self._log),
            last_cert, seen_ids=self.seen_ids, seen_nonces=self.seen_nonces,
            seen_digests=self.seen_digests, sealed_signers=self.sealed_signers,
            redacted=self.redacted, redactions=redactions, history=self._history)
        check_governed(self._history, block)
        change = block_change(block)
        new_config = next_config(self._history, change)
        first_seq = self._log.size
        payload_rows = block_payload_rows(block, first_seq, payloads)
        for i, r in enumerate(block.records):
            seq = first_seq + i
            loc = RecordLocation(h.height, i, seq)
            self._envelopes.append(r.envelope)
            self._locations.append(loc)
            self._by_id[r.id] = loc
            self._nonces.add((r.body.signer, r.body.nonce))
            self._subjects.setdefault(r.body.subject, []).append(seq)
            if r.body.payload_digest is not None:
                self._sealed[r.id] = r.body.signer
                self._digests.add(r.body.payload_digest)
                self._sealed_seqs.append(seq)
        for redaction in redactions:
            for rid in redaction.ids:
                self._redacted[rid] = h.height
                self._payloads.pop(self._by_id[rid].seq, None)
        for seq, salt, payload in payload_rows:
            self._payloads[seq] = SealedPayload(salt, payload)
        for level, index, node_hash in completed:
            self._nodes[(level, index)] = node_hash
        if last_cert is not None:
            prev = Block.from_wire(self._blocks[-1])
            self._blocks[-1] = Block(prev.header, prev.records, last_cert).to_wire()
        self._blocks.append(block.to_wire())
        self._hashes.append(h.hash)
        self._tip_time = h.time_ms
        self._log = new_log
        if change is not None:
            self._changes.append(change)
            if self._history is not None and new_config is not None:
                self._history.append(h.height, new_config)

    def put_payloads(self, pairs: Mapping[bytes, SealedPayload]) -> PayloadsPut:
        """Keep pairs of committed sealed records not redacted nor held, each checked."""
        digests = {}
        for rid in pairs:
            loc = self._by_id.get(rid)
            if (loc is not None and rid in self._sealed and rid not in self._redacted
                    and loc.seq not in self._payloads):
                body = Record.from_wire(self._envelopes[loc.seq]).body
                assert body.payload_digest is not None
                digests[rid] = (loc.seq, body.payload_digest)
        keep, bad = judge_payloads(pairs, digests)
        for seq, _, pair in keep:
            self._payloads[seq] = pair
        return PayloadsPut(tuple(rid for _, rid, _ in keep), tuple(bad))

    def payloads(self, ids: Iterable[bytes]) -> dict[bytes, SealedPayload]:
        """The pairs held for those of ``ids`` that are committed."""
        out = {}
        for rid in set(ids):
            loc = self._by_id.get(rid)
            pair = None if loc is None else self._payloads.get(loc.seq)
            if pair is not None:
                out[rid] = pair
        return out

    def missing_payloads(self, after_seq: int = -1,
                         limit: int = 1000) -> list[tuple[int, bytes]]:
        """Committed sealed records after ``after_seq`` with no pair held and not redacted."""
        out: list[tuple[int, bytes]] = []
        for seq in self._sealed_seqs[bisect.bisect_right(self._sealed_seqs, after_seq):]:
            if len(out) >= limit:
                break
            rid = Record.from_wire(self._envelopes[seq]).id
            if seq not in self._payloads and rid not in self._redacted:
                out.append((seq, rid))
        return out

    def payloads_between(self, first_seq: int, count: int, limit: int | None = None,
                         ) -> list[tuple[int, bytes, SealedPayload]]:
        """Every pair held for records in ``[first_seq, first_seq + count)``, in log order
        (the first ``limit`` when given)."""
        seqs = [seq for seq in sorted(self._payloads) if first_seq <= seq < first_seq + count]
        return [(seq, Record.from_wire(self._envelopes[seq]).id, self._payloads[seq])
                for seq in seqs[:limit]]

    def rebuild_pending(self) -> bool:
        """Never: a deleted pair is gone with its dict entry."""
        return False

    def scrub(self, rebuild: bool = True) -> bool:
        """Nothing to do: a deleted pair is gone with its dict entry."""
        return True

    @property
    def history(self) -> ConfigHistory | None:
        """The configuration versions this store's chain has made (None without genesis's)."""
        return self._history

    def config_changes(self) -> list[ConfigChange]:
        """Every committed configuration change, oldest first."""
        return list(self._changes)

    def block_bytes(self, height: int) -> bytes | None:
        """The exact block bytes at ``height``."""
        return self._blocks[height - 1] if 1 <= height <= len(self._blocks) else None

    def header_cert(self, height: int) -> tuple[bytes, bytes] | None:
        """The header and certificate bytes of the block at ``height``."""
        data = self.block_bytes(height)
        if data is None:
            return None
        shell = BlockShell.from_wire(data)
        return shell.header.to_wire(), shell.cert.to_wire()

    def block(self, height: int) -> Block | None:
        """The decoded block at ``height``."""
        data = self.block_bytes(height)
        return None if data is None else Block.from_wire(data)

    def locate(self, record_id: bytes) -> RecordLocation | None:
        """Where record ``record_id`` was committed."""
        return self._by_id.get(record_id)

    def envelope(self, record_id: bytes) -> bytes | None:
        """The envelope of a committed record."""
        loc = self._by_id.get(record_id)
        return None if loc is None else self._envelopes[loc.seq]

    def seen_ids(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` are already committed."""
        return {i for i in ids if i in self._by_id}

    def seen_nonces(self, pairs: Iterable[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Which (signer, nonce) pairs are already committed."""
        return {p for p in pairs if p in self._nonces}

    def seen_digests(self, digests: Iterable[bytes]) -> set[bytes]:
        """Which sealed payload digests are already committed."""
        return {d for d in digests if d in self._digests}

    def sealed_signers(self, ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """Which of ``ids`` are committed sealed records, with their signers."""
        return {i: self._sealed[i] for i in ids if i in self._sealed}

    def redacted(self, ids: Iterable[bytes]) -> set[bytes]:
        """Which of ``ids`` a committed redaction names."""
        return {i for i in ids if i in self._redacted}

    def redaction_heights(self, ids: Iterable[bytes]) -> dict[bytes, int]:
        """Those of ``ids`` a committed redaction names, with its height."""
        return {i: self._redacted[i] for i in ids if i in self._redacted}

    def redacted_at(self, record_id: bytes) -> int | None:
        """The height of the redaction naming ``record_id``."""
        return self._redacted.get(record_id)

    def subject_history(self, subject: str, after_seq: int = -1,
                        limit: int = 100) -> list[tuple[RecordLocation, bytes]]:
        """Committed records of ``subject`` after log index ``after_seq``, oldest first."""
        seqs = self._subjects.get(subject, [])
        start = bisect.bisect_right(seqs, after_seq)
        return [(self._locations[seq], self._envelopes[seq]) for seq in seqs[start:start + limit]]

    def subject_history_desc(self, subject: str, before_seq: int | None = None,
                             limit: int = 100) -> list[tuple[RecordLocation, bytes]]:
        """Committed records of ``subject`` before log index ``before_seq``, newest first."""
        seqs = self._subjects.get(subject, [])
        end = len(seqs) if before_seq is None else bisect.bisect_left(seqs, before_seq)
        return [(self._locations[seq], self._envelopes[seq])
                for seq in reversed(seqs[max(0, end - limit):end])]

    def log_nodes(self, ids: Iterable[merkle.NodeId]) -> Mapping[merkle.NodeId, bytes]:
        """Perfect-subtree hashes of the log; level 0 is hashed from the envelope."""
        out: dict[merkle.NodeId, bytes] = {}
        for level, index in ids:
            if level == 0:
                if index < len(self._envelopes):
                    out[(0, index)] = merkle.leaf_hash(self._envelopes[index])
            elif (level, index) in self._nodes:
                out[(level, index)] = self._nodes[(level, index)]
        return out

    def add_cosignature(self, height: int, pubkey: bytes, sig: bytes) -> bool:
        """Keep a checked cosignature; False if that witness's for ``height`` is held."""
        with self._witness_lock:
            held = self._cosigs.setdefault(height, {})
            if pubkey in held:
                return False
            held[pubkey] = sig
            return True

    def cosignatures(self, height: int) -> list[tuple[bytes, bytes]]:
        """The ``(pubkey, sig)`` cosignatures held for ``height``, ordered by key."""
        with self._witness_lock:
            return sorted(self._cosigs.get(height, {}).items())

    def cosignatures_between(self, lo: int, hi: int) -> Iterator[tuple[int, bytes, bytes]]:
        """``(height, pubkey, sig)`` for heights ``lo..hi``, in height then key order."""
        with self._witness_lock:
            rows = [(h, pk, sig) for h in sorted(self._cosigs) if lo <= h <= hi
                    for pk, sig in sorted(self._cosigs[h].items())]
        return iter(rows)

    def add_split_view(self, cosig_json: bytes) -> bool:
        """Keep split-view evidence; False if held already or the store holds the most."""
        with self._witness_lock:
            if cosig_json in self._split_views or len(self._split_views) >= MAX_SPLIT_VIEWS:
                return False
            witness = split_view_witness(cosig_json)
            if witness is not None and sum(split_view_witness(d) == witness for d in
                                           self._split_views) >= MAX_SPLIT_VIEWS_PER_WITNESS:
                return False
            self._split_views.append(bytes(cosig_json))
            return True

    def split_views(self) -> list[bytes]:
        """The split-view evidence held, oldest first."""
        with self._witness_lock:
            return list(self._split_views)

    def close(self) -> None:
        """Nothing to release."""

