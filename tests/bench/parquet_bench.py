"""Benchmark: `ledger export --format parquet` of a big chain, and a DuckDB query over it.

Builds (once, cached by size) an SQLite chain of N records spread over about three days of
block time (65 subjects), runs the real command (`ledger export --db ... --format parquet`)
into a fresh folder, and reports its wall time, the Parquet bytes per record, and the time
of a DuckDB query over the files: records per subject per hour of block time. The query's
answer is checked against the store (``subject_history`` pages, each record's height mapped
to its block's time) and against the node's API (``GET /v1/subjects/{s}/history`` of the
real app over the same store, in-process). Then it adds
M records and times the incremental second run.

    python -m tests.bench.parquet_bench [--records 1000000] [--per-block 500] [--new 1000]

Not part of `make test` (a 1M-record chain takes minutes to build).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from ledger.blocks import Header
from ledger.store import SqliteStore
from ledger.store.sqlite import SCHEMA_VERSION
from tests.factory import ChainBuilder, make_fixture

ROOT = Path(__file__).resolve().parents[2]
SUBJECTS = 13
#: Block time between blocks: 2,000 blocks of 500 records span about three days.
BLOCK_GAP_MS = 130_000


def subject_of(n: int) -> str:
    return f"plant-{n % SUBJECTS}/line-{n % 5}/temp"


def build_store(path: Path, records: int, per_block: int) -> None:
    """Write a valid chain of ``records`` records to a new store at ``path``: blocks
    BLOCK_GAP_MS apart, each record's subject one of SUBJECTS (by its number)."""
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
                recs = [builder.record(subject=subject_of(done + i)) for i in range(n)]
                builder.time_ms += BLOCK_GAP_MS - 1000
                block = builder.block(recs)
                store.append(block)
                done += n
                bar.update(n)
    tmp.rename(path)


def grow(db: Path, new: int, per_block: int) -> None:
    """Append ``new`` records to the store at ``db`` (after its tip, same spacing)."""
    fx = make_fixture()
    with SqliteStore(db, genesis_hash=fx.genesis.hash) as store:
        tip = store.block(store.height)
        assert tip is not None
        builder = ChainBuilder(fx, store, time_ms=tip.header.time_ms,
                               nonce=store.record_count() + 1)
        done = 0
        while done < new:
            n = min(per_block, new - done)
            recs = [builder.record(subject=subject_of(done + i)) for i in range(n)]
            builder.time_ms += BLOCK_GAP_MS - 1000
            store.append(builder.block(recs))
            done += n


def export(db: Path, genesis: Path, out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "node.cli", "export", "--format", "parquet",
                          "--db", str(db), "--genesis", str(genesis), "--out", str(out), "-q"],
                         cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"export failed: {res.stderr.strip()}")
    return wall, res.stdout.strip()


QUERY = """
SELECT subject, date_trunc('hour', block_time) AS hour, count(*) AS n
FROM read_parquet('{dir}/**/*.parquet', hive_partitioning = true, union_by_name = true)
GROUP BY ALL
"""


def from_store(db: Path) -> Counter[tuple[str, datetime]]:
    """Records per (subject, hour of block time), read as the history endpoint reads: each
    subject's ``subject_history`` pages of 1,000, each height's block time from its header."""
    counts: Counter[tuple[str, datetime]] = Counter()
    times: dict[int, datetime] = {}
    with SqliteStore(db, readonly=True) as store:
        for s in range(SUBJECTS):
            for line in range(5):
                subject = f"plant-{s}/line-{line}/temp"
                after = -1
                while rows := store.subject_history(subject, after_seq=after, limit=1000):
                    for loc, _ in rows:
                        when = times.get(loc.height)
                        if when is None:
                            when = times[loc.height] = _block_time(store, loc.height)
                        counts[(subject, when.replace(minute=0, second=0, microsecond=0))] += 1
                    after = rows[-1][0].seq
    return counts


