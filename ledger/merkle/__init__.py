"""RFC 9162 section 2.1 Merkle trees: hashing, proofs, verification, compact ranges.

Pure code: no I/O, no clock. Proof *planning* (which perfect-subtree hashes to read) is kept
apart from storage, so a store serves any proof in O(log n) reads.
"""

from ledger.merkle.compact import CompactRange, CompletedNode
from ledger.merkle.hashing import (
    EMPTY_ROOT,
    HASH_SIZE,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    tree_hash,
)
from ledger.merkle.plan import (
    NodeId,
    ProofPlan,
    all_node_ids,
    assemble_proof,
    compact_range_ids,
    plan_consistency,
    plan_inclusion,
)
from ledger.merkle.proof import consistency_proof, inclusion_proof
from ledger.merkle.verify import root_from_inclusion_proof, verify_consistency, verify_inclusion

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "CompletedNode",
    "NodeId",
    "ProofPlan",
    "all_node_ids",
    "assemble_proof",
    "compact_range_ids",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "plan_consistency",
    "plan_inclusion",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "tree_hash",
    "verify_consistency",
    "verify_inclusion",
]
