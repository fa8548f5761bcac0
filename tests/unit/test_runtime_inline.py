"""Small work on the event loop (``node.runtime.small_work``): a single small record's
admission check and a small proposal's decode, rebuild and signature checks run inline (a
worker-thread hop cost several times the work on the light-load commit path), while a
batch, or a proposal over ``INLINE_BYTES``, still goes to a worker thread. Four real nodes
in one event loop (``tests/memnet.py``); the chain's outcome is the same either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node import runtime
from node.runtime import INLINE_BYTES, INLINE_RECORDS, small_work
from tests.unit.test_runtime_inprocess import (
    Cluster,
    N,
    committed,
    new_record,
    run,
    same_blocks,
    submit,
)

# what the runtime hands a worker thread for admission and for a peer's proposal
_PROPOSAL_WORK = ("UndecodedProposal.decode", "_rebuild_proposal.<locals>.<lambda>",
                  "Node._contents_match", "_verify_then_queue.<locals>.<lambda>")


def thread_hops(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The qualified names of the functions handed to ``asyncio.to_thread`` from now on."""
    handed: list[str] = []
    real = asyncio.to_thread

    async def counting(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        handed.append(getattr(fn, "__qualname__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    return handed


def test_small_work_is_one_record_in_a_few_kib() -> None:
    assert INLINE_RECORDS == 1 and INLINE_BYTES == 16 * 1024
    assert small_work(1, 400)
    assert small_work(1, INLINE_BYTES)
    assert not small_work(1, INLINE_BYTES + 1)  # one large record: its decode is not tiny
    assert not small_work(2, 800)  # a batch: signature checks in a worker thread
    assert not small_work(500, 160_000)


def test_a_single_record_is_admitted_and_its_proposal_decoded_without_a_thread_hop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = Cluster(tmp_path, empty_blocks=False)
    handed = thread_hops(monkeypatch)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        one = await submit(nodes[0], 1)
        await committed(nodes, one)
        # one record: admitted inline on its node and on every peer its gossip reached,
        # its proposal decoded (or rebuilt) inline on each validator
        assert "Mempool.precheck" not in handed, handed
        assert not [h for h in handed if h in _PROPOSAL_WORK], handed
        handed.clear()
        batch = [new_record() for _ in range(5)]
        results = await nodes[1].submit([r.envelope for r in batch])
        assert [r.status for r in results] == ["accepted"] * 5
        await committed(nodes, batch)
        assert "Mempool.precheck" in handed  # a batch still goes to a worker thread
        assert same_blocks(nodes) >= 2

    run(cluster, body)


def test_a_single_record_over_the_inline_bytes_still_goes_to_a_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "INLINE_BYTES", 64)  # every record is "large"
    cluster = Cluster(tmp_path, empty_blocks=False)
    handed = thread_hops(monkeypatch)

    async def body() -> None:
        for i in range(N):
            await cluster.start(cluster.from_parts(i))
        nodes = list(cluster.nodes.values())
        one = await submit(nodes[0], 1)
        await committed(nodes, one)
        assert "Mempool.precheck" in handed, handed
        assert [h for h in handed if h in _PROPOSAL_WORK], handed  # decoded in a thread

    run(cluster, body)
