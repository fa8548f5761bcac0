"""Per-record decode cost: ``Record.from_wire`` on typical and amplifying records.

Run: ``.venv/bin/python -m tests.bench.decode_bench``. Figures on a busy machine are noisy;
it reports the best of several repeats (microseconds per record).
"""

from __future__ import annotations

import timeit

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


def main() -> None:
    for name, envelope in CASES.items():
        number = max(1, 20_000 // max(1, len(envelope) // 64))
        best = min(timeit.repeat(lambda e=envelope: Record.from_wire(e), number=number, repeat=5))
        print(f"{name:28s} {len(envelope):6d} B  {best / number * 1e6:10.1f} us/record")
    _ = packb


if __name__ == "__main__":
    main()
