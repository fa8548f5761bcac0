"""One core over a validator set that changes at height 2 (``validators_at``).

Genesis: validators 0..3 of the fixture, power 1. From height 2: validators 1, 2, 3 of the
fixture and a new key, in that index order, with powers 1, 1, 1, 2. So index 3 means
fixture validator 3 at height 1 and the new key at height 2, and fixture validator 0 is gone.
"""

from __future__ import annotations

import pytest

from ledger.blocks import PRECOMMIT, PREVOTE, Header, Vote, build_header
from ledger.consensus import (
    Action,
    Broadcast,
    CommitBlock,
    ConsensusCore,
    MessageReceived,
    Misbehaviour,
    Proposal,
    RecordEvidence,
    SignedVote,
    Start,
    TimeoutFired,
    TimeoutKind,
)
from ledger.errors import BlockError
from ledger.genesis import Validator, ValidatorSet
from ledger.records import Record
from ledger.store import MemoryStore
from tests.factory import seeded_key
from tests.unit.consensus_helpers import CHAIN, CONFIG, FX, ListMempool, record, stored_chain

NEW = seeded_key("new-validator")
KEYS2 = [FX.validator_keys[1], FX.validator_keys[2], FX.validator_keys[3], NEW]
SET2 = ValidatorSet(tuple(Validator(i, f"s2-{i}", k.public, p)
                          for i, (k, p) in enumerate(zip(KEYS2, (1, 1, 1, 2), strict=True))),
                    since=2)


def validators_at(height: int) -> ValidatorSet:
    return FX.genesis.validators if height < 2 else SET2


def core_for(key_index: int | None, store: MemoryStore, *, key: object = None) -> ConsensusCore:
    k = key if key is not None else FX.validator_keys[key_index or 0]
    return ConsensusCore(FX.genesis, store, ListMempool([record()]), key=k,  # type: ignore[arg-type]
                         config=CONFIG, validators_at=validators_at)


def value_at_2(store: MemoryStore, validators_hash: bytes = SET2.hash
               ) -> tuple[Header, tuple[Record, ...]]:
    """A block for height 2 by its proposer in set 2, on top of ``store``'s block 1."""
    tip = store.block(1)
    assert tip is not None
    proposer = ConsensusCore(FX.genesis, store, ListMempool(),
                             validators_at=validators_at).proposer(2, 0)
    recs = (record(),)
    header = build_header(chain=CHAIN, height=2, time_ms=tip.header.time_ms + 1000,
                          prev_hash=tip.hash, records=recs, log=store.log, proposer=proposer,
                          validators_hash=validators_hash)
    return header, recs


def proposal_at_2(store: MemoryStore) -> Proposal:
    header, recs = value_at_2(store)
    tip = store.block(1)
    assert tip is not None
    return Proposal.sign(CHAIN, 0, -1, header, recs, header.proposer, KEYS2[header.proposer],
                         tip.cert)


def vote(kind: int, index: int, height: int, block_hash: bytes | None, key: object) -> SignedVote:
    return SignedVote.sign(Vote(CHAIN, kind, height, 0, block_hash), index, key)  # type: ignore[arg-type]


def signed(actions: list[Action]) -> list[Proposal | SignedVote]:
    return [a.message for a in actions
            if isinstance(a, Broadcast) and isinstance(a.message, Proposal | SignedVote)]


def test_the_proposer_of_a_height_is_chosen_in_that_heights_set() -> None:
    core = core_for(1, stored_chain(1))
    assert core.height == 2 and core.validators == SET2
    assert core.proposer(1, 0) == 1  # genesis: (height + round) mod 4
    # Set 2 starts afresh (step 0 is the height that carried the change, 1 is height 2):
    # the new key, power 2 of 5, proposes 2 of every 5 rounds.
    assert [core.proposer(2, r) for r in range(10)] == [0, 1, 2, 3, 3, 0, 1, 2, 3, 3]
    assert [core.proposer(h, 0) for h in range(2, 7)] == [0, 1, 2, 3, 3]


