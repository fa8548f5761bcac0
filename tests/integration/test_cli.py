"""The `ledger` command as a user runs it: real processes, real files."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ledger.crypto import read_key_file
from ledger.genesis import Genesis
from ledger.receipts import build_receipt, dumps_receipt
from ledger.store import SqliteStore
from node.cli import block1_genesis_mismatch
from tests.factory import ChainBuilder, Fixture, make_fixture

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
    assert res.returncode == 2 and "this chain was started from genesis" in res.stderr
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


def _other_genesis_db(tmp_path: Path, fx: Fixture, name: str) -> Path:
    """A chain of four blocks started from ``fx``'s genesis, in a store not bound to one."""
    path = tmp_path / name
    with SqliteStore(path) as store:
        b = ChainBuilder(fx, store)
        for i in range(4):
            b.add(i % 3 + 1)
    return path


def _same_validators_other_policies() -> Fixture:
    doc = json.loads(FX.genesis.raw)
    doc["policies"]["quality.check"] = ["writer"]
    return dataclasses.replace(FX, genesis=Genesis.from_bytes(json.dumps(doc).encode()))


def test_audit_of_a_chain_from_another_genesis_says_so(tmp_path: Path) -> None:
    """Same chain id, another genesis: not "tampered" (exit 1) but "not yours" (exit 2),
    whether the other genesis has other validators or the same ones with other policies."""
    ours = FX.write_genesis(tmp_path)
    for fx, name in ((make_fixture(validators=5), "other-validators.db"),
                     (_same_validators_other_policies(), "same-validators.db")):
        assert fx.genesis.chain_id == FX.genesis.chain_id and fx.genesis.hash != FX.genesis.hash
        path = _other_genesis_db(tmp_path, fx, name)
        res = ledger("audit", "--db", str(path), "--genesis", str(ours), "-q")
        assert res.returncode == 2, res.stderr
        assert res.stderr.strip() == (
            f"ledger: {path}: this chain was started from genesis {fx.genesis.hash.hex()}; "
            f"yours is {FX.genesis.hash.hex()}")


def test_a_tampered_block_1_is_still_reported_as_height_1(db: Path, tmp_path: Path) -> None:
    genesis = FX.write_genesis(tmp_path)
    copy = tmp_path / "tampered1.db"
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    conn = sqlite3.connect(copy)
    (header,) = conn.execute("SELECT header FROM blocks WHERE height = 1").fetchone()
    assert header.count(FX.genesis.hash) == 1
    forged = header.replace(FX.genesis.hash, bytes(32))  # another prev_hash, our validators
    conn.execute("UPDATE blocks SET header = ? WHERE height = 1", (forged,))
    conn.commit()
    conn.close()
    with SqliteStore(copy, readonly=True) as store:
        block = store.block(1)
    assert block is not None and block.header.prev_hash == bytes(32)
    assert block1_genesis_mismatch(block.to_wire(), FX.genesis) is None
    res = ledger("audit", "--db", str(copy), "--genesis", str(genesis), "-q")
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("height 1: ")


def test_verify_a_receipt_from_another_genesis_says_so(tmp_path: Path) -> None:
    ours = FX.write_genesis(tmp_path)
    cases = []
    for fx, name, height in ((make_fixture(validators=5), "v.db", 3),
                             (_same_validators_other_policies(), "p.db", 1)):
        path = _other_genesis_db(tmp_path, fx, name)
        with SqliteStore(path, readonly=True) as store:
            block = store.block(height)
            assert block is not None
            receipt = build_receipt(store, block.records[0].id)
        assert receipt is not None
        out = tmp_path / f"{name}.receipt.json"
        out.write_text(dumps_receipt(receipt))
        cases.append((fx, out, ledger("verify", str(out), "--genesis", str(ours))))
    (_, out5, res5), (fxp, outp, resp) = cases
    assert res5.returncode == 2 and "Traceback" not in res5.stderr
    assert res5.stderr.strip().startswith(f"ledger: {out5}: this chain was started from "
                                          "another genesis (its validator set hashes to ")
    assert res5.stderr.strip().endswith(f"; yours is {FX.genesis.hash.hex()}")
    assert resp.returncode == 2, resp.stderr
    assert resp.stderr.strip() == (
        f"ledger: {outp}: this chain was started from genesis {fxp.genesis.hash.hex()}; "
        f"yours is {FX.genesis.hash.hex()}")


# -- connection errors: one line with a hint -------------------------------------------

class _Answer502(http.server.BaseHTTPRequestHandler):
    def _html(self) -> None:
        body = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>\n"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _html

    def log_message(self, *args: object) -> None:
        pass


class _AnswerJson(_Answer502):
    def _html(self) -> None:
        body = b'{"chain": "test-chain", "height": 0}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _html


