"""`ledger cluster init --tls`: TLS on peer links and the API, end to end."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ledger.crypto import read_key_file
from ledger.genesis import Genesis
from ledger.receipts import verify_receipt
from node.client import LedgerClient
from node.cluster import init_cluster
from tests.integration.cluster_util import ROOT, Cluster, free_base_port

pytestmark = pytest.mark.slow


def test_tls_cluster_commits_and_refuses_plain_http(tmp_path: Path) -> None:
    base = free_base_port(4)
    init_cluster(tmp_path, 4, base, tls=True)
    c = Cluster(tmp_path, 4, base)
    ca = tmp_path / "tls" / "ca.pem"
    ctx = ssl.create_default_context(cafile=str(ca))
    try:
        for i in range(4):
            c.start(i)
        for i in range(4):  # wait for https health
            for _ in range(150):
                try:
                    if httpx.get(f"https://127.0.0.1:{base + i}/healthz", verify=ctx,
                                 timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise AssertionError(c.log(i)[-2000:])
        key = read_key_file(tmp_path / "clients" / "demo.pem")
        with LedgerClient(f"https://127.0.0.1:{base + 1}", identity=key, verify=str(ca)) as cl:
            res = cl.write(type="sensor.reading", subject="tls", payload=1, wait=True)
            assert res["height"] >= 1
            verify_receipt(cl.receipt(res["id"]), Genesis.load(tmp_path / "genesis.json"))
            assert len(cl.status()["peers"]) == 3  # every peer link is up, over TLS
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{base}/healthz", timeout=2)
        with pytest.raises(httpx.HTTPError):  # not trusted without the cluster CA
            httpx.get(f"https://127.0.0.1:{base}/healthz", timeout=2)
        audit = subprocess.run(
            [sys.executable, "-m", "node.cli", "audit", "--node", f"https://127.0.0.1:{base + 2}",
             "--genesis", str(tmp_path / "genesis.json"), "--ca", str(ca), "-q"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert audit.returncode == 0, audit.stderr
        assert "TLS" in c.log(0)
    finally:
        c.stop_all()
