"""A bounded chaos run in `make test`; `make soak` runs a long one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.chaos import Chaos

pytestmark = pytest.mark.slow


def test_chaos_keeps_every_acknowledged_record_and_agreement(tmp_path: Path) -> None:
    seed = int(os.environ.get("CHAOS_SEED", "20261128"))
    chaos = Chaos(tmp_path, seed)
    try:
        report = chaos.run(float(os.environ.get("CHAOS_SECONDS", "40")))
    finally:
        chaos.close()
    assert report.faults >= 5 and len(report.acked) > 50
    assert report.recoveries and max(report.recoveries) <= 5.0
