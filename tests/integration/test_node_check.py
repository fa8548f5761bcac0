"""A node checks its store on start and refuses a corrupted one; `ledger node check` does it
in full offline."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.crypto import read_key_file
from node.client import LedgerClient
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow


def ledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def stopped_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c = Cluster.create(tmp_path_factory.mktemp("check"), nodes=1)
    c.start_all()
    try:
        key = read_key_file(c.dir / "clients" / "demo.pem")
        with LedgerClient(c.url(0), identity=key) as client:
            for i in range(6):
                client.write(type="sensor.reading", subject=f"s{i % 2}", payload=i, wait=True)
    finally:
        c.stop_all()
    return c.dir


def corrupt_copy(src: Path, dst: Path, sql: str) -> Path:
    shutil.copytree(src, dst)
    conn = sqlite3.connect(dst / "node0" / "chain.db")
    conn.execute(sql)
    conn.commit()
    conn.close()
    return dst / "node0"


def test_node_check_passes_a_good_store(stopped_node: Path) -> None:
    res = ledger("node", "check", str(stopped_node / "node0"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok:") and "6 records" in res.stdout


def test_a_damaged_index_is_named_and_the_node_refuses_to_start(stopped_node: Path,
                                                                tmp_path: Path) -> None:
    node_dir = corrupt_copy(stopped_node, tmp_path / "c",
                            "UPDATE records SET subject = 'forged' WHERE seq = 5")
    res = ledger("node", "check", str(node_dir))
    assert res.returncode == 1
    assert res.stderr.strip().startswith("height 6: index row of record 0")
    started = time.monotonic()
    run = ledger("node", "run", str(node_dir))
    assert run.returncode == 2 and time.monotonic() - started < 60
    assert "ledger: height 6: index row" in run.stderr


def test_a_forged_tip_certificate_is_refused(stopped_node: Path, tmp_path: Path) -> None:
    node_dir = corrupt_copy(stopped_node, tmp_path / "c",
                            "UPDATE blocks SET cert = (SELECT cert FROM blocks WHERE height = 1) "
                            "WHERE height = (SELECT MAX(height) FROM blocks)")
    run = ledger("node", "run", str(node_dir))
    assert run.returncode == 2 and "height 6: tip certificate" in run.stderr
