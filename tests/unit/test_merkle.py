"""ledger.merkle against RFC 6962 test vectors and a literal RFC 9162 reference."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import MerkleError, RootMismatchError
from ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeId,
    all_node_ids,
    assemble_proof,
    compact_range_ids,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    plan_consistency,
    plan_inclusion,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    tree_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "merkle_rfc6962.json").read_text()
)
LEAVES = [bytes.fromhex(h) for h in VECTORS["leaves"]]
ROOTS = [bytes.fromhex(h) for h in VECTORS["roots"]]
NODES = [[bytes.fromhex(h) for h in level] for level in VECTORS["nodes"]]
OTHER_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _hexes(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in values]


# --- A literal reference: RFC 9162 section 2.1, recursive, over raw entries. ---------------


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return _sha(b"")
    if n == 1:
        return _sha(b"\x00" + d[0])
    k = _k(n)
    return _sha(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    if m in (0, len(d)):
        return []
    return ref_subproof(m, d, True)


def ref_perfect_nodes(d: list[bytes]) -> dict[NodeId, bytes]:
    """Every perfect subtree (level >= 0) of the tree over d, by (level, index)."""
    nodes: dict[NodeId, bytes] = {}
    level = 0
    while 1 << level <= len(d):
        width = 1 << level
        for index in range(len(d) // width):
            nodes[level, index] = ref_mth(d[index * width : (index + 1) * width])
        level += 1
    return nodes


def entries_of(size: int) -> list[bytes]:
    return [b"entry %d" % i for i in range(size)]


# --- 1. RFC 6962 sample tree. -------------------------------------------------------------


def test_hasher_vectors() -> None:
    hasher = VECTORS["hasher"]
    assert bytes.fromhex(hasher["empty_root"]) == EMPTY_ROOT
    for case in hasher["leaves"]:
        assert leaf_hash(bytes.fromhex(case["entry"])) == bytes.fromhex(case["hash"])
    for case in hasher["nodes"]:
        left, right = bytes.fromhex(case["left"]), bytes.fromhex(case["right"])
        assert node_hash(left, right) == bytes.fromhex(case["hash"])


@pytest.mark.parametrize("size", range(9))
def test_sample_tree_roots(size: int) -> None:
    assert tree_hash(LEAVES[:size]) == ROOTS[size]
    assert root_from_leaf_hashes([leaf_hash(e) for e in LEAVES[:size]]) == ROOTS[size]
    compact = CompactRange()
    compact.extend(leaf_hash(e) for e in LEAVES[:size])
    assert compact.root() == ROOTS[size]


def test_sample_tree_perfect_nodes() -> None:
    assert [leaf_hash(e) for e in LEAVES] == NODES[0]
    completed = CompactRange().extend(leaf_hash(e) for e in LEAVES)
    expected = [(level, i, h) for level in range(1, 4) for i, h in enumerate(NODES[level])]
    assert sorted(completed) == sorted(expected)


@pytest.mark.parametrize("size", range(9))
def test_sample_tree_compact_ranges(size: int) -> None:
    ids = [tuple(node_id) for node_id in VECTORS["compact_ranges"][size]]
    assert compact_range_ids(size) == ids
    compact = CompactRange()
    compact.extend(leaf_hash(e) for e in LEAVES[:size])
    assert compact.hashes() == [NODES[level][index] for level, index in ids]


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['index']}-{c['size']}")
def test_sample_tree_inclusion(case: dict[str, Any]) -> None:
    index, size, proof = case["index"], case["size"], _hexes(case["proof"])
    hashes = [leaf_hash(e) for e in LEAVES[:size]]
    assert inclusion_proof(hashes, index) == proof
    assert root_from_inclusion_proof(index, size, hashes[index], proof) == ROOTS[size]
    verify_inclusion(index, size, hashes[index], proof, ROOTS[size])
    nodes = {(lv, i): h for lv, level in enumerate(NODES) for i, h in enumerate(level)}
    assert assemble_proof(plan_inclusion(index, size), nodes) == proof


@pytest.mark.parametrize(
    "case", VECTORS["consistency"], ids=lambda c: f"{c['old_size']}-{c['new_size']}"
)
def test_sample_tree_consistency(case: dict[str, Any]) -> None:
    old, new, proof = case["old_size"], case["new_size"], _hexes(case["proof"])
    hashes = [leaf_hash(e) for e in LEAVES[:new]]
    assert consistency_proof(hashes, old) == proof
    verify_consistency(old, new, ROOTS[old], ROOTS[new], proof)
    nodes = {(lv, i): h for lv, level in enumerate(NODES) for i, h in enumerate(level)}
    assert assemble_proof(plan_consistency(old, new), nodes) == proof


# --- 2. Corrupted proofs. -----------------------------------------------------------------

SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 31, 33, 100, 257]


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ 8]) + out[i][1:]
    return out


def _reshaped(proof: list[bytes], extra: bytes) -> list[tuple[str, list[bytes]]]:
    """Proofs of the wrong length: each must fail as malformed, not as a mismatch."""
    cases = [
        ("trailing garbage", [*proof, b""]),
        ("trailing hash", [*proof, extra]),
        ("preceding hash", [extra, *proof]),
    ]
    if proof:
        cases += [("truncated", proof[:-1]), ("empty", []), ("dropped first", proof[1:])]
        cases.append(("preceding proof[0]", [proof[0], *proof]))
    return cases


def _swaps(proof: list[bytes]) -> list[list[bytes]]:
    return [[*proof[:i], proof[i + 1], proof[i], *proof[i + 2 :]] for i in range(len(proof) - 1)]


def _inclusion_cases() -> list[tuple[int, int]]:
    return [(i, n) for n in SIZES for i in sorted({0, n // 2, n - 2, n - 1} - {-1})]


@pytest.mark.parametrize(("index", "size"), _inclusion_cases())
def test_corrupted_inclusion_proofs_fail(index: int, size: int) -> None:
    hashes = [leaf_hash(e) for e in entries_of(size)]
    root, leaf = root_from_leaf_hashes(hashes), hashes[index]
    proof = inclusion_proof(hashes, index)
    verify_inclusion(index, size, leaf, proof, root)

    for i in range(len(proof)):
        with pytest.raises(RootMismatchError):
            verify_inclusion(index, size, leaf, _flip(proof, i), root)
    for swapped in _swaps(proof):
        with pytest.raises(RootMismatchError):
            verify_inclusion(index, size, leaf, swapped, root)
    for _, bad in _reshaped(proof, root):
        with pytest.raises(MerkleError) as info:
            verify_inclusion(index, size, leaf, bad, root)
        assert type(info.value) is MerkleError
    for wrong_index in (index - 1, index + 1, index ^ 2, size, -1):
        with pytest.raises(MerkleError):
            verify_inclusion(wrong_index, size, leaf, proof, root)
    for wrong_size in (size * 2, size // 2, 0):
        with pytest.raises(MerkleError):
            verify_inclusion(index, wrong_size, leaf, proof, root)
    for wrong_leaf in (leaf_hash(b"wrong"), root, b"short"):
        if wrong_leaf != leaf:
            with pytest.raises(MerkleError):
                verify_inclusion(index, size, wrong_leaf, proof, root)
    for wrong_root in (EMPTY_ROOT, OTHER_HASH, b""):
        with pytest.raises(RootMismatchError):
            verify_inclusion(index, size, leaf, proof, wrong_root)


def _consistency_cases() -> list[tuple[int, int]]:
    return [(m, n) for n in SIZES for m in sorted({1, 2, n // 2, n - 1} - {0, n}) if m < n]


@pytest.mark.parametrize(("old", "new"), _consistency_cases())
def test_corrupted_consistency_proofs_fail(old: int, new: int) -> None:
    hashes = [leaf_hash(e) for e in entries_of(new)]
    old_root, new_root = root_from_leaf_hashes(hashes[:old]), root_from_leaf_hashes(hashes)
    proof = consistency_proof(hashes, old)
    verify_consistency(old, new, old_root, new_root, proof)

    def fails(
        m: int, n: int, r1: bytes, r2: bytes, p: list[bytes], error: type[Exception] = MerkleError
    ) -> None:
        with pytest.raises(error):
            verify_consistency(m, n, r1, r2, p)

    for i in range(len(proof)):
        fails(old, new, old_root, new_root, _flip(proof, i), RootMismatchError)
    for swapped in _swaps(proof):
        fails(old, new, old_root, new_root, swapped, RootMismatchError)
    for _, bad in _reshaped(proof, new_root):
        with pytest.raises(MerkleError) as info:
            verify_consistency(old, new, old_root, new_root, bad)
        assert type(info.value) is MerkleError
    for wrong_old in (old - 1, old + 1, old ^ 2, new + 1):
        fails(wrong_old, new, old_root, new_root, proof)
    # Not new ± 1: a proof binds a size only through its shape, and neighbours can share it.
    for wrong_new in (new * 2, new // 2):
        fails(old, wrong_new, old_root, new_root, proof)
    fails(old, new, OTHER_HASH, new_root, proof, RootMismatchError)
    fails(old, new, old_root, OTHER_HASH, proof, RootMismatchError)
    fails(old, new, new_root, old_root, proof, RootMismatchError)
    fails(new, old, new_root, old_root, proof)


def test_consistency_edge_sizes() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, OTHER_HASH, [])
    verify_consistency(3, 3, OTHER_HASH, OTHER_HASH, [])
    with pytest.raises(RootMismatchError):
        verify_consistency(3, 3, OTHER_HASH, EMPTY_ROOT, [])
    with pytest.raises(RootMismatchError):
        verify_consistency(0, 0, EMPTY_ROOT, OTHER_HASH, [])
    with pytest.raises(RootMismatchError):
        verify_consistency(0, 5, OTHER_HASH, OTHER_HASH, [])
    for old, new in ((0, 0), (0, 1), (1, 1)):
        with pytest.raises(MerkleError):
            verify_consistency(old, new, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT])
    for old, new in ((1, 0), (2, 1), (-1, 3)):
        with pytest.raises(MerkleError):
            verify_consistency(old, new, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(MerkleError):
        verify_consistency(1, 2, OTHER_HASH, OTHER_HASH, [])


def test_inclusion_rejects_bad_arguments() -> None:
    for index, size in ((0, 0), (1, 0), (2, 1), (-1, 4)):
        with pytest.raises(MerkleError):
            verify_inclusion(index, size, OTHER_HASH, [], OTHER_HASH)
        with pytest.raises(MerkleError):
            plan_inclusion(index, size)
    with pytest.raises(MerkleError):
        inclusion_proof([OTHER_HASH], 1)
    with pytest.raises(MerkleError):
        consistency_proof([OTHER_HASH], 2)
    with pytest.raises(MerkleError):
        plan_consistency(-1, 2)


# --- 3. Against the literal reference. ----------------------------------------------------


@st.composite
def tree_and_points(draw: st.DrawFn) -> tuple[list[bytes], int, int]:
    size = draw(st.integers(0, 300))
    index = draw(st.integers(0, max(size - 1, 0)))
    old = draw(st.integers(0, size))
    return entries_of(size), index, old


@settings(max_examples=200, deadline=None)
@given(tree_and_points())
def test_matches_reference(case: tuple[list[bytes], int, int]) -> None:
    entries, index, old = case
    size = len(entries)
    hashes = [leaf_hash(e) for e in entries]
    root = ref_mth(entries)
    assert tree_hash(entries) == root
    assert root_from_leaf_hashes(hashes) == root
    nodes = ref_perfect_nodes(entries)
    if size:
        assert assemble_proof([compact_range_ids(size)], nodes) == [root]
        path = ref_path(index, entries)
        assert inclusion_proof(hashes, index) == path
        assert assemble_proof(plan_inclusion(index, size), nodes) == path
        assert root_from_inclusion_proof(index, size, hashes[index], path) == root
    subproof = ref_proof(old, entries)
    assert consistency_proof(hashes, old) == subproof
    assert assemble_proof(plan_consistency(old, size), nodes) == subproof
    verify_consistency(old, size, ref_mth(entries[:old]), root, subproof)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=12))
def test_compact_range_matches_reference(chunks: list[int]) -> None:
    compact, entries = CompactRange(), list[bytes]()
    for chunk in chunks:
        new = entries_of(len(entries) + chunk)[len(entries) :]
        compact.extend(leaf_hash(e) for e in new)
        entries += new
        assert compact.size == len(entries)
        assert compact.root() == ref_mth(entries)
        nodes = ref_perfect_nodes(entries)
        assert compact.hashes() == [nodes[i] for i in compact_range_ids(len(entries))]


@pytest.mark.parametrize("size", range(33))
def test_every_small_proof_matches_reference(size: int) -> None:
    entries = entries_of(size)
    hashes = [leaf_hash(e) for e in entries]
    nodes, root = ref_perfect_nodes(entries), ref_mth(entries)
    for index in range(size):
        path = ref_path(index, entries)
        assert inclusion_proof(hashes, index) == path
        assert assemble_proof(plan_inclusion(index, size), nodes) == path
        verify_inclusion(index, size, hashes[index], path, root)
    for old in range(size + 1):
        subproof = ref_proof(old, entries)
        assert assemble_proof(plan_consistency(old, size), nodes) == subproof
        assert consistency_proof(hashes, old) == subproof
        verify_consistency(old, size, ref_mth(entries[:old]), root, subproof)


# --- 4. CompactRange bookkeeping and plans. ------------------------------------------------


def test_append_returns_exactly_the_newly_completed_nodes() -> None:
    entries = entries_of(300)
    nodes = ref_perfect_nodes(entries)
    compact = CompactRange()
    for j, entry in enumerate(entries):
        completed = compact.append(leaf_hash(entry))
        expected = {
            (level, index, h)
            for (level, index), h in nodes.items()
            if level >= 1 and (index + 1) << level == j + 1
        }
        assert set(completed) == expected
        assert len(completed) == len(expected)


def test_compact_range_from_hashes_round_trips() -> None:
    compact = CompactRange()
    for size in range(70):
        again = CompactRange.from_hashes(compact.size, compact.hashes())
        assert (again.size, again.root(), again.hashes()) == (
            size,
            compact.root(),
            compact.hashes(),
        )
        copied = compact.copy()
        compact.append(leaf_hash(b"%d" % size))
        assert copied.size == size
        assert copied.root() != compact.root()


def test_compact_range_from_hashes_validates() -> None:
    for size, count in ((0, 1), (1, 0), (3, 1), (7, 2), (8, 2)):
        with pytest.raises(MerkleError):
            CompactRange.from_hashes(size, [OTHER_HASH] * count)
    with pytest.raises(MerkleError):
        CompactRange.from_hashes(-1, [])
    with pytest.raises(MerkleError):
        CompactRange.from_hashes(1, [b"short"])
    assert CompactRange.from_hashes(0, []).root() == EMPTY_ROOT


def test_plans_read_logarithmically_many_nodes() -> None:
    size = 10**9 + 12345
    plans: list[Callable[[], list[list[NodeId]]]] = [
        lambda: plan_inclusion(0, size),
        lambda: plan_inclusion(size - 1, size),
        lambda: plan_inclusion(size // 3, size),
        lambda: plan_consistency(size // 3, size),
        lambda: plan_consistency(size - 1, size),
    ]
    for make in plans:
        plan = make()
        ids = all_node_ids(plan)
        assert len(ids) <= 2 * size.bit_length()
        assert sum(len(element) > 1 for element in plan) <= 1
        for level, index in ids:
            assert (index + 1) << level <= size


def test_root_of_a_large_block_matches_compact_range() -> None:
    hashes = [leaf_hash(e) for e in entries_of(10_000)]
    compact = CompactRange()
    compact.extend(hashes)
    assert root_from_leaf_hashes(hashes) == compact.root()