@contextlib.contextmanager
def _server(handler: type[http.server.BaseHTTPRequestHandler],
            tls: tuple[Path, Path] | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on exit: nothing listens there


def _submit(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    key = tmp_path / "k.pem"
    if not key.exists():
        assert ledger("keygen", str(key)).returncode == 0
    return ledger("submit", "--node", url, "--identity", str(key), "--type", "sensor.reading",
                  "--subject", "s", "--payload", "1", *extra)


def _one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res.stderr.strip()


def test_a_refused_connection_asks_whether_the_cluster_runs(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_refused_port()}"
    genesis = FX.write_genesis(tmp_path)
    hint = (f"ledger: cannot connect to {url}: is the cluster running? "
            "(make run / ledger cluster up)")
    assert _one_line(_submit(url, tmp_path)) == hint
    assert _one_line(_submit(url, tmp_path, "--chain", "test-chain")) == hint
    assert _one_line(ledger("audit", "--node", url, "--genesis", str(genesis), "-q")) == hint


def test_a_502_html_answer_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    genesis = FX.write_genesis(tmp_path)
    with _server(_Answer502) as port:
        url = f"http://127.0.0.1:{port}"
        for res in (_submit(url, tmp_path), _submit(url, tmp_path, "--chain", "test-chain"),
                    ledger("audit", "--node", url, "--genesis", str(genesis), "-q")):
            line = _one_line(res)
            assert "502" in line and "text/html" in line and "JSONDecodeError" not in line


def test_tls_mistakes_get_a_hint(tmp_path: Path) -> None:
    from node.tls import make_ca, make_node_cert

    ca, ca_key = make_ca(tmp_path / "tls", "t")
    make_node_cert(tmp_path / "tls", "node0", ca, ca_key)
    genesis = FX.write_genesis(tmp_path)
    tls = (tmp_path / "tls" / "tls.crt", tmp_path / "tls" / "tls.key")
    with _server(_AnswerJson, tls) as port:
        https = f"https://127.0.0.1:{port}"
        line = _one_line(ledger("audit", "--node", https, "--genesis", str(genesis), "-q"))
        assert "not trusted" in line and "--ca FILE" in line and "LEDGER_CA" in line
        line = _one_line(_submit(https, tmp_path))
        assert "--ca FILE" in line
        # with the CA it gets through (an empty chain: nothing to audit, block 1 missing)
        res = ledger("audit", "--node", https, "--genesis", str(genesis), "-q",
                     "--ca", str(tmp_path / "tls" / "ca.pem"))
        assert "not trusted" not in res.stderr and "Traceback" not in res.stderr
        line = _one_line(ledger("audit", "--node", f"http://127.0.0.1:{port}",
                                "--genesis", str(genesis), "-q"))
        assert f"try https://127.0.0.1:{port}" in line, line
    with _server(_AnswerJson) as port:
        line = _one_line(ledger("audit", "--node", f"https://127.0.0.1:{port}",
                                "--genesis", str(genesis), "-q"))
        assert f"try http://127.0.0.1:{port}" in line, line


# -- a real node: sign for curl, submit, audit against another genesis ---------------------

@pytest.mark.slow
def test_print_envelope_posted_as_json_is_accepted_by_a_real_node(tmp_path: Path) -> None:
    from node.cluster import DEMO_TYPES
    from tests.integration.cluster_util import Cluster

    cluster = Cluster.create(tmp_path / "c", nodes=1, types=DEMO_TYPES)  # as make run does
    try:
        cluster.start_all()
        url = cluster.url(0)
        demo = str(cluster.dir / "clients" / "demo.pem")
        sign = ("submit", "--identity", demo, "--type", "sensor.reading", "--subject",
                "plant-7/line-3/temp", "--payload", '{"c": 21.5}', "--print-envelope")
        res = ledger(*sign, "--node", url)  # the chain id asked from the node
        offline = ledger(*sign, "--chain", "demo", "--nonce", "7")  # no node at all
        assert res.returncode == 0 and offline.returncode == 0, res.stderr + offline.stderr
        lines = dict(line.split(" ", 1) for line in res.stdout.strip().splitlines())
        assert set(lines) == {"id", "envelope"} and len(lines["id"]) == 64
        resp = httpx.post(f"{url}/v1/records", params={"wait": "commit", "timeout": "20"},
                          json={"records": [{"envelope": lines["envelope"]}]}, timeout=30)
        assert resp.status_code == 202, resp.text
        (result,) = resp.json()["results"]
        assert result["status"] == "accepted" and result["id"] == lines["id"]
        assert result["height"] >= 1
        assert httpx.get(f"{url}/v1/records/{lines['id']}").json()["status"] == "committed"

        res = ledger("submit", "--node", url, "--identity", demo, "--type", "sensor.reading",
                     "--subject", "s", "--payload", "2", "--wait")
        assert res.returncode == 0 and " height " in res.stdout, res.stderr

        # make run's demo genesis names its types: a typo is refused, listing them
        why = ('record type "sensor.readings" is not allowed by this chain\'s genesis; allowed '
               "types: quality.certificate, quality.inspection, sensor.reading, "
               "shipment.dispatched, shipment.in-transit, shipment.received")
        typo = ("submit", "--identity", demo, "--type", "sensor.readings", "--subject", "s",
                "--payload", "3", "--node", url)
        res = ledger(*typo)
        assert (res.returncode, res.stdout) == (1, ""), res.stderr
        assert res.stderr == f"rejected: unauthorized: {why}\n"
        printed = ledger(*typo, "--print-envelope").stdout.strip().splitlines()
        signed = dict(line.split(" ", 1) for line in printed)
        resp = httpx.post(f"{url}/v1/records", timeout=30,
                          json={"records": [{"envelope": signed["envelope"]}]})
        assert resp.status_code == 202, resp.text
        assert resp.json()["results"] == [{"id": signed["id"], "status": "rejected",
                                           "error": "unauthorized", "detail": why}]

        other = make_fixture(chain="demo").write_genesis(tmp_path)  # same chain id
        theirs = hashlib.sha256((cluster.dir / "genesis.json").read_bytes()).hexdigest()
        res = ledger("audit", "--node", url, "--genesis", str(other), "-q")
        assert _one_line(res) == (f"ledger: {url}: this chain was started from genesis "
                                  f"{theirs}; yours is {Genesis.load(other).hash.hex()}")
    finally:
        cluster.stop_all()


def test_cluster_init_takes_organisations_and_policies_from_a_genesis_template(
        tmp_path: Path) -> None:
    example = ROOT / "examples" / "genesis.example.json"
    res = ledger("cluster", "init", str(tmp_path / "c"), "--nodes", "4", "--base-port", "21000",
                 "--genesis-template", str(example))
    assert res.returncode == 0, res.stderr
    made = Genesis.load(tmp_path / "c" / "genesis.json")
    template = json.loads(example.read_text())
    assert made.chain_id == template["chain_id"] and len(made.validators) == 4
    assert {k: sorted(v) for k, v in made.policies.items()} == {
        k: sorted(v) for k, v in template["policies"].items()}
    assert made.extra["consensus"] == template["consensus"]
    for org in template["organizations"]:
        for member in org["members"]:
            key = read_key_file(tmp_path / "c" / "clients" / f"{org['name']}.{member['name']}.pem")
            assert made.members[key.public].roles == frozenset(member["roles"])
    assert not (tmp_path / "c" / "clients" / "demo.pem").exists()
    assert "acme.plant-7-gateway.pem" in res.stdout


@pytest.mark.slow
def test_a_cluster_made_from_the_genesis_example_runs_its_policies(tmp_path: Path) -> None:
    from tests.integration.cluster_util import Cluster, free_base_port

    base = free_base_port(1)
    res = ledger("cluster", "init", str(tmp_path / "c"), "--nodes", "1", "--base-port", str(base),
                 "--genesis-template", str(ROOT / "examples" / "genesis.example.json"))
    assert res.returncode == 0, res.stderr
    cluster = Cluster(tmp_path / "c", 1, base)
    try:
        cluster.start_all()
        clients = tmp_path / "c" / "clients"

        def submit(member: str, type_: str) -> subprocess.CompletedProcess[str]:
            return ledger("submit", "--node", cluster.url(0), "--identity",
                          str(clients / f"{member}.pem"), "--type", type_,
                          "--subject", "plant-7/line-3/temp", "--payload", "1", "--wait",
                          "--timeout", "20")

        ok = submit("acme.plant-7-gateway", "sensor.reading")
        assert ok.returncode == 0 and " height " in ok.stdout, ok.stderr
        typo = submit("acme.plant-7-gateway", "sensor.readings")
        assert typo.returncode == 1 and "unauthorized" in typo.stderr, typo.stderr
        other_role = submit("acme.plant-7-gateway", "quality.certificate")
        assert other_role.returncode == 1, other_role.stderr
        assert submit("tuv.certifier", "quality.certificate").returncode == 0
    finally:
        cluster.stop_all()


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


def test_node_run_with_its_api_port_taken_never_claims_to_serve(tmp_path: Path) -> None:
    """`ledger node run` on a taken API port: uvicorn's bind error, a non-zero exit, and no
    "serving http://..." line before it (it used to log that before the bind failed)."""
    import socket

    from node.cluster import init_cluster
    from tests.integration.cluster_util import free_base_port

    base = free_base_port(1)
    init_cluster(tmp_path, 1, base_port=base)
    with socket.socket() as held:
        held.bind(("127.0.0.1", base))
        held.listen()
        result = ledger("node", "run", str(tmp_path / "node0"))
    assert result.returncode != 0, result.stdout + result.stderr
    assert "address already in use" in result.stderr
    assert "serving http" not in result.stdout + result.stderr
