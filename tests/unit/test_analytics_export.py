"""`ledger export --format parquet` (node/analytics.py): the committed records as Parquet
files, read back with DuckDB: rows and columns, a per-subject-per-hour query against the
store, incremental runs, a changed source refused, a crash leaving the folder readable, and
the one-line hint when the analytics extra is missing."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from ledger.blocks import Block
from ledger.jsonview import jsonable
from ledger.store import SqliteStore
from node import analytics, cli
from tests.factory import (
    ChainBuilder,
    change_bytes,
    change_record,
    config_doc,
    make_governed_fixture,
    sealed_record,
)

FX = make_governed_fixture()
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
SUBJECTS = ["plant-1/temp", "plant-2/temp", "plant-3/pressure"]
FIXED = [name for name, _ in analytics.COLUMNS]


def renamed_gateway() -> bytes:
    """A change renaming acme's member "gateway" (the writer's key) to "gateway-2"."""
    d = copy.deepcopy(config_doc(FX.genesis))
    d["organizations"][0]["members"][0]["name"] = "gateway-2"
    return change_bytes(FX.genesis.config, d)


def build(db: Path, blocks: int = 8, *, seed: int = 0, change_at: int | None = 3) -> None:
    """A chain of ``blocks`` blocks over two days and several hours: records of three
    subjects, a sealed record, payloads of several shapes, and (at ``change_at``) a
    configuration change renaming the writer's member name."""
    with SqliteStore(db, genesis_hash=FX.genesis.hash, config=FX.genesis.config) as store:
        b = ChainBuilder(FX, store, nonce=seed * 10_000)
        for i in range(blocks):
            b.time_ms += HOUR_MS // 3 + (DAY_MS if i == blocks // 2 else 0)
            recs = [b.record(subject=SUBJECTS[(i + j) % 3]) for j in range(i % 3 + 1)]
            if i == 1:
                b.nonce += 1
                recs.append(sealed_record(FX.writer, FX.genesis.chain_id, nonce=b.nonce))
                recs.append(b.record(payload={"v": 2, "Temp": 3.5, "on": True, "big": 2**64 - 1,
                                              "neg": -7, "nan": float("nan"), "s": "x",
                                              "deep": {"x": 1}}))
                recs.append(b.record(payload=[1, 2, 3], subject="plant-1/temp"))
                recs.append(b.record(FX.operator, payload={1: 2.5, "k": 1}))
            if change_at is not None and i + 1 == change_at:
                recs.append(change_record(FX.genesis.config, FX.admins[0], renamed_gateway(),
                                          approvers=FX.admins[:2], nonce=b.nonce + 500))
            block = b.block(recs)
            store.append(block)
            b.blocks.append(block)
            assert store.history is not None
            b.follow(store.history.latest)


def grow(db: Path, blocks: int, *, seed: int = 1) -> None:
    with SqliteStore(db, genesis_hash=FX.genesis.hash, config=FX.genesis.config) as store:
        tip = store.block(store.height)
        assert tip is not None and store.history is not None
        b = ChainBuilder(FX, store, time_ms=tip.header.time_ms, nonce=seed * 10_000,
                         config=store.history.latest)
        for i in range(blocks):
            b.time_ms += HOUR_MS // 2
            b.add(2, subject=SUBJECTS[i % 3])


def stored_blocks(db: Path) -> list[Block]:
    with SqliteStore(db, readonly=True) as store:
        out = []
        for h in range(1, store.height + 1):
            block = store.block(h)
            assert block is not None
            out.append(block)
        return out


def export(out: Path, db: Path, genesis: Path, *extra: str) -> int:
    return cli.main(["export", "--format", "parquet", "--db", str(db), "--genesis",
                     str(genesis), "--out", str(out), "-q", *extra])


def table(out: Path) -> str:
    return (f"read_parquet('{out}/**/*.parquet', hive_partitioning = true, "
            "union_by_name = true)")


def rows(out: Path, columns: str = "*") -> list[dict[str, Any]]:
    con = duckdb.connect()
    cur = con.execute(f"SELECT {columns} FROM {table(out)} ORDER BY height, index")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path]:
    db = tmp_path / "chain.db"
    build(db)
    return db, FX.write_genesis(tmp_path)


