"""RFC 9162 sections 2.1.3.2 and 2.1.4.2: verifying inclusion and consistency proofs."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.errors import MerkleError, RootMismatchError
from ledger.merkle.hashing import EMPTY_ROOT, HASH_SIZE, node_hash


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Split an audit path into (inner, border) lengths: below and on the right border."""
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def _check_hashes(proof: Sequence[bytes]) -> None:
    """Raise MerkleError unless every proof element is a 32-byte hash."""
    if any(len(element) != HASH_SIZE for element in proof):
        raise MerkleError("proof element is not a 32-byte hash")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Return the root implied by the audit path of leaf hash `leaf`; requires index < size."""
    if not 0 <= index < size:
        raise MerkleError(f"index {index} out of range for size {size}")
    if len(leaf) != HASH_SIZE:
        raise MerkleError("leaf hash is not 32 bytes")
    if len(proof) != sum(_decompose(index, size)):
        raise MerkleError(f"wrong proof length {len(proof)} for index {index}, size {size}")
    _check_hashes(proof)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # Skip the levels where this node has no right sibling (the right border).
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise MerkleError("proof too short")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf hash `leaf` is at `index` in the tree of `size` with `root`."""
    computed = root_from_inclusion_proof(index, size, leaf, proof)
    if computed != root:
        raise RootMismatchError(root, computed, "root")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (new_size, new_root) extends (old_size, old_root)."""
    if not 0 <= old_size <= new_size:
        raise MerkleError(f"bad sizes: old {old_size}, new {new_size}")
    if old_size == new_size:
        if proof:
            raise MerkleError("equal sizes need an empty proof")
        if old_root != new_root:
            raise RootMismatchError(old_root, new_root, "new root")
        return
    if old_size == 0:
        if proof:
            raise MerkleError("old size 0 needs an empty proof")
        if old_root != EMPTY_ROOT:
            raise RootMismatchError(EMPTY_ROOT, old_root, "old root")
        return
    # The path is a suffix of the audit path of leaf old_size - 1, starting at the level of
    # the largest perfect subtree ending at old_size, preceded by that subtree's hash unless
    # it is the whole old tree (then the old root is the seed).
    inner, border = _decompose(old_size - 1, new_size)
    shift = (old_size & -old_size).bit_length() - 1
    seeded = old_size == 1 << shift
    if len(proof) != (0 if seeded else 1) + inner - shift + border:
        raise MerkleError(f"wrong proof length {len(proof)} for sizes {old_size}, {new_size}")
    _check_hashes(proof)
    path = [old_root, *proof] if seeded else list(proof)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise MerkleError("proof too short")
    if fr != old_root:
        raise RootMismatchError(old_root, fr, "old root")
    if sr != new_root:
        raise RootMismatchError(new_root, sr, "new root")
