"""The `ledger` command as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.crypto import read_key_file
from ledger.receipts import build_receipt, dumps_receipt
from ledger.store import SqliteStore
from tests.factory import ChainBuilder, make_fixture

ROOT = Path(__file__).resolve().parents[2]
FX = make_fixture()


def ledger(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash) as store:
        b = ChainBuilder(FX, store)
        for i in range(12):
            b.add(i % 5)
    return path


def test_keygen_writes_a_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    res = ledger("keygen", str(out))
    assert res.returncode == 0, res.stderr
    pub = res.stdout.strip()
    assert len(pub) == 64 and read_key_file(out).public.hex() == pub
    assert out.stat().st_mode & 0o777 == 0o600
    again = ledger("keygen", str(out))
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr and "Traceback" not in again.stderr
    assert read_key_file(out).public.hex() == pub


def test_keygen_with_passphrase(tmp_path: Path) -> None:
    out = tmp_path / "enc.pem"
    res = ledger("keygen", str(out), "--passphrase-env", "PP", env={"PP": "s3cret"})
    assert res.returncode == 0, res.stderr
    assert out.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert read_key_file(out, b"s3cret").public.hex() == res.stdout.strip()


def test_audit_db_passes(db: Path, tmp_path: Path) -> None:
    genesis = FX.write_genesis(tmp_path)
    res = ledger("audit", "--db", str(db), "--genesis", str(genesis))
    assert res.returncode == 0, res.stderr
    assert "ok:" in res.stdout and "12 blocks, 21 records" in res.stdout


def test_audit_db_names_a_tampered_height(db: Path, tmp_path: Path) -> None:
    genesis = FX.write_genesis(tmp_path)
    copy = tmp_path / "tampered.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    conn = sqlite3.connect(copy)
    (envelope,) = conn.execute("SELECT envelope FROM records WHERE height = 9 AND idx = 1"
                               ).fetchone()
    forged = envelope[:-1] + bytes([envelope[-1] ^ 1])  # last byte of the signature
    conn.execute("UPDATE records SET envelope = ? WHERE height = 9 AND idx = 1", (forged,))
    conn.commit()
    conn.close()
    res = ledger("audit", "--db", str(copy), "--genesis", str(genesis), "-q")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("height 9: ")


def test_audit_demands_a_min_height_and_a_checkpoint(db: Path, tmp_path: Path) -> None:
    """A served chain that stops early audits clean up to where it stops: an auditor who
    knows more (a height reached, a block hash noted earlier) says so and is not fooled."""
    genesis = FX.write_genesis(tmp_path)
    with SqliteStore(db, readonly=True) as store:
        block = store.block(7)
        assert block is not None
        good = block.header.hash.hex()
    base = ("audit", "--db", str(db), "--genesis", str(genesis), "-q")
    res = ledger(*base, "--min-height", "12", "--checkpoint", f"7:{good}")
    assert res.returncode == 0, res.stderr
    res = ledger(*base, "--min-height", "13")
    assert res.returncode == 1
    assert res.stderr.strip().startswith("height 13: ") and "shorter than" in res.stderr
    res = ledger(*base, "--checkpoint", f"20:{good}")
    assert res.returncode == 1 and res.stderr.startswith("height 13: ")
    res = ledger(*base, "--checkpoint", f"7:{'00' * 32}")
    assert res.returncode == 1 and res.stderr.strip() == (
        f"height 7: block hash {good} is not the --checkpoint hash {'00' * 32} "
        "(another history)")
    res = ledger(*base, "--checkpoint", "7:XYZ")
    assert res.returncode == 2 and "HEIGHT:BLOCK_HASH" in res.stderr
    assert "Traceback" not in res.stderr


def test_audit_with_the_wrong_genesis_or_no_store_fails_in_one_line(db: Path,
                                                                     tmp_path: Path) -> None:
    other = make_fixture(chain="other").write_genesis(tmp_path)
    res = ledger("audit", "--db", str(db), "--genesis", str(other))
    assert res.returncode == 2 and "another genesis" in res.stderr
    res = ledger("audit", "--db", str(tmp_path / "none.db"), "--genesis", str(other))
    assert res.returncode == 2 and res.stderr.startswith("ledger: ")
    assert "no such store" in res.stderr
    assert not (tmp_path / "none.db").exists()
    res = ledger("audit", "--node", "http://127.0.0.1:9", "--genesis", str(other))
    assert res.returncode == 2 and res.stderr.startswith("ledger: ")
    assert "Traceback" not in res.stderr


def test_verify_receipt_cli(db: Path, tmp_path: Path) -> None:
    genesis = FX.write_genesis(tmp_path)
    with SqliteStore(db, readonly=True) as store:
        block = store.block(9)
        assert block is not None
        receipt = build_receipt(store, block.records[2].id)
    assert receipt is not None
    path = tmp_path / "r.json"
    path.write_text(dumps_receipt(receipt))
    res = ledger("verify", str(path), "--genesis", str(genesis))
    assert res.returncode == 0, res.stderr
    assert "valid: record" in res.stdout and "height 9" in res.stdout
    receipt["index"] = 0
    path.write_text(json.dumps(receipt))
    res = ledger("verify", str(path), "--genesis", str(genesis))
    assert res.returncode == 1 and res.stderr.startswith("invalid: ")


def test_help_explains_every_command() -> None:
    for cmd in ("keygen", "audit", "verify"):
        res = ledger(cmd, "--help")
        assert res.returncode == 0 and "usage: ledger " + cmd in res.stdout


@pytest.mark.parametrize("taken", ["api", "p2p"])
def test_cluster_up_with_a_port_taken_says_so_in_one_line(tmp_path: Path, taken: str) -> None:
    """A second `make run`: every port is checked before any node starts; exit 2, one line."""
    import socket

    from node.cluster import init_cluster
    from tests.integration.cluster_util import free_base_port

    base = free_base_port(2)
    init_cluster(tmp_path, 2, base_port=base)
    port = base + 1 if taken == "api" else base + 101
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        result = ledger("cluster", "up", str(tmp_path))
    what = "API" if taken == "api" else "peer"
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == (f"ledger: port {port} (node1 {what}) is in use: "
                             "is the cluster already running?\n")
    assert result.stdout == ""  # no node was started
    assert "Traceback" not in result.stderr
