"""Export bundles (SPEC section 12): one file holding a whole chain for the long term.

A bundle is a sequence of msgpack objects: ``["ledger-export", 1, genesis_json_bytes]``,
each block's exact bytes (``bin``) from height 1 in order, optionally ``["payloads", [[id,
salt, payload_bytes], ...]]`` (sealed payloads not redacted), optionally ``["witnesses",
[[height, pubkey, sig], ...]]`` (the witness cosignatures the exporting store holds, in
height order), and last ``["end", block_count, tip_block_hash]``. ``ledger audit --file``
checks every cosignature of the witnesses section against its height's block and the
configuration governing it (``check_witnesses``) and every payload against its sealed
record's digest (``check_payloads``). ``ledger export`` writes the payloads section from
the pairs its source holds and serves it (a store's, or a node's ``GET /v1/payloads`` to the
export's read identity), each checked against its record's digest as it is written, never a
redacted record's; a node import (node/restore.py) keeps them (``store.put_payloads``).

Both directions stream: memory does not grow with the chain's blocks. The witnesses section
is written through a temporary file (its entry count heads it); reading, it is held in
memory (about 200 bytes per cosignature) with the headers of the heights it cosigns. A
payloads section is one msgpack object, read whole (at most MAX_OBJECT bytes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from ledger.audit import BlockSummary
from ledger.blocks import Block, BlockShell, Header
from ledger.config import REDACT_TYPE, ConfigHistory
from ledger.crypto import PUBLIC_KEY_SIZE, SIGNATURE_SIZE
from ledger.encoding import packb
from ledger.errors import AuditError, LedgerError, PayloadMismatchError, WitnessError
from ledger.genesis import Genesis
from ledger.records import check_sealed_payload
from ledger.validation import block_redactions
from ledger.witness import count_witnesses
from node.files import durable_file

MAGIC = "ledger-export"
VERSION = 1
#: The largest single object a bundle may hold (a block is far smaller).
MAX_OBJECT = 256 * 1024 * 1024


class BundleError(LedgerError):
    """The bundle cannot be read at all (not a bundle, another version, unreadable)."""

    code = "bad_bundle"


WITNESSES = "witnesses"
PAYLOADS = "payloads"


def _write_section(f: BinaryIO, name: str, entries: Iterable[bytes], spool_dir: Path) -> int:
    """Write section ``name`` of the packed ``entries`` (none: no section). They go through
    a temporary file first, since their number heads the array."""
    n = 0
    with tempfile.TemporaryFile(dir=spool_dir) as spool:
        for entry in entries:
            spool.write(entry)
            n += 1
        if n:
            packer = msgpack.Packer(use_bin_type=True)
            f.write(packer.pack_array_header(2) + packb(name) + packer.pack_array_header(n))
            spool.seek(0)
            shutil.copyfileobj(spool, f)
    return n


def _write_witnesses(f: BinaryIO, rows: Iterable[tuple[int, bytes, bytes]], count: int,
                     spool_dir: Path) -> int:
    """Write the witnesses section of ``rows`` at heights ``1..count`` (none: no section)."""
    return _write_section(f, WITNESSES, (packb([height, pubkey, sig])
                                         for height, pubkey, sig in rows
                                         if 1 <= height <= count), spool_dir)


@dataclass
class SealedIndex:
    """The sealed records of the blocks written so far (id -> (height, digest)) and the
    ids their redactions name, by redaction height: what a payloads section is checked
    against. Redactions are read by shape only (``block_redactions`` without a
    configuration): the source's chain is audited elsewhere."""

    sealed: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    redacted: dict[bytes, int] = field(default_factory=dict)

    def add(self, block: Block) -> None:
        height = block.header.height
        for record in block.records:
            digest = record.body.payload_digest
            if digest is not None:
                self.sealed[record.id] = (height, digest)
        with contextlib.suppress(LedgerError):  # the source's audit judges a bad one
            for redaction in block_redactions(None, block.records):
                for rid in redaction.ids:
                    self.redacted.setdefault(rid, height)


