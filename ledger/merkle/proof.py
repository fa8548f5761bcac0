"""RFC 9162 sections 2.1.3.1 and 2.1.4.1: proofs computed from a tree's leaf hashes."""

from __future__ import annotations

from collections.abc import Sequence

from ledger.merkle.hashing import root_from_leaf_hashes
from ledger.merkle.plan import (
    NodeId,
    ProofPlan,
    all_node_ids,
    assemble_proof,
    plan_consistency,
    plan_inclusion,
)


def _assemble(hashes: Sequence[bytes], plan: ProofPlan) -> list[bytes]:
    """Assemble a plan by hashing each planned perfect subtree from the leaf hashes."""
    fetch: dict[NodeId, bytes] = {}
    for level, index in all_node_ids(plan):
        fetch[level, index] = root_from_leaf_hashes(hashes[index << level : (index + 1) << level])
    return assemble_proof(plan, fetch)


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the audit path of leaf `index` in the tree over `hashes`; requires index < len."""
    return _assemble(hashes, plan_inclusion(index, len(hashes)))


def consistency_proof(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the consistency path from old_size to len(hashes); requires old_size <= len."""
    return _assemble(hashes, plan_consistency(old_size, len(hashes)))
