"""The CLI's sealed payloads, over real HTTP (uvicorn on 127.0.0.1 in a thread) and a SQLite
store: ``submit --sealed --print-envelope``; ``record get`` / ``history`` / ``audit`` /
``export`` with ``--identity`` signing reads (RFC 9421); ``audit --payloads`` counts served,
withheld, missing and redacted and fails ``height N:`` on a pair that does not match;
``export`` writes the payloads section (never a redacted record's), its ``audit --file``
passes, and ``node init --bundle`` keeps the pairs."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import msgpack
import pytest

from ledger.crypto import PrivateKey, write_key_file
from ledger.records import Record, SealedPayload
from ledger.store import SqliteStore
from node import cli
from node.config import NodeConfig
from tests.factory import ChainBuilder, redaction_record
from tests.inprocess import InProcessApi, now_ms
from tests.unit.test_api_read_policy import FX, MARKER, RP, committed, sealed
from tests.unit.test_export import objects
from tests.unit.test_log_proofs import served
from tests.unit.test_one_rule import A0, ORG0_WRITER


def pem(tmp_path: Path, name: str, key: PrivateKey) -> str:
    path = tmp_path / f"{name}.pem"
    write_key_file(path, key)
    return str(path)


def chain_with_redaction(api: InProcessApi) -> tuple[list[tuple[Record, SealedPayload]],
                                                     Record]:
    """Block 1: three sealed records (two of a read-policy type, one open) and their pairs;
    block 2 redacts the second."""
    items = [sealed(ORG0_WRITER, 1), sealed(ORG0_WRITER, 2),
             sealed(ORG0_WRITER, 3, type="sensor.reading")]
    committed(api, items)
    gone = items[1][0]
    redaction = redaction_record(RP.config, A0, [gone.id], approvers=[A0], nonce=99,
                                 ts=now_ms())
    block = api.service.builder.block([redaction])
    api.service.append(block)
    api.service.builder.blocks.append(block)
    return items, gone


def test_reads_audit_export_and_import_with_a_read_identity(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(RP.raw)
    admin, operator = pem(tmp_path, "admin", A0), pem(tmp_path, "operator", FX.operator)
    api = InProcessApi(FX)
    items, gone = chain_with_redaction(api)
    (own, pair), _, (open_rec, open_pair) = items
    rid = own.id.hex()
    bundle = tmp_path / "out.bundle"
    with served(api) as url:
        # one record, its payload checked and decoded
        assert cli.main(["record", "get", rid, "--node", url, "--identity", admin,
                         "--payload"]) == 0
        assert json.loads(capsys.readouterr().out) == {"recipe": f"{MARKER}-1"}
        assert cli.main(["record", "get", rid, "--node", url, "--identity", operator,
                         "--payload"]) == 1
        assert "withheld by read policy" in capsys.readouterr().err
        assert cli.main(["record", "get", rid, "--node", url]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["payload_status"] == "withheld"
        assert MARKER not in out.out and "sealed payload: withheld" in out.err

        # history: the value to the reader allowed, what kept it from the others
        assert cli.main(["history", "--node", url, "--subject", "oven", "--identity",
                         admin]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert f'"{MARKER}-1"' in lines[0] and "<sealed: redacted at height 2>" in lines[1]
        assert cli.main(["history", "--node", url, "--subject", "oven"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert "<sealed: withheld by read policy>" in lines[0]
        assert f"{MARKER}-3" in lines[2]  # a type without a read policy: anyone reads it

        # audit --payloads: counts per reader
        assert cli.main(["audit", "--node", url, "--genesis", str(genesis), "--payloads",
                         "--identity", admin, "-q", "--workers", "1"]) == 0
        assert ("3 sealed records: 2 payloads served and matched their digests, 0 withheld, "
                "0 missing, 1 redacted") in capsys.readouterr().out
        assert cli.main(["audit", "--node", url, "--genesis", str(genesis), "--payloads",
                         "-q", "--workers", "1"]) == 0
        assert "1 payloads served and matched their digests, 1 withheld, 0 missing" in \
            capsys.readouterr().out

        # export --identity: the pairs served to it, never the redacted one
        assert cli.main(["export", "--node", url, "--identity", admin, "--out", str(bundle),
                         "-q"]) == 0
        assert "2 blocks and 2 sealed payloads written" in capsys.readouterr().out
    section = [o for o in objects(bundle) if isinstance(o, list) and o[0] == "payloads"]
    assert section == [["payloads", [[own.id, pair.salt, pair.payload],
                                     [open_rec.id, open_pair.salt, open_pair.payload]]]]
    assert f"{MARKER}-2".encode() not in bundle.read_bytes()  # the redacted payload
    assert cli.main(["audit", "--file", str(bundle), "--genesis", str(genesis), "--payloads",
                     "-q", "--workers", "1"]) == 0
    assert "2 payloads served and matched their digests, 0 withheld, 0 missing, 1 redacted" \
        in capsys.readouterr().out

    # a node started from the bundle keeps its pairs
    node_dir = tmp_path / "n"
    assert cli.main(["node", "init", str(node_dir), "--genesis", str(genesis), "--api",
                     "127.0.0.1:1", "--p2p", "127.0.0.1:2", "--bundle", str(bundle),
                     "-q", "--workers", "1"]) == 0
    assert "2 sealed payloads checked and kept" in capsys.readouterr().out
    store = SqliteStore(NodeConfig.load(node_dir).store_path, readonly=True)
    try:
        assert store.payloads([own.id, open_rec.id, gone.id]) == {own.id: pair,
                                                                  open_rec.id: open_pair}
    finally:
        store.close()

    # --db: the store's pairs; then a pair altered in the file fails audit --db --payloads
    db = NodeConfig.load(node_dir).store_path
    again = tmp_path / "db.bundle"
    assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out",
                     str(again), "-q"]) == 0
    assert "2 sealed payloads written" in capsys.readouterr().out
    assert cli.main(["audit", "--db", str(db), "--genesis", str(genesis), "--payloads", "-q",
                     "--workers", "1"]) == 0
    capsys.readouterr()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sealed SET payload = ? WHERE seq = 0",
                     (msgpack.packb({"recipe": "swapped"}),))
    assert cli.main(["audit", "--db", str(db), "--genesis", str(genesis), "--payloads", "-q",
                     "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("height 1: ") and "payload_digest" in err, err


def test_submit_sealed_prints_the_item_to_submit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = pem(tmp_path, "writer", ORG0_WRITER)
    assert cli.main(["submit", "--identity", key, "--chain", RP.chain_id, "--type",
                     "batch.recipe", "--subject", "oven", "--payload", '{"t": 180}',
                     "--sealed", "--print-envelope"]) == 0
    fields = dict(line.split(" ", 1) for line in capsys.readouterr().out.splitlines())
    record = Record.from_wire(base64.b64decode(fields["envelope"]))
    pair = SealedPayload(base64.b64decode(fields["salt"]), base64.b64decode(fields["payload"]))
    pair.check(record)
    assert record.id.hex() == fields["id"] and msgpack.unpackb(pair.payload) == {"t": 180}


def test_a_bundle_with_a_redacted_record_s_pair_is_not_imported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The import refuses what ``audit --file`` refuses: a redacted record's pair."""
    from tests.unit.test_export import sealed_bundle

    out, genesis, _ = sealed_bundle(tmp_path, "redacted")
    assert cli.main(["node", "init", str(tmp_path / "n"), "--genesis", str(genesis),
                     "--api", "127.0.0.1:1", "--p2p", "127.0.0.1:2", "--bundle", str(out),
                     "-q", "--workers", "1"]) != 0
    assert "height 2: " in capsys.readouterr().err


def test_export_db_leaves_out_nothing_it_holds(tmp_path: Path) -> None:
    """A store's pairs go into the bundle as held (ChainBuilder + append(payloads=))."""
    genesis = tmp_path / "genesis.json"
    genesis.write_bytes(RP.raw)
    db = tmp_path / "s.db"
    store = SqliteStore(db, genesis_hash=RP.hash, config=RP.config)
    builder = ChainBuilder(FX, store)
    rec, pair = sealed(ORG0_WRITER, 7)
    block = builder.block([rec])
    store.append(block, payloads={rec.id: pair})
    store.close()
    out = tmp_path / "b"
    assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out", str(out),
                     "-q"]) == 0
    assert ["payloads", [[rec.id, pair.salt, pair.payload]]] in objects(out)
