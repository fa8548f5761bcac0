"""The attacks of issue 11 against real 4-node clusters, each held to the issue's bar.

One fresh cluster per scenario (an attack that works leaves its cluster stalled or bloated,
so none is shared), short windows (3 s baseline, 5 s attack, then 3 s drain), the smaller
``quick`` preparations. The bar (``harness.judge``), generous for a busy 2-core machine:

* commits/s under attack >= 15 % of the baseline measured just before it, same load (half
  the CLI's 30 %: 5 s windows, with another test of the suite on the other core; before the
  hardening the ratios were 0-19 %, and the other bars failed too; the figures of record
  come from ``make attack``);
* every /healthz probe of every honest node (5 Hz) answers 200 within 1 s;
* peak RSS of every honest node < 400 MB during the attack (and its drain);
* no 5xx to the attacker (503 with Retry-After is load shedding and allowed) or to the load;
* ``ledger audit --node`` passes;
* a restarted validator commits again within 6 s of answering /healthz;
* deep_and_odd_inputs: every check's own expectation (rejections, 400s, no 5xx).

On the code before the hardening of issue 11 these fail: that is what they reproduce
(figures in tests/attack/before.json). ``python -m tests.attack.run`` runs the same
scenarios with longer windows and prints a table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.attack.harness import judge, run_scenario
from tests.attack.scenarios import SCENARIOS

pytestmark = pytest.mark.slow

SUITE_MIN_RATIO = 0.15
BASELINE_S = 3.0
ATTACK_S = 5.0


def run(name: str, tmp_path: Path) -> dict[str, Any]:
    report = run_scenario(name, BASELINE_S, ATTACK_S, quick=True, workdir=tmp_path)
    report["misses"] = judge(report, min_ratio=SUITE_MIN_RATIO)
    out = os.environ.get("ATTACK_RESULTS_DIR")
    if out:  # keep the figures of a pytest run, e.g. for a before/after table
        Path(out, f"{name}.json").write_text(json.dumps(report, indent=2))
    return report


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_attack_meets_the_bar(name: str, tmp_path: Path) -> None:
    report = run(name, tmp_path)
    assert not report["misses"], "\n".join(
        [f"{name} misses the bar of issue 11:", *report["misses"],
         json.dumps({k: v for k, v in report.items() if k not in ("summary", "misses")},
                    indent=1)[:4000]])
