"""Review of issue 15 (sealed payloads): bounds the read side must keep.

A sealed record's envelope is a few hundred bytes whatever its payload, so a bound counted
in envelope bytes no longer bounds what a page of sealed records costs to build and send:
the pairs served with them must count too."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ledger.records import seal_record
from ledger.store.sqlite import SqliteStore
from tests.factory import ChainBuilder
from tests.inprocess import InProcessApi, now_ms
from tests.unit.test_api_read_policy import CHAIN, FX, committed
from tests.unit.test_one_rule import GOVERNED, GX


@pytest.mark.asyncio
async def test_a_history_page_counts_the_payloads_it_serves(monkeypatch: pytest.MonkeyPatch,
                                                           ) -> None:
    """A history page ends after HISTORY_PAGE_BYTES of envelopes *and payloads*: 40 sealed
    records of ~20 KB payloads (no read policy: served to anyone) with a 100 KB page bound
    make several pages, not one page of 800 KB of payloads."""
    import node.api

    monkeypatch.setattr(node.api, "HISTORY_PAGE_BYTES", 100_000)
    api = InProcessApi(FX)
    items = [seal_record(FX.writer, chain=CHAIN, type="sensor.reading", subject="oven",
                         payload={"pad": "x" * 20_000, "n": n}, ts=now_ms(), nonce=n)
             for n in range(1, 41)]
    committed(api, items)
    async with api.client() as http:
        resp = await http.get("/v1/subjects/oven/history?limit=1000")
    assert resp.status_code == 200
    doc = resp.json()
    served = [r for r in doc["records"] if r["payload_status"] == "served"]
    assert served and len(served) == len(doc["records"])
    # the page stops at the first slice past the bound (a slice is at most 64 records)
    assert len(resp.content) < 4 * 100_000 * 4 // 3, len(resp.content)
    assert doc["next"] is not None


def test_reading_redactions_does_not_wait_for_the_writer(tmp_path: Path) -> None:
    """``redacted`` is what every read of a sealed record asks (``GET /v1/records/{id}``
    asks it on the event loop); like every other read it goes through the thread's WAL
    reader, never waiting for a block's write (which holds the writer's lock through its
    transaction and fsync)."""
    store = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    record, pair = seal_record(GX.writer, chain=GOVERNED.chain_id, type="sensor.reading",
                               subject="oven", payload={"v": 1}, ts=1, nonce=1)
    store.append(builder.block([record]), payloads={record.id: pair})
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store._lock:  # a block's write in progress
            held.set()
            release.wait(10)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert held.wait(10)
        started = time.monotonic()
        done: list[object] = []
        reader = threading.Thread(target=lambda: done.append(
            (store.redacted([record.id]), store.payloads([record.id]))))
        reader.start()
        reader.join(3)
        waited = time.monotonic() - started
        assert done, f"redacted()/payloads() still waiting for the writer after {waited:.1f} s"
        assert done[0] == (set(), {record.id: pair})
    finally:
        release.set()
        t.join(10)
        store.close()


@pytest.mark.asyncio
async def test_block_json_payloads_count_against_the_sources_build_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A block's JSON carries its sealed records' payloads, read per request (the cache
    holds the block without them): 500 sealed records of 64 KB make a 116 KB block whose
    anonymous JSON is 44 MB. Those bytes count against the source's block-JSON budget like
    a build's, so a client cannot have them built without end: past its budget it gets 429
    (the msgpack form stays free)."""
    import node.api

    monkeypatch.setattr(node.api, "BUILD_BYTES_PER_S", 1)
    monkeypatch.setattr(node.api, "BUILD_BYTES_BURST", 2_000_000)
    api = InProcessApi(FX)
    items = [seal_record(FX.writer, chain=CHAIN, type="sensor.reading", subject="oven",
                         payload={"pad": "x" * 20_000, "n": n}, ts=now_ms(), nonce=n)
             for n in range(1, 41)]
    height = committed(api, items)
    statuses = []
    async with api.client() as http:
        for _ in range(4):
            resp = await http.get(f"/v1/blocks/{height}")
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                assert len(resp.content) > 800_000  # the payloads are in it
        msgpack = await http.get(f"/v1/blocks/{height}",
                                 headers={"Accept": "application/msgpack"})
    # ~1.1 MB each: the budget of 2 MB allows two, then the source waits
    assert statuses[:2] == [200, 200] and 429 in statuses[2:], statuses
    assert msgpack.status_code == 200


