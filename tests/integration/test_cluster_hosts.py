"""`ledger cluster init --hosts`: four validators on four addresses (127.0.0.2-5: all of
127/8 is this machine on Linux), each started from its own host folder as an operator would
after copying it, committing records over TLS, each listening on its own address only."""

from __future__ import annotations

import os
import signal
import socket
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
from tests.integration.cluster_util import ROOT, free_base_port

pytestmark = pytest.mark.slow

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def free_on_every_host(attempts: int = 50) -> int:
    """A base port P with P and P+100 free on every address of HOSTS."""
    for _ in range(attempts):
        base = free_base_port(1)
        try:
            for host in HOSTS:
                for port in (base, base + 100):
                    with socket.socket() as s:
                        s.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError("no port free on every host")


def listeners(port: int) -> set[str]:
    """The local addresses of the TCP sockets listening on ``port`` (/proc/net/tcp)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        address, hex_port = fields[1].split(":")
        if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            out.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return out


def test_hosts_cluster_runs_from_its_host_folders_over_tls(tmp_path: Path) -> None:
    base = free_on_every_host()
    cluster = tmp_path / "cluster"
    init = subprocess.run(
        [sys.executable, "-m", "node.cli", "cluster", "init", str(cluster), "--hosts",
         ",".join(HOSTS), "--base-port", str(base)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    # "copy" each folder to its machine: a place that has nothing else of the cluster
    machines = []
    for i, host in enumerate(HOSTS):
        machine = tmp_path / f"machine-{host}"
        machine.mkdir()
        (cluster / f"node{i}-{host}").rename(machine / "ledger")
        machines.append(machine / "ledger")
    ca = cluster / "tls" / "ca.pem"
    ctx = ssl.create_default_context(cafile=str(ca))
    urls = [f"https://{h}:{base}" for h in HOSTS]
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for folder in machines:
            log = open(folder / "node.log", "ab")  # noqa: SIM115 - the process owns it
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "node.cli", "node", "run", str(folder)],
                cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        deadline = time.monotonic() + 60
        ready: set[int] = set()
        while len(ready) < 4 and time.monotonic() < deadline:
            for i, url in enumerate(urls):
                assert procs[i].poll() is None, (machines[i] / "node.log").read_text()[-2000:]
                try:
                    if httpx.get(f"{url}/readyz", verify=ctx, timeout=2).status_code == 200:
                        ready.add(i)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        assert len(ready) == 4, [(m / "node.log").read_text()[-1500:] for m in machines]
        key = read_key_file(cluster / "clients" / "demo.pem")
        genesis = Genesis.load(cluster / "genesis.json")
        with LedgerClient(urls, identity=key, verify=str(ca)) as client:
            results = [client.write(type="sensor.reading", subject=f"host-{i}", payload=i,
                                    wait=True) for i in range(5)]
            assert all(r["status"] == "accepted" and r["height"] >= 1 for r in results)
            verify_receipt(client.receipt(results[-1]["id"]), genesis)
            tip = max(r["height"] for r in results)
        for i, url in enumerate(urls):  # every node has every link, and the blocks
            for _ in range(100):
                status = httpx.get(f"{url}/v1/status", verify=ctx, timeout=5).json()
                if status["height"] >= tip and len(status["peers"]) == 3:
                    break
                time.sleep(0.2)
            assert status["height"] >= tip and len(status["peers"]) == 3, status
            log = (machines[i] / "node.log").read_text()
            assert f"https://{HOSTS[i]}:{base}" in log and "(TLS)" in log
        # the CLI fails over too: the first URL has nothing listening (nodes bind only
        # their own addresses), the second commits the record
        submit = subprocess.run(
            [sys.executable, "-m", "node.cli", "submit", "--node",
             f"https://127.0.0.1:{base},{urls[1]}", "--ca", str(ca), "--identity",
             str(cluster / "clients" / "demo.pem"), "--type", "sensor.reading", "--subject",
             "cli", "--payload", "1", "--wait"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert submit.returncode == 0 and " height " in submit.stdout, submit.stderr
        # each node listens on its own address only: API and peer port, never 127.0.0.1
        assert listeners(base) == set(HOSTS)
        assert listeners(base + 100) == set(HOSTS)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{base}/healthz", verify=ctx, timeout=2)
        with pytest.raises(httpx.HTTPError):  # TLS only
            httpx.get(f"http://{HOSTS[0]}:{base}/healthz", timeout=2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
