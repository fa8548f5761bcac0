"""Length-prefixed frames: a 4-byte big-endian unsigned length, then that many bytes.

A zero-length frame, or one longer than the receiver's limit, is a protocol violation by the
peer (``FrameError``); the link carrying it is closed, the node is unaffected.
"""

from __future__ import annotations

import asyncio
import struct

HEADER = struct.Struct(">I")
MAX_FRAME_LIMIT = 2**32 - 1  # what the header can express


class FrameError(Exception):
    """The peer broke the framing rules (empty, oversized or truncated frame)."""


def frame_header(length: int) -> bytes:
    """The 4-byte header announcing a payload of ``length`` bytes."""
    return HEADER.pack(length)


def encode_frame(payload: bytes) -> bytes:
    """Header and payload as one byte string (handshake frames, tests)."""
    return HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader, max_len: int) -> bytes | None:
    """Read one frame's payload; None on a clean end of stream between frames.

    Raises FrameError for a zero-length or over-long announcement (before reading the body,
    so a peer cannot make us buffer more than ``max_len``) and for a stream that ends
    inside a frame.
    """
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("stream ended inside a frame header") from exc
    (length,) = HEADER.unpack(header)
    if length == 0:
        raise FrameError("zero-length frame")
    if length > max_len:
        raise FrameError(f"frame of {length} bytes exceeds the limit of {max_len}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise FrameError(
            f"stream ended inside a frame ({len(exc.partial)} of {length} bytes)"
        ) from exc