def test_every_record_is_a_row_with_its_values(chain: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    db, genesis = chain
    out = tmp_path / "pq"
    assert export(out, db, genesis) == 0
    assert "ok: heights 1..8:" in capsys.readouterr().out
    blocks = stored_blocks(db)
    got = rows(out)
    expected_count = sum(len(b.records) for b in blocks)
    assert len(got) == expected_count and expected_count >= 20
    # str keys only: {1: 2.5, "k": 1} gives p_k, never a column for 1
    assert set(FIXED) | {"date", "p_v", "p_big", "p_neg", "p_k"} == set(got[0])
    by_id = {r["id"]: r for r in got}
    assert len(by_id) == expected_count
    change_height = 3
    for block in blocks:
        for index, rec in enumerate(block.records):
            row = by_id[rec.id.hex()]
            body = rec.body
            when = datetime.fromtimestamp(block.header.time_ms / 1000, UTC).replace(tzinfo=None)
            assert (row["height"], row["index"], row["block_time"]) == (block.height, index, when)
            assert row["date"] == when.date()
            assert (row["type"], row["subject"], row["signer"], row["ts"], row["nonce"]) == (
                body.type, body.subject, body.signer.hex(), body.ts, body.nonce)
            if body.sealed:
                assert row["payload"] is None
                assert row["payload_digest"] == body.payload_digest.hex()  # type: ignore[union-attr]
            else:
                assert json.loads(row["payload"]) == jsonable(body.payload)
                assert row["payload_digest"] is None
            if body.signer == FX.writer.public:  # renamed by the change committed at 3
                member = "gateway" if block.height <= change_height else "gateway-2"
                assert (row["organization"], row["member"]) == ("acme", member)
            elif body.signer == FX.operator.public:
                assert (row["organization"], row["member"]) == ("plantco", "sensor")
            elif body.signer == FX.admins[0].public:
                assert body.type == "ledger.config"
                assert (row["organization"], row["member"]) == ("org0", "admin0")
            if type(body.payload) is dict and "v" in body.payload:
                assert row["p_v"] == float(body.payload["v"])
    odd = next(r for r in got if r["p_big"] is not None)
    # only lowercase keys with int or finite float values become columns; the rest stay
    # in the payload JSON (Temp: uppercase; on: bool; nan; s: str; deep: a map)
    assert (odd["p_v"], odd["p_big"], odd["p_neg"]) == (2.0, float(2**64 - 1), -7.0)
    assert json.loads(odd["payload"])["nan"] == "nan"
    assert {r["type"] for r in got} >= {"sensor.reading", "batch.recipe", "ledger.config"}
    assert sum(r["payload_digest"] is not None for r in got) == 1
    dates = sorted(p.name for p in out.iterdir() if p.name.startswith("date="))
    assert dates == sorted({f"date={r['block_time']:%Y-%m-%d}" for r in got})
    assert len(dates) >= 2
    manifest = json.loads((out / analytics.MANIFEST).read_text())
    assert (manifest["height"], manifest["records"]) == (8, expected_count)
    assert manifest["block_hash"] == blocks[-1].hash.hex()
    assert [c["height"] for c in manifest["config_changes"]] == [change_height]


def test_records_per_subject_per_hour_match_the_store(chain: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    db, genesis = chain
    out = tmp_path / "pq"
    assert export(out, db, genesis) == 0
    con = duckdb.connect()
    answer = con.execute(f"SELECT subject, date_trunc('hour', block_time), count(*) "
                         f"FROM {table(out)} GROUP BY ALL").fetchall()
    expected: Counter[tuple[str, datetime]] = Counter()
    with SqliteStore(db, readonly=True) as store:
        for subject in {r.body.subject for b in stored_blocks(db) for r in b.records}:
            for loc, _ in store.subject_history(subject, limit=1000):
                header = store.block(loc.height)
                assert header is not None
                hour = (header.header.time_ms // HOUR_MS) * HOUR_MS
                expected[(subject, datetime.fromtimestamp(hour / 1000, UTC)
                          .replace(tzinfo=None))] += 1
    assert Counter({(s, h): n for s, h, n in answer}) == expected
    assert len(expected) > 5


def test_a_second_run_appends_only_new_heights(chain: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    db, genesis = chain
    out = tmp_path / "pq"
    assert export(out, db, genesis) == 0
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    assert export(out, db, genesis) == 0  # nothing new: nothing written
    assert "ok: nothing new" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    grow(db, 4)
    assert export(out, db, genesis) == 0
    assert "ok: heights 9..12: 8 records in" in capsys.readouterr().out
    after = set(out.rglob("*.parquet"))
    assert all(p.read_bytes() == data for p, data in before.items())
    new = sorted(after - set(before))
    assert new and all(int(p.name.split("-")[1]) >= 9 for p in new)
    got = rows(out, "id, height")
    ids = [r["id"] for r in got]
    expected = [r.id.hex() for b in stored_blocks(db) for r in b.records]
    assert ids == expected  # each record once, in chain order
    # the later rows name the member by the configuration the change made
    assert {r["member"] for r in rows(out, "member, height") if r["height"] > 8} == {"gateway-2"}


def test_a_source_with_another_block_at_the_saved_height_is_refused(
        chain: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, genesis = chain
    out = tmp_path / "pq"
    assert export(out, db, genesis) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = tmp_path / "other.db"
    build(other, blocks=10, seed=7)  # same genesis, other records: another history
    capsys.readouterr()
    assert export(out, other, genesis) == 1
    err = capsys.readouterr().err
    assert err.startswith("height 8: the source's block is not the one exported"), err
    short = tmp_path / "short.db"
    build(short, blocks=5)
    assert export(out, short, genesis) == 1
    assert capsys.readouterr().err.startswith("height 6: the source has 5 blocks")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_another_chains_folder_is_refused(chain: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    db, genesis = chain
    out = tmp_path / "pq"
    assert export(out, db, genesis) == 0
    manifest = out / analytics.MANIFEST
    doc = json.loads(manifest.read_text())
    doc["genesis_hash"] = "00" * 32
    manifest.write_text(json.dumps(doc))
    capsys.readouterr()
    assert export(out, db, genesis) == 2
    assert "holds an export of another chain" in capsys.readouterr().err
    stray = tmp_path / "stray"
    (stray / "date=2024-01-01").mkdir(parents=True)
    (stray / "date=2024-01-01" / "part-000000000001-000000000002.parquet").write_bytes(b"x")
    assert export(stray, db, genesis) == 2
    assert "holds part files but no _ledger_export.json" in capsys.readouterr().err


def test_a_crash_mid_run_leaves_a_readable_folder_and_the_next_run_completes(
        chain: tuple[Path, Path], tmp_path: Path) -> None:
    db, genesis_path = chain
    out = tmp_path / "pq"
    genesis = FX.genesis
    with SqliteStore(db, readonly=True) as store:
        tip = store.height
        data = [store.block_bytes(h) for h in range(1, tip + 1)]

    def crashing() -> Any:
        for h, block in enumerate(data, start=1):
            if h == 6:
                raise KeyboardInterrupt  # the process dies mid-run
            yield block

    with analytics.ParquetExport(out, genesis, part_rows=4) as export_:  # small parts
        with pytest.raises(analytics.ExportFolderError, match="another export is writing"):
            analytics.ParquetExport(out, genesis)  # one run per folder at a time
        with pytest.raises(KeyboardInterrupt):
            export_.run(crashing(), tip)
    manifest = json.loads((out / analytics.MANIFEST).read_text())
    assert 0 < manifest["height"] < 6
    assert [p.name for p in out.rglob(".*")] == [".lock"]  # no temporary file left behind
    got = rows(out, "height")
    assert len(got) == manifest["records"]
    assert max(r["height"] for r in got) <= manifest["height"]
    # A crash between a part's rename and the manifest: a part above the saved height.
    last = sorted(out.rglob("part-*.parquet"))[-1]
    orphan = last.with_name(f"part-{manifest['height'] + 1:012d}-"
                            f"{manifest['height'] + 1:012d}.parquet")
    orphan.write_bytes(last.read_bytes())
    (out / ".rows-1.ndjson").write_text("{}\n")
    assert export(out, db, genesis_path) == 0
    ids = [r["id"] for r in rows(out, "id")]
    assert sorted(ids) == sorted(r.id.hex() for b in stored_blocks(db) for r in b.records)
    assert not list(out.glob(".rows-*"))


def test_without_the_extra_the_command_says_what_to_install(
        chain: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    db, genesis = chain
    monkeypatch.setitem(sys.modules, "duckdb", None)  # `import duckdb` raises ImportError
    out = tmp_path / "pq"
    assert export(out, db, genesis) == 2
    assert capsys.readouterr().err == (
        "ledger: parquet export needs the analytics extra: pip install 'ledger[analytics]'\n")
    assert not out.exists()


def test_the_bundle_stays_the_default(chain: tuple[Path, Path], tmp_path: Path) -> None:
    db, genesis = chain
    out = tmp_path / "chain.bundle"
    assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out", str(out),
                     "-q"]) == 0
    assert out.is_file() and out.read_bytes()[:40].find(b"ledger-export") > 0


def test_a_node_never_imports_the_analytics_module() -> None:
    code = ("import sys, node.cli, node.api, node.runtime, node.service; "
            "print(sorted(m for m in sys.modules if m in ('duckdb', 'node.analytics')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert res.stdout.strip() == "[]"


def test_export_from_a_node_over_http(tmp_path: Path) -> None:
    from tests.factory import make_fixture
    from tests.inprocess import InProcessApi
    from tests.unit.test_log_proofs import served

    fx = make_fixture()
    api = InProcessApi(fx)
    service = api.service
    for n in (2, 3, 1, 2):
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)
    out = tmp_path / "pq"
    with served(api) as url:
        assert cli.main(["export", "--format", "parquet", "--node", url, "--out", str(out),
                         "-q"]) == 0
        got = rows(out, "id, height, organization")
        expected = [r.id.hex() for h in range(1, 5)
                    for r in Block.from_wire(api.store.block_bytes(h) or b"").records]
        assert [r["id"] for r in got] == expected
        assert {r["organization"] for r in got} <= {"acme", "plantco"}
        block = service.builder.block([api.record()])
        service.append(block)
        service.builder.blocks.append(block)
        assert cli.main(["export", "--format", "parquet", "--node", url, "--out", str(out),
                         "-q"]) == 0
    assert len(rows(out, "id")) == len(expected) + 1