def _write_payloads(f: BinaryIO, rows: Iterable[tuple[bytes, bytes, bytes]],
                    index: SealedIndex, spool_dir: Path) -> int:
    """Write the payloads section of ``rows`` ``(id, salt, payload_bytes)`` (none: no
    section): only pairs of sealed records of the blocks written (others, of records after
    the exported tip, are left out), each checked against its digest; a redacted record's
    pair is refused (BundleError), as is a pair that does not match."""

    def entries() -> Iterator[bytes]:
        seen: set[bytes] = set()
        for rid, salt, payload in rows:
            found = index.sealed.get(rid)
            if found is None or rid in seen:
                continue
            if rid in index.redacted:
                raise BundleError(f"record {rid.hex()} was redacted at height "
                                  f"{index.redacted[rid]}: its payload is never exported")
            try:
                check_sealed_payload(found[1], salt, payload, f"record {rid.hex()}")
            except LedgerError as exc:
                raise BundleError(f"height {found[0]}: {exc}") from exc
            seen.add(rid)
            yield packb([rid, salt, payload])

    return _write_section(f, PAYLOADS, entries(), spool_dir)


@dataclass(frozen=True)
class Written:
    """What ``write_bundle`` wrote."""

    count: int
    tip: bytes
    payloads: int = 0


def write_bundle(out: Path, genesis_raw: bytes, blocks: Iterable[bytes | None],
                 on_block: Callable[[], None] | None = None,
                 witnesses: Iterable[tuple[int, bytes, bytes]] = (),
                 payloads: Iterable[tuple[bytes, bytes, bytes]] | None = None,
                 ) -> tuple[int, bytes]:
    """Write ``genesis_raw`` and ``blocks`` (heights 1.. in order) as a bundle to ``out``:
    to a temporary file first, fsynced, then renamed over ``out`` (``durable_file``), so a
    crash or error leaves no partial bundle under the final name. ``payloads``, read once
    the blocks are written, are ``(id, salt, payload_bytes)`` pairs (``_write_payloads``:
    the payloads section). ``witnesses``, read after them, are ``(height, pubkey, sig)``
    cosignatures (a store's ``cosignatures_between``): those of the heights written make
    the witnesses section. Returns (block count, tip block hash)."""
    written = write_bundle_counted(out, genesis_raw, blocks, on_block, witnesses, payloads)
    return written.count, written.tip


def write_bundle_counted(out: Path, genesis_raw: bytes, blocks: Iterable[bytes | None],
                         on_block: Callable[[], None] | None = None,
                         witnesses: Iterable[tuple[int, bytes, bytes]] = (),
                         payloads: Iterable[tuple[bytes, bytes, bytes]] | None = None,
                         ) -> Written:
    """``write_bundle``, saying also how many payloads it wrote."""
    count, tip = 0, b""
    out = Path(out)
    index = SealedIndex()
    with durable_file(out) as f:
        f.write(packb([MAGIC, VERSION, genesis_raw]))
        for data in blocks:
            if data is None:
                raise BundleError(f"block {count + 1} is missing at the source")
            try:
                block = Block.from_wire(data)
            except LedgerError as exc:
                raise BundleError(f"block {count + 1} does not decode: {exc}") from exc
            tip = block.header.hash
            if payloads is not None:
                index.add(block)
            f.write(packb(data))
            count += 1
            if on_block is not None:
                on_block()
        if count == 0:
            raise BundleError("the chain has no blocks to export")
        spool_dir = out.resolve().parent
        n = _write_payloads(f, payloads, index, spool_dir) if payloads is not None else 0
        _write_witnesses(f, witnesses, count, spool_dir)
        f.write(packb(["end", count, tip]))
    return Written(count, tip, n)


def _unpacker(f: BinaryIO) -> msgpack.Unpacker:
    return msgpack.Unpacker(f, raw=False, max_buffer_size=MAX_OBJECT,
                            max_bin_len=MAX_OBJECT, max_str_len=MAX_OBJECT)


