"""Per-record decode cost: ``Record.from_wire`` on typical and amplifying records.

Run: ``.venv/bin/python -m tests.bench.decode_bench [--blocks]``. It reports the best of
several repeats in CPU-microseconds per record (the calling thread's CPU time, which a busy
machine distorts less than wall time). ``--blocks`` also times the audit's per-block work,
``check_block_alone``, on 20 blocks of 500 typical records (the audit bench's chain), with
and without its signature checks: what the audit's workers spend per record.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ledger.encoding import packb
from ledger.records import MAX_PAYLOAD_BYTES, Record
from tests.factory import seeded_key

KEY = seeded_key("decode-bench")


def record(payload: object) -> bytes:
    return Record.create(KEY, chain="demo", type="sensor.reading", subject="plant-7/line-3/temp",
                         payload=payload, ts=1_700_000_000_000, nonce=1).envelope


CASES = {
    "typical {v, unit}": record({"v": 21.5, "unit": "C"}),
    "bench {v, unit, note:200}": record({"v": 0.1, "unit": "C", "note": "x" * 200}),
    "20-field map": record({f"k{i}": i * 1.5 for i in range(20)}),
    "1 KiB bin": record(b"\x00" * 1024),
    "empty maps (60 KiB)": record([{}] * (MAX_PAYLOAD_BYTES - 1024)),
}


def cpu_us(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best CPU-microseconds per call of ``fn`` over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(number):
            fn()
        best = min(best, time.thread_time() - start)
    return best / number * 1e6


def blocks() -> None:
    """``check_block_alone`` per record, with and without the signature checks."""
    import ledger.blocks
    import ledger.validation
    from ledger.audit import check_block_alone
    from ledger.blocks import peek_header
    from ledger.store import SqliteStore
    from tests.bench.audit_bench import build_store
    from tests.factory import make_fixture

    config = make_fixture().genesis.config
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "chain.db"
        build_store(db, 10_000, 500)
        store = SqliteStore(db, readonly=True)
        data = [store.block_bytes(h) for h in range(1, store.height + 1)]
        store.close()
    records = sum(peek_header(d).record_count for d in data if d is not None)

    def run() -> None:
        for height, block in enumerate(data, 1):
            assert block is not None
            check_block_alone(block, config, height)

    full = cpu_us(run, 1, 3) / records
    always = lambda *_: True  # noqa: E731 - the signature checks, skipped
    ledger.blocks.Certificate.verify.__defaults__ = (always,)
    ledger.validation.check_records.__defaults__ = (always,)
    rest = cpu_us(run, 1, 5) / records
    print(f"check_block_alone, 500-record blocks: {full:.1f} us/record; without the "
          f"signature checks {rest:.1f} us/record")


def main() -> None:
    for name, envelope in CASES.items():
        number = max(1, 20_000 // max(1, len(envelope) // 64))
        best = cpu_us(lambda e=envelope: Record.from_wire(e), number)  # type: ignore[misc]
        print(f"{name:28s} {len(envelope):6d} B  {best:10.1f} us/record")
    if "--blocks" in sys.argv[1:]:
        blocks()
    _ = packb


if __name__ == "__main__":
    main()
