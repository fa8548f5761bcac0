"""`ledger audit` when its source fails half-way: a download cut off in the middle of a block,
a node answering 500, a bundle truncated after its scan. The command must fail loudly — one
line, exit 2, no traceback, no hang — and never report the chain as audited."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.store import SqliteStore
from tests.factory import ChainBuilder, make_fixture

ROOT = Path(__file__).resolve().parents[2]
FX = make_fixture()
TIP = 12


def ledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ})


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    path = tmp_path_factory.mktemp("cut") / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        b = ChainBuilder(FX, store)
        for i in range(TIP):
            b.add(i % 4 + 1)
        return [bytes(store.block_bytes(h) or b"") for h in range(1, TIP + 1)]


@contextlib.contextmanager
def serving(blocks: list[bytes], cut_at: int, how: str) -> Iterator[str]:
    """A node-like API serving ``blocks``, failing at height ``cut_at`` (``how``: "close"
    the connection in the middle of the body, or answer "500")."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/v1/status":
                body = json.dumps({"chain": FX.genesis.chain_id, "height": TIP,
                                   "genesis_hash": FX.genesis.hash.hex()}).encode()
                return self._send(200, "application/json", body)
            height = int(self.path.rsplit("/", 1)[1])
            if height == cut_at and how == "500":
                return self._send(500, "application/problem+json",
                                  b'{"code": "internal", "detail": "disk error"}')
            data = blocks[height - 1]
            if height == cut_at:  # promise the whole block, send half, hang up
                self.send_response(200)
                self.send_header("Content-Type", "application/msgpack")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            return self._send(200, "application/msgpack", data)

        def _send(self, status: int, kind: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["close", "500"])
def test_a_download_that_fails_half_way_fails_the_audit_in_one_line(
        chain: list[bytes], tmp_path: Path, how: str) -> None:
    genesis = FX.write_genesis(tmp_path)
    with serving(chain, 9, how) as url:
        res = ledger("audit", "--node", url, "--genesis", str(genesis), "-q")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("ledger: ") and "/v1/blocks/9" in res.stderr, res.stderr
    assert "ok:" not in res.stdout


@pytest.mark.slow
def test_a_bundle_cut_after_its_scan_fails_the_audit(chain: list[bytes],
                                                     tmp_path: Path) -> None:
    genesis = FX.write_genesis(tmp_path)
    db = tmp_path / "chain.db"
    with SqliteStore(db, genesis_hash=FX.genesis.hash) as store:
        b = ChainBuilder(FX, store)
        for i in range(TIP):
            b.add(i % 4 + 1)
    bundle = tmp_path / "chain.bundle"
    assert ledger("export", "--db", str(db), "--genesis", str(genesis), "--out", str(bundle),
                  "-q").returncode == 0
    assert ledger("audit", "--file", str(bundle), "--genesis", str(genesis), "-q"
                  ).returncode == 0
    data = bundle.read_bytes()
    bundle.write_bytes(data[:len(data) * 2 // 3])
    res = ledger("audit", "--file", str(bundle), "--genesis", str(genesis), "-q")
    assert res.returncode in (1, 2), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "ok:" not in res.stdout