def _header(items: Iterator[Any], path: Path) -> bytes:
    try:
        head = next(items)
    except StopIteration:
        raise BundleError(f"{path}: empty file, not an export bundle") from None
    if (not isinstance(head, list) or len(head) != 3 or head[0] != MAGIC
            or not isinstance(head[2], bytes)):
        raise BundleError(f"{path}: not an export bundle (no [\"ledger-export\", 1, genesis])")
    if head[1] != VERSION:
        raise BundleError(f"{path}: export bundle version {head[1]!r} is not supported "
                          f"(only {VERSION})")
    return head[2]


def _objects(f: BinaryIO, path: Path, unpacker: msgpack.Unpacker | None = None
             ) -> Iterator[Any]:
    try:
        yield from unpacker if unpacker is not None else _unpacker(f)
    except (ValueError, msgpack.UnpackException) as exc:
        raise BundleError(f"{path}: not valid msgpack ({exc})") from exc


def _witness_entries(obj: list[Any], path: Path, count: int
                     ) -> dict[int, list[tuple[bytes, bytes]]]:
    """The witnesses section's entries by height, shape-checked (not verified)."""
    if len(obj) != 2 or not isinstance(obj[1], list):
        raise AuditError(count + 1, f"{path}: the witnesses section is not "
                         f"[\"witnesses\", [[height, pubkey, sig], ...]]")
    out: dict[int, list[tuple[bytes, bytes]]] = {}
    for i, entry in enumerate(obj[1]):
        height = entry[0] if isinstance(entry, list) and entry else None
        if not (isinstance(entry, list) and len(entry) == 3 and type(height) is int
                and isinstance(entry[1], bytes) and len(entry[1]) == PUBLIC_KEY_SIZE
                and isinstance(entry[2], bytes) and len(entry[2]) == SIGNATURE_SIZE):
            raise AuditError(height if type(height) is int and height >= 1 else count + 1,
                             f"{path}: witnesses entry {i} is not [height, pubkey: "
                             f"bin({PUBLIC_KEY_SIZE}), sig: bin({SIGNATURE_SIZE})]")
        out.setdefault(height, []).append((entry[1], entry[2]))
    return out


def _payload_entries(obj: list[Any], path: Path, count: int
                     ) -> list[tuple[bytes, bytes, bytes]]:
    """The payloads section's entries, shape-checked (not verified)."""
    if len(obj) != 2 or not isinstance(obj[1], list):
        raise AuditError(count + 1, f"{path}: the payloads section is not "
                         f"[\"payloads\", [[id, salt, payload_bytes], ...]]")
    out = []
    for i, entry in enumerate(obj[1]):
        if not (isinstance(entry, list) and len(entry) == 3
                and all(isinstance(x, bytes) for x in entry) and len(entry[0]) == 32):
            raise AuditError(count + 1, f"{path}: payloads entry {i} is not [id: bin(32), "
                             f"salt: bin(32), payload_bytes: bin]")
        out.append((entry[0], entry[1], entry[2]))
    return out


