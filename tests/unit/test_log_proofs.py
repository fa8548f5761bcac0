"""Log proofs and checkpoints (SPEC sections 3, 7, 11): ``GET /v1/log/inclusion``,
``/v1/log/consistency`` and ``/v1/log/checkpoint`` through the real app (``InProcessApi``),
checked against the RFC 9162 reference proofs of ``ledger.merkle`` (itself checked against
the RFC 6962/9162 vectors in test_merkle.py) for every pair of sizes on a small chain; bad
parameters refused with ``invalid_parameter`` naming the bound; the SDK's verifier catching a
node that serves a wrong proof or checkpoint; checkpoints verified across configuration
changes; and the store reads a proof costs growing as log n."""

from __future__ import annotations

import base64
import contextlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger import merkle
from ledger.checkpoint import (
    VerifiedCheckpoint,
    checkpoint_json,
    log_consistency,
    log_inclusion,
    record_log_index,
    stored_checkpoint,
    verify_checkpoint,
    verify_log_consistency,
    verify_log_inclusion,
)
from ledger.errors import CorruptStoreError, LogProofError
from ledger.receipts import config_steps, verify_receipt
from ledger.store.base import block_change
from ledger.store.sqlite import SqliteStore
from node.client import AsyncLedgerClient, LedgerClient, NodeError
from tests.factory import ChainBuilder, make_fixture
from tests.inprocess import BASE, InProcessApi

BATCHES = [1, 2, 3, 1, 5, 8, 1, 13, 4]  # block sizes: 38 records over 9 heights


@pytest.fixture(scope="module")
def chain() -> tuple[InProcessApi, list[bytes]]:
    """An in-process node with the blocks of BATCHES, and the log's leaf hashes (built
    without a loop: the module's tests each run their own)."""
    api = InProcessApi()
    service = api.service
    for n in BATCHES:
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)
    leaves = [merkle.leaf_hash(r.envelope)
              for h in range(1, api.store.height + 1)
              for r in (api.store.block(h) or pytest.fail("missing block")).records]
    assert len(leaves) == sum(BATCHES) == api.store.log.size
    return api, leaves


@contextlib.asynccontextmanager
async def client(api: InProcessApi) -> AsyncIterator[AsyncLedgerClient]:
    """The SDK's async client over the in-process app."""
    async with api.client() as http:
        yield AsyncLedgerClient(BASE, http=http)


@pytest.mark.asyncio
async def test_every_inclusion_proof_matches_the_reference(
        chain: tuple[InProcessApi, list[bytes]]) -> None:
    api, leaves = chain
    async with client(api) as c:
        for size in range(1, len(leaves) + 1):
            root = merkle.root_from_leaf_hashes(leaves[:size])
            for index in range(size):
                doc = await c.log_inclusion(index, size)
                assert (doc["index"], doc["size"]) == (index, size)
                proof = [bytes.fromhex(h) for h in doc["proof"]]
                assert proof == merkle.inclusion_proof(leaves[:size], index)
                merkle.verify_inclusion(index, size, leaves[index], proof, root)


