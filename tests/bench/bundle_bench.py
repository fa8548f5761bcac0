"""Benchmark: the export bundle on a big chain (SPEC section 12, issue 14).

Builds (once, cached by size, as tests/bench/audit_bench.py does) an SQLite chain of N
signed records, then measures with the real commands:

- ``ledger export --db``: time, and the bundle's size per record beside the store's;
- ``ledger audit --db`` and ``ledger audit --file`` on the same chain, alternated (the
  target: the file audit at least 0.8 of the store audit's records/s);
- ``ledger node init --bundle``: a node's store filled from the bundle (blocks/s);
- normal sync for comparison: a node serving the chain (a genesis validator's key, no peers:
  it serves its API) and a node that follows it over HTTP from an empty store, its blocks/s
  over ``--sync-seconds``.

    python -m tests.bench.bundle_bench [--records 1000000] [--per-block 500] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ledger.crypto import write_key_file
from ledger.store.sqlite import SCHEMA_VERSION
from node.join import init_node
from tests.bench.audit_bench import ROOT, TreeCpu, _cpu, build_store
from tests.factory import make_fixture
from tests.integration.cluster_util import free_base_port


def ledger(*argv: object) -> tuple[float, str, float]:
    """Run a ledger command; its wall time, stdout and CPU seconds (exit on failure)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = TreeCpu(proc.pid)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    cpu_s = cpu.stop()
    if proc.returncode != 0:
        raise SystemExit(f"ledger {argv[0]} failed: {err.strip()[-2000:]}")
    return wall, out, cpu_s


def audit_rate(out: str) -> tuple[int, float]:
    m = re.search(r"(\d+) records verified in ([\d.]+) s", out)
    if m is None:
        raise SystemExit(f"unexpected audit output: {out!r}")
    return int(m.group(1)), float(m.group(2))


