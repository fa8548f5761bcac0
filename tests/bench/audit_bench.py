"""Benchmark: `ledger audit --db` against one core's PyNaCl verify rate.

Builds (once, cached by size) an SQLite chain of N signed records, measures v — one core's
libsodium verify rate, via PyNaCl — then runs the real `ledger audit --db` command with one
worker and with every core, and prints each rate beside the bound C x v.

    python -m tests.bench.audit_bench [--records 100000] [--per-block 500] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ledger.crypto import RECORD_TAG, is_valid_signature
from ledger.store import SqliteStore
from ledger.store.sqlite import SCHEMA_VERSION
from tests.factory import ChainBuilder, make_fixture

ROOT = Path(__file__).resolve().parents[2]


def build_store(path: Path, records: int, per_block: int) -> None:
    """Write a valid chain of ``records`` records to a new store at ``path``."""
    fx = make_fixture()
    tmp = path.with_suffix(".partial")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    with SqliteStore(tmp, genesis_hash=fx.genesis.hash, synchronous="OFF") as store:
        builder = ChainBuilder(fx, store)
        with tqdm(total=records, unit="rec", desc="building chain", file=sys.stderr) as bar:
            done = 0
            while done < records:
                n = min(per_block, records - done)
                builder.add(n, subject=f"plant-{done % 13}/line-{done % 5}/temp")
                done += n
                bar.update(n)
    tmp.rename(path)


def verify_rate(seconds: float = 2.0) -> float:
    """One core's PyNaCl verify rate for a typical record (signatures/s)."""
    fx = make_fixture()
    builder = ChainBuilder(fx, SqliteStore(":memory:"))
    rec = builder.record(payload={"v": 21.5, "unit": "C", "line": "x" * 100})
    msg, sig, pub = RECORD_TAG + rec.body_bytes, rec.sig, rec.body.signer
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            is_valid_signature(pub, msg, sig)
        n += 500
    return n / (time.perf_counter() - start)


def run_audit(db: Path, genesis: Path, workers: int) -> dict[str, float]:
    """Run the real command; return its wall time and records/s."""
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "node.cli", "audit", "--db", str(db), "--genesis", str(genesis),
         "--workers", str(workers), "-q"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"audit failed: {res.stderr.strip()}")
    m = re.search(r"(\d+) records verified in ([\d.]+) s", res.stdout)
    if m is None:
        raise SystemExit(f"unexpected audit output: {res.stdout!r}")
    records, seconds = int(m.group(1)), float(m.group(2))
    return {"workers": workers, "records": records, "seconds": seconds,
            "records_per_s": records / seconds, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fx = make_fixture()
    genesis = fx.write_genesis(args.out)
    db = args.out / f"audit-{args.records}-{args.per_block}-schema{SCHEMA_VERSION}.db"
    if not db.exists():
        build_store(db, args.records, args.per_block)
    cores = os.cpu_count() or 1
    v = verify_rate()
    results = [run_audit(db, genesis, 1), run_audit(db, genesis, cores)]
    report = {"cores": cores, "verify_rate_one_core": v, "bound_all_cores": cores * v,
              "audits": results}
    print(f"PyNaCl verify, one core:           {v:10,.0f} signatures/s")
    for r in results:
        bound = r["workers"] * v
        rate = r["records_per_s"]
        print(f"ledger audit --db, {r['workers']:.0f} worker(s):     "
              f"{rate:10,.0f} records/s  ({r['records']:.0f} records in {r['seconds']:.2f} s)"
              f" = {rate / bound:.2f} of {r['workers']:.0f} x v, {rate / (cores * v):.2f} of C x v")
    (args.out / "audit_bench.json").write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out / 'audit_bench.json'}")


if __name__ == "__main__":
    main()
