"""An incremental log that keeps only the perfect subtrees of [0, size)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ledger.errors import MerkleError
from ledger.merkle.hashing import EMPTY_ROOT, HASH_SIZE, node_hash

# A perfect node newly completed by an append: (level, index, hash), level >= 1.
CompletedNode = tuple[int, int, bytes]


class CompactRange:
    """The compact range [0, size): perfect-subtree hashes, largest (leftmost) first."""

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        """Start an empty log."""
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Rebuild a range; requires len(hashes) == popcount(size) and 32-byte hashes."""
        if size < 0:
            raise MerkleError(f"negative size {size}")
        if len(hashes) != size.bit_count():
            raise MerkleError(f"size {size} needs {size.bit_count()} hashes, got {len(hashes)}")
        if any(len(h) != HASH_SIZE for h in hashes):
            raise MerkleError("compact range hash is not 32 bytes")
        compact = cls()
        compact._size = size
        compact._hashes = list(hashes)
        return compact

    @property
    def size(self) -> int:
        """Return the number of leaves appended so far."""
        return self._size

    def append(self, leaf: bytes) -> list[CompletedNode]:
        """Append one leaf hash; return the perfect nodes (level >= 1) it completes."""
        completed: list[CompletedNode] = []
        value, index, level = leaf, self._size, 0
        # Each trailing 1 bit of the old size is a left sibling waiting for this leaf.
        while index & 1:
            value = node_hash(self._hashes.pop(), value)
            index >>= 1
            level += 1
            completed.append((level, index, value))
        self._hashes.append(value)
        self._size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> list[CompletedNode]:
        """Append leaf hashes in order; return every perfect node they complete."""
        completed: list[CompletedNode] = []
        for leaf in leaves:
            completed.extend(self.append(leaf))
        return completed

    def root(self) -> bytes:
        """Return the tree root: the perfect-subtree hashes folded right to left."""
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            root = node_hash(left, root)
        return root

    def hashes(self) -> list[bytes]:
        """Return a copy of the perfect-subtree hashes, left to right."""
        return list(self._hashes)

    def copy(self) -> CompactRange:
        """Return an independent copy."""
        return CompactRange.from_hashes(self._size, self._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"
