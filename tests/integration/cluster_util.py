"""Start real `ledger node run` processes for integration tests."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from node.cluster import init_cluster

ROOT = Path(__file__).resolve().parents[2]


def free_base_port(nodes: int) -> int:
    """A base port P with P..P+nodes-1 and P+100..P+100+nodes-1 all free, below the
    kernel's ephemeral range: a port picked inside it can be taken by any outgoing
    connection (a client's, a peer dial's) between this check and the node's bind."""
    first_ephemeral = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first_ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    top = max(10_000, min(first_ephemeral, 65_536) - 101 - nodes)
    for _ in range(200):
        base = random.randint(min(10_000, top), top)
        ports = [base + i for i in range(nodes)] + [base + 100 + i for i in range(nodes)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free ports")



def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident memory (or its peak, ``VmHWM``) in MB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0

@dataclass
class Cluster:
    """A cluster folder and its node processes."""

    dir: Path
    nodes: int
    base_port: int
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    def create(cls, tmp: Path, nodes: int = 4, consensus: dict[str, object] | None = None,
               types: tuple[str, ...] | None = None, witnesses: int = 0) -> Cluster:
        base = free_base_port(nodes)
        init_cluster(tmp, nodes, base, types=types, witnesses=witnesses)
        if consensus:
            genesis = json.loads((tmp / "genesis.json").read_text())
            genesis["consensus"] = consensus
            (tmp / "genesis.json").write_text(json.dumps(genesis, indent=2))
        return cls(tmp, nodes, base)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.base_port + i}"

    def start(self, i: int, env: dict[str, str] | None = None) -> None:
        log = open(self.dir / f"node{i}.log", "ab")  # noqa: SIM115 - the process owns it
        # A node asked to misbehave runs the test entry point that installs the faults;
        # ``ledger node run`` has no such switch.
        faulty = any(k.startswith("LEDGER_TEST_") for k in env or {})
        command = ["tests.faulty_node"] if faulty else ["node.cli", "node", "run"]
        self.procs[i] = subprocess.Popen(
            [sys.executable, "-m", *command, str(self.dir / f"node{i}")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def start_all(self, env: dict[int, dict[str, str]] | None = None) -> None:
        for i in range(self.nodes):
            self.start(i, (env or {}).get(i))
        for i in range(self.nodes):
            self.wait_healthy(i)

    def wait_healthy(self, i: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[i]
            if proc.poll() is not None:
                raise RuntimeError(f"node{i} exited: {self.log(i)[-2000:]}")
            try:
                if httpx.get(f"{self.url(i)}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"node{i} not healthy in {timeout} s: {self.log(i)[-2000:]}")

    def log(self, i: int) -> str:
        path = self.dir / f"node{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        proc.send_signal(sig)
        proc.wait(timeout=20)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def height(self, i: int) -> int:
        return int(httpx.get(f"{self.url(i)}/v1/status", timeout=5).json()["height"])

    def wait_height(self, i: int, height: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.height(i) >= height:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"node{i} did not reach height {height}: {self.log(i)[-3000:]}")
