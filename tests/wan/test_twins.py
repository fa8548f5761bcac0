"""Twins on real processes, short form (tests/wan/twins.py; `make wan` runs a longer one):
validator 3's key in two `ledger node run` processes on opposite sides of a partition on the
WAN bed; after the heal both sign at every height. No fork; an honest node records the
equivocation, persists it and shows it in GET /v1/status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wan.twins import TWIN, run_twins

pytestmark = pytest.mark.slow


def test_twins_never_fork_the_chain_and_are_caught(tmp_path: Path) -> None:
    report = run_twins(tmp_path, seed=1, partition_s=6, healed_s=10)
    # side A (3 keys with twin A) committed during the partition, side B (2 keys) did not
    assert report.heights_at_heal["node0"] > report.heights_at_heal["node2"]
    # no fork: one tip on every honest node (audited), and the twins followed that chain
    assert report.lost == 0 and report.acknowledged > 0
    assert report.tip
    assert all(t in (None, report.tip) for t in report.twins_tips.values())
    entries = [e for evidence in report.evidence.values() for e in evidence]
    assert entries, f"no honest node recorded the twins' equivocation: {report.as_json()}"
    for e in entries:
        assert e["validator"] == TWIN
        assert e["first"] != e["second"]  # two signed messages, one (height, round, kind)
        assert e["kind"] in ("proposal", "prevote", "precommit")
    holders = [n for n, evidence in report.evidence.items() if evidence]
    assert all(report.evidence_files[n] >= len(report.evidence[n]) for n in holders)
