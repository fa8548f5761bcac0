"""`ledger audit` and `ledger verify` as a user runs them, on the SPEC v1.1 conformance
vectors (tests/vectors/v1.1, made by an independent implementation): real processes, a store
on disk, blocks served over HTTP. The valid chain — its validator set replaced twice — audits,
naming the configuration versions followed; each faulty chain fails at its manifest's
``first_bad_height`` with ``height N:``; receipts verify through their ``config_proof``."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.blocks import Block
from ledger.errors import LedgerError
from ledger.store import SqliteStore
from tests.unit.test_vectors_v11 import CHAINS, MANIFEST, VECTORS, blocks, genesis

ROOT = Path(__file__).resolve().parents[2]
GENESIS = VECTORS / MANIFEST["genesis"]
FAULTY = sorted(n for n, c in CHAINS.items() if not c["valid"])

pytestmark = pytest.mark.slow


def ledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env=dict(os.environ))


def _last_line(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert lines, res
    return lines[-1]


# -- blocks served over HTTP ---------------------------------------------------------------

def _handler(chain: list[bytes]) -> type[http.server.BaseHTTPRequestHandler]:
    g = genesis()

    class Serve(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/v1/status":
                body = {"chain": g.chain_id, "height": len(chain),
                        "genesis_hash": g.hash.hex()}
                self._send(200, json.dumps(body).encode(), "application/json")
                return
            match = re.fullmatch(r"/v1/blocks/(\d+)", self.path)
            height = int(match.group(1)) if match else 0
            if 1 <= height <= len(chain):
                self._send(200, chain[height - 1], "application/msgpack")
                return
            self._send(404, json.dumps({"code": "not_found", "title": "no such block",
                                        "status": 404}).encode(),
                       "application/problem+json")

        def log_message(self, *args: object) -> None:
            pass

    return Serve


@contextlib.contextmanager
def _serving(chain: list[bytes]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(chain))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_audit_over_http_follows_both_changes_of_the_valid_chain() -> None:
    with _serving(blocks("valid")) as url:
        res = ledger("audit", "--node", url, "--genesis", str(GENESIS), "-q",
                     "--min-height", "6", "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert "6 blocks" in res.stdout
    assert "3 configuration versions followed (from heights 1, 3, 5)" in res.stdout


@pytest.mark.parametrize("name", FAULTY)
def test_audit_over_http_names_each_faulty_chains_first_bad_height(name: str) -> None:
    bad = CHAINS[name]["first_bad_height"]
    with _serving(blocks(name)) as url:
        res = ledger("audit", "--node", url, "--genesis", str(GENESIS), "-q", "--workers", "1")
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert _last_line(res).startswith(f"height {bad}: "), res.stderr


# -- blocks in a store on disk -------------------------------------------------------------

def _store(tmp_path: Path, name: str) -> tuple[Path, int]:
    """The chain written to a store, as far as the store's own checks let it (the store
    checks links and uniqueness, not certificates or authorisation); how many blocks."""
    path = tmp_path / f"{name}.db"
    written = 0
    with SqliteStore(path, genesis_hash=genesis().hash) as store:
        for data in blocks(name):
            try:
                store.append(Block.from_wire(data))
            except LedgerError:
                break
            written += 1
    return path, written


def test_audit_of_a_store_follows_both_changes_and_names_first_bad_heights(
        tmp_path: Path) -> None:
    path, n = _store(tmp_path, "valid")
    assert n == 6
    res = ledger("audit", "--db", str(path), "--genesis", str(GENESIS), "-q",
                 "--checkpoint", f"6:{Block.from_wire(blocks('valid')[5]).hash.hex()}")
    assert res.returncode == 0, res.stderr
    assert "3 configuration versions followed (from heights 1, 3, 5)" in res.stdout
    checked = 0
    for name in ("old-set-cert", "approvals-one-org", "missing-join", "stale-prev",
                 "reserved-type-in-policy"):
        bad = CHAINS[name]["first_bad_height"]
        path, n = _store(tmp_path, name)
        assert n >= bad, name  # the store holds the bad block
        res = ledger("audit", "--db", str(path), "--genesis", str(GENESIS), "-q")
        assert res.returncode == 1, (name, res.stdout, res.stderr)
        assert _last_line(res).startswith(f"height {bad}: "), (name, res.stderr)
        checked += 1
    assert checked == 5


# -- receipts ------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", MANIFEST["receipts"], ids=lambda e: e["file"])
def test_verify_each_receipt_vector(entry: dict[str, Any]) -> None:
    path = VECTORS / entry["file"]
    doc = json.loads(path.read_text())
    res = ledger("verify", str(path), "--genesis", str(GENESIS))
    assert "Traceback" not in res.stderr
    if entry["valid"]:
        assert res.returncode == 0, res.stderr
        assert f"is at height {doc['height']}" in res.stdout
        changes = len(doc["config_proof"])
        if changes:
            assert f"to version {changes}" in res.stdout, res.stdout
    else:
        assert res.returncode == 1, (res.stdout, res.stderr)
        line = res.stderr.strip()
        assert len(line.splitlines()) == 1 and line.startswith("invalid: "), line
        assert "validators_hash" in line



def test_node_check_verifies_the_tip_under_the_set_in_force(tmp_path: Path) -> None:
    # `ledger node check` on a store of the valid chain: its tip (height 6) is certified by
    # the set of configuration version 2, not genesis's.
    path, n = _store(tmp_path, "valid")
    assert n == 6
    node_dir = tmp_path / "node0"
    node_dir.mkdir()
    (node_dir / "config.json").write_text(json.dumps({
        "index": 0, "api": "127.0.0.1:1", "p2p": "127.0.0.1:2",
        "genesis": str(GENESIS), "store": str(path)}))
    res = ledger("node", "check", str(node_dir))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok:") and "16 records" in res.stdout
    assert "3 configuration versions followed" in res.stdout
