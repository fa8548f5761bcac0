"""Starting a node from an export bundle (SPEC section 12): node.restore.import_bundle,
``ledger node init --bundle`` and ``ledger node restore``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest

from ledger.encoding import packb
from ledger.errors import AuditError, LedgerError, StoreError
from ledger.store import SqliteStore
from node import cli
from node.restore import RestoreError, count_hint, import_bundle
from tests.factory import ChainBuilder, make_fixture
from tests.integration.cluster_util import ROOT

FX = make_fixture()


def chain(tmp_path: Path, blocks: int = 8, name: str = "chain.db",
          nonce: int = 0) -> Path:
    db = tmp_path / name
    with SqliteStore(db, genesis_hash=FX.genesis.hash) as s:
        b = ChainBuilder(FX, s, nonce=nonce)
        for i in range(blocks):
            b.add(i % 3 + 1)
    return db


def export(tmp_path: Path, db: Path, out: str = "chain.bundle") -> Path:
    bundle = tmp_path / out
    genesis = FX.write_genesis(tmp_path)
    assert cli.main(["export", "--db", str(db), "--genesis", str(genesis), "--out",
                     str(bundle), "-q"]) == 0
    return bundle


def objects(path: Path) -> list[object]:
    with open(path, "rb") as f:
        return list(msgpack.Unpacker(f, raw=False))


def write(path: Path, objs: list[object]) -> None:
    path.write_bytes(b"".join(packb(o) for o in objs))


def blocks_of(db: Path) -> list[bytes | None]:
    with SqliteStore(db, readonly=True) as s:
        return [s.block_bytes(h) for h in range(1, s.height + 1)]


def height_of(db: Path) -> int:
    with SqliteStore(db, readonly=True) as s:
        return s.height


def test_import_writes_the_exact_blocks(tmp_path: Path) -> None:
    src = chain(tmp_path)
    bundle = export(tmp_path, src)
    assert count_hint(bundle) == 8
    target = tmp_path / "node" / "chain.db"
    target.parent.mkdir()
    seen: list[int] = []
    report = import_bundle(bundle, target, FX.genesis, workers=1, on_blocks=seen.append,
                           batch_records=5)
    assert (report.kept, report.written, report.height) == (0, 8, 8)
    assert sum(seen) == 8 and len(seen) > 1  # several transactions
    assert blocks_of(target) == blocks_of(src)
    # The store opens as a node opens it (history, tip checks) and holds the same tip.
    with SqliteStore(target, genesis_hash=FX.genesis.hash, config=FX.genesis.config) as s:
        assert s.tip_hash() == report.tip_hash and s.record_count() == report.records


@pytest.mark.parametrize("case, height", [
    ("truncated", 5),  # header + 4 blocks, no end marker: the 4 are kept
    ("cut", 8),  # cut inside the last block
    ("reordered", 3),
    ("altered", 4),
    ("bad_tip", 8),
])
def test_a_bad_bundle_fails_at_its_height_and_keeps_the_good_blocks(
        tmp_path: Path, case: str, height: int) -> None:
    src = chain(tmp_path)
    bundle = export(tmp_path, src)
    objs = objects(bundle)
    if case == "truncated":
        write(bundle, objs[:5])
    elif case == "cut":
        bundle.write_bytes(bundle.read_bytes()[:-60])
    elif case == "reordered":
        objs[3], objs[4] = objs[4], objs[3]
        write(bundle, objs)
    elif case == "altered":
        data = bytearray(objs[4])  # type: ignore[call-overload]
        data[-10] ^= 1
        objs[4] = bytes(data)
        write(bundle, objs)
    elif case == "bad_tip":
        objs[-1] = ["end", 8, bytes(32)]
        write(bundle, objs)
    target = tmp_path / "target.db"
    with pytest.raises(AuditError) as info:
        import_bundle(bundle, target, FX.genesis, workers=1, batch_records=4)
    assert str(info.value).startswith(f"height {height}: ")
    good = 8 if case == "bad_tip" else height - 1
    assert blocks_of(target) == blocks_of(src)[:good]


def test_import_continues_a_store_that_holds_a_prefix(tmp_path: Path) -> None:
    src = chain(tmp_path)
    bundle = export(tmp_path, src)
    objs = objects(bundle)
    short = tmp_path / "short.bundle"
    write(short, objs[:6])  # 5 blocks, no end marker: what a killed import might leave
    target = tmp_path / "target.db"
    with pytest.raises(AuditError):
        import_bundle(short, target, FX.genesis, workers=1)
    assert height_of(target) == 5
    report = import_bundle(bundle, target, FX.genesis, workers=1)
    assert (report.kept, report.written, report.height) == (5, 3, 8)
    assert blocks_of(target) == blocks_of(src)
    again = import_bundle(bundle, target, FX.genesis, workers=1)  # nothing left to write
    assert (again.kept, again.written) == (8, 0)


def test_a_store_of_another_history_is_refused(tmp_path: Path) -> None:
    bundle = export(tmp_path, chain(tmp_path))
    other = chain(tmp_path, blocks=3, name="other.db", nonce=1000)  # same genesis
    with pytest.raises(RestoreError, match=r"^height 1: .*another history"):
        import_bundle(bundle, other, FX.genesis, workers=1)
    assert height_of(other) == 3


def test_a_bundle_of_another_genesis_is_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = export(tmp_path, chain(tmp_path))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    g2 = make_fixture(chain="other-chain").write_genesis(theirs)
    code = cli.main(["node", "init", str(tmp_path / "n5"), "--genesis", str(g2), "--api",
                     "127.0.0.1:1", "--p2p", "127.0.0.1:2", "--bundle", str(bundle), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "genesis.json is not the bytes of" in err and "nothing imported" in err
    assert not (tmp_path / "n5").exists()  # nothing made
    # An edited genesis (the same chain, other bytes) too, on restore.
    mine = tmp_path / "mine"
    mine.mkdir()
    g = FX.write_genesis(mine)
    assert cli.main(["node", "init", str(mine / "n"), "--genesis", str(g), "--api",
                     "127.0.0.1:1", "--p2p", "127.0.0.1:2"]) == 0
    (mine / "n" / "genesis.json").write_bytes(g.read_bytes() + b"\n")
    capsys.readouterr()
    assert cli.main(["node", "restore", str(mine / "n"), "--bundle", str(bundle), "-q"]) == 2
    assert "genesis.json is not the bytes of" in capsys.readouterr().err
    assert not (mine / "n" / "chain.db").exists()


def test_node_init_and_restore_commands(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    src = chain(tmp_path)
    bundle = export(tmp_path, src)
    genesis = tmp_path / "genesis.json"
    node = tmp_path / "n5"
    assert cli.main(["node", "init", str(node), "--genesis", str(genesis), "--api",
                     "127.0.0.1:1", "--p2p", "127.0.0.1:2", "--bundle", str(bundle), "-q",
                     "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "ok: 8 blocks written" in out and "height 8" in out
    assert blocks_of(node / "chain.db") == blocks_of(src)
    assert cli.main(["node", "check", str(node), "--workers", "1"]) == 0
    # The store lost: restore fills it again.
    for p in node.glob("chain.db*"):
        p.unlink()
    assert cli.main(["node", "restore", str(node), "--bundle", str(bundle), "-q",
                     "--workers", "1"]) == 0
    assert blocks_of(node / "chain.db") == blocks_of(src)
    # A bad block: exit 1, `height N:`, the blocks before it kept.
    for p in node.glob("chain.db*"):
        p.unlink()
    objs = objects(bundle)
    data = bytearray(objs[6])  # type: ignore[call-overload]
    data[-10] ^= 1
    objs[6] = bytes(data)
    write(bundle, objs)
    capsys.readouterr()
    assert cli.main(["node", "restore", str(node), "--bundle", str(bundle), "-q",
                     "--workers", "1"]) == 1
    assert capsys.readouterr().err.startswith("height 6: ")
    assert height_of(node / "chain.db") == 5


@pytest.mark.slow
def test_a_killed_import_leaves_a_valid_prefix_and_a_rerun_finishes(tmp_path: Path) -> None:
    src = chain(tmp_path, blocks=400)
    bundle = export(tmp_path, src)
    genesis = tmp_path / "genesis.json"
    node = tmp_path / "n5"
    assert cli.main(["node", "init", str(node), "--genesis", str(genesis), "--api",
                     "127.0.0.1:1", "--p2p", "127.0.0.1:2"]) == 0
    store = node / "chain.db"
    # Small transactions, so that the kill lands between and inside them.
    code = ("import sys, node.restore as r; r.BATCH_RECORDS = 40; from node.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "node", "restore", str(node),
                             "--bundle", str(bundle), "-q", "--workers", "1"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if store.exists() and height_of(store) >= 50:
                    break
            except StoreError:  # the file is there, its tables not yet
                pass
            time.sleep(0.01)
        assert proc.poll() is None, "the import ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cut = height_of(store)
    assert 50 <= cut < 400
    assert blocks_of(store) == blocks_of(src)[:cut]  # a valid prefix
    assert cli.main(["node", "check", str(node), "--workers", "1"]) == 0
    assert cli.main(["node", "restore", str(node), "--bundle", str(bundle), "-q",
                     "--workers", "1"]) == 0
    assert blocks_of(store) == blocks_of(src)


def test_store_bulk_commits_together_or_rolls_back_whole(tmp_path: Path) -> None:
    src = chain(tmp_path, blocks=6)
    with SqliteStore(src, readonly=True) as s:
        blocks = [s.block(h) for h in range(1, 7)]
    db = tmp_path / "bulk.db"
    with SqliteStore(db, genesis_hash=FX.genesis.hash, config=FX.genesis.config) as store:
        with store.bulk():
            for b in blocks[:3]:
                assert b is not None
                store.append(b)
            assert store.height == 3  # in memory at once
            assert height_of(db) == 0  # another connection sees nothing before the commit
        assert height_of(db) == 3
        # A block that does not extend the chain inside a batch: the whole batch is undone,
        # in the file and in memory, and the store goes on from its last committed tip.
        with pytest.raises(LedgerError), store.bulk():
            store.append(blocks[3])  # type: ignore[arg-type]
            store.append(blocks[5])  # type: ignore[arg-type]  # skips height 5
        assert store.height == 3 and height_of(db) == 3
        assert store.tip_hash() == blocks[2].hash  # type: ignore[union-attr]
        assert not store.seen_ids([r.id for r in blocks[3].records])  # type: ignore[union-attr]
        with store.bulk():
            for b in blocks[3:]:
                store.append(b)  # type: ignore[arg-type]
        with pytest.raises(StoreError, match="does not nest"), store.bulk(), store.bulk():
            pass
    assert blocks_of(db) == blocks_of(src)


def test_a_chain_with_configuration_changes_imports_under_the_set_in_force(
        tmp_path: Path) -> None:
    """Blocks after a change are checked under the configuration it makes, also inside one
    transaction (batches of 2 records here) and after a rolled-back batch; a block certified
    by the replaced set is refused at its height."""
    from ledger.store import MemoryStore
    from tests.factory import make_governed_fixture
    from tests.unit.test_store_config import add_change

    gx = make_governed_fixture()
    src = tmp_path / "governed.db"
    with SqliteStore(src, genesis_hash=gx.genesis.hash, config=gx.genesis.config) as s:
        b = ChainBuilder(gx, s)
        b.add(1)
        add_change(b, gx, gx.genesis.config)  # height 2: validator 0 leaves
        for _ in range(4):
            b.add(2, key=gx.operator)  # the change revoked the writer
        good = list(b.blocks)
    genesis = gx.write_genesis(tmp_path)
    bundle = tmp_path / "governed.bundle"
    assert cli.main(["export", "--db", str(src), "--genesis", str(genesis), "--out",
                     str(bundle), "-q"]) == 0
    target = tmp_path / "target.db"
    report = import_bundle(bundle, target, gx.genesis, workers=1, batch_records=2)
    assert report.height == 6 and blocks_of(target) == blocks_of(src)
    with SqliteStore(target, genesis_hash=gx.genesis.hash, config=gx.genesis.config) as s:
        assert s.history is not None and [c.version for _, c in s.history] == [0, 1]

    # Block 4 certified under genesis's set, as if the change at height 2 had not happened.
    mem = MemoryStore(gx.genesis.hash)
    for block in good[:3]:
        mem.append(block)
    stale = ChainBuilder(gx, mem, time_ms=good[2].header.time_ms, nonce=10_000).add(
        1, key=gx.operator)
    objs = objects(bundle)
    write(bundle, [*objs[:4], stale.to_wire(), ["end", 4, stale.hash]])
    for p in tmp_path.glob("target.db*"):
        p.unlink()
    with pytest.raises(AuditError, match=r"^height 4: ") as info:
        import_bundle(bundle, target, gx.genesis, workers=1, batch_records=1000)
    assert "validator" in str(info.value)  # the set in force is version 1's
    assert blocks_of(target) == blocks_of(src)[:3]
    with SqliteStore(target, genesis_hash=gx.genesis.hash, config=gx.genesis.config) as s:
        assert s.history is not None and [c.version for _, c in s.history] == [0, 1]


def test_the_witnesses_section_is_verified_and_kept(tmp_path: Path) -> None:
    from tests.unit.test_export import FXW, cosigned_export

    out, _ = cosigned_export(tmp_path)
    target = tmp_path / "target.db"
    report = import_bundle(out, target, FXW.genesis, workers=1)
    assert (report.height, report.cosignatures) == (6, 4)
    with SqliteStore(tmp_path / "chain.db", readonly=True) as src, \
            SqliteStore(target, readonly=True) as s:
        assert list(s.cosignatures_between(1, 6)) == list(src.cosignatures_between(1, 6))
        assert [s.block_bytes(h) for h in range(1, 7)] == \
            [src.block_bytes(h) for h in range(1, 7)]
    # A bad cosignature: `height N:` and none kept (the blocks are, they verified).
    objs = objects(out)
    entries = objs[7][1]  # type: ignore[index]
    sig = bytearray(entries[3][2])
    sig[0] ^= 1
    entries[3][2] = bytes(sig)
    write(out, objs)
    for p in tmp_path.glob("target.db*"):
        p.unlink()
    with pytest.raises(AuditError, match=r"^height 5: "):
        import_bundle(out, target, FXW.genesis, workers=1)
    with SqliteStore(target, readonly=True) as s:
        assert s.height == 6 and list(s.cosignatures_between(1, 6)) == []


def test_node_init_warns_when_the_key_is_a_genesis_validator_s(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory made for an existing validator's key has no signing state: say so."""
    from ledger.crypto import write_key_file

    genesis = FX.write_genesis(tmp_path)
    key = tmp_path / "v0.pem"
    write_key_file(key, FX.validator_keys[0])
    assert cli.main(["node", "init", str(tmp_path / "n0"), "--genesis", str(genesis),
                     "--api", "127.0.0.1:1", "--p2p", "127.0.0.1:2", "--key", str(key)]) == 0
    err = capsys.readouterr().err
    assert "warning: " + FX.validator_keys[0].public.hex() in err
    assert "signing_state.bin" in err
    assert cli.main(["node", "init", str(tmp_path / "n9"), "--genesis", str(genesis),
                     "--api", "127.0.0.1:1", "--p2p", "127.0.0.1:2"]) == 0
    assert "warning" not in capsys.readouterr().err
