"""Schemathesis fuzzes the whole OpenAPI surface of a real node: no 5xx.

The hostile requests and records (4xx problem+json with a stable code, nothing invalid in
a block) run in-process: tests/unit/test_api_inprocess.py."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path_factory.mktemp("hostile"), nodes=1)
    config_path = c.dir / "node0" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(max_body_bytes=200_000, max_batch=5)
    config_path.write_text(json.dumps(config))
    c.start_all()
    yield c
    c.stop_all()


def test_schemathesis_finds_no_server_error(node: Cluster) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{node.url(0)}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "50", "--seed", "20261128",
         "--exclude-path", "/v1/events", "--request-timeout", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "passed" in res.stdout and "generated" in res.stdout
