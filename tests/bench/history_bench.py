"""Benchmark: subject history pages deep in a long history (issue 14), O(log n) per page.

Builds (once, cached by size) a SQLite chain whose N records all belong to one subject, then
serves pages through the real app (``node.api.create_app`` over the store, in-process) and
prints, per kind of page, the median and worst time and the SQL statements it ran: the
newest page, a page oldest first and newest first from the middle of the history, a
block-time range in the middle (binary search over heights), and a page of 100 with proofs.
Each proof is verified against the store's checkpoint. Run it at two sizes to see the cost
stay flat while the history grows tenfold.

    python -m tests.bench.history_bench [--records 1000000] [--per-block 1000] [--pages 50]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tqdm import tqdm

from ledger import checkpoint as checkpoints
from ledger import merkle
from ledger.blocks import Header
from ledger.encoding import b64decode
from ledger.store import SqliteStore
from node.api import create_app
from node.apidoc import limits
from node.service import LocalService
from tests.bench.audit_bench import ROOT
from tests.factory import ChainBuilder, make_fixture

SUBJECT = "plant-1/deep/temp"


def build_store(path: Path, records: int, per_block: int) -> None:
    """A valid chain of ``records`` records of SUBJECT, ``per_block`` to a block."""
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
                builder.add(n, subject=SUBJECT)
                done += n
                bar.update(n)
    tmp.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--per-block", type=int, default=1000)
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    db = args.out / f"history-{args.records}-{args.per_block}.db"
    if not db.exists():
        build_store(db, args.records, args.per_block)

    fx = make_fixture()
    with SqliteStore(db, readonly=True) as store:
        service = LocalService(fx.genesis, store, name="bench", index=0)
        app = create_app(service, limits())
        n, tip = store.log.size, store.height
        stored = store.header_cert(1)
        assert stored is not None, "an empty store"
        first = Header.from_wire(stored[0]).time_ms
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)  # a read-only store reads through it
        rng = random.Random(14)
        cp_doc = checkpoints.stored_checkpoint(store.header_cert(tip))
        assert cp_doc is not None
        cp = checkpoints.VerifiedCheckpoint(Header.from_wire(b64decode(cp_doc["header"], "h")),
                                            (), fx.genesis.config)
        url = f"/v1/subjects/{SUBJECT}/history"

        def deep() -> int:
            return rng.randrange(n // 4, 3 * n // 4)

        def middle_range() -> dict[str, Any]:
            h = rng.randrange(tip // 4, 3 * tip // 4)
            return {"since": first + 1000 * (h - 1), "until": first + 1000 * h}

        kinds: dict[str, Any] = {
            "newest page (desc, 100)": lambda: {"order": "desc"},
            "oldest first from the middle (asc, 100)": lambda: {"after": deep()},
            "newest first from the middle (desc, 100)": lambda: {"order": "desc",
                                                                  "before": deep()},
            "one block's time range in the middle (100)": middle_range,
            "100 with proofs, from the middle": lambda: {"after": deep(), "proof": "true"},
        }
        result: dict[str, Any] = {"records": n, "blocks": tip, "log2_n": n.bit_length(),
                                  "pages": {}}
        with TestClient(app, base_url="http://127.0.0.1") as http:
            for name, params in kinds.items():
                times, sql = [], []
                for _ in range(args.pages):
                    p = params()
                    statements.clear()
                    start = time.perf_counter()
                    resp = http.get(url, params=p)
                    times.append(time.perf_counter() - start)
                    sql.append(len(statements))
                    doc = resp.json()
                    assert resp.status_code == 200 and len(doc["records"]) == 100, (p, doc)
                    if p.get("proof"):
                        for r in doc["records"]:
                            leaf = merkle.leaf_hash(b64decode(r["envelope"], "envelope"))
                            checkpoints.verify_log_inclusion(
                                cp, r["log_index"], leaf,
                                {"index": r["log_index"], "size": n, "proof": r["proof"]})
                result["pages"][name] = {
                    "ms_median": round(1000 * statistics.median(times), 2),
                    "ms_worst": round(1000 * max(times), 2),
                    "sql_median": statistics.median(sql), "sql_worst": max(sql)}
        store._db.set_trace_callback(None)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