@pytest.mark.asyncio
async def test_a_payloads_page_reads_no_more_pairs_than_it_may_serve(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``GET /v1/payloads?limit=1`` reads a few pairs from the store, not every pair of a
    4096-index window (4096 pairs of 64 KiB: 256 MiB per request, for any reader, even
    one every pair is withheld from)."""
    api = InProcessApi(FX)
    items = [seal_record(FX.writer, chain=CHAIN, type="sensor.reading", subject="oven",
                         payload={"pad": "x" * 20_000, "n": n}, ts=now_ms(), nonce=n)
             for n in range(1, 201)]
    committed(api, items)
    loaded: list[int] = []
    real = api.store.payloads_between

    def counting(*args: object, **kwargs: object) -> object:
        rows = real(*args, **kwargs)  # type: ignore[arg-type]
        loaded.append(sum(p.size for _, _, p in rows))
        return rows

    monkeypatch.setattr(api.store, "payloads_between", counting)
    async with api.client() as http:
        first = (await http.get("/v1/payloads?limit=1")).json()
        assert len(first["payloads"]) == 1 and first["next"] == 1
        # paging on from ``next`` still lists every pair once
        seen, cursor = [], 0
        while cursor is not None:
            doc = (await http.get(f"/v1/payloads?from_index={cursor}&limit=7")).json()
            seen += [p["index"] for p in doc["payloads"]]
            cursor = doc["next"]
    assert seen == list(range(200))
    assert loaded[0] <= 64 * 20_100, loaded[0]  # a slice of pairs, not the 4 MB window


def test_a_scrub_a_crash_left_undone_is_done_when_the_store_opens(tmp_path: Path) -> None:
    """The node scrubs after a redaction commits, in a task that readers can delay (and a
    crash or kill can cut short). The files as a crash leaves them — the redaction
    committed, the WAL still holding the frames of the pairs' insert — are scrubbed when the
    store opens: no byte of the pairs in the database file or its WAL once the node runs."""
    import shutil

    from tests.factory import redaction_record
    from tests.unit.test_one_rule import A1, A2

    live = tmp_path / "live"
    live.mkdir()
    store = SqliteStore(live / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    items = [seal_record(GX.writer, chain=GOVERNED.chain_id, type="sensor.reading",
                         subject="oven", payload={"secret": f"CRASH-MARKER-{n:03d}",
                                                  "pad": "y" * (30_000 if n % 2 else 200)},
                         ts=1, nonce=n) for n in range(1, 11)]
    store.append(builder.block([r for r, _ in items]), payloads=dict(
        (r.id, p) for r, p in items))
    store.append(builder.block([redaction_record(GOVERNED.config, A1, [r.id for r, _ in items],
                                                 approvers=[A1, A2])]))
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("s.db", "s.db-wal"):  # the files as they are before any scrub: a crash
        shutil.copy(live / name, crashed / name)
    store.close()
    assert any(b"CRASH-MARKER-" in (crashed / n).read_bytes() for n in ("s.db", "s.db-wal"))

    reopened = SqliteStore(crashed / "s.db", genesis_hash=GOVERNED.hash,
                           config=GOVERNED.config)
    try:
        assert reopened.height == 2 and reopened.payloads(r.id for r, _ in items) == {}
        for f in crashed.iterdir():
            assert b"CRASH-MARKER-" not in f.read_bytes(), f.name
    finally:
        reopened.close()


def test_a_json_batch_of_max_batch_sealed_items_splits() -> None:
    """A JSON batch of ``max_batch`` sealed items (``{"envelope", "salt", "payload"}``:
    19 of ``{ [ , : "`` each) is a valid batch, not ``malformed``; a body with more of those
    characters than such a batch holds still is."""
    import json

    from node.api import Problem, split_json_batch

    item = {"envelope": "QQ==", "salt": "Uw==", "payload": "UA=="}
    for n in (1, 10, 100):
        body = json.dumps({"records": [item] * n}).encode()
        assert split_json_batch(body, n) == [(b"A", b"S", b"P")] * n
    body = json.dumps({"records": [item] * 10}).encode()
    with pytest.raises(Problem):  # twice a full batch's punctuation
        split_json_batch(body.replace(b'"QQ=="', b'"QQ=="' + b',"x":1' * 25), 10)


@pytest.mark.asyncio
async def test_a_read_policy_change_takes_effect_at_the_next_height() -> None:
    """SPEC 10: the configuration governing the next height decides. A change adding a
    read policy for a type withholds its payloads from the next read on; one removing it
    serves them again."""
    from tests.factory import change_bytes, change_record, config_doc
    from tests.unit.test_api_read_policy import RP
    from tests.unit.test_one_rule import A0, A1, A2

    api = InProcessApi(FX)
    record, _ = seal_record(FX.writer, chain=CHAIN, type="sensor.reading", subject="oven",
                            payload={"v": "OPEN-MARKER"}, ts=now_ms(), nonce=1)
    committed(api, [(record, _)])
    path = f"/v1/records/{record.id.hex()}"

    def change(policies: dict[str, list[str]], nonce: int) -> None:
        config = api.store.history.latest  # type: ignore[union-attr]
        doc = config_doc(RP) | {"read_policies": policies}
        rec = change_record(config, A0, change_bytes(config, doc), approvers=[A0, A1, A2],
                            nonce=nonce)
        block = api.service.builder.block([rec])
        api.service.append(block)
        api.service.builder.blocks.append(block)

    async with api.client() as http:
        assert (await http.get(path)).json()["payload_status"] == "served"
        change({"batch.recipe": ["admin"], "sensor.reading": ["admin"]}, 900)
        doc = (await http.get(path)).json()
        assert doc["payload_status"] == "withheld" and "payload" not in doc
        change({"batch.recipe": ["admin"]}, 901)
        assert (await http.get(path)).json()["payload_status"] == "served"


def test_export_never_writes_a_payloads_section_its_reader_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A payloads section larger than ``MAX_OBJECT`` (one msgpack object) is either refused
    by ``write_bundle`` (no file) or read back whole: never a backup that ``ledger node
    import`` then refuses. (Found sound: the unpacker bounds each bin, not the section.)"""
    import node.export as export
    from node.export import BundleError

    monkeypatch.setattr(export, "MAX_OBJECT", 200_000)
    store = SqliteStore(tmp_path / "s.db", genesis_hash=GOVERNED.hash, config=GOVERNED.config)
    builder = ChainBuilder(GX, store)
    items = [seal_record(GX.writer, chain=GOVERNED.chain_id, type="sensor.reading",
                         subject="oven", payload={"pad": "z" * 30_000, "n": n}, ts=1, nonce=n)
             for n in range(1, 11)]  # 300 KB of payloads
    block = builder.block([r for r, _ in items])
    store.append(block, payloads={r.id: p for r, p in items})
    rows = [(rid, p.salt, p.payload) for _, rid, p in store.payloads_between(0, 10)]
    out = tmp_path / "b.bundle"
    try:
        export.write_bundle(out, GOVERNED.raw, [block.to_wire()], payloads=rows)
    except BundleError as exc:
        assert "payloads" in str(exc) and not out.exists()
    else:  # written: then it must read back
        bundle = export.Bundle(out)
        bundle.scan()
        assert len(bundle.payloads) == 10
    finally:
        store.close()
