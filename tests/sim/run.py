"""Run simulation seeds from the command line (replay one, or soak many).

    python -m tests.sim.run --seed 1234 --verbose     # replay one seed
    python -m tests.sim.run --seeds 0:20000           # soak
    python -m tests.sim.run --seeds 0:32000 --changing  # only seeds whose validator set
                                                      # changes (about 10 000 of them)
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim.harness import LivenessViolation, SafetyViolation, Scenario, run_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--seeds", default="0:1000", help="START:END")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--changing", action="store_true",
                        help="run only the seeds whose validator set changes")
    parser.add_argument("--governed", action="store_true",
                        help="run only the seeds whose set changes by committed records")
    args = parser.parse_args()
    seeds = ([args.seed] if args.seed is not None
             else range(*map(int, args.seeds.split(":"))))
    if args.changing or args.governed:
        seeds = [s for s in seeds
                 if (sc := Scenario.from_seed(s)).changes and (sc.governed or not args.governed)]
    started, failures = time.monotonic(), 0
    for n, seed in enumerate(seeds, 1):
        try:
            sim = run_seed(seed)
        except (SafetyViolation, LivenessViolation) as exc:
            failures += 1
            print(f"seed {seed}: FAILED {exc}", flush=True)
            continue
        if args.verbose:
            print(Scenario.from_seed(seed).describe())
            if sim.describe_sets():
                print(f"validator sets: {sim.describe_sets()}")
            print("\n".join(sim.log))
            print({node.id: node.store.height for node in sim.nodes})
        if n % 200 == 0:
            print(f"{n} seeds, {failures} failures, {time.monotonic() - started:.0f} s",
                  file=sys.stderr, flush=True)
    print(f"{len(seeds)} seeds, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
