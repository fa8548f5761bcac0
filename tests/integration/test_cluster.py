"""Four real node processes: submit, agree, audit, survive SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ledger.blocks import Block
from ledger.crypto import PrivateKey, read_key_file
from ledger.encoding import packb
from ledger.genesis import Genesis
from ledger.receipts import verify_receipt
from ledger.records import Record
from tests.integration.cluster_util import ROOT, Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster.create(tmp_path_factory.mktemp("cluster"))
    c.start_all()
    yield c
    c.stop_all()


def assert_identical_chains(cluster: Cluster, top: int) -> None:
    """Blocks below the tip are byte-identical on every node; the tip has the same hash
    (its certificate becomes canonical when the next block commits)."""
    for h in range(1, top + 1):
        blocks = {httpx.get(f"{cluster.url(i)}/v1/blocks/{h}",
                            headers={"Accept": "application/msgpack"}).content for i in range(4)}
        if h < top:
            assert len(blocks) == 1, f"nodes serve different bytes at height {h}"
        else:
            assert len({Block.from_wire(b).hash for b in blocks}) == 1, f"fork at height {h}"


def records(key: PrivateKey, chain: str, n: int, start_nonce: int) -> list[Record]:
    now = time.time_ns() // 1_000_000
    return [Record.create(key, chain=chain, type="sensor.reading", subject=f"plant-1/s{i % 7}",
                          payload={"v": i, "unit": "C"}, ts=now, nonce=start_nonce + i)
            for i in range(n)]


def post(url: str, recs: list[Record], wait: bool = True) -> httpx.Response:
    params = {"wait": "commit", "timeout": "60"} if wait else {}
    return httpx.post(f"{url}/v1/records", content=packb([r.envelope for r in recs]),
                      params=params, headers={"Content-Type": "application/msgpack"},
                      timeout=90)


def test_300_records_across_all_nodes_commit_everywhere(cluster: Cluster) -> None:
    genesis = Genesis.load(cluster.dir / "genesis.json")
    key = read_key_file(cluster.dir / "clients" / "demo.pem")
    recs = records(key, genesis.chain_id, 300, 1)
    batches = [recs[i:i + 10] for i in range(0, 300, 10)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda ib: post(cluster.url(ib[0] % 4), ib[1]),
                                  enumerate(batches)))
    heights = {}
    for resp in responses:
        assert resp.status_code == 202, resp.text
        for item in resp.json()["results"]:
            assert item["status"] == "accepted" and "height" in item, item
            heights[item["id"]] = item["height"]
    assert set(heights) == {r.id.hex() for r in recs}
    top = max(heights.values())
    for i in range(4):
        cluster.wait_height(i, top)
    # Every node serves byte-identical blocks, and every record is on every node's chain.
    assert_identical_chains(cluster, top)
    for rid, height in list(heights.items())[::37]:
        for i in range(4):
            doc = httpx.get(f"{cluster.url(i)}/v1/records/{rid}").json()
            assert doc["status"] == "committed" and doc["height"] == height
    # Receipts verify offline, against genesis alone.
    for rid in list(heights)[::50]:
        receipt = httpx.get(f"{cluster.url(2)}/v1/records/{rid}/receipt").json()
        assert verify_receipt(receipt, genesis).record.id.hex() == rid
    # The whole chain passes the audit, from another node.
    res = subprocess.run([sys.executable, "-m", "node.cli", "audit", "--node", cluster.url(1),
                          "--genesis", str(cluster.dir / "genesis.json"), "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_unauthorised_record_is_rejected_and_never_committed(cluster: Cluster) -> None:
    genesis = Genesis.load(cluster.dir / "genesis.json")
    stranger = PrivateKey.generate()
    bad = records(stranger, genesis.chain_id, 1, 1)[0]
    resp = post(cluster.url(0), [bad], wait=False)
    assert resp.status_code == 202
    item = resp.json()["results"][0]
    assert item["status"] == "rejected" and item["error"] == "unauthorized"
    good = records(read_key_file(cluster.dir / "clients" / "demo.pem"), genesis.chain_id, 1,
                   10_000)
    assert post(cluster.url(0), good).status_code == 202
    assert httpx.get(f"{cluster.url(3)}/v1/records/{bad.id.hex()}").status_code == 404


def test_sigkilled_node_restarts_catches_up_and_agrees(cluster: Cluster) -> None:
    genesis = Genesis.load(cluster.dir / "genesis.json")
    key = read_key_file(cluster.dir / "clients" / "demo.pem")
    cluster.kill(3)
    recs = records(key, genesis.chain_id, 40, 20_000)
    for i in range(4):
        assert post(cluster.url(i % 3), recs[i * 10:(i + 1) * 10]).status_code == 202
    top = cluster.height(0)
    cluster.start(3)
    cluster.wait_healthy(3)
    cluster.wait_height(3, top, timeout=60)
    more = records(key, genesis.chain_id, 10, 30_000)
    resp = post(cluster.url(3), more)
    assert resp.status_code == 202, resp.text
    final = max(item["height"] for item in resp.json()["results"])
    for i in range(4):
        cluster.wait_height(i, final)
    assert_identical_chains(cluster, final)


def test_submit_cli_waits_for_commit(cluster: Cluster) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "node.cli", "submit", "--node", cluster.url(1), "--identity",
         str(cluster.dir / "clients" / "demo.pem"), "--type", "quality.certificate",
         "--subject", "batch-42", "--payload", '{"grade": "A"}', "--wait"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rid, word, height = res.stdout.split()
    assert len(rid) == 64 and word == "height" and int(height) >= 1


def test_python_sdk_sync_and_async(cluster: Cluster) -> None:
    import asyncio

    from node.client import AsyncLedgerClient, LedgerClient, NodeError

    genesis = Genesis.load(cluster.dir / "genesis.json")
    key = read_key_file(cluster.dir / "clients" / "demo.pem")
    with LedgerClient(cluster.url(2), identity=key) as client:
        result = client.write(type="quality.certificate", subject="batch-7",
                              payload={"grade": "A", "raw": b"\x00\x01"}, wait=True)
        assert result["status"] == "accepted" and result["height"] >= 1
        rec = client.record(result["id"])
        assert rec["status"] == "committed" and rec["payload"]["grade"] == "A"
        assert rec["payload"]["raw"] == "AAE="  # bin payload values are base64 in JSON
        verify_receipt(client.receipt(result["id"]), genesis)
        assert client.block(result["height"])["height"] == result["height"]
        assert client.history("batch-7", order="desc", limit=1)["records"][0]["id"] == \
            result["id"]
        events = client.events(from_height=result["height"])
        first = next(events)
        assert first["height"] == result["height"]
        events.close()
        try:
            client.record("00" * 32)
        except NodeError as exc:
            assert exc.status == 404 and exc.problem_code == "not_found"
        else:
            raise AssertionError("expected a 404")

        sync_reads = (client.receipt(result["id"]), client.block_bytes(result["height"]),
                      client.genesis())
        assert client.block_bytes(client.status()["height"] + 1000) is None
        assert client.health()["status"] == "ok"
        assert client.genesis() == (cluster.dir / "genesis.json").read_bytes()

    async def run_async() -> dict[str, object]:
        async with AsyncLedgerClient(cluster.url(2)) as same_node:
            # the same reads from the same node through the async client: the same answers
            # (another node may hold another certificate for the block)
            assert (await same_node.receipt(result["id"]),
                    await same_node.block_bytes(result["height"]),
                    await same_node.genesis()) == sync_reads
            tip = (await same_node.status())["height"]
            assert await same_node.block_bytes(tip + 1000) is None
            assert (await same_node.health())["status"] == "ok"
        async with AsyncLedgerClient(cluster.url(3), identity=key) as client:
            res = await client.write(type="sensor.reading", subject="async/temp",
                                     payload=20.5, wait=True)
            stream = client.events(from_height=int(res["height"]))  # type: ignore[call-overload]
            event = await stream.__anext__()
            await stream.aclose()
            assert event["height"] == res["height"]
            newest = await client.history("async/temp", order="desc", limit=1)
            assert newest["records"][0]["id"] == res["id"]
            return await client.record(str(res["id"]))

    assert asyncio.run(run_async())["status"] == "committed"


def test_a_validator_restored_from_an_export_bundle_and_a_new_follower_join(
        cluster: Cluster, tmp_path: Path) -> None:
    """The round trip of docs/operations.md: export from a running node, audit the file,
    restore node3 (its store wiped) from it and start a fifth node (a follower) from it;
    both sync the rest from the cluster, node3 votes again, every chain is the same."""
    from tests.integration.cluster_util import free_base_port

    genesis_path = cluster.dir / "genesis.json"
    genesis = Genesis.load(genesis_path)
    key = read_key_file(cluster.dir / "clients" / "demo.pem")

    def ledger(*argv: str | Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli", *map(str, argv)], cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def commit(url: str, n: int, nonce: int) -> int:
        resp = post(url, records(key, genesis.chain_id, n, nonce))
        assert resp.status_code == 202, resp.text
        return max(int(item["height"]) for item in resp.json()["results"])

    for i in range(4):
        commit(cluster.url(i), 10, 40_000 + 10 * i)
    bundle = tmp_path / "chain.bundle"
    res = ledger("export", "--node", cluster.url(0), "--out", bundle, "-q")
    assert res.returncode == 0, res.stderr
    exported = int(res.stdout.split()[1])
    res = ledger("audit", "--file", bundle, "--genesis", genesis_path, "-q")
    assert res.returncode == 0, res.stderr

    base = free_base_port(1)
    follower = tmp_path / "node5"
    res = ledger("node", "init", follower, "--genesis", genesis_path, "--api",
                 f"127.0.0.1:{base}", "--p2p", f"127.0.0.1:{base + 100}", "--bundle", bundle,
                 "-q")
    assert res.returncode == 0, res.stderr
    assert f"ok: {exported} blocks written" in res.stdout, res.stdout

    node3 = cluster.dir / "node3"
    stopped: list[int] = []
    follower_proc = None
    try:
        cluster.kill(3, signal.SIGTERM)
        stopped.append(3)
        for path in node3.glob("chain.db*"):  # the store is lost; key and signing state stay
            path.unlink()
        top = commit(cluster.url(0), 10, 41_000)  # the cluster goes on without node3
        res = ledger("node", "restore", node3, "--bundle", bundle, "-q")
        assert res.returncode == 0, res.stderr
        assert f"height {exported}" in res.stdout
        cluster.start(3)
        cluster.wait_healthy(3)
        stopped.remove(3)
        log = open(tmp_path / "node5.log", "ab")  # noqa: SIM115 - the process owns it
        follower_proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "run", str(follower)], cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        cluster.wait_height(3, top, timeout=60)
        # node3 votes again: with node2 stopped, nothing commits without it.
        cluster.kill(2, signal.SIGTERM)
        stopped.append(2)
        final = commit(cluster.url(3), 10, 42_000)
        cluster.start(2)
        cluster.wait_healthy(2)
        stopped.remove(2)
        for i in range(4):
            cluster.wait_height(i, final)
        assert_identical_chains(cluster, final)
        url5 = f"http://127.0.0.1:{base}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url5}/v1/status", timeout=2).json()["height"] >= final:
                    break
            except httpx.HTTPError:
                pass
            assert follower_proc.poll() is None, (tmp_path / "node5.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "node5.log").read_text()[-3000:]
            time.sleep(0.2)
        for h in range(1, final + 1):
            hashes = {Block.from_wire(httpx.get(
                f"{url}/v1/blocks/{h}", headers={"Accept": "application/msgpack"}).content).hash
                for url in (cluster.url(0), cluster.url(3), url5)}
            assert len(hashes) == 1, f"height {h}: {hashes}"
        res = ledger("audit", "--node", cluster.url(3), "--genesis", genesis_path, "-q")
        assert res.returncode == 0, res.stderr
    finally:
        if follower_proc is not None:
            follower_proc.send_signal(signal.SIGTERM)
            try:
                follower_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                follower_proc.kill()
                follower_proc.wait()
        for i in stopped:  # the module's cluster is whole again for the other tests
            cluster.start(i)
            cluster.wait_healthy(i)


class ClusterUp:
    """A real `ledger cluster up` process; its output lines collected by a thread."""

    def __init__(self, directory: Path, *flags: str) -> None:
        import threading

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "cluster", "up", str(directory), *flags],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def pid(self, node: int) -> int:
        return int(self.wait_line(rf"^node{node}: API .* pid (\d+)$").group(1))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_healthy(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not come up"
        time.sleep(0.2)


def serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_cluster_up_keeps_serving_when_a_node_exits_and_stops_all_on_sigterm(
        tmp_path: Path) -> None:
    c = Cluster.create(tmp_path, nodes=2)
    up = ClusterUp(tmp_path)
    try:
        for i in range(2):
            wait_healthy(c.url(i))
        os.kill(up.pid(1), signal.SIGKILL)
        up.wait_line(r"^node1 exited with status -9 \(SIGKILL\); the others keep running "
                     r"\(Ctrl-C stops them\)$")
        time.sleep(1.5)  # three turns of the supervisor's loop
        assert up.proc.poll() is None, "\n".join(up.lines)
        assert serving(c.url(0))
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(timeout=30) == 0, "\n".join(up.lines)
    finally:
        up.close()
    time.sleep(0.2)  # the reader thread takes the last lines
    assert up.lines[-1] == "cluster stopped"
    assert not serving(c.url(0)), "node0 still serving after the cluster stopped"


def test_cluster_up_stop_on_exit_stops_every_node(tmp_path: Path) -> None:
    c = Cluster.create(tmp_path, nodes=2)
    up = ClusterUp(tmp_path, "--stop-on-exit")
    try:
        for i in range(2):
            wait_healthy(c.url(i))
        os.kill(up.pid(1), signal.SIGTERM)
        assert up.proc.wait(timeout=30) == 1, "\n".join(up.lines)
    finally:
        up.close()
    time.sleep(0.2)
    assert "node1 exited with status 0; stopping the cluster (--stop-on-exit)" in up.lines
    assert up.lines[-1] == "cluster stopped"
    assert not serving(c.url(0)), "node0 still serving after the cluster stopped"
