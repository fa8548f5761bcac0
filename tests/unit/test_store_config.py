"""Stores follow configuration changes (SPEC section 9): each change is recorded with its
block, ``history`` gives the configuration of every height, a reopened (or SIGKILLed and
reopened) SQLite store rebuilds it from genesis, and a block whose header names the set a
change replaced is refused."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger.config import Config
from ledger.errors import BlockError
from ledger.store import BlockStore, MemoryStore, SqliteStore
from ledger.store.base import block_change
from tests.factory import (
    ChainBuilder,
    Fixture,
    change_bytes,
    change_record,
    config_doc,
    make_governed_fixture,
)

FX = make_governed_fixture()
ROOT = Path(__file__).resolve().parents[2]


def revoke_writer(fx: Fixture, config: Config) -> bytes:
    """A change dropping the writer's membership and validator 0."""
    d = copy.deepcopy(config_doc(fx.genesis))
    writer = fx.writer.public.hex()
    for org in d["organizations"]:
        org["members"] = [m for m in org["members"] if m["pubkey"] != writer]
    d["validators"] = d["validators"][1:]
    return change_bytes(config, d)


def add_change(b: ChainBuilder, fx: Fixture, config: Config) -> Config:
    """Append a block carrying the change; return the configuration it makes."""
    rec = change_record(config, fx.admins[0], revoke_writer(fx, config),
                        approvers=fx.admins[:2], nonce=b.store.height + 1)
    block = b.block([rec, b.record()])
    b.store.append(block)
    b.blocks.append(block)
    history = b.store.history
    assert history is not None
    b.follow(history.latest)
    return history.latest


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlockStore]:
    s: BlockStore = (SqliteStore(tmp_path / "chain.db", genesis_hash=FX.genesis.hash,
                                 config=FX.genesis.config)
                     if request.param == "sqlite"
                     else MemoryStore(FX.genesis.hash, config=FX.genesis.config))
    yield s
    s.close()


def test_a_change_governs_from_the_next_height(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    b.add(1)
    new = add_change(b, FX, FX.genesis.config)
    history = store.history
    assert history is not None
    assert new.version == 1 and history.start(1) == 3
    assert history.at(2).version == 0 and history.at(3) is new
    assert history.validators_at(3).hash != FX.genesis.validators.hash
    assert FX.writer.public not in new.members
    changes = store.config_changes()
    assert [(c.height, c.index) for c in changes] == [(2, 0)]
    assert block_change(b.blocks[1]) == changes[0]
    b.add(2)  # certified by the new set
    assert store.height == 3 and history.latest is new


def test_a_block_under_the_replaced_set_is_refused(store: BlockStore) -> None:
    b = ChainBuilder(FX, store)
    add_change(b, FX, FX.genesis.config)
    b.follow(FX.genesis.config)  # a builder that missed the change
    with pytest.raises(BlockError, match="height 2: validators_hash"):
        store.append(b.block([b.record()]))
    assert store.height == 1


def test_a_store_without_the_configuration_records_changes_only(tmp_path: Path) -> None:
    store = MemoryStore(FX.genesis.hash)
    b = ChainBuilder(FX, store)
    rec = change_record(FX.genesis.config, FX.admins[0],
                        revoke_writer(FX, FX.genesis.config), approvers=FX.admins[:2])
    store.append(b.block([rec]))
    assert store.history is None and [c.height for c in store.config_changes()] == [1]


def test_reopened_sqlite_store_rebuilds_the_history(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    with SqliteStore(path, genesis_hash=FX.genesis.hash, config=FX.genesis.config) as s:
        b = ChainBuilder(FX, s)
        b.add(1)
        first = add_change(b, FX, FX.genesis.config)
        b.add(1)
        d = config_doc(FX.genesis)  # restore the genesis configuration as version 2
        rec = change_record(first, FX.admins[0], change_bytes(first, d),
                            approvers=FX.admins[:2], nonce=99,
                            joiners=[FX.validator_keys[0]])
        block = b.block([rec])
        s.append(block)
        assert s.history is not None
        versions = [(start, c.version) for start, c in s.history]
        # read once at open (none), then extended by each append that carries a change
        assert [c.height for c in s.config_changes()] == [2, 4]
        assert s.config_changes()[1] == block_change(block)
    with SqliteStore(path, genesis_hash=FX.genesis.hash, config=FX.genesis.config) as s:
        assert s.history is not None
        assert [(start, c.version) for start, c in s.history] == versions == [
            (1, 0), (3, 1), (5, 2)]
        assert s.history.latest.validators.hash == FX.genesis.validators.hash
        assert s.history.at(3).id == first.id
    with SqliteStore(path, readonly=True) as ro:
        assert [c.height for c in ro.config_changes()] == [2, 4]
        assert ro.history is None


WRITER = textwrap.dedent("""
    import sys, time
    from ledger.store import SqliteStore
    from tests.factory import ChainBuilder, make_governed_fixture
    from tests.unit.test_store_config import add_change
    fx = make_governed_fixture()
    store = SqliteStore(sys.argv[1], genesis_hash=fx.genesis.hash, config=fx.genesis.config,
                        synchronous="FULL")
    b = ChainBuilder(fx, store)
    b.add(1)
    add_change(b, fx, fx.genesis.config)
    print("committed", store.height, flush=True)
    time.sleep(60)
""")


def test_a_store_sigkilled_right_after_a_change_reopens_with_it(tmp_path: Path) -> None:
    path = tmp_path / "chain.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["committed", "2"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with SqliteStore(path, genesis_hash=FX.genesis.hash, config=FX.genesis.config) as s:
        assert s.height == 2 and s.history is not None
        assert s.history.latest.version == 1 and s.history.start(1) == 3
        assert FX.writer.public not in s.history.at(3).members