@pytest.mark.asyncio
async def test_every_consistency_proof_matches_the_reference(
        chain: tuple[InProcessApi, list[bytes]]) -> None:
    api, leaves = chain
    async with client(api) as c:
        for second in range(1, len(leaves) + 1):
            new_root = merkle.root_from_leaf_hashes(leaves[:second])
            for first in range(1, second + 1):
                doc = await c.log_consistency(first, second)
                assert (doc["first"], doc["second"]) == (first, second)
                proof = [bytes.fromhex(h) for h in doc["proof"]]
                assert proof == merkle.consistency_proof(leaves[:second], first)
                merkle.verify_consistency(first, second,
                                          merkle.root_from_leaf_hashes(leaves[:first]),
                                          new_root, proof)


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "bound"), [
    ("/v1/log/inclusion?index=0&size=39", "at most the log size at the tip (38)"),
    ("/v1/log/inclusion?index=5&size=5", "`index` must be at most `size` - 1 (4)"),
    ("/v1/log/inclusion?index=0&size=0", "`size` must be at least 1"),
    ("/v1/log/inclusion?index=-1&size=5", "non-negative integer"),
    ("/v1/log/inclusion?index=1.0&size=5", "non-negative integer"),
    ("/v1/log/inclusion?index=%C2%B2&size=5", "non-negative integer"),  # "²"
    ("/v1/log/inclusion?index=99999999999999999999&size=5", "non-negative integer"),
    ("/v1/log/inclusion?size=5", "index"),
    ("/v1/log/consistency?first=6&second=5", "`first` must be at most `second` (5)"),
    ("/v1/log/consistency?first=0&second=5", "`first` must be at least 1"),
    ("/v1/log/consistency?first=1&second=39", "at most the log size at the tip (38)"),
    ("/v1/log/consistency?first=a&second=5", "non-negative integer"),
    ("/v1/log/checkpoint?height=0", "`height` must be at least 1"),
    ("/v1/log/checkpoint?height=10", "`height` must be at most the tip (9)"),
    ("/v1/log/checkpoint?height=+1", "non-negative integer"),
])
async def test_out_of_range_parameters_are_400_naming_the_bound(
        chain: tuple[InProcessApi, list[bytes]], path: str, bound: str) -> None:
    api, _ = chain
    async with api.client() as http:
        resp = await http.get(path)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "invalid_parameter"
    assert bound in resp.json()["detail"]


@pytest.mark.asyncio
async def test_an_empty_chain_has_no_checkpoint_and_no_log() -> None:
    api = InProcessApi()
    async with api.client() as http:
        assert (await http.get("/v1/log/checkpoint")).json()["code"] == "not_found"
        resp = await http.get("/v1/log/inclusion?index=0&size=1")
        assert resp.status_code == 400 and "(0)" in resp.json()["detail"]


@pytest.mark.asyncio
async def test_checkpoints_verify_and_every_record_and_height_is_proven(
        chain: tuple[InProcessApi, list[bytes]]) -> None:
    api, leaves = chain
    genesis = api.fx.genesis
    async with client(api) as c:
        tip = await c.verified_checkpoint(genesis)
        assert (tip.height, tip.log_size) == (len(BATCHES), len(leaves))
        assert tip.log_root == merkle.root_from_leaf_hashes(leaves)
        assert tip.block_hash == api.store.tip_hash()
        assert (await c.checkpoint())["witnesses"] == []
        for index, leaf in enumerate(leaves):
            await c.verify_inclusion(tip, index, leaf)
        # a record's log index, from its verified receipt
        receipt = verify_receipt(await c.receipt(api.store.block(8).records[3].id.hex()),
                                 genesis)
        seq = record_log_index(receipt.header, receipt.index)
        assert leaves[seq] == merkle.leaf_hash(receipt.record.envelope)
        points = [await c.verified_checkpoint(genesis, h) for h in range(1, tip.height + 1)]
        for i, old in enumerate(points):
            for new in points[i:]:
                await c.verify_consistency(old, new)
        with pytest.raises(LogProofError, match="shorter"):
            await c.verify_consistency(points[-1], points[0])
        # another leaf at the index, or the right leaf at another index, is not proven
        with pytest.raises(LogProofError):
            await c.verify_inclusion(tip, 3, leaves[4])
        with pytest.raises(LogProofError):
            await c.verify_inclusion(tip, 4, leaves[3])


def _flip(hex_hash: str) -> str:
    raw = bytearray(bytes.fromhex(hex_hash))
    raw[0] ^= 1
    return raw.hex()