def test_a_removed_validator_neither_proposes_nor_votes_but_follows_the_chain() -> None:
    store = stored_chain(1)
    core = core_for(0, store)  # fixture validator 0: not in set 2
    assert core.index is None
    out = core.handle(Start(10**13))
    prop = proposal_at_2(store)
    out += core.handle(MessageReceived(9, prop))
    for i in range(4):
        out += core.handle(MessageReceived(9, vote(PREVOTE, i, 2, prop.block_hash, KEYS2[i])))
    for i in (0, 1, 3):  # powers 1 + 1 + 2 of 5: a quorum
        out += core.handle(MessageReceived(9, vote(PRECOMMIT, i, 2, prop.block_hash, KEYS2[i])))
    assert signed(out) == []
    assert [a.block.height for a in out if isinstance(a, CommitBlock)] == [2]
    assert not [a for a in out if isinstance(a, Misbehaviour)]


def test_an_added_validator_votes_from_the_first_height_that_lists_it() -> None:
    store = MemoryStore(FX.genesis.hash)
    early = core_for(None, store, key=NEW)
    assert early.height == 1 and early.index is None  # not a validator at height 1
    assert signed(early.handle(Start(10**13))) == []
    store = stored_chain(1)
    core = core_for(None, store, key=NEW)
    assert core.index == 3
    out = core.handle(Start(10**13))
    assert signed(out) == []  # not its turn to propose at (2, 0)
    prop = proposal_at_2(store)
    out = core.handle(MessageReceived(9, prop))
    assert [(v.validator, v.vote.kind, v.vote.block_hash) for v in signed(out)
            if isinstance(v, SignedVote)] == [(3, PREVOTE, prop.block_hash)]


def test_a_header_naming_the_old_set_is_invalid_at_a_height_of_the_new_one() -> None:
    store = stored_chain(1)
    core = core_for(1, store)
    header, recs = value_at_2(store, validators_hash=FX.genesis.validators.hash)
    with pytest.raises(BlockError, match="validators_hash"):
        core.check_block(header, recs)
    core.check_block(*value_at_2(store))  # the same block naming set 2 is valid


def test_votes_for_the_next_height_are_checked_under_that_heights_set() -> None:
    """Fixture validator 1 is at height 1 when the new key's precommit for height 2 arrives:
    it waits in the buffer and is checked, on replay, under set 2 (index 3 is the new key
    there; under genesis it would be fixture validator 3 and its signature would fail)."""
    store = MemoryStore(FX.genesis.hash)
    core = core_for(1, store)
    out = core.handle(Start(10**13))
    early = vote(PRECOMMIT, 3, 2, b"\x07" * 32, NEW)
    out += core.handle(MessageReceived(9, early))
    # Decide height 1 under genesis: proposer 1 is this core; three genesis precommits.
    prop = next(m for m in signed(out) if isinstance(m, Proposal))
    for i in (0, 2, 3):
        out += core.handle(MessageReceived(9, vote(PREVOTE, i, 1, prop.block_hash,
                                                   FX.validator_keys[i])))
    for i in (0, 2, 3):
        out += core.handle(MessageReceived(9, vote(PRECOMMIT, i, 1, prop.block_hash,
                                                   FX.validator_keys[i])))
    commits = [a for a in out if isinstance(a, CommitBlock)]
    assert [c.block.height for c in commits] == [1]
    store.append(commits[0].block, commits[0].last_cert)
    out += core.handle(TimeoutFired(2, 0, TimeoutKind.NEW_HEIGHT))
    assert core.height == 2 and core.index == 0  # fixture validator 1 is index 0 in set 2
    assert [v.validator for v in core.votes.precommits(0).votes_for(b"\x07" * 32)] == [3]
    assert not [a for a in out if isinstance(a, Misbehaviour)]


def test_evidence_is_judged_against_the_heights_set() -> None:
    store = stored_chain(1)
    core = core_for(1, store)
    core.handle(Start(10**13))
    out: list[Action] = []
    # The new key (index 3 at height 2) prevotes two values: evidence.
    out += core.handle(MessageReceived(9, vote(PREVOTE, 3, 2, b"\x01" * 32, NEW)))
    out += core.handle(MessageReceived(9, vote(PREVOTE, 3, 2, b"\x02" * 32, NEW)))
    # Removed fixture validator 0 signing as index 0 (fixture validator 1's place): refused.
    out += core.handle(MessageReceived(8, vote(PREVOTE, 0, 2, b"\x03" * 32,
                                               FX.validator_keys[0])))
    found = [a for a in out if isinstance(a, RecordEvidence)]
    assert len(found) == 1
    first = found[0].first
    assert isinstance(first, SignedVote) and first.validator == 3
    assert [(a.peer, a.reason) for a in out if isinstance(a, Misbehaviour)] == [
        (8, "a vote with a bad signature")]
