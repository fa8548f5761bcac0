"""`make wan`'s chaos and Twins runs on the WAN bed (tests/wan/chaos.py, tests/wan/twins.py),
long forms of tests/wan/test_chaos.py and test_twins.py.

Chaos: a 4-validator TLS cluster at ``--delay`` ms one-way under load from the client
namespace for ``--seconds``, one node's clock 20-90 s ahead (libfaketime), and a seeded
schedule of link down/up, packet-loss bursts and SIGKILL + restart (one fault per ~12 s
slot); then every acknowledged record once, identical blocks, audit against each node.
Twins: validator 3's key in two nodes on opposite sides of a partition for
``--twins-partition`` s, then healed for ``--twins-healed`` s under load; no fork, and the
honest nodes' evidence as /v1/status shows it. Prints the seed, the faults with their times,
records acknowledged and lost, the evidence; writes bench-results/wan_chaos.json. Exits 1
if a check fails (or no honest node recorded the twins' equivocation).

    python -m tests.bench.wan_chaos [--seed N] [--seconds 180] [--delay 10]
        [--twins-partition 20] [--twins-healed 60] [--only chaos|twins]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.wan.bed import ROOT
from tests.wan.chaos import run_chaos
from tests.wan.twins import TWIN, run_twins


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--seconds", type=float, default=180)
    p.add_argument("--delay", type=float, default=10, help="one-way delay, ms")
    p.add_argument("--twins-partition", type=float, default=20)
    p.add_argument("--twins-healed", type=float, default=60)
    p.add_argument("--only", choices=["chaos", "twins"])
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "wan_chaos.json")
    args = p.parse_args()
    out: dict[str, Any] = {"seed": args.seed}
    ok = True
    with tempfile.TemporaryDirectory(prefix="wan-chaos-") as tmp:
        if args.only in (None, "chaos"):
            chaos = run_chaos(Path(tmp) / "chaos", args.seed, args.seconds, args.delay)
            out["chaos"] = chaos.as_json()
            print(f"\nchaos: seed {chaos.seed}, {len(chaos.faults)} fault events over "
                  f"{chaos.seconds} s, {chaos.acknowledged} records acknowledged, "
                  f"{chaos.lost} lost, {chaos.height} blocks identical on 4 nodes, "
                  f"{chaos.skew_host} {chaos.measured_skew_s:+.1f} s", flush=True)
        if args.only in (None, "twins"):
            twins = run_twins(Path(tmp) / "twins", args.seed, args.twins_partition,
                              args.twins_healed, args.delay, stop_early=False)
            out["twins"] = twins.as_json()
            caught = {n: len(e) for n, e in twins.evidence.items()
                      if any(x["validator"] == TWIN for x in e)}
            ok = ok and bool(caught)
            print(f"\ntwins: seed {twins.seed}, {twins.acknowledged} records acknowledged, "
                  f"{twins.lost} lost, one tip {twins.tip[:16]} at height {twins.height} on "
                  f"node0-2 (twins: {twins.twins_tips}); evidence entries per honest node "
                  f"{caught or 'NONE'}, first {twins.evidence_after_s} s after the heal",
                  flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
