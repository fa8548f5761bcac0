"""``ledger audit --state FILE``: the incremental audit (SPEC section 8) — a first run saves
what it verified, a later run checks the served chain holds it and verifies only what was
added; a rewritten history is named at its first differing height; a state for another
chain, or a damaged one, is refused; the file is replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ledger.audit import ChainVerifier
from ledger.auditstate import AuditStateError, state_from_bytes, state_to_bytes
from ledger.store import SqliteStore
from node import cli
from tests.factory import ChainBuilder, make_fixture, sealed_record
from tests.inprocess import InProcessApi
from tests.unit.test_log_proofs import served

FX = make_fixture()


def build(path: Path, blocks: int, *, diverge_at: int | None = None) -> ChainBuilder:
    """A store of ``blocks`` blocks; from ``diverge_at`` on, blocks of another history
    (same genesis, same keys: a node rewriting history would serve such a chain)."""
    store = SqliteStore(path, genesis_hash=FX.genesis.hash)
    b = ChainBuilder(FX, store)
    for height in range(1, blocks + 1):
        n = height % 3 + 1
        if diverge_at is not None and height >= diverge_at:
            n += 1
        b.add(n)
    return b


def extend(b: ChainBuilder, blocks: int) -> None:
    for _ in range(blocks):
        b.add(2)


def audit(capsys: pytest.CaptureFixture[str], db: Path, state: Path,
          *extra: str) -> tuple[int, str, str]:
    genesis = FX.write_genesis(db.parent)
    code = cli.main(["audit", "--db", str(db), "--genesis", str(genesis), "--state",
                     str(state), "--workers", "1", "--quiet", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_second_run_verifies_only_new_blocks(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db, state = tmp_path / "chain.db", tmp_path / "audit.state"
    b = build(db, 12)
    code, out, err = audit(capsys, db, state)
    assert code == 0, err
    assert "12 blocks; 12 new blocks" in out and "from genesis" in out
    assert state.exists()
    first = state.read_bytes()

    code, out, err = audit(capsys, db, state)  # nothing new
    assert code == 0, err
    assert "0 new blocks, 0 new records" in out and f"state {state} unchanged" in out
    assert state.read_bytes() == first  # nothing new: not rewritten

    extend(b, 5)  # 10 new records
    b.store.close()
    code, out, err = audit(capsys, db, state)
    assert code == 0, err
    assert "17 blocks; 5 new blocks, 10 new records verified since the saved audit at " \
           "height 12 (state loaded in " in out
    verifier, hashes = state_from_bytes(state.read_bytes(), FX.genesis)
    assert verifier.height == 17 and len(hashes) == 17 * 32
    assert hashes[-32:] == verifier.tip_hash == b.blocks[-1].hash
    assert [hashes[i * 32:(i + 1) * 32] for i in range(17)] == [blk.hash for blk in b.blocks]


def test_state_keeps_everything_the_verifier_keeps(tmp_path: Path) -> None:
    """Round trip, sealed records included: a continued verifier equals the one saved."""
    b = build(tmp_path / "chain.db", 3)
    b.store.append(blk := b.block([sealed_record(FX.writer, FX.genesis.chain_id, nonce=999)]))
    b.blocks.append(blk)
    verifier = ChainVerifier(FX.genesis)
    for block in b.blocks:
        verifier.verify_next(block.to_wire())
    hashes = b"".join(block.hash for block in b.blocks)
    loaded, loaded_hashes = state_from_bytes(state_to_bytes(verifier, hashes), FX.genesis)
    assert loaded_hashes == hashes
    for name in ("height", "records", "tip_hash", "last_time_ms", "seen_ids", "seen_nonces",
                 "sealed", "digests", "redacted", "changes"):
        assert getattr(loaded, name) == getattr(verifier, name), name
    assert loaded.sealed and loaded.digests
    assert loaded.log.size == verifier.log.size and loaded.log.root() == verifier.log.root()
    assert loaded.config.id == verifier.config.id


@pytest.mark.parametrize("k", [1, 4, 9])
def test_rewritten_history_is_caught_at_its_first_height(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], k: int) -> None:
    honest, forged = tmp_path / "honest.db", tmp_path / "forged.db"
    build(honest, 10).store.close()
    build(forged, 14, diverge_at=k).store.close()
    state = tmp_path / "audit.state"
    assert audit(capsys, honest, state)[0] == 0
    before = state.read_bytes()
    code, _, err = audit(capsys, forged, state)
    assert code == 1
    assert err.startswith(f"height {k}: ") and "different history" in err, err
    assert state.read_bytes() == before  # a failed audit saves nothing


def test_a_shorter_chain_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long, short = tmp_path / "long.db", tmp_path / "short.db"
    build(long, 8).store.close()
    build(short, 5).store.close()
    state = tmp_path / "audit.state"
    assert audit(capsys, long, state)[0] == 0
    code, _, err = audit(capsys, short, state)
    assert code == 1 and err.startswith("height 6: ") and "shorter" in err, err


def test_state_of_another_genesis_is_refused(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    db, state = tmp_path / "chain.db", tmp_path / "audit.state"
    build(db, 3).store.close()
    other = make_fixture(chain="other")
    verifier = ChainVerifier(other.genesis)
    state.write_bytes(state_to_bytes(verifier, b""))
    code, _, err = audit(capsys, db, state)
    assert code == 2
    assert err.startswith(f"ledger: {state}: audit state is of another chain ('other'")
    assert err.count("\n") == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_state_is_refused_in_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              damage: str) -> None:
    db, state = tmp_path / "chain.db", tmp_path / "audit.state"
    build(db, 4).store.close()
    assert audit(capsys, db, state)[0] == 0
    data = state.read_bytes()
    state.write_bytes({
        "truncate": data[:len(data) // 2],
        "flip": data[:40] + bytes([data[40] ^ 1]) + data[41:],
        "empty": b"",
        "garbage": b"\x00" * 100,
    }[damage])
    code, _, err = audit(capsys, db, state)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"ledger: {state}: ")
    assert "truncated or corrupt" in err or "not an audit state" in err


def test_state_checks_its_own_consistency() -> None:
    verifier = ChainVerifier(FX.genesis)
    with pytest.raises(ValueError):
        state_to_bytes(verifier, bytes(32))  # a hash for a height the verifier is not at
    with pytest.raises(AuditStateError, match="not an audit state"):
        state_from_bytes(b"PK\x03\x04", FX.genesis)


def test_state_is_written_atomically(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db, state = tmp_path / "chain.db", tmp_path / "audit.state"
    b = build(db, 4)
    assert audit(capsys, db, state)[0] == 0
    before = state.read_bytes()
    extend(b, 3)
    b.store.close()

    real_fsync = os.fsync

    def crash(fd: int) -> None:  # the disk fails after part of the new state was written
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    code, _, err = audit(capsys, db, state)
    assert code == 2 and "cannot write the audit state" in err, err
    assert state.read_bytes() == before  # the old state, whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(os, "fsync", real_fsync)
    code, out, err = audit(capsys, db, state)
    assert code == 0 and "3 new blocks" in out, err


# -- over HTTP: the in-process app served by uvicorn on 127.0.0.1 ---------------------------

def _grow(api: InProcessApi, sizes: list[int]) -> None:
    service = api.service
    for n in sizes:
        block = service.builder.block([api.record() for _ in range(n)])
        service.append(block)
        service.builder.blocks.append(block)


def test_over_http_new_blocks_then_a_forked_node(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same story against nodes: an honest node grows and is audited incrementally; a
    node built from the same genesis and validator keys serving a history that forks at
    height 4 is caught there."""
    genesis = str(FX.write_genesis(tmp_path))
    state = tmp_path / "audit.state"
    honest, forked = InProcessApi(FX), InProcessApi(FX)
    _grow(honest, [2, 3, 1, 2, 2, 3])
    for height in (1, 2, 3):  # the same first three blocks, then another history
        block = honest.store.block(height)
        assert block is not None
        forked.service.append(block)
        forked.service.builder.blocks.append(block)
    forked.nonce = 1000
    forked.service.builder.time_ms = honest.service.builder.time_ms
    _grow(forked, [4, 2, 3, 1, 1])

    def audit_node(url: str) -> tuple[int, str, str]:
        code = cli.main(["audit", "--node", url, "--genesis", genesis, "--state", str(state),
                         "--workers", "1", "--quiet"])
        out = capsys.readouterr()
        return code, out.out, out.err

    with served(honest) as url:
        code, out, err = audit_node(url)
        assert code == 0 and "6 blocks; 6 new blocks, 13 new records" in out, err
        _grow(honest, [1, 2, 3])
        code, out, err = audit_node(url)
        assert code == 0 and "9 blocks; 3 new blocks, 6 new records verified since the " \
                             "saved audit at height 6 (state loaded in" in out, err
        assert "log consistency 13 -> 19 proved" in out
        # blocks that verify, but a node whose log proofs do not: caught, nothing saved
        saved = state.read_bytes()
        real = honest.store.log_nodes
        monkeypatch.setattr(honest.store, "log_nodes",
                            lambda ids: {k: bytes(32) for k in real(ids)})
        _grow(honest, [2])
        code, out, err = audit_node(url)
        assert code == 1 and "consistency proof from the saved 19 records to 21" in err, err
        assert state.read_bytes() == saved
        monkeypatch.setattr(honest.store, "log_nodes", real)
        code, out, err = audit_node(url)
        assert code == 0 and "1 new block, 2 new records" in out, err
    saved = state.read_bytes()
    with served(forked) as url:
        code, _, err = audit_node(url)
    assert code == 1 and err.startswith("height 4: ") and "different history" in err, err
    assert state.read_bytes() == saved