class Bundle:
    """A bundle file read as a stream: ``genesis_raw`` from its first object, then
    ``scan()`` (structure and end marker, no verification) and ``blocks()`` (each block's
    bytes, for the audit). Errors about a height are AuditError (``height N: ...``).

    ``scan()`` also reads the witnesses section into ``witnesses`` (height -> ``(pubkey,
    sig)`` pairs); a ``blocks()`` walk after it keeps the header of each cosigned height in
    ``headers``, for ``check_witnesses`` once the blocks are audited."""

    def __init__(self, path: Path, *, payloads: bool = True) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self.genesis_raw = _header(_objects(f, self.path), self.path)
        self.end: tuple[int, bytes] = (0, b"")
        self.witnesses: dict[int, list[tuple[bytes, bytes]]] = {}
        self.headers: dict[int, Header] = {}
        #: the payloads section's entries (id, salt, payload_bytes); False: refuse one
        self.payloads: list[tuple[bytes, bytes, bytes]] = []
        self._accept_payloads = payloads
        self._payload_ids: set[bytes] = set()
        #: on a walk after ``scan()``: each payload id's sealed record (height, digest), and
        #: the height of the redaction that names it, if any
        self.sealed: dict[bytes, tuple[int, bytes]] = {}
        self.redacted: dict[bytes, int] = {}

    def _keep_header(self, height: int, data: bytes) -> None:
        if height in self.witnesses:
            with contextlib.suppress(LedgerError):  # the audit names a block that does not
                self.headers[height] = BlockShell.from_wire(data).header  # decode
        if self._payload_ids:
            with contextlib.suppress(LedgerError):
                self._keep_sealed(height, Block.from_wire(data))

    def _keep_sealed(self, height: int, block: Block) -> None:
        ids = self._payload_ids
        for record in block.records:
            body = record.body
            if body.payload_digest is not None and record.id in ids:
                self.sealed[record.id] = (height, body.payload_digest)
            elif body.type == REDACT_TYPE:
                for redaction in block_redactions(None, [record]):
                    for rid in redaction.ids:
                        if rid in ids:
                            self.redacted.setdefault(rid, height)

    def _walk(self) -> Iterator[bytes]:
        """Yield each block's bytes; then check the end marker's count and that nothing
        follows it. Sets ``end`` to (count, tip hash)."""
        with open(self.path, "rb") as f:
            unpacker = _unpacker(f)
            items = _objects(f, self.path, unpacker)
            _header(items, self.path)
            count = 0
            sections: set[str] = set()
            for obj in items:
                if isinstance(obj, bytes):
                    if sections:
                        raise AuditError(count + 1, f"{self.path}: a block after the "
                                         f"{sorted(sections)[0]!r} section (blocks come first)")
                    count += 1
                    self._keep_header(count, obj)
                    yield obj
                    continue
                if isinstance(obj, list) and obj and obj[0] == WITNESSES:
                    if WITNESSES in sections:
                        raise AuditError(count + 1, f"{self.path}: a second witnesses section")
                    sections.add(WITNESSES)
                    self.witnesses = _witness_entries(obj, self.path, count)
                    continue
                if isinstance(obj, list) and obj and obj[0] == PAYLOADS:
                    if not self._accept_payloads:
                        raise BundleError(f"{self.path}: the bundle has a 'payloads' section, "
                                          f"which this reader does not take")
                    if sections:
                        where = ("a second payloads section" if PAYLOADS in sections
                                 else "the payloads section after the witnesses section")
                        raise AuditError(count + 1, f"{self.path}: {where}")
                    sections.add(PAYLOADS)
                    self.payloads = _payload_entries(obj, self.path, count)
                    self._payload_ids = {rid for rid, _, _ in self.payloads}
                    continue
                if not (isinstance(obj, list) and len(obj) == 3 and obj[0] == "end"
                        and isinstance(obj[1], int) and isinstance(obj[2], bytes)):
                    raise AuditError(count + 1, f"{self.path}: unexpected object in the "
                                     f"bundle where block {count + 1} or the end marker "
                                     f"belongs")
                if obj[1] != count:
                    raise AuditError(min(count, obj[1]) + 1,
                                     f"{self.path}: the end marker counts {obj[1]} blocks, "
                                     f"the bundle holds {count}")
                if unpacker.tell() != os.fstat(f.fileno()).st_size:
                    raise AuditError(count + 1, f"{self.path}: data after the end marker")
                self.end = (obj[1], obj[2])
                return
            raise AuditError(count + 1, f"{self.path}: the bundle is truncated after "
                             f"{count} blocks (no end marker)")

    def scan(self) -> tuple[int, bytes]:
        """Read the whole file once without verifying blocks: (block count, tip hash) from
        its end marker, after checking the marker is there, agrees and ends the file."""
        for _ in self._walk():
            pass
        return self.end

    def blocks(self) -> Iterator[bytes]:
        """Each block's bytes in order (the end marker is checked again at the end)."""
        return self._walk()


def check_witnesses(bundle: Bundle, genesis: Genesis, history: ConfigHistory | None) -> int:
    """Verify every cosignature of ``bundle``'s witnesses section (after ``scan()`` and an
    audited ``blocks()`` walk): each of a witness of the configuration governing its height
    (``history``, the audit's; genesis's when None), over that height's block, once per
    witness (``ledger.witness.count_witnesses``). AuditError (``height N: ...``) at the
    first height with a bad entry, or with cosignatures but no block; returns how many."""
    total = 0
    for height in sorted(bundle.witnesses):
        pairs = bundle.witnesses[height]
        header = bundle.headers.get(height)
        if header is None:
            raise AuditError(height, f"{bundle.path}: the witnesses section cosigns height "
                             f"{height}, a block the bundle does not hold")
        config = genesis.config if history is None else history.at(height)
        try:
            total += count_witnesses(pairs, config, genesis.hash, header, "witnesses section")
        except WitnessError as exc:
            raise AuditError(height, str(exc)) from exc
    return total


