"""Benchmark: the incremental audit (`ledger audit --db ... --state FILE`).

Builds (once, cached by size) a store of N records, copies it, runs the first audit with
``--state`` (from genesis, saving the state), appends M records, then times the second run
(only the new blocks) against a full audit of the grown chain, both with the real command.

    python -m tests.bench.audit_state_bench [--records 40000] [--new 1000] [--per-block 100]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ledger.store import SqliteStore
from ledger.store.sqlite import SCHEMA_VERSION
from tests.bench.audit_bench import ROOT, build_store
from tests.factory import ChainBuilder, make_fixture


def run(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "node.cli", *argv], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"audit failed: {res.stderr.strip()}")
    return wall, res.stdout


def seconds_of(out: str) -> float:
    m = re.search(r"in ([\d.]+) s \([\d,]+ records/s", out)
    if m is None:
        raise SystemExit(f"unexpected audit output: {out!r}")
    return float(m.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--per-block", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fx = make_fixture()
    genesis = fx.write_genesis(args.out)
    base = args.out / f"audit-{args.records}-{args.per_block}-schema{SCHEMA_VERSION}.db"
    if not base.exists():
        build_store(base, args.records, args.per_block)
    db, state = args.out / "audit-state-bench.db", args.out / "audit-state-bench.state"
    for p in (db, state, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    shutil.copy(base, db)
    common = ["audit", "--db", str(db), "--genesis", str(genesis), "-q",
              "--workers", str(args.workers)]
    first_wall, out = run([*common, "--state", str(state)])
    first = seconds_of(out)
    with SqliteStore(db, genesis_hash=fx.genesis.hash) as store:
        tip = store.block(store.height)
        assert tip is not None
        builder = ChainBuilder(fx, store, time_ms=tip.header.time_ms, nonce=args.records + 1)
        done = 0
        while done < args.new:
            n = min(args.per_block, args.new - done)
            builder.add(n)
            done += n
    second_wall, out = run([*common, "--state", str(state)])
    second = seconds_of(out)
    loading = re.search(r"state loaded in ([\d.]+) s", out)
    load = float(loading.group(1)) if loading else 0.0
    full_wall, full_out = run(common)
    full = seconds_of(full_out)
    report = {"records": args.records, "new": args.new, "per_block": args.per_block,
              "state_bytes": state.stat().st_size,
              "first_run_s": first, "first_run_wall_s": first_wall,
              "second_run_s": second, "second_run_state_load_s": load,
              "second_run_verify_s": round(second - load, 2), "second_run_wall_s": second_wall,
              "full_audit_s": full, "full_audit_wall_s": full_wall}
    print(out.strip())
    print(json.dumps(report, indent=2))
    (args.out / "audit_state_bench.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