# -- configuration changes: the saved history keeps being followed --------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_saved_history_keeps_following_changes(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               workers: str) -> None:
    """A state saved at height 3 (version 1 in force) continues over the change at height 4:
    block 5, certified by the set version 2 names, verifies; the same chain with block 5
    certified by the replaced set fails at 5."""
    from tests.unit.test_config_chain import FX as GOV
    from tests.unit.test_config_chain import build as build_governed

    genesis = str(GOV.write_genesis(tmp_path))
    for stale, expect in ((None, 0), (5, 1)):
        folder = tmp_path / f"stale-{stale}"
        folder.mkdir()
        store, b = build_governed(folder, stale_cert_at=stale)
        store.close()
        verifier = ChainVerifier(GOV.genesis)
        for block in b.blocks[:3]:
            verifier.verify_next(block.to_wire())
        assert verifier.config.version == 1 and verifier.changes
        state = folder / "audit.state"
        state.write_bytes(state_to_bytes(verifier, b"".join(x.hash for x in b.blocks[:3])))
        code = cli.main(["audit", "--db", str(folder / "chain.db"), "--genesis", genesis,
                         "--state", str(state), "--workers", workers, "--quiet"])
        out = capsys.readouterr()
        assert code == expect, out.err
        if stale is None:
            assert "5 blocks; 2 new blocks" in out.out
            assert "3 configuration versions followed (from heights 1, 3, 5)" in out.out
            loaded, _ = state_from_bytes(state.read_bytes(), GOV.genesis)
            assert loaded.config.version == 2 and [h for h, _ in loaded.changes] == [2, 4]
        else:
            assert out.err.startswith("height 5: "), out.err