def from_api(db: Path) -> Counter[tuple[str, datetime]]:
    """The same counts from the node's API: the real app (``node.api.create_app``) over the
    store, in-process, each subject's ``GET /v1/subjects/{s}/history?limit=1000`` pages
    followed by ``next``; each item's height mapped to its block's time (store header)."""
    from fastapi.testclient import TestClient

    from node.api import create_app
    from node.apidoc import limits
    from node.service import LocalService

    fx = make_fixture()
    counts: Counter[tuple[str, datetime]] = Counter()
    times: dict[int, datetime] = {}
    with SqliteStore(db, readonly=True) as store:
        app = create_app(LocalService(fx.genesis, store, name="node0"), limits())
        with TestClient(app, base_url="http://127.0.0.1") as http:
            for s in range(SUBJECTS):
                for line in range(5):
                    subject = f"plant-{s}/line-{line}/temp"
                    after: int | None = -1
                    while after is not None:
                        res = http.get(f"/v1/subjects/{subject}/history",
                                       params={"limit": 1000, "after": after})
                        res.raise_for_status()
                        page = res.json()
                        for item in page["records"]:
                            h = item["height"]
                            when = times.get(h)
                            if when is None:
                                when = times[h] = _block_time(store, h)
                            counts[(subject, when.replace(minute=0, second=0,
                                                          microsecond=0))] += 1
                        after = page["next"]
    return counts


def _block_time(store: SqliteStore, height: int) -> datetime:
    row = store.header_cert(height)
    assert row is not None
    ms = Header.from_wire(row[0]).time_ms
    return datetime.fromtimestamp(ms / 1000, UTC).replace(tzinfo=None)


def main() -> None:
    import duckdb

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-block", type=int, default=500)
    parser.add_argument("--new", type=int, default=1_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fx = make_fixture()
    genesis = fx.write_genesis(args.out)
    base = args.out / f"parquet-{args.records}-{args.per_block}-schema{SCHEMA_VERSION}.db"
    if not base.exists():
        build_store(base, args.records, args.per_block)
    db, folder = args.out / "parquet-bench.db", args.out / "parquet-bench"
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        p.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copy(base, db)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    first_wall, first_out = export(db, genesis, folder)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # the largest child so far is the export (the store was built in this process)
    export_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    files = sorted(folder.rglob("*.parquet"))
    size = sum(f.stat().st_size for f in files)

    con = duckdb.connect()
    start = time.perf_counter()
    rows = con.execute(QUERY.format(dir=folder)).fetchall()
    query_s = time.perf_counter() - start
    parquet_counts = Counter({(s, h): n for s, h, n in rows})
    start = time.perf_counter()
    store_counts = from_store(db)
    store_s = time.perf_counter() - start
    if parquet_counts != store_counts:
        diff = set(parquet_counts.items()) ^ set(store_counts.items())
        raise SystemExit(f"the query's answer differs from the store's: {sorted(diff)[:5]}")

    start = time.perf_counter()
    api_counts = from_api(db)
    api_s = time.perf_counter() - start
    if parquet_counts != api_counts:
        diff = set(parquet_counts.items()) ^ set(api_counts.items())
        raise SystemExit(f"the query's answer differs from the API's: {sorted(diff)[:5]}")

    grow(db, args.new, args.per_block)
    second_wall, second_out = export(db, genesis, folder)
    total = con.execute(f"SELECT count(*) FROM read_parquet('{folder}/**/*.parquet', "
                        "hive_partitioning = true, union_by_name = true)").fetchone()
    assert total is not None and total[0] == args.records + args.new, total

    report = {"records": args.records, "per_block": args.per_block,
              "export_wall_s": round(first_wall, 2),
              "records_per_s": round(args.records / first_wall),
              "export_cpu_s": round(cpu, 2),
              "export_peak_rss_mb": round(export_rss),
              "parquet_files": len(files), "parquet_bytes": size,
              "bytes_per_record": round(size / args.records, 1),
              "store_bytes": base.stat().st_size,
              "query": "records per subject per hour", "query_groups": len(rows),
              "duckdb_query_s": round(query_s, 3),
              "same_answer_as_store_history": True, "store_history_read_s": round(store_s, 2),
              "same_answer_as_api_history": True, "api_history_read_s": round(api_s, 2),
              "new_records": args.new, "second_run_wall_s": round(second_wall, 2),
              "first_run": first_out, "second_run": second_out}
    print(json.dumps(report, indent=2))
    (args.out / "parquet_bench.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
