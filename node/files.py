"""Durable file replacement, the one way the node and the CLI write a file that must survive
a crash whole: evidence, proposal files, audit state, export bundles (``write_durably``);
and ``SlotFile``, a small state rewritten in place with one fdatasync per write (the
consensus signing state, written before every signed message leaves the node)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new content into; on a clean exit it is fsynced,
    renamed over ``path`` and the folder fsynced, so a crash leaves the old file or the new
    one, never a part. On an error the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` durably (``durable_file``)."""
    with durable_file(path) as f:
        f.write(data)


# -- a small state rewritten in place, one fdatasync per write ------------------------------

SLOTS_MAGIC = b"LGSLOTS1"  # never the first bytes of a legacy file (a msgpack array)
_HEADER = 4096  # magic, slot size; the slots start on the next page
_SLOT_HEAD = 8 + 4 + 32  # sequence number, payload length, sha256 of the two and the payload
MIN_SLOT = 64 * 1024


def _slot_offset(slot_size: int, seq: int) -> int:
    return _HEADER + (seq % 2) * slot_size


def _slot_bytes(seq: int, payload: bytes) -> bytes:
    head = seq.to_bytes(8, "big") + len(payload).to_bytes(4, "big")
    return head + hashlib.sha256(head + payload).digest() + payload


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


@dataclass(frozen=True)
class SlotRead:
    """What a slot file (or a legacy whole file) holds: the newest whole payload and its
    sequence number (0 for a legacy file), or no payload."""

    payload: bytes | None
    seq: int
    slot_size: int  # 0: no slot file (absent or legacy)


def read_slots(path: Path) -> SlotRead:
    """The newest payload ``path`` holds durably: in a slot file, the valid slot (its
    checksum matches) with the highest sequence number; a file in the older whole-file
    format (``write_durably``) is one payload. A slot file with no valid slot raises
    ``ValueError`` (both copies damaged: the state is lost, never silently empty)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return SlotRead(None, 0, 0)
    if not data.startswith(SLOTS_MAGIC):
        return SlotRead(data, 0, 0)  # the whole-file format of older nodes
    slot_size = int.from_bytes(data[8:16], "big")
    best: tuple[int, bytes] | None = None
    for parity in (0, 1):
        start = _HEADER + parity * slot_size
        head = data[start:start + 12]
        if len(head) < 12:
            continue
        seq, length = int.from_bytes(head[:8], "big"), int.from_bytes(head[8:12], "big")
        if seq == 0 or seq % 2 != parity or length > slot_size - _SLOT_HEAD:
            continue
        payload = data[start + _SLOT_HEAD:start + _SLOT_HEAD + length]
        digest = data[start + 12:start + _SLOT_HEAD]
        whole = len(payload) == length and hashlib.sha256(head + payload).digest() == digest
        if whole and (best is None or seq > best[0]):
            best = (seq, payload)
    if best is None:
        raise ValueError(f"{path}: no slot holds a whole state (both copies damaged)")
    return SlotRead(best[1], best[0], slot_size)


class SlotFile:
    """A small state (the consensus signing state) rewritten durably with one
    ``fdatasync`` per write, where ``write_durably`` costs two fsyncs and a rename.

    The file is a header (magic, slot size) and two fixed-size slots, written out in full
    when the file is made, so a write never changes the file's size or allocation (the
    ``fdatasync`` has no metadata to flush). Write number ``seq`` goes in place into slot
    ``seq % 2``: never the slot holding the newest durable state (``seq - 1``). Each slot
    carries its sequence number, length and a sha256 of them and the payload; ``read_slots``
    takes the valid slot with the highest number. A crash mid-write tears at most the slot
    being written, whose checksum then fails, and the reader falls back to the previous
    state, which is what the caller last saw durable: the caller must not act on a state
    (broadcast what it signs) before ``write`` has returned.

    A payload too large for a slot, or a file in the older whole-file format (upgraded on
    the first write), is written as a new slot file through ``write_durably`` (temporary
    file, fsync, rename, folder fsync), with slots of twice the payload's size rounded up
    to a power of two, so this is rare. Not thread-safe: one writer at a time.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._seq: int | None = None  # the newest durable sequence number, once read
        self._slot_size = 0  # 0: the file must be (re)made

    def write(self, payload: bytes, *, torn_at: int | None = None) -> None:
        """Make ``payload`` the durable newest state (``torn_at``: a test's crash point,
        write only that many bytes of the slot, do not sync, and raise ``OSError``)."""
        if self._seq is None:
            found = read_slots(self.path)
            self._seq, self._slot_size = found.seq, found.slot_size
        seq = self._seq + 1
        record = _slot_bytes(seq, payload)
        if len(record) > self._slot_size:
            self._remake(seq, record)
        else:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                if torn_at is not None:
                    os.pwrite(fd, record[:torn_at], _slot_offset(self._slot_size, seq))
                    raise OSError("torn slot write (test crash point)")
                os.pwrite(fd, record, _slot_offset(self._slot_size, seq))
                _fdatasync(fd)
            finally:
                os.close(fd)
        self._seq = seq

    def _remake(self, seq: int, record: bytes) -> None:
        size = MIN_SLOT
        while size < 2 * len(record):
            size *= 2
        image = bytearray(_HEADER + 2 * size)
        image[:16] = SLOTS_MAGIC + size.to_bytes(8, "big")
        offset = _slot_offset(size, seq)
        image[offset:offset + len(record)] = record
        write_durably(self.path, bytes(image))
        self._slot_size = size
