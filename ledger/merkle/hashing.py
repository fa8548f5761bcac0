"""RFC 9162 section 2.1.1 hashing: leaves, interior nodes and whole trees."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import sha256

HASH_SIZE = 32
EMPTY_ROOT: bytes = sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """Return sha256(0x00 || entry), the hash of one leaf."""
    return sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return sha256(0x01 || left || right), the hash of an interior node."""
    return sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Return MTH over leaves given by their leaf hashes (EMPTY_ROOT if there are none)."""
    if not hashes:
        return EMPTY_ROOT
    # Pair neighbours level by level; an odd last node moves up unchanged. This builds the
    # same tree as RFC 9162's split at the largest power of two below n.
    level = list(hashes)
    while len(level) > 1:
        paired = [
            sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def tree_hash(entries: Sequence[bytes]) -> bytes:
    """Return MTH(entries), the root of the tree over the raw entries."""
    return root_from_leaf_hashes([leaf_hash(entry) for entry in entries])
