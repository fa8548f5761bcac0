"""docker-compose.yml is valid and wires 4 nodes to a `ledger cluster init` folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from node.cluster import init_cluster

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_defines_four_healthy_nodes(tmp_path: Path) -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose (Debian package) is required; .ci/run installs it"
    init_cluster(tmp_path / "cluster", 4)
    res = subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env={**os.environ, "LEDGER_CLUSTER_DIR": str(tmp_path / "cluster")})
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(res.stdout)
    assert sorted(doc["services"]) == [f"node{i}" for i in range(4)]
    for i in range(4):
        svc = doc["services"][f"node{i}"]
        assert svc["command"] == ["node", "run", f"/cluster/node{i}"]
        ports = {(int(p["published"]), int(p["target"])) if isinstance(p, dict)
                 else tuple(map(int, str(p).split(":"))) for p in svc["ports"]}
        assert ports == {(8000 + i, 8000 + i)}
        assert "healthz" in " ".join(svc["healthcheck"]["test"])
        volumes = [v["source"] if isinstance(v, dict) else v.split(":")[0]
                   for v in svc["volumes"]]
        assert str(tmp_path / "cluster") in volumes and f"node{i}-data" in " ".join(
            str(v) for v in volumes)
        assert svc["environment"]["LEDGER_STORE"] == "/data/chain.db"
    assert set(doc["volumes"]) == {f"node{i}-data" for i in range(4)}
