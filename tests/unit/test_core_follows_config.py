"""The consensus core follows committed configuration changes (SPEC section 9): a change it
decides governs the next height at once (before the store has appended the block), blocks
are checked under the configuration of their height, and a proposal carries at most one
``ledger.config`` record."""

from __future__ import annotations

import pytest

from ledger.consensus import ConsensusConfig, ConsensusCore
from ledger.errors import ConfigDuplicateError, UnauthorisedError
from ledger.records import Record
from ledger.store import MemoryStore
from tests.factory import ChainBuilder, change_record, make_governed_fixture
from tests.unit.consensus_helpers import ListMempool
from tests.unit.test_store_config import revoke_writer

FX = make_governed_fixture()


def setup() -> tuple[MemoryStore, ChainBuilder, ConsensusCore]:
    store = MemoryStore(FX.genesis.hash, config=FX.genesis.config)
    b = ChainBuilder(FX, store)
    b.add(1)
    assert store.history is not None
    core = ConsensusCore(FX.genesis, store, ListMempool(), key=FX.validator_keys[1],
                         config=ConsensusConfig(), config_at=store.history.at)
    return store, b, core


def change(nonce: int = 7) -> Record:
    config = FX.genesis.config
    return change_record(config, FX.admins[0], revoke_writer(FX, config),
                         approvers=FX.admins[:2], nonce=nonce)


def test_a_decided_change_governs_the_next_height_before_the_store_has_it() -> None:
    store, b, core = setup()
    block = b.block([change(), b.record()])
    core.check_block(block.header, block.records)
    core._decide(block)  # the CommitBlock action has not run: the store is at height 1
    assert store.height == 1
    new = core.config_at(3)
    assert new.version == 1 and core.height == 3
    assert core.validators.hash == new.validators.hash != FX.genesis.validators.hash
    assert core.index == 0  # validator 1 is index 0 of the set without validator 0
    store.append(block)  # the store catches up: the same set, the same proposer schedule
    assert store.history is not None
    assert store.history.validators_at(3) == core.validators_at(3)
    assert core.proposer(3, 0) == ConsensusCore(
        FX.genesis, store, ListMempool(), config_at=store.history.at).proposer(3, 0)


def test_records_are_checked_under_their_heights_configuration() -> None:
    store, b, _core = setup()
    block = b.block([change()])
    store.append(block)
    assert store.history is not None
    b.follow(store.history.latest)
    core = ConsensusCore(FX.genesis, store, ListMempool(), key=FX.validator_keys[1],
                         config_at=store.history.at)
    late = b.block([b.record()])  # the writer's key was revoked at height 2
    with pytest.raises(UnauthorisedError):
        core.check_block(late.header, late.records)


def test_a_block_with_two_changes_is_invalid_and_never_proposed() -> None:
    _store, b, core = setup()
    first, second = change(7), change(8)
    block = b.block([first, second])
    with pytest.raises(ConfigDuplicateError):
        core.check_block(block.header, block.records)
    core.mempool = ListMempool([first, second, b.record()])
    core.now_ms = b.time_ms + 1000
    header, records = core._get_value()
    assert [r.id for r in records if r.body.type == "ledger.config"] == [first.id]
    assert header.validators_hash == FX.genesis.validators.hash
    core.check_block(header, records)
