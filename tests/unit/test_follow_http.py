"""Following the chain over the public HTTP API (node.follow, issue 13), in process.

A ``node.runtime.Node`` whose key is in no configuration (a node made by ``ledger node
init`` before its change, or a removed validator) and that has no peer link runs its
consensus loop on a real SQLite store; its ``Follower`` reads the real API app
(``tests.inprocess.InProcessApi`` over the same genesis) through ``httpx.ASGITransport``.
It catches up through the block-sync path (``check_block_response``, the core's commit),
and a source serving a forged block is refused like a bad block-sync block, then left for
an honest one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import httpx
import pytest

from ledger.blocks import Block
from ledger.crypto import PrivateKey, write_key_file
from node.config import ConfigError, NodeConfig
from node.follow import Follower
from node.runtime import Node
from tests.inprocess import CLIENT, InProcessApi
from tests.memnet import Unlinked
from tests.unit.consensus_helpers import FX

HONEST = "http://honest.test"
LIAR = "http://liar.test"
FORKED = "http://fork.test"


class Liar(httpx.AsyncBaseTransport):
    """The honest app's answers, but block ``forged`` has its header's time changed (its
    certificate, by the real validators, kept): well-formed bytes that do not check."""

    def __init__(self, app: httpx.AsyncBaseTransport, forged: int) -> None:
        self.app, self.forged, self.served_forged = app, forged, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp = await self.app.handle_async_request(request)
        if request.url.path == f"/v1/blocks/{self.forged}":
            data = await resp.aread()
            block = Block.from_wire(data)
            forged = dataclasses.replace(
                block, header=dataclasses.replace(block.header,
                                                  time_ms=block.header.time_ms + 1))
            self.served_forged += 1
            return httpx.Response(200, content=forged.to_wire(),
                                  headers={"content-type": "application/msgpack"})
        return resp


class Router(httpx.AsyncBaseTransport):
    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = routes
        self.hosts: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        route = self.routes.get(f"http://{request.url.host}")
        if route is None:  # the validators' own api URLs: nothing listens in this test
            raise httpx.ConnectError("connection refused", request=request)
        return await route.handle_async_request(request)


def source(blocks: int) -> InProcessApi:
    api = InProcessApi(FX)
    for _ in range(blocks):
        api.service.builder.add(2)
    return api


def follower_node(directory: Path) -> Node:
    directory.mkdir(parents=True, exist_ok=True)
    FX.write_genesis(directory)
    write_key_file(directory / "node.pem", PrivateKey.generate())  # in no configuration
    (directory / "config.json").write_text(json.dumps({
        "api": "127.0.0.1:1", "p2p": "127.0.0.1:2", "genesis": "genesis.json",
        "key": "node.pem", "store": "chain.db"}))
    node = Node.from_config(NodeConfig.load(directory))
    node.transport = Unlinked()  # type: ignore[assignment]
    return node


async def follow(node: Node, follower: Follower, height: int, timeout_s: float = 30,
                 expect: int | None = None) -> None:
    """Run the node's consensus loop and ``follower`` until the node holds ``height`` and
    the follower counts ``expect`` blocks followed (default: ``height``)."""
    expect = height if expect is None else expect
    consensus = asyncio.ensure_future(node.consensus_loop())
    following = asyncio.ensure_future(follower.run())
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while node.store.height < height or follower.followed < expect:
            assert asyncio.get_running_loop().time() < deadline, (
                f"followed to {node.store.height} ({follower.followed} counted) of {height}")
            assert not following.done(), following.exception()
            await asyncio.sleep(0.02)
    finally:
        following.cancel()
        consensus.cancel()
        await asyncio.gather(following, consensus, return_exceptions=True)


def test_a_node_in_no_configuration_follows_the_chain_over_http(tmp_path: Path) -> None:
    api = source(blocks=7)
    node = follower_node(tmp_path / "f")
    assert node.core.index is None and not node.connected_peers()
    app = httpx.ASGITransport(app=api.app, client=CLIENT)
    follower = Follower(node, [HONEST], transport=Router({HONEST: app}), batch=3)
    try:
        # its own URLs first, then the api of the validators in force
        assert follower.needed()
        assert follower.sources() == [HONEST, *(v.api for v in FX.genesis.validators)]
        asyncio.run(follow(node, follower, 7))
        for h in range(1, 8):  # the same blocks, byte for byte
            assert node.store.block_bytes(h) == api.store.block_bytes(h)
        assert follower.followed == 7 and follower.refused == 0
        assert "ledger_blocks_followed_total 7" in node.metrics_text()
    finally:
        node.store.close()


def test_a_forged_block_is_refused_and_another_source_is_followed(tmp_path: Path) -> None:
    api = source(blocks=6)
    node = follower_node(tmp_path / "f")
    app = httpx.ASGITransport(app=api.app, client=CLIENT)
    liar = Liar(httpx.ASGITransport(app=api.app, client=CLIENT), forged=4)
    router = Router({LIAR: liar, HONEST: app})
    follower = Follower(node, [LIAR, HONEST], transport=router, batch=16)
    try:
        asyncio.run(follow(node, follower, 6))
        assert liar.served_forged >= 1 and follower.refused >= 1
        assert HONEST.removeprefix("http://") in router.hosts
        for h in range(1, 7):  # the honest blocks, never the forged one
            assert node.store.block_bytes(h) == api.store.block_bytes(h)
        # blocks 1..3 from the liar were good and committed before block 4 was refused
        assert follower.followed == 6
    finally:
        node.store.close()


def test_following_stops_when_the_node_has_a_peer_link(tmp_path: Path) -> None:
    node = follower_node(tmp_path / "f")
    try:
        follower = Follower(node, [HONEST])
        assert follower.needed()
        node.transport.connected = lambda: [1]  # type: ignore[method-assign,union-attr]
        assert not follower.needed()
    finally:
        node.store.close()


def test_follow_urls_come_from_config_json_or_ledger_follow(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    d = tmp_path / "n"
    d.mkdir()
    doc = {"api": "127.0.0.1:1", "p2p": "127.0.0.1:2", "follow": ["10.0.0.1:8000"]}
    (d / "config.json").write_text(json.dumps(doc))
    monkeypatch.delenv("LEDGER_FOLLOW", raising=False)
    assert NodeConfig.load(d).follow == ["10.0.0.1:8000"]
    monkeypatch.setenv("LEDGER_FOLLOW", "http://a:1, https://b:2")
    assert NodeConfig.load(d).follow == ["http://a:1", "https://b:2"]
    node = follower_node(tmp_path / "f")
    try:  # no scheme: http; its own API is never followed
        own = "http://127.0.0.1:1"
        follower = Follower(node, ["10.0.0.1:8000/", own])
        assert follower.sources()[0] == "http://10.0.0.1:8000" and own not in follower.sources()
    finally:
        node.store.close()


def test_a_certified_block_that_does_not_extend_the_chain_is_not_committed(
        tmp_path: Path) -> None:
    """A source on a fork (blocks certified by the same keys: equivocating validators):
    its block 3 passes the certificate check but not the chain-extension rule, so the core
    commits nothing of it, and the follower leaves it for an honest source."""
    honest, fork = source(blocks=2), InProcessApi(FX)
    for _ in range(5):
        fork.service.builder.add(3)
    assert fork.store.block_bytes(2) != honest.store.block_bytes(2)
    node = follower_node(tmp_path / "f")
    try:
        first = Follower(node, [HONEST], transport=Router({
            HONEST: httpx.ASGITransport(app=honest.app, client=CLIENT)}))
        router = Router({FORKED: httpx.ASGITransport(app=fork.app, client=CLIENT),
                         HONEST: httpx.ASGITransport(app=honest.app, client=CLIENT)})
        follower = Follower(node, [FORKED, HONEST], transport=router)

        async def go() -> None:  # one event loop: the node's queue belongs to it
            await follow(node, first, 2)
            for _ in range(3):
                honest.service.builder.add(2)
            await follow(node, follower, 5, expect=3)

        asyncio.run(go())
        assert follower.refused >= 1
        assert FORKED.removeprefix("http://") in router.hosts
        for h in range(1, 6):
            assert node.store.block_bytes(h) == honest.store.block_bytes(h)
    finally:
        node.store.close()


class CutOff(httpx.AsyncBaseTransport):
    """The honest app, but ``GET /v1/blocks/{cut}`` fails as a dropped connection (once)."""

    def __init__(self, app: httpx.AsyncBaseTransport, cut: int) -> None:
        self.app, self.cut, self.cuts = app, cut, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/blocks/{self.cut}" and not self.cuts:
            self.cuts += 1
            raise httpx.ReadError("connection reset", request=request)
        return await self.app.handle_async_request(request)


def test_blocks_checked_ahead_are_handed_over_in_order_when_a_download_fails(
        tmp_path: Path) -> None:
    """Following checks blocks while the next ones download (issue 17): a download that
    fails at block 5 still commits blocks 1..4, checked ahead, in order; the next round
    goes on from 5."""
    api = source(blocks=8)
    node = follower_node(tmp_path / "f")
    cut = CutOff(httpx.ASGITransport(app=api.app, client=CLIENT), cut=5)
    follower = Follower(node, [HONEST], transport=Router({HONEST: cut}), batch=16)
    follower.commit_wait_s = 5.0
    try:
        asyncio.run(follow(node, follower, 8))
        assert cut.cuts == 1
        for h in range(1, 9):
            assert node.store.block_bytes(h) == api.store.block_bytes(h)
        assert follower.followed == 8 and follower.refused == 0
    finally:
        node.store.close()


def test_the_clock_skew_a_node_admits_comes_from_config_json(tmp_path: Path) -> None:
    d = tmp_path / "n"
    d.mkdir()
    doc = {"api": "127.0.0.1:1", "p2p": "127.0.0.1:2"}
    (d / "config.json").write_text(json.dumps(doc))
    assert NodeConfig.load(d).max_clock_skew_ms == 600_000
    (d / "config.json").write_text(json.dumps({**doc, "max_clock_skew_ms": 0}))
    with pytest.raises(ConfigError, match="max_clock_skew_ms"):
        NodeConfig.load(d)
    node = follower_node(tmp_path / "f")  # config.json as a user writes it
    try:
        assert node.mempool.max_skew_ms == 600_000
    finally:
        node.store.close()
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    config["max_clock_skew_ms"] = 6 * 3600 * 1000
    (tmp_path / "f" / "config.json").write_text(json.dumps(config))
    node = Node.from_config(NodeConfig.load(tmp_path / "f"))
    try:  # a reading buffered offline for hours is admitted by this node
        assert node.mempool.max_skew_ms == 6 * 3600 * 1000
    finally:
        node.store.close()
