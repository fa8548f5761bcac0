"""Run the attack scenarios against fresh real clusters and print a table.

    python -m tests.attack.run [scenario ...] [--seconds S] [--out results.json]

Each scenario gets its own 4-node cluster, a baseline window of S seconds (honest load
only) and an attack window of S seconds (the same load under attack). Exit status 1 if any
scenario misses the bar of issue 11 (``harness.judge``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tests.attack.harness import (
    MAX_HEALTHZ_MS,
    MAX_RSS_GROWTH_MB,
    MAX_RSS_MB,
    MIN_RATIO,
    judge,
    run_scenario,
    save,
)
from tests.attack.scenarios import SCENARIOS


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'scenario':34} {'base/s':>7} {'att/s':>7} {'ratio':>6} {'hz ms':>7} "
            f"{'hz fail':>7} {'peak MB':>8} {'5xx':>4} {'audit':>5}  verdict")
    rows = [head, "-" * len(head)]
    for r in results:
        peak = max(r.get("peak_rss_mb", {}).values(), default=0.0)
        rows.append(
            f"{r['scenario']:34} {_f(r.get('commits_per_s_baseline')):>7} "
            f"{_f(r.get('commits_per_s_attack')):>7} {_f(r.get('ratio')):>6} "
            f"{r.get('worst_healthz_ms', 0):>7.0f} {r.get('healthz_failures', 0):>7} "
            f"{peak:>8.0f} {r.get('5xx_count', 0):>4} {'ok' if r.get('audit_ok') else 'FAIL':>5}"
            f"  {'pass' if not r.get('misses') else 'FAIL'}")
    return "\n".join(rows)


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.attack.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="scenario",
                   help=f"default: all ({', '.join(SCENARIOS)})")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="length of the baseline and of the attack window (default 20)")
    p.add_argument("--quick", action="store_true",
                   help="smaller preparations and attacks (what the pytest file runs)")
    p.add_argument("--out", type=Path, help="write every report as JSON here")
    args = p.parse_args(argv)
    names = args.scenarios or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    print(f"bar: commits/s under attack >= {MIN_RATIO:.0%} of baseline, /healthz < "
          f"{MAX_HEALTHZ_MS:g} ms and no failed probe, peak RSS < {MAX_RSS_MB:g} MB per node "
          f"(or its baseline peak + {MAX_RSS_GROWTH_MB:g} MB after preparing 8 MB blocks), "
          "no 5xx, audit ok", flush=True)
    results = []
    for name in names:
        started = time.monotonic()
        try:
            report = run_scenario(name, args.seconds, args.seconds, quick=args.quick,
                                  log=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
        except Exception as exc:  # one broken scenario does not hide the others
            report = {"scenario": name, "error": f"{type(exc).__name__}: {exc}"[-2000:]}
            report["misses"] = [report["error"]]
        else:
            report["misses"] = judge(report)
        report["wall_s"] = round(time.monotonic() - started, 1)
        results.append(report)
        print(f"{name}: {'pass' if not report['misses'] else 'FAIL'} "
              f"({report['wall_s']} s)", flush=True)
        for miss in report["misses"]:
            print(f"    - {miss[:300]}", flush=True)
        if args.out:
            save(results, args.out)
    print()
    print(table([r for r in results if "error" not in r]))
    return 1 if any(r["misses"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
