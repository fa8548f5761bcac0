"""Benchmark and check: log proofs served from a SQLite store of N records (SPEC section 11).

Builds (once, cached by size, with audit_bench's builder) a chain of N records, then for
random pairs serves inclusion and consistency proofs exactly as ``GET /v1/log/*`` does
(``ledger.checkpoint.log_inclusion`` / ``log_consistency`` over ``store.log_nodes``),
verifies each with the RFC 9162 verifier against roots computed independently from the
leaves, checks that a proof with one hash changed fails, and prints the SQL statements per
proof and the time per proof.

    python -m tests.bench.log_proof_bench [--records 100000] [--pairs 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from ledger import merkle
from ledger.checkpoint import log_consistency, log_inclusion
from ledger.errors import MerkleError
from ledger.store import SqliteStore
from tests.bench.audit_bench import ROOT, build_store


def _flip(proof: list[bytes], i: int) -> list[bytes]:
    bad = list(proof)
    bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
    return bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / f"chain-{args.records}-{args.per_block}.db"
    if not db.exists():
        build_store(db, args.records, args.per_block)

    with SqliteStore(db, readonly=True) as store:
        n = store.log.size
        leaves = [merkle.leaf_hash(row[-1]) for row in store.record_rows(0, n)]
        roots = [merkle.EMPTY_ROOT]  # roots[m]: the root of the first m leaves
        compact = merkle.CompactRange()
        for leaf in leaves:
            compact.append(leaf)
            roots.append(compact.root())
        assert roots[n] == store.log.root()
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)  # a read-only store reads through it
        rng = random.Random(14)
        worst, total, spent, caught = 0, 0, 0.0, 0
        for _ in range(args.pairs):
            m = rng.randint(1, n)
            i = rng.randrange(m)
            statements.clear()
            start = time.perf_counter()
            proof = [bytes.fromhex(h) for h in log_inclusion(store.log_nodes, i, m)["proof"]]
            spent += time.perf_counter() - start
            worst, total = max(worst, len(statements)), total + len(statements)
            merkle.verify_inclusion(i, m, leaves[i], proof, roots[m])
            if proof:
                try:
                    merkle.verify_inclusion(i, m, leaves[i], _flip(proof, rng.randrange(
                        len(proof))), roots[m])
                except MerkleError:
                    caught += 1
                else:
                    raise SystemExit(f"a changed inclusion proof ({i}, {m}) verified")
            first = rng.randint(1, m)
            statements.clear()
            start = time.perf_counter()
            proof = [bytes.fromhex(h)
                     for h in log_consistency(store.log_nodes, first, m)["proof"]]
            spent += time.perf_counter() - start
            worst, total = max(worst, len(statements)), total + len(statements)
            merkle.verify_consistency(first, m, roots[first], roots[m], proof)
            if proof:
                try:
                    merkle.verify_consistency(first, m, roots[first], roots[m], _flip(
                        proof, rng.randrange(len(proof))))
                except MerkleError:
                    caught += 1
                else:
                    raise SystemExit(f"a changed consistency proof ({first}, {m}) verified")
        store._db.set_trace_callback(None)
    result = {"records": n, "proofs": 2 * args.pairs, "verified": 2 * args.pairs,
              "changed_proofs_caught": caught, "sql_per_proof_worst": worst,
              "sql_per_proof_mean": round(total / (2 * args.pairs), 2),
              "log2_n": n.bit_length(), "ms_per_proof": round(1000 * spent / (2 * args.pairs), 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
