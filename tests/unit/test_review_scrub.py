"""Hostile review of the redaction rebuild moved off the commit path (issue 15, SPEC
section 10): every way a redaction's cleared pairs could stay in ``chain.db`` or its WAL
once the store says it is done, or once a writer that applied the redaction has closed."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from ledger.errors import StoreError
from ledger.store.sqlite import SqliteStore
from node import cli
from node.restore import import_bundle
from tests.unit.test_one_rule import GOVERNED
from tests.unit.test_payload_store import _leaked
from tests.unit.test_redaction_scrub import healed, markers, redact


def _open(path: Path, **kw: object) -> SqliteStore:
    return SqliteStore(path, genesis_hash=GOVERNED.hash, config=GOVERNED.config, **kw)


def test_a_restore_that_applies_a_redaction_leaves_no_copy_in_the_file(
        tmp_path: Path) -> None:
    """A stopped node's store that held healed pairs is brought forward from a bundle whose
    later block redacts some of them: once ``ledger node restore`` returns, its files must
    not hold the redacted payloads. (Failed before ``import_bundle`` scrubbed a pending
    rebuild before closing: 2 of 200 markers left in chain.db until the node's next open.)"""
    live, target = tmp_path / "live", tmp_path / "target"
    live.mkdir()
    target.mkdir()
    store, builder, records = healed(live / "chain.db", 400, "X")
    assert store.scrub()  # the WAL empty: chain.db alone is the store as of now
    shutil.copy(live / "chain.db", target / "chain.db")  # the stopped node's store
    gone = [n for n in range(400) if n % 2]
    redact(store, builder, [records[n][0].id for n in gone], 0)
    assert store.scrub()
    store.close()
    assert _leaked(live, markers("X", gone)) == []  # the source is clean
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(GOVERNED.raw)
    bundle = tmp_path / "chain.bundle"
    assert cli.main(["export", "--db", str(live / "chain.db"), "--genesis", str(genesis),
                     "--out", str(bundle), "-q"]) == 0
    assert len(_leaked(target, markers("X", gone))) == len(gone)  # held before
    report = import_bundle(bundle, target / "chain.db", GOVERNED, workers=1)
    assert report.written == 1
    leaked = _leaked(target, markers("X", gone))
    assert leaked == [], f"{len(leaked)} of {len(gone)} redacted payloads still in the files"
