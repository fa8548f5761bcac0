"""The examples, run as a user runs them: the plant gateway against a real 4-node cluster, the
live auditor following it, and the auditor stopping at a bad block of an independent chain."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.crypto import PrivateKey, read_key_file, write_key_file
from tests.independent import writer
from tests.independent.server import serve_chain
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
OK_LINE = re.compile(r"^height (\d+): ok ", re.M)


def example(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes],
                  timeout: float = 60) -> str:
    """The content of ``path`` once it contains ``text`` (written by the running ``proc``)."""
    deadline = time.monotonic() + timeout
    while text not in (content := path.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, content
        time.sleep(0.1)
    return content


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path_factory.mktemp("examples"))
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def test_gateway_commits_records_while_the_auditor_follows(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    genesis = str(cluster.dir / "genesis.json")
    identity = cluster.dir / "clients" / "demo.pem"
    out = tmp_path / "auditor.out"
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "auditor.py"), "--node", cluster.url(1),
             "--genesis", genesis], cwd=ROOT, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_text(out, "caught up at height 0; following new blocks", follower)
        gateway = example("plant_gateway.py", "--node", cluster.url(0), "--identity",
                          str(identity), "--count", "300", "--batch", "25", "--rate", "400",
                          "--seed", "7")
        assert gateway.returncode == 0, gateway.stdout + gateway.stderr
        assert "committed 300" in gateway.stdout, gateway.stdout

        # Every record on the chain is one of the gateway's, as the API reports it (node 2
        # may be a block behind node 0, which acknowledged the commits: wait for it).
        tip = cluster.height(0)
        cluster.wait_height(2, tip)
        records = [r for h in range(1, tip + 1)
                   for r in httpx.get(f"{cluster.url(2)}/v1/blocks/{h}").json()["records"]]
        assert len(records) == 300
        assert {r["signer"] for r in records} == {read_key_file(identity).public.hex()}
        assert {r["type"] for r in records} <= {"sensor.reading", "quality.certificate"}
        readings = [r for r in records if r["type"] == "sensor.reading"]
        assert all(r["subject"].startswith("plant-7/line-") for r in records)
        assert all(isinstance(r["payload"]["value"], float) for r in readings)

        # The follower verified each block as it was announced, in order, and keeps going.
        text = wait_for_text(out, f"height {tip}: ok", follower)
        assert [int(h) for h in OK_LINE.findall(text)] == list(range(1, tip + 1)), text
    finally:
        follower.send_signal(signal.SIGTERM)
        follower.wait(timeout=20)
    assert follower.returncode == 130, out.read_text()

    # A fresh auditor catches up from height 1 (no events needed) and stops at --until.
    late = example("auditor.py", "--node", cluster.url(3), "--genesis", genesis,
                   "--until", str(tip))
    assert late.returncode == 0, late.stdout + late.stderr
    assert [int(h) for h in OK_LINE.findall(late.stdout)] == list(range(1, tip + 1))


@pytest.mark.parametrize("fault", writer.FAULTS)
def test_auditor_stops_at_the_first_bad_block(fault: str, tmp_path: Path) -> None:
    genesis_bytes, wires = writer.build_chain(fault=fault)
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(genesis_bytes)
    with serve_chain(wires) as url:
        proc = example("auditor.py", "--node", url, "--genesis", str(genesis))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert [int(h) for h in OK_LINE.findall(proc.stdout)] == [1, 2]
    assert proc.stderr.strip().splitlines()[-1].startswith("height 3: "), proc.stderr


def test_examples_fail_in_one_line_when_they_cannot_run(tmp_path: Path) -> None:
    (tmp_path / "genesis.json").write_bytes(writer.build_chain()[0])
    write_key_file(tmp_path / "key.pem", PrivateKey.generate())
    with serve_chain([]) as url:
        dead = url  # the server stops when the block ends: nothing listens there any more
    runs = {
        "missing key": example("plant_gateway.py", "--identity", str(tmp_path / "no.pem")),
        "unreachable node": example("plant_gateway.py", "--node", dead, "--identity",
                                    str(tmp_path / "key.pem")),
        "auditor, unreachable node": example("auditor.py", "--node", dead, "--genesis",
                                             str(tmp_path / "genesis.json")),
    }
    for what, proc in runs.items():
        assert proc.returncode == 2, (what, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(("plant_gateway: ", "auditor: ")), (
            what, proc.stderr)
