"""Export bundles (SPEC section 12): one file holding a whole chain for the long term.

A bundle is a sequence of msgpack objects: ``["ledger-export", 1, genesis_json_bytes]``,
each block's exact bytes (``bin``) from height 1 in order, and last ``["end", block_count,
tip_block_hash]``. The optional ``payloads`` and ``witnesses`` sections are neither written
(nodes do not keep sealed payload pairs or cosignatures where an export can read them) nor
accepted yet: a bundle holding one is refused, never silently half-checked.

Both directions stream: memory does not grow with the chain.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack

from ledger.blocks import Block
from ledger.encoding import packb
from ledger.errors import AuditError, LedgerError
from node.files import durable_file

MAGIC = "ledger-export"
VERSION = 1
#: The largest single object a bundle may hold (a block is far smaller).
MAX_OBJECT = 256 * 1024 * 1024


class BundleError(LedgerError):
    """The bundle cannot be read at all (not a bundle, another version, unreadable)."""

    code = "bad_bundle"


def write_bundle(out: Path, genesis_raw: bytes, blocks: Iterable[bytes | None],
                 on_block: Callable[[], None] | None = None) -> tuple[int, bytes]:
    """Write ``genesis_raw`` and ``blocks`` (heights 1.. in order) as a bundle to ``out``:
    to a temporary file first, fsynced, then renamed over ``out`` (``durable_file``), so a
    crash or error leaves no partial bundle under the final name. Returns (block count, tip
    block hash)."""
    count, tip = 0, b""
    with durable_file(Path(out)) as f:
        f.write(packb([MAGIC, VERSION, genesis_raw]))
        for data in blocks:
            if data is None:
                raise BundleError(f"block {count + 1} is missing at the source")
            try:
                tip = Block.from_wire(data).header.hash
            except LedgerError as exc:
                raise BundleError(f"block {count + 1} does not decode: {exc}") from exc
            f.write(packb(data))
            count += 1
            if on_block is not None:
                on_block()
        if count == 0:
            raise BundleError("the chain has no blocks to export")
        f.write(packb(["end", count, tip]))
    return count, tip


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


class Bundle:
    """A bundle file read as a stream: ``genesis_raw`` from its first object, then
    ``scan()`` (structure and end marker, no verification) and ``blocks()`` (each block's
    bytes, for the audit). Errors about a height are AuditError (``height N: ...``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self.genesis_raw = _header(_objects(f, self.path), self.path)
        self.end: tuple[int, bytes] = (0, b"")

    def _walk(self) -> Iterator[bytes]:
        """Yield each block's bytes; then check the end marker's count and that nothing
        follows it. Sets ``end`` to (count, tip hash)."""
        with open(self.path, "rb") as f:
            unpacker = _unpacker(f)
            items = _objects(f, self.path, unpacker)
            _header(items, self.path)
            count = 0
            for obj in items:
                if isinstance(obj, bytes):
                    count += 1
                    yield obj
                    continue
                if isinstance(obj, list) and obj and obj[0] in ("payloads", "witnesses"):
                    raise BundleError(f"{self.path}: the bundle has a {obj[0]!r} section; "
                                      f"checking it is not supported yet")
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
