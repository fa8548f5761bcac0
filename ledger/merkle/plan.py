"""Proof planning: which perfect-subtree hashes a store must read to serve a proof.

A node id is (level, index): the perfect subtree over leaves [index * 2**level,
(index + 1) * 2**level). Each proof element is planned as a list of ids whose hashes,
folded right to left with node_hash, give that element; a complete sibling is one id,
the one ragged subtree on the right border is its compact range.
"""

from __future__ import annotations

from collections.abc import Mapping

from ledger.errors import MerkleError
from ledger.merkle.hashing import node_hash

NodeId = tuple[int, int]
ProofPlan = list[list[NodeId]]


def _split(n: int) -> int:
    """Return the largest power of two strictly below n; requires n >= 2."""
    return 1 << ((n - 1).bit_length() - 1)


def _range_ids(begin: int, end: int) -> list[NodeId]:
    """Return the perfect subtrees of [begin, end); requires begin aligned to its largest one."""
    ids: list[NodeId] = []
    width = end - begin
    for level in reversed(range(width.bit_length())):
        if width >> level & 1:
            ids.append((level, begin >> level))
            begin += 1 << level
    return ids


def compact_range_ids(size: int) -> list[NodeId]:
    """Return the ids of the perfect subtrees of [0, size), left to right; requires size >= 0."""
    if size < 0:
        raise MerkleError(f"negative size {size}")
    return _range_ids(0, size)


def plan_inclusion(index: int, size: int) -> ProofPlan:
    """Plan the audit path of leaf `index` in a tree of `size`; requires 0 <= index < size."""
    if not 0 <= index < size:
        raise MerkleError(f"index {index} out of range for size {size}")
    plan: ProofPlan = []
    begin, end = 0, size
    # Walk RFC 9162's PATH from the root down; the proof lists siblings bottom up.
    while end - begin > 1:
        mid = begin + _split(end - begin)
        if index < mid:
            plan.append(_range_ids(mid, end))
            end = mid
        else:
            plan.append(_range_ids(begin, mid))
            begin = mid
    plan.reverse()
    return plan


def plan_consistency(old_size: int, new_size: int) -> ProofPlan:
    """Plan the consistency path from old_size to new_size; requires 0 <= old_size <= new_size."""
    if not 0 <= old_size <= new_size:
        raise MerkleError(f"bad sizes: old {old_size}, new {new_size}")
    if old_size in (0, new_size):
        return []
    plan: ProofPlan = []
    begin, end, whole = 0, new_size, True
    # Walk RFC 9162's SUBPROOF from the root down until [begin, end) is the old tree's part.
    while old_size < end:
        mid = begin + _split(end - begin)
        if old_size <= mid:
            plan.append(_range_ids(mid, end))
            end = mid
        else:
            plan.append(_range_ids(begin, mid))
            begin, whole = mid, False
    # SUBPROOF(m, D[m], false) contributes MTH(D[m]); it is the deepest, so the first element.
    if not whole:
        plan.append(_range_ids(begin, end))
    plan.reverse()
    return plan


def all_node_ids(plan: ProofPlan) -> list[NodeId]:
    """Return every id the plan reads, deduplicated, in first-use order."""
    return list(dict.fromkeys(node_id for element in plan for node_id in element))


def assemble_proof(plan: ProofPlan, fetch: Mapping[NodeId, bytes]) -> list[bytes]:
    """Compute the proof from fetched perfect-node hashes; KeyError if fetch lacks an id."""
    proof: list[bytes] = []
    for element in plan:
        value = fetch[element[-1]]
        for node_id in reversed(element[:-1]):
            value = node_hash(fetch[node_id], value)
        proof.append(value)
    return proof