def size_of(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def sync_rate(db: Path, genesis: Path, work: Path, seconds: float) -> dict[str, float]:
    """blocks/s of a node following, over HTTP, a node that serves ``db``."""
    fx = make_fixture()
    base = free_base_port(2)
    server, follower = work / "serve", work / "follow"
    for d in (server, follower):
        shutil.rmtree(d, ignore_errors=True)
    key = work / "v0.pem"
    key.unlink(missing_ok=True)
    write_key_file(key, fx.validator_keys[0])
    init_node(server, genesis, f"127.0.0.1:{base}", f"127.0.0.1:{base + 100}", key)
    shutil.copy(db, server / "chain.db")
    init_node(follower, genesis, f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 101}")
    procs = []
    try:
        for d, env in ((server, {}), (follower, {"LEDGER_FOLLOW": f"127.0.0.1:{base}"})):
            log = open(work / f"{d.name}.log", "wb")  # noqa: SIM115 - the process owns it
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "node.cli", "node", "run", str(d)], cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}))
        url = f"http://127.0.0.1:{base + 1}"

        def height() -> int:
            try:
                return int(httpx.get(f"{url}/v1/status", timeout=5).json()["height"])
            except httpx.HTTPError:
                return -1

        deadline = time.monotonic() + 120
        while height() < 1:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit("the follower did not start syncing: see "
                                 f"{work}/follow.log and {work}/serve.log")
            time.sleep(0.2)
        h0, t0, c0 = height(), time.monotonic(), _cpu(procs[1].pid)
        load0 = os.getloadavg()[0]
        time.sleep(seconds)
        h1, t1, c1 = height(), time.monotonic(), _cpu(procs[1].pid)
        return {"blocks": h1 - h0, "seconds": t1 - t0, "blocks_per_s": (h1 - h0) / (t1 - t0),
                "follower_cpu_s": c1 - c0, "blocks_per_cpu_s": (h1 - h0) / max(c1 - c0, 1e-9),
                "load_avg": (load0 + os.getloadavg()[0]) / 2}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="audit runs of each kind")
    parser.add_argument("--sync-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fx = make_fixture()
    genesis = fx.write_genesis(args.out)
    db = args.out / f"audit-{args.records}-{args.per_block}-schema{SCHEMA_VERSION}.db"
    if not db.exists():
        build_store(db, args.records, args.per_block)
    work = args.out / "bundle-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bundle = work / "chain.bundle"

    export_s, _, export_cpu = ledger("export", "--db", db, "--genesis", genesis, "--out",
                                     bundle, "-q")
    bundle_bytes, store_bytes = bundle.stat().st_size, size_of(db)
    audits: dict[str, list[dict[str, float]]] = {"db": [], "file": []}
    for _ in range(args.rounds):  # alternated: the machine's load hits both alike
        for kind, source in (("db", ["--db", db]), ("file", ["--file", bundle])):
            load = os.getloadavg()[0]
            wall, out, cpu = ledger("audit", *source, "--genesis", genesis, "-q")
            records, seconds = audit_rate(out)
            audits[kind].append({"records": records, "seconds": seconds, "wall_s": wall,
                                 "records_per_s": records / seconds, "cpu_s": cpu,
                                 "records_per_cpu_s": records / cpu,
                                 "load_avg": (load + os.getloadavg()[0]) / 2})
    best = {k: max(r["records_per_s"] for r in v) for k, v in audits.items()}
    per_cpu = {k: max(r["records_per_cpu_s"] for r in v) for k, v in audits.items()}
    node = work / "node"
    load = os.getloadavg()[0]
    import_s, out, import_cpu = ledger("node", "init", node, "--genesis", genesis, "--api",
                                       "127.0.0.1:1", "--p2p", "127.0.0.1:2", "--bundle",
                                       bundle, "-q")
    import_load = (load + os.getloadavg()[0]) / 2
    blocks = args.records // args.per_block + (args.records % args.per_block > 0)
    sync = sync_rate(db, genesis, work, args.sync_seconds)
    report = {
        "records": args.records, "per_block": args.per_block, "blocks": blocks,
        "cores": os.cpu_count(),
        "export_s": export_s, "export_cpu_s": export_cpu, "bundle_bytes": bundle_bytes,
        "store_bytes": store_bytes,
        "bundle_bytes_per_record": bundle_bytes / args.records,
        "store_bytes_per_record": store_bytes / args.records,
        "audits": audits, "file_over_db": best["file"] / best["db"],
        "file_over_db_per_cpu_s": per_cpu["file"] / per_cpu["db"],
        "import_s": import_s, "import_cpu_s": import_cpu, "import_load_avg": import_load,
        "import_blocks_per_s": blocks / import_s,
        "import_blocks_per_cpu_s": blocks / import_cpu,
        "import_records_per_s": args.records / import_s, "import_output": out.strip(),
        "sync": sync, "sync_records_per_s": sync["blocks_per_s"] * args.per_block,
    }
    print(f"chain: {args.records:,} records in {blocks:,} blocks of {args.per_block}")
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"export --db:      {export_s:8.1f} s ({args.records / export_s:,.0f} records/s, "
          f"{export_cpu:.1f} CPU-s)")
    print(f"bundle:           {bundle_bytes / 1e6:8.1f} MB = {bundle_bytes / args.records:.0f} "
          f"B/record; store {store_bytes / 1e6:.1f} MB = {store_bytes / args.records:.0f} "
          f"B/record")
    for kind in ("db", "file"):
        runs = ", ".join(f"{r['records_per_s']:,.0f} ({r['records_per_cpu_s']:,.0f}/CPU-s, "
                         f"load {r['load_avg']:.1f})" for r in audits[kind])
        print(f"audit --{kind:<5}     best {best[kind]:10,.0f} records/s; runs: {runs}")
    print(f"file / db:        {best['file'] / best['db']:8.2f} of the wall rate, "
          f"{per_cpu['file'] / per_cpu['db']:.2f} per CPU-second (target >= 0.8)")
    print(f"import (init --bundle): {import_s:.1f} s = {blocks / import_s:,.1f} blocks/s, "
          f"{args.records / import_s:,.0f} records/s; {import_cpu:.0f} CPU-s = "
          f"{args.records / import_cpu:,.0f} records/CPU-s (load {import_load:.1f})")
    print(f"sync over HTTP:   {sync['blocks_per_s']:,.1f} blocks/s = "
          f"{sync['blocks_per_s'] * args.per_block:,.0f} records/s "
          f"({sync['blocks']:.0f} blocks in {sync['seconds']:.0f} s); follower "
          f"{sync['blocks_per_cpu_s'] * args.per_block:,.0f} records/CPU-s "
          f"(load {sync['load_avg']:.1f})")
    (args.out / "bundle_bench.json").write_text(json.dumps(report, indent=2))
    print(f"results written to {args.out / 'bundle_bench.json'}")


if __name__ == "__main__":
    main()
