"""Chaos on the WAN bed, short form (tests/wan/chaos.py; `make wan` runs a long one): a TLS
cluster at 10 ms one-way under load, one node's clock 20-90 s ahead (libfaketime), a link
down and up, a packet-loss burst and a SIGKILLed + restarted node; no acknowledged record
lost or doubled, identical blocks, audit passes against each node."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wan.chaos import run_chaos

pytestmark = pytest.mark.slow


def test_chaos_on_the_bed_loses_no_acknowledged_record(tmp_path: Path) -> None:
    report = run_chaos(tmp_path, seed=3, seconds=24)
    kinds = " ".join(f.text for f in report.faults)
    assert "link down" in kinds and "packet loss" in kinds and "SIGKILLed" in kinds
    # the load ran through the faults, and commits after the last one
    assert report.acknowledged_after_faults > 0, report.as_json()
    assert report.lost == 0
    assert report.records_on_chain >= report.acknowledged
    # the skewed node's clock was really off, and its blocks carry its clock
    assert abs(report.measured_skew_s - report.skew_s) < 5
    assert report.skewed_blocks > 0
    # (a block's time is taken when proposed, the clients' when its commit is answered)
    assert report.skew_s - 15 < report.skewed_block_lead_s < report.skew_s + 5, report.as_json()


def test_a_missing_libfaketime_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.wan import chaos

    monkeypatch.setattr(chaos, "FAKETIME_LIBRARY", "/nonexistent/*/libfaketime.so.1")
    with pytest.raises(chaos.FaketimeMissing, match=r"apt-get install faketime"):
        chaos.faketime_env(30)