def check_payloads(bundle: Bundle) -> int:
    """Verify every entry of ``bundle``'s payloads section (after ``scan()`` and an audited
    ``blocks()`` walk): each names a sealed record of the bundle, once, that no redaction
    names, and its salt and payload match that record's digest
    (``ledger.records.check_sealed_payload``). AuditError (``height N: ...``, the record's
    height) at the first bad entry; returns how many."""
    seen: set[bytes] = set()
    after = bundle.end[0] + 1
    for i, (rid, salt, payload) in enumerate(bundle.payloads):
        where = f"{bundle.path}: payloads entry {i} (record {rid.hex()})"
        if rid not in bundle.sealed:
            raise AuditError(after, f"{where}: not a sealed record of the bundle")
        height, digest = bundle.sealed[rid]
        if rid in seen:
            raise AuditError(height, f"{where}: listed twice")
        seen.add(rid)
        if rid in bundle.redacted:
            raise AuditError(bundle.redacted[rid], f"{where}: redacted at height "
                             f"{bundle.redacted[rid]}, so its payload must not be exported")
        try:
            check_sealed_payload(digest, salt, payload, where)
        except PayloadMismatchError as exc:
            raise AuditError(height, str(exc)) from exc
    return len(seen)


@dataclass
class PayloadTally:
    """``ledger audit --payloads``: the sealed records of the audited chain (from each
    block's summary: id -> (height, digest)) and their redactions, and every pair a source
    served, checked against its record's digest. AuditError (``height N: ...``, the record's
    height) at the first pair that does not match, names no sealed record of the audited
    chain, is listed twice, or belongs to a redacted record (a source must not keep it)."""

    sealed: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    redacted: dict[bytes, int] = field(default_factory=dict)
    served: set[bytes] = field(default_factory=set)
    withheld: set[bytes] = field(default_factory=set)

    def add(self, summary: BlockSummary) -> None:
        for rid, digest, _ in summary.sealed:
            self.sealed[rid] = (summary.height, digest)
        for redaction in summary.redactions:
            for rid in redaction.ids:
                self.redacted.setdefault(rid, summary.height)

    def _known(self, rid: bytes, where: str, after: int) -> int:
        found = self.sealed.get(rid)
        if found is None:
            raise AuditError(after, f"{where}: not a sealed record of the audited chain")
        if rid in self.served or rid in self.withheld:
            raise AuditError(found[0], f"{where}: listed twice")
        if rid in self.redacted:
            raise AuditError(self.redacted[rid], f"{where}: redacted at height "
                             f"{self.redacted[rid]}, yet its payload is still held")
        return found[0]

    def pair(self, rid: bytes, salt: bytes, payload: bytes, where: str, after: int) -> None:
        """A served pair: checked against its record's digest."""
        height = self._known(rid, where, after)
        try:
            check_sealed_payload(self.sealed[rid][1], salt, payload, where)
        except LedgerError as exc:
            raise AuditError(height, str(exc)) from exc
        self.served.add(rid)

    def withhold(self, rid: bytes, where: str, after: int) -> None:
        """A pair the source holds but its read policy did not serve to this reader."""
        self._known(rid, where, after)
        self.withheld.add(rid)

    @property
    def missing(self) -> int:
        return len(self.sealed) - len(self.served) - len(self.withheld) - len(
            self.redacted.keys() & self.sealed.keys())

    def note(self) -> str:
        n = len(self.sealed)
        redacted = len(self.redacted.keys() & self.sealed.keys())
        return (f"{n} sealed record{'s' if n != 1 else ''}: {len(self.served)} payloads "
                f"served and matched their digests, {len(self.withheld)} withheld, "
                f"{self.missing} missing, {redacted} redacted")