@pytest.mark.asyncio
async def test_a_node_serving_a_wrong_proof_is_caught(
        chain: tuple[InProcessApi, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    api, leaves = chain
    async with client(api) as c:
        tip = await c.verified_checkpoint(api.fx.genesis)
        old = await c.verified_checkpoint(api.fx.genesis, 4)
        good = await c.log_inclusion(17, tip.log_size)
        # every single changed hash, a dropped one and an extra one are caught
        for i in range(len(good["proof"])):
            bad = {**good, "proof": [*good["proof"]]}
            bad["proof"][i] = _flip(bad["proof"][i])
            with pytest.raises(LogProofError):
                verify_log_inclusion(tip, 17, leaves[17], bad)
        for proof in (good["proof"][:-1], [*good["proof"], good["proof"][0]], ["zz"]):
            with pytest.raises(LogProofError):
                verify_log_inclusion(tip, 17, leaves[17], {**good, "proof": proof})
        with pytest.raises(LogProofError, match="answer is for"):
            verify_log_inclusion(tip, 17, leaves[17], {**good, "size": 5})
        cons = await c.log_consistency(old.log_size, tip.log_size)
        for i in range(len(cons["proof"])):
            bad = {**cons, "proof": [*cons["proof"]]}
            bad["proof"][i] = _flip(bad["proof"][i])
            with pytest.raises(LogProofError):
                verify_log_consistency(old, tip, bad)

        # A node whose stored log nodes lie: the SDK's verifying calls raise LogProofError.
        real = api.store.log_nodes

        def lying(ids: Any) -> dict[merkle.NodeId, bytes]:
            out = dict(real(ids))
            first = next(iter(out))
            out[first] = bytes(32)
            return out

        monkeypatch.setattr(api.store, "log_nodes", lying)
        with pytest.raises(LogProofError):
            await c.verify_inclusion(tip, 17, leaves[17])
        with pytest.raises(LogProofError):
            await c.verify_consistency(old, tip)


@pytest.mark.asyncio
async def test_a_forged_checkpoint_is_caught(chain: tuple[InProcessApi, list[bytes]]) -> None:
    api, _ = chain
    genesis = api.fx.genesis
    async with client(api) as c:
        doc = await c.checkpoint(5)
    steps: list[Any] = []
    assert verify_checkpoint(doc, steps, genesis, 5).height == 5
    sigs = doc["cert"]["signatures"]
    cases = {
        "height": {**doc, "height": 6},
        "quorum": {**doc, "cert": {**doc["cert"], "signatures": sigs[:2]}},
        "sig": {**doc, "cert": {**doc["cert"], "signatures": [
            {**sigs[0], "sig": base64.b64encode(bytes(64)).decode()}, *sigs[1:]]}},
        "header": {**doc, "header": stored_checkpoint(api.store.header_cert(4))["header"]},
        "witnesses": {**doc, "witnesses": None},
    }
    for name, bad in cases.items():
        with pytest.raises(LogProofError):
            verify_checkpoint(bad, steps, genesis)
        assert name
    with pytest.raises(LogProofError, match="asked for height 4"):
        verify_checkpoint(doc, steps, genesis, 4)
    other = make_fixture(chain="other")
    with pytest.raises(LogProofError):
        verify_checkpoint(doc, steps, other.genesis)


def test_checkpoints_verify_across_validator_set_changes(tmp_path: Path) -> None:
    """A checkpoint after a change of validators verifies with ``GET /v1/config/proof``'s
    steps, and not without them (its certificate is by the new set)."""
    from tests.unit.test_config_chain import FX as GOVERNED
    from tests.unit.test_config_chain import build

    store, b = build(tmp_path)
    changes = [(c.height, c.index) for blk in b.blocks if (c := block_change(blk)) is not None]
    assert [h for h, _ in changes] == [2, 4]
    points: list[VerifiedCheckpoint] = []
    for height in range(1, store.height + 1):
        doc = stored_checkpoint(store.header_cert(height))
        assert doc is not None
        point = verify_checkpoint(doc, config_steps(store, changes, height), GOVERNED.genesis)
        assert point.config.version == sum(1 for h, _ in changes if h < height)
        points.append(point)
        if height >= 3:
            with pytest.raises(LogProofError, match="validators_hash"):
                verify_checkpoint(doc, [], GOVERNED.genesis)
    for old in points:
        for new in points:
            if old.log_size <= new.log_size:
                doc = log_consistency(store.log_nodes, old.log_size, new.log_size)
                verify_log_consistency(old, new, doc if old.log_size else None)
    store.close()


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteStore]:
    """A SQLite store of 3,000 records in 60 blocks."""
    fx = make_fixture()
    store = SqliteStore(tmp_path_factory.mktemp("big") / "chain.db", genesis_hash=fx.genesis.hash)
    builder = ChainBuilder(fx, store)
    for _ in range(60):
        builder.add(50)
    yield store
    store.close()


def test_a_proof_costs_logarithmically_many_store_reads(big_store: SqliteStore) -> None:
    """Each proof reads O(log n) rows: counted as the SQL statements the store's reader
    runs, for random pairs on a log of 3,000 (never more than 2 log2 n + 2)."""
    store = big_store
    n = store.log.size
    assert n == 3000
    store.log_nodes([(1, 0)])  # opens this thread's reader connection
    reader = store._local.db
    statements: list[str] = []
    reader.set_trace_callback(statements.append)
    rng = random.Random(14)
    budget = 2 * n.bit_length() + 2
    worst = 0
    try:
        for _ in range(300):
            m = rng.randint(1, n)
            statements.clear()
            doc = log_inclusion(store.log_nodes, rng.randrange(m), m)
            worst = max(worst, len(statements))
            assert len(statements) <= budget, (doc["index"], m, len(statements))
            second = rng.randint(1, n)
            first = rng.randint(1, second)
            statements.clear()
            log_consistency(store.log_nodes, first, second)
            worst = max(worst, len(statements))
            assert len(statements) <= budget, (first, second, len(statements))
        statements.clear()  # a checkpoint is one row, none of the block's records
        doc = stored_checkpoint(store.header_cert(60))
        assert len(statements) == 1
    finally:
        reader.set_trace_callback(None)
    assert 0 < worst <= budget
    block = store.block(60)
    assert doc == checkpoint_json(block.header, block.cert) if block else False
    assert stored_checkpoint(store.header_cert(61)) is None
    header, _ = store.header_cert(60) or (b"", b"")
    _, other_cert = store.header_cert(59) or (b"", b"")
    with pytest.raises(CorruptStoreError, match="height 60: the stored certificate"):
        stored_checkpoint((header, other_cert))
    # and the proofs are right: against the checkpoint at the tip
    leaves = [merkle.leaf_hash(r[-1]) for r in store.record_rows(0, n)]
    root = merkle.root_from_leaf_hashes(leaves)
    assert root == store.log.root()
    for index in (0, 1, 1023, 1024, 2047, 2999):
        proof = [bytes.fromhex(h) for h in log_inclusion(store.log_nodes, index, n)["proof"]]
        merkle.verify_inclusion(index, n, leaves[index], proof, root)


# -- the CLI, as a subprocess against the app served by uvicorn on 127.0.0.1 ------------------

@contextlib.contextmanager
def served(api: InProcessApi) -> Iterator[str]:
    """The app on a free 127.0.0.1 port in a thread; stopped on exit, even on failure."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def ledger(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node.cli", *argv], capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.slow
def test_cli_log_commands_verify_and_catch_a_lying_node(
        chain: tuple[InProcessApi, list[bytes]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    api, _ = chain
    genesis = str(api.fx.write_genesis(tmp_path))
    record = (api.store.block(6) or pytest.fail("no block")).records[2].id.hex()
    with served(api) as url:
        node = ("--node", url, "--genesis", genesis)
        out = ledger("log", "checkpoint", *node)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["height"] == len(BATCHES)
        chain_id = api.fx.genesis.chain_id
        assert out.stderr.startswith(f"valid: checkpoint of chain {chain_id!r} at height "
                                     f"{len(BATCHES)} (log of 38 records")
        out = ledger("log", "checkpoint", *node, "--height", "3")
        assert out.returncode == 0 and json.loads(out.stdout)["height"] == 3, out.stderr
        out = ledger("log", "prove", *node, "--record", record)
        assert out.returncode == 0, out.stderr
        assert f"record {record} (height 6, index 2) is log leaf 14 of" in out.stdout
        out = ledger("log", "consistency", *node, "--from-height", "2")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("valid: the log at height 9 (log of 38 records")
        out = ledger("log", "consistency", *node, "--from-height", "2", "--to-height", "5")
        assert out.returncode == 0 and "height 5 (log of 12 records" in out.stdout, out.stderr

        (tmp_path / "other").mkdir()
        other = make_fixture(chain="other").write_genesis(tmp_path / "other")
        out = ledger("log", "checkpoint", "--node", url, "--genesis", str(other))
        assert out.returncode == 1 and out.stderr.startswith("invalid: "), out.stderr

        # a node whose stored log is not the one its validators signed
        real = api.store.log_nodes
        monkeypatch.setattr(api.store, "log_nodes", lambda ids: {
            k: bytes(32) if k == (0, 14) else v for k, v in real(ids).items()})
        out = ledger("log", "consistency", *node, "--from-height", "2")
        assert out.returncode == 0, out.stderr  # leaf 14 is not in this proof
        monkeypatch.setattr(api.store, "log_nodes", lambda ids: {
            k: bytes(32) for k in real(ids)})
        for argv in (("prove", *node, "--record", record),
                     ("consistency", *node, "--from-height", "2")):
            out = ledger("log", *argv)
            assert out.returncode == 1, (argv, out.stdout, out.stderr)
            assert out.stderr.startswith("invalid: ") and out.stderr.count("\n") == 1
        out = ledger("log", "consistency", *node, "--from-height", "99")
        assert out.returncode == 2 and "invalid_parameter" in out.stderr, out.stderr


def test_served_proofs_equal_the_rfc_9162_vectors() -> None:
    """The serving functions, over the sample tree's perfect-subtree hashes as a store keeps
    them, answer exactly the published proofs (tests/vectors/merkle_rfc6962.json)."""
    vectors = json.loads((Path(__file__).parent.parent / "vectors" /
                          "merkle_rfc6962.json").read_text())
    nodes = {(level, i): bytes.fromhex(h)
             for level, row in enumerate(vectors["nodes"]) for i, h in enumerate(row)}

    def stored(ids: Any) -> dict[merkle.NodeId, bytes]:
        return {i: nodes[i] for i in ids if i in nodes}

    for case in vectors["inclusion"]:
        doc = log_inclusion(stored, case["index"], case["size"])
        assert doc == {"index": case["index"], "size": case["size"], "proof": case["proof"]}
    checked = 0
    for case in vectors["consistency"]:
        if case["old_size"] == 0:
            continue  # the API refuses first = 0: an empty log needs no proof
        doc = log_consistency(stored, case["old_size"], case["new_size"])
        assert doc["proof"] == case["proof"]
        checked += 1
    assert checked >= 5 and len(vectors["inclusion"]) >= 5


def test_the_sync_client_verifies_and_catches_the_same(
        chain: tuple[InProcessApi, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    api, leaves = chain
    with api.sync_client() as http:
        c = LedgerClient(BASE, http=http)
        tip = c.verified_checkpoint(api.fx.genesis)
        old = c.verified_checkpoint(api.fx.genesis, 3)
        assert c.checkpoint(3) == old.doc
        assert c.log_inclusion(5, 9)["proof"] == [
            h.hex() for h in merkle.inclusion_proof(leaves[:9], 5)]
        assert c.log_consistency(3, 9)["proof"] == [
            h.hex() for h in merkle.consistency_proof(leaves[:9], 3)]
        c.verify_inclusion(tip, 30, leaves[30])
        c.verify_consistency(old, tip)
        real = api.store.log_nodes
        monkeypatch.setattr(api.store, "log_nodes",
                            lambda ids: {k: v[::-1] for k, v in real(ids).items()})
        with pytest.raises(LogProofError):
            c.verify_inclusion(tip, 30, leaves[30])
        with pytest.raises(LogProofError):
            c.verify_consistency(old, tip)
        with pytest.raises(NodeError) as refused:
            c.log_inclusion(38, 38)
        assert (refused.value.status, refused.value.problem_code) == (400, "invalid_parameter")
