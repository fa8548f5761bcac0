"""Each rule of Tendermint's Algorithm 1 (Buchman, Kwon, Milosevic 2018), one core at a time.

Every test drives a single ConsensusCore (validator ``me`` of 4, power 1 each: f = 1,
2f+1 = 3, f+1 = 2) with correctly signed messages of the other validators and checks the
actions it returns and its state. Test names carry the paper's line numbers (L11..L67);
each test fails when the rule of its lines is removed from ``ledger/consensus/core.py``.
At height 1 the proposer of round r is ``(1 + r) % 4``: validator 1, 2, 3, 0, 1, ...
so ``me = 0`` (the default) proposes only in round 3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from ledger.blocks import PRECOMMIT, PREVOTE, Block, sign_certificate
from ledger.consensus import (
    Action,
    BlockRequest,
    BlockResponse,
    Broadcast,
    PersistState,
    Proposal,
    RecordEvidence,
    ScheduleTimeout,
    SendTo,
    ServeBlocks,
    SignedVote,
    SigningState,
    Step,
    Tick,
    TimeoutKind,
    in_reservation,
)
from ledger.crypto import is_valid_signature, sha256
from ledger.store import MemoryStore
from tests.factory import ChainBuilder
from tests.unit.consensus_helpers import (
    CHAIN,
    CONFIG,
    FX,
    T0,
    Node,
    broadcast_proposals,
    broadcast_votes,
    commits,
    evidence,
    own_votes,
    persists,
    proposer_of,
    record,
    scheduled,
    sends,
    stored_chain,
    with_bad_signature,
)

PROPOSE_T, PREVOTE_T, PRECOMMIT_T = TimeoutKind.PROPOSE, TimeoutKind.PREVOTE, TimeoutKind.PRECOMMIT
VALIDATORS = FX.genesis.validators
OTHER_HASH = sha256(b"some other block")


def propose_delay(r: int) -> int:
    return CONFIG.timeout_propose_ms + r * CONFIG.timeout_propose_delta_ms


def prevote_delay(r: int) -> int:
    return CONFIG.timeout_prevote_ms + r * CONFIG.timeout_prevote_delta_ms


def precommit_delay(r: int) -> int:
    return CONFIG.timeout_precommit_ms + r * CONFIG.timeout_precommit_delta_ms


def flip(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 1]) + sig[1:]


def started(me: int = 0, **kw: object) -> Node:
    n = Node(me, **kw)  # type: ignore[arg-type]
    n.start()
    return n


# -- L11-L21: StartRound ---------------------------------------------------------------------

def test_l14_l19_round_0_proposer_broadcasts_proposal_of_mempool_records() -> None:
    recs = [record(), record()]
    n = Node(me=proposer_of(1, 0), mempool=recs)
    actions = n.start()
    props = broadcast_proposals(actions)
    assert len(props) == 1
    p = props[0]
    assert (p.chain, p.height, p.round, p.pol_round, p.proposer) == (CHAIN, 1, 0, -1, 1)
    assert p.records == tuple(recs)
    assert p.header.prev_hash == FX.genesis.hash and p.header.record_count == 2
    assert is_valid_signature(VALIDATORS[1].pubkey, p.sign_bytes(), p.sig)
    assert n.core.is_valid(p)
    assert n.core.proposals[0] == p
    assert scheduled(actions, PROPOSE_T) == []  # L21 is for non-proposers only
    assert own_votes(actions, PREVOTE) == [p.block_hash]  # and L22 on its own proposal


def test_l21_non_proposer_schedules_timeout_propose() -> None:
    n = Node(me=0)
    actions = n.start()
    assert broadcast_proposals(actions) == [] and broadcast_votes(actions) == []
    assert scheduled(actions, PROPOSE_T) == [ScheduleTimeout(1, 0, PROPOSE_T, propose_delay(0))]
    assert (n.height, n.round, n.core.step) == (1, 0, Step.PROPOSE)


def test_l11_l21_each_new_round_schedules_a_longer_timeout_propose_or_proposes() -> None:
    n = started(0)
    for r in (1, 2):
        actions = n.next_round()
        assert (n.round, n.core.step) == (r, Step.PROPOSE)
        assert scheduled(actions, PROPOSE_T) == [
            ScheduleTimeout(1, r, PROPOSE_T, propose_delay(r))]
    actions = n.next_round()  # round 3: me (0) is the proposer
    assert n.round == 3 and scheduled(actions, PROPOSE_T) == []
    assert [(p.round, p.pol_round, p.proposer) for p in broadcast_proposals(actions)] == [
        (3, -1, 0)]
    actions = n.next_round()
    assert scheduled(actions, PROPOSE_T) == [ScheduleTimeout(1, 4, PROPOSE_T, propose_delay(4))]


def test_l15_l16_proposer_reproposes_its_locked_valid_value_with_pol_round() -> None:
    n = started(me=proposer_of(1, 1), mempool=[record()])  # validator 2 proposes round 1
    x = n.proposal(0)
    n.lock_on(x)
    assert (n.core.valid_round, n.core.valid.block_hash) == (0, x.block_hash)
    actions = n.next_round()
    props = broadcast_proposals(actions)
    assert [(p.round, p.pol_round, p.block_hash) for p in props] == [(1, 0, x.block_hash)]
    assert props[0].records == x.records
    assert own_votes(actions, PREVOTE, round=1) == [x.block_hash]  # L28: its polka is known


def test_l15_l16_proposer_reproposes_valid_value_it_is_not_locked_on() -> None:
    n = started(me=proposer_of(1, 1), mempool=[record()])
    x = n.proposal(0)
    n.timeout(PROPOSE_T)  # prevote nil
    n.timeout(PREVOTE_T)  # precommit nil: step precommit
    n.deliver(x)
    n.prevotes(n.others(3), 0, x.block_hash)  # L36 in step precommit: validValue only
    assert (n.core.locked_round, n.core.valid_round) == (-1, 0)
    props = broadcast_proposals(n.next_round())
    assert [(p.round, p.pol_round, p.block_hash) for p in props] == [(1, 0, x.block_hash)]


# -- L22-L27 -------------------------------------------------------------------------------

def test_l22_l24_l27_prevote_for_a_valid_proposal() -> None:
    n = started(0)
    p = n.proposal(0)
    actions = n.deliver(p)
    votes = broadcast_votes(actions)
    assert [(v.vote.kind, v.vote.height, v.vote.round, v.vote.block_hash, v.validator)
            for v in votes] == [(PREVOTE, 1, 0, p.block_hash, 0)]
    assert is_valid_signature(VALIDATORS[0].pubkey, votes[0].vote.sign_bytes(), votes[0].sig)
    assert n.core.step == Step.PREVOTE


def test_l22_l24_prevote_for_a_valid_proposal_on_top_of_a_stored_chain() -> None:
    n = started(0, store=stored_chain(2))
    assert n.height == 3
    p = n.proposal(0)
    assert own_votes(n.deliver(p), PREVOTE) == [p.block_hash]


def _committed_record(n: Node) -> tuple:
    return n.value([n.store.block(1).records[0]])


def _twice(n: Node) -> tuple:
    r = record()
    return n.value([r, r])


INVALID_VALUES: list[tuple[str, int, Callable[[Node], tuple]]] = [
    ("wrong prev_hash", 0, lambda n: n.value(prev_hash=sha256(b"elsewhere"))),
    ("wrong prev_hash on a stored chain", 1, lambda n: n.value(prev_hash=FX.genesis.hash)),
    ("bad record signature", 0, lambda n: n.value([with_bad_signature(record())])),
    ("unauthorised signer", 0, lambda n: n.value([record(FX.outsider)])),
    ("type the signer may not write", 0,
     lambda n: n.value([record(FX.operator, type="config.change")])),
    ("record of another chain", 0, lambda n: n.value([record(chain="other-chain")])),
    ("wrong log_root", 0, lambda n: n.value(log_root=sha256(b"x"))),
    ("wrong log_size", 0, lambda n: n.value(log_size=7)),
    ("wrong validators_hash", 0, lambda n: n.value(validators_hash=sha256(b"x"))),
    ("header of another chain", 0, lambda n: n.value(chain="other-chain")),
    ("time not after the parent's", 1,
     lambda n: n.value(time_ms=n.store.block(1).header.time_ms)),
    ("record already committed", 1, _committed_record),
    ("record twice in the block", 0, _twice),
]


@pytest.mark.parametrize(("blocks", "make"), [(b, m) for _, b, m in INVALID_VALUES],
                         ids=[name for name, _, _ in INVALID_VALUES])
def test_l22_l26_l27_prevote_nil_for_an_invalid_proposal(
        blocks: int, make: Callable[[Node], tuple]) -> None:
    n = started(0, store=stored_chain(blocks))
    p = n.proposal(0, value=make(n))
    assert not n.core.is_valid(p)
    actions = n.deliver(p)
    assert own_votes(actions, PREVOTE) == [None]
    assert n.core.step == Step.PREVOTE


@pytest.mark.parametrize("fields", [{"records_root": sha256(b"x")}, {"record_count": 0}],
                         ids=["wrong records_root", "wrong record_count"])
def test_a_proposal_whose_records_are_not_its_headers_is_not_the_rounds_proposal(
        fields: dict[str, object]) -> None:
    # The signature covers the header only, so such a copy may be a relay's swap of the
    # genuine records: it is dropped (and scored), and nil is prevoted on the timeout.
    n = started(0)
    p = n.proposal(0, value=n.value(**fields))  # type: ignore[arg-type]
    assert not n.core.is_valid(p)
    assert own_votes(n.deliver(p), PREVOTE) == [] and n.core.proposals == {}
    assert own_votes(n.timeout(PROPOSE_T), PREVOTE) == [None]


def test_l23_l26_prevote_nil_when_locked_on_another_value() -> None:
    n = started(0)
    x = n.proposal(0)
    n.lock_on(x)
    n.next_round()
    y = n.proposal(1)
    actions = n.deliver(y)
    assert n.core.is_valid(y)
    assert own_votes(actions, PREVOTE, round=1) == [None]
    assert n.core.step == Step.PREVOTE
    assert n.core.locked_round == 0  # a new proposal does not move the lock


def test_l23_l24_prevote_the_locked_value_when_it_is_proposed_again() -> None:
    n = started(0)
    x = n.proposal(0)
    n.lock_on(x)
    n.next_round()
    again = n.proposal(1, value=(x.header, x.records))  # pol_round -1
    assert own_votes(n.deliver(again), PREVOTE, round=1) == [x.block_hash]


# -- L28-L33 -------------------------------------------------------------------------------

def test_l28_l30_prevote_polka_value_when_locked_before_its_polka_round() -> None:
    n = started(0)
    n.lock_on(n.proposal(0))  # locked_round 0 on x
    n.next_round()
    y_value = n.value()
    y_hash = y_value[0].hash
    n.prevotes(n.others(3), 1, y_hash)  # a polka for y in round 1 (its proposal never seen)
    n.next_round()
    y = n.proposal(2, pol_round=1, value=y_value)
    actions = n.deliver(y)
    assert own_votes(actions, PREVOTE, round=2) == [y_hash]
    assert n.core.step == Step.PREVOTE


def test_l28_l32_prevote_nil_when_locked_after_the_polka_round() -> None:
    n = started(0)
    y_value = n.value()
    y_hash = y_value[0].hash
    n.prevotes(n.others(3), 0, y_hash)  # polka for y in round 0
    n.next_round()
    n.lock_on(n.proposal(1))  # locked_round 1 on x
    n.next_round()
    y = n.proposal(2, pol_round=0, value=y_value)
    actions = n.deliver(y)
    assert n.core.is_valid(y)
    assert own_votes(actions, PREVOTE, round=2) == [None]
    assert n.core.step == Step.PREVOTE
    assert n.core.locked_round == 1


def test_l28_l30_prevote_locked_value_reproposed_with_an_older_polka() -> None:
    n = started(0)
    x_value = n.value()
    x_hash = x_value[0].hash
    n.prevotes(n.others(3), 0, x_hash)  # polka for x in round 0 (proposal not seen)
    n.next_round()
    n.lock_on(n.proposal(1, value=x_value))  # lock x in round 1
    n.next_round()
    x2 = n.proposal(2, pol_round=0, value=x_value)  # locked_round 1 > vr 0, but v = lock
    assert own_votes(n.deliver(x2), PREVOTE, round=2) == [x_hash]


def test_l28_waits_for_2f_plus_1_prevotes_in_the_polka_round() -> None:
    n = started(0)
    y_value = n.value()
    y_hash = y_value[0].hash
    n.prevotes(n.others(2), 0, y_hash)  # only 2 of the 3 needed
    n.next_round()
    y = n.proposal(1, pol_round=0, value=y_value)
    actions = n.deliver(y)
    assert broadcast_votes(actions) == [] and n.core.step == Step.PROPOSE
    actions = n.prevotes(n.others(1, exclude=n.others(2)), 0, y_hash)
    assert own_votes(actions, PREVOTE, round=1) == [y_hash]
    assert n.core.step == Step.PREVOTE


def test_l29_l32_prevote_nil_for_an_invalid_value_with_a_polka() -> None:
    n = started(0)
    bad_value = n.value(prev_hash=sha256(b"elsewhere"))
    n.prevotes(n.others(3), 0, bad_value[0].hash)
    n.next_round()
    actions = n.deliver(n.proposal(1, pol_round=0, value=bad_value))
    assert own_votes(actions, PREVOTE, round=1) == [None]
    assert n.core.step == Step.PREVOTE


# -- L34-L35 -------------------------------------------------------------------------------

@pytest.mark.parametrize("rnd", [0, 2])
def test_l34_l35_2f_plus_1_mixed_prevotes_schedule_timeout_prevote_once(rnd: int) -> None:
    n = started(0)
    for _ in range(rnd):
        n.next_round()
    p = n.proposal(rnd)
    n.deliver(p)  # own prevote for p: step prevote
    assert scheduled(n.deliver(n.prevote(1, rnd, None)), PREVOTE_T) == []
    actions = n.deliver(n.prevote(2, rnd, OTHER_HASH))
    assert scheduled(actions, PREVOTE_T) == [
        ScheduleTimeout(1, rnd, PREVOTE_T, prevote_delay(rnd))]
    assert broadcast_votes(actions) == []  # nothing else: no polka, no nil quorum
    assert scheduled(n.deliver(n.prevote(3, rnd, None)), PREVOTE_T) == []
    assert len(scheduled(n.log, PREVOTE_T)) == 1


def test_l34_needs_step_prevote() -> None:
    n = started(0)
    actions = n.deliver(n.prevote(1, 0, None), n.prevote(2, 0, OTHER_HASH),
                        n.prevote(3, 0, None))
    assert scheduled(actions, PREVOTE_T) == []  # still in step propose
    actions = n.timeout(PROPOSE_T)
    assert own_votes(actions, PREVOTE) == [None]
    assert scheduled(actions, PREVOTE_T) == [ScheduleTimeout(1, 0, PREVOTE_T, prevote_delay(0))]


# -- L36-L43 -------------------------------------------------------------------------------

def test_l36_l41_polka_for_the_proposal_in_step_prevote_locks_and_precommits() -> None:
    n = started(0)
    p = n.proposal(0)
    n.deliver(p)
    assert own_votes(n.prevotes([1], 0, p.block_hash), PRECOMMIT) == []
    actions = n.prevotes([2], 0, p.block_hash)
    assert own_votes(actions, PRECOMMIT) == [p.block_hash]
    assert n.core.step == Step.PRECOMMIT
    assert (n.core.locked_round, n.core.locked.block_hash) == (0, p.block_hash)
    assert (n.core.valid_round, n.core.valid.block_hash) == (0, p.block_hash)  # L42-L43
    # The lock is persisted before the precommit leaves (crash safety of L38-L39).
    before = actions[:actions.index(next(a for a in actions if isinstance(a, Broadcast)))]
    assert persists(before)[-1].state.locked_round == 0
    # and "for the first time": the 4th prevote changes nothing
    assert broadcast_votes(n.prevotes([3], 0, p.block_hash)) == []


def test_l36_fires_when_the_proposal_arrives_after_its_polka() -> None:
    n = started(0)
    x_value = n.value()
    n.timeout(PROPOSE_T)  # prevote nil, step prevote
    actions = n.prevotes(n.others(3), 0, x_value[0].hash)
    assert own_votes(actions, PRECOMMIT) == []  # no proposal yet
    actions = n.deliver(n.proposal(0, value=x_value))
    assert own_votes(actions, PRECOMMIT) == [x_value[0].hash]
    assert n.core.locked_round == 0


def test_l36_l42_l43_polka_in_step_precommit_only_updates_valid_value() -> None:
    n = started(0)
    p = n.proposal(0)
    n.timeout(PROPOSE_T)
    n.timeout(PREVOTE_T)  # precommit nil: step precommit
    assert n.core.step == Step.PRECOMMIT
    actions = n.deliver(p) + n.prevotes(n.others(3), 0, p.block_hash)
    assert broadcast_votes(actions) == []
    assert (n.core.locked_round, n.core.locked) == (-1, None)
    assert (n.core.valid_round, n.core.valid.block_hash) == (0, p.block_hash)


def test_l36_needs_a_valid_proposal() -> None:
    n = started(0)
    bad = n.proposal(0, value=n.value(log_root=sha256(b"x")))
    n.deliver(bad)  # prevote nil
    actions = n.prevotes(n.others(3), 0, bad.block_hash)
    assert own_votes(actions, PRECOMMIT) == []
    assert (n.core.locked_round, n.core.valid_round) == (-1, -1)


# -- L44-L46 -------------------------------------------------------------------------------

def test_l44_l46_2f_plus_1_nil_prevotes_precommit_nil() -> None:
    n = started(0)
    n.timeout(PROPOSE_T)  # own nil prevote
    assert broadcast_votes(n.prevotes([1], 0, None)) == []
    actions = n.prevotes([2], 0, None)
    assert own_votes(actions, PRECOMMIT) == [None]
    assert n.core.step == Step.PRECOMMIT
    assert n.core.locked_round == -1


# -- L47-L48 -------------------------------------------------------------------------------

@pytest.mark.parametrize("rnd", [0, 2])
def test_l47_l48_2f_plus_1_mixed_precommits_schedule_timeout_precommit_once(rnd: int) -> None:
    n = started(0)
    for _ in range(rnd):
        n.next_round()
    n.timeout(PROPOSE_T)
    n.timeout(PREVOTE_T)  # own nil precommit
    assert scheduled(n.precommits([1], rnd, OTHER_HASH), PRECOMMIT_T) == []
    actions = n.precommits([2], rnd, None)
    assert scheduled(actions, PRECOMMIT_T) == [
        ScheduleTimeout(1, rnd, PRECOMMIT_T, precommit_delay(rnd))]
    assert scheduled(n.precommits([3], rnd, OTHER_HASH), PRECOMMIT_T) == []
    assert len(scheduled(n.log, PRECOMMIT_T)) == 1
    assert n.round == rnd  # the timeout, not the precommits, ends the round


def test_l47_applies_in_any_step() -> None:
    n = started(0)  # step propose
    actions = n.precommits(n.others(3), 0, None)
    assert scheduled(actions, PRECOMMIT_T) == [
        ScheduleTimeout(1, 0, PRECOMMIT_T, precommit_delay(0))]


# -- L49-L54 -------------------------------------------------------------------------------

def test_l49_l54_proposal_and_2f_plus_1_precommits_commit_the_block() -> None:
    n = started(0)
    p = n.proposal(0, value=n.value([record(), record()]))
    n.lock_on(p)
    assert commits(n.precommits([1], 0, p.block_hash)) == []
    actions = n.precommits([2], 0, p.block_hash)
    [block] = commits(actions)
    assert (block.header, block.records) == (p.header, p.records)
    assert (block.cert.height, block.cert.round, block.cert.block_hash) == (1, 0, p.block_hash)
    assert [i for i, _ in block.cert.signatures] == [0, 1, 2]
    block.cert.verify(CHAIN, VALIDATORS)
    block.validate_basic()
    assert n.store.height == 1 and n.core.decisions[1] == block
    # L54 and the next height's initialisation: locks reset
    assert (n.height, n.round, n.core.step) == (2, 0, Step.PROPOSE)
    assert (n.core.locked_round, n.core.locked, n.core.valid_round, n.core.valid) == (
        -1, None, -1, None)
    assert scheduled(actions, TimeoutKind.NEW_HEIGHT) == [
        ScheduleTimeout(2, 0, TimeoutKind.NEW_HEIGHT, CONFIG.timeout_commit_ms)]
    # Round 0 of height 2 starts on the NEW_HEIGHT timeout (proposer is validator 2).
    actions = n.timeout(TimeoutKind.NEW_HEIGHT, round=0)
    assert scheduled(actions, PROPOSE_T) == [ScheduleTimeout(2, 0, PROPOSE_T, propose_delay(0))]
    q = n.proposal(0)
    assert q.height == 2 and own_votes(n.deliver(q), PREVOTE, height=2) == [q.block_hash]


def test_l49_commits_with_precommits_of_an_earlier_round() -> None:
    n = started(0)
    n.prevotes([2, 3], 1, None)  # L55: on to round 1
    assert n.round == 1
    p = n.proposal(0)
    assert commits(n.precommits(n.others(3), 0, p.block_hash)) == []  # no proposal yet
    actions = n.deliver(p)
    [block] = commits(actions)
    assert block.hash == p.block_hash and block.cert.round == 0
    block.cert.verify(CHAIN, VALIDATORS)
    assert n.height == 2 and n.store.height == 1


def test_l49_needs_2f_plus_1_precommits() -> None:
    n = started(0)
    p = n.proposal(0)
    actions = n.deliver(p) + n.precommits([1, 2], 0, p.block_hash)
    assert commits(actions) == [] and n.height == 1


def test_l49_counts_precommits_per_round() -> None:
    n = started(0)
    p = n.proposal(0)
    n.deliver(p)
    actions = n.precommits([1, 2], 0, p.block_hash) + n.precommits([3], 1, p.block_hash)
    assert commits(actions) == [] and n.height == 1


def test_l49_l50_does_not_commit_an_invalid_proposal() -> None:
    n = started(0)
    bad = n.proposal(0, value=n.value([with_bad_signature(record())]))
    actions = n.deliver(bad) + n.precommits(n.others(3), 0, bad.block_hash)
    assert commits(actions) == [] and n.height == 1 and n.store.height == 0


# -- L55-L56 -------------------------------------------------------------------------------

def test_l55_l56_messages_from_f_plus_1_at_a_higher_round_start_that_round() -> None:
    n = started(0)
    n.deliver(n.prevote(2, 2, None))
    assert n.round == 0
    actions = n.deliver(n.precommit(3, 2, None))
    assert (n.round, n.core.step) == (2, Step.PROPOSE)
    assert scheduled(actions, PROPOSE_T) == [ScheduleTimeout(1, 2, PROPOSE_T, propose_delay(2))]


def test_l55_messages_from_one_validator_do_not_change_round() -> None:
    n = started(0)
    actions = n.deliver(n.proposal(2), n.prevote(3, 2, None), n.precommit(3, 2, None),
                        n.prevote(3, 5, None))
    assert proposer_of(1, 2) == 3
    assert n.round == 0 and scheduled(actions, PROPOSE_T) == []


def test_l55_a_proposal_counts_and_is_then_prevoted_by_l22() -> None:
    n = started(0)
    p = n.proposal(2)  # from validator 3
    n.deliver(p)
    actions = n.deliver(n.prevote(1, 2, None))
    assert n.round == 2
    assert own_votes(actions, PREVOTE, round=2) == [p.block_hash]


def test_l55_jumps_to_the_highest_such_round() -> None:
    n = started(0)
    n.deliver(n.prevote(1, 7, None))
    n.deliver(n.prevote(2, 4, None), n.prevote(3, 4, None))
    assert n.round == 4
    n.deliver(n.prevote(2, 7, None))
    assert n.round == 7


# -- L57-L67: timeouts ----------------------------------------------------------------------

def test_l57_l60_timeout_propose_in_step_propose_prevotes_nil() -> None:
    n = started(0)
    actions = n.timeout(PROPOSE_T)
    assert own_votes(actions, PREVOTE) == [None]
    assert n.core.step == Step.PREVOTE


def test_l57_timeout_propose_acts_only_in_step_propose() -> None:
    n = started(0)
    n.lock_on(n.proposal(0))
    assert n.core.step == Step.PRECOMMIT
    actions = n.timeout(PROPOSE_T)
    assert broadcast_votes(actions) == [] and n.core.step == Step.PRECOMMIT


def test_l61_l64_timeout_prevote_in_step_prevote_precommits_nil() -> None:
    n = started(0)
    n.deliver(n.proposal(0))
    actions = n.timeout(PREVOTE_T)
    assert own_votes(actions, PRECOMMIT) == [None]
    assert n.core.step == Step.PRECOMMIT and n.core.locked_round == -1


def test_l61_timeout_prevote_acts_only_in_step_prevote() -> None:
    n = started(0)
    actions = n.timeout(PREVOTE_T)  # step propose
    assert broadcast_votes(actions) == [] and n.core.step == Step.PROPOSE
    n.lock_on(n.proposal(0))  # step precommit
    actions = n.timeout(PREVOTE_T)
    assert broadcast_votes(actions) == [] and n.core.step == Step.PRECOMMIT


@pytest.mark.parametrize("step", ["propose", "prevote", "precommit"])
def test_l65_l67_timeout_precommit_starts_the_next_round_in_any_step(step: str) -> None:
    n = started(0)
    if step != "propose":
        n.timeout(PROPOSE_T)
    if step == "precommit":
        n.timeout(PREVOTE_T)
    assert n.core.step.name.lower() == step
    actions = n.timeout(PRECOMMIT_T, round=0)
    assert (n.round, n.core.step) == (1, Step.PROPOSE)
    assert scheduled(actions, PROPOSE_T) == [ScheduleTimeout(1, 1, PROPOSE_T, propose_delay(1))]


def test_l57_l61_l65_timeouts_of_an_old_round_are_ignored() -> None:
    n = started(0)
    n.deliver(n.prevote(1, 2, None), n.precommit(2, 2, OTHER_HASH))  # L55: round 2
    assert (n.round, n.core.step) == (2, Step.PROPOSE)
    for kind in (PROPOSE_T, PREVOTE_T, PRECOMMIT_T):
        actions = n.timeout(kind, round=1)
        assert broadcast_votes(actions) == [] and scheduled(actions, PROPOSE_T) == []
        assert (n.round, n.core.step) == (2, Step.PROPOSE)
    n.timeout(PROPOSE_T, round=2)  # the current round's timeout does act
    assert n.core.step == Step.PREVOTE
    actions = n.timeout(PREVOTE_T, round=0)
    assert broadcast_votes(actions) == [] and n.core.step == Step.PREVOTE


def test_l57_l61_l65_timeouts_of_an_old_height_are_ignored() -> None:
    n = started(0)
    p = n.proposal(0)
    n.deliver(p)
    n.precommits(n.others(3), 0, p.block_hash)
    assert n.height == 2
    n.timeout(TimeoutKind.NEW_HEIGHT, round=0)
    assert (n.height, n.round, n.core.step) == (2, 0, Step.PROPOSE)
    for kind in (PROPOSE_T, PREVOTE_T, PRECOMMIT_T):
        actions = n.timeout(kind, round=0, height=1)
        assert broadcast_votes(actions) == [] and broadcast_proposals(actions) == []
        assert (n.height, n.round, n.core.step) == (2, 0, Step.PROPOSE)


# -- signing and persistence -------------------------------------------------------------

def _signed_at(msg: SignedVote | Proposal) -> tuple[int, int, int]:
    if isinstance(msg, Proposal):
        return (msg.height, msg.round, int(Step.PROPOSE))
    step = Step.PREVOTE if msg.vote.kind == PREVOTE else Step.PRECOMMIT
    return (msg.vote.height, msg.vote.round, int(step))


def test_every_signed_broadcast_is_preceded_by_a_persist_state_covering_it() -> None:
    n = Node(me=1, mempool=[record()])
    n.start()  # proposal and prevote, round 0
    n.timeout(PREVOTE_T)  # precommit nil
    n.next_round()
    x = n.proposal(1)
    n.deliver(x)
    n.prevotes([0, 3], 1, x.block_hash)  # lock and precommit x
    n.next_round()
    n.next_round()
    n.timeout(PROPOSE_T)
    n.next_round()  # round 4: validator 1 proposes again, re-proposing x
    n.precommits([0, 2, 3], 1, x.block_hash)  # commit x
    n.timeout(TimeoutKind.NEW_HEIGHT, round=0, height=2)
    n.deliver(n.proposal(0))
    signed = 0
    newest: SigningState | None = None  # the newest state written, in any earlier batch
    unwritten: list[object] = []  # signed under its reservation, not yet in a state
    for batch in n.batches:
        covered: tuple[int, int, int] = (0, 0, -1)
        persisted: tuple[object, ...] = ()
        for a in batch:
            if isinstance(a, PersistState):
                covered, persisted = a.state.last_signed, a.state.messages
                # a step signed under a reservation is in the next state written
                assert all(m in persisted for m in unwritten)
                unwritten, newest = [], a.state
            elif isinstance(a, Broadcast) and isinstance(a.message, Proposal | SignedVote):
                signed += 1
                step = _signed_at(a.message)
                if newest is not None and in_reservation(step, newest.reserved):
                    # round 0's proposal of the height after the newest state's
                    assert step == (newest.height + 1, 0, int(Step.PROPOSE))
                    unwritten.append(a.message)
                    continue
                assert covered >= step, (a, covered)
                assert a.message in persisted  # its own signed messages travel in the state
    assert signed >= 9
    assert len(broadcast_proposals(n.log)) == 2 and commits(n.log)
    assert broadcast_proposals(n.log)[1].block_hash == x.block_hash


def test_restart_after_prevote_does_not_prevote_again_in_that_round() -> None:
    state = SigningState(1, (1, 0, int(Step.PREVOTE)), 0, -1, None, -1, None)
    n = Node(0, persisted=state)
    n.start()
    p = n.proposal(0)
    actions = n.deliver(p) + n.timeout(PROPOSE_T)
    assert broadcast_votes(actions) == [] and persists(actions) == []
    # It never signed a precommit in round 0, so it still may (L36).
    actions = n.prevotes(n.others(3), 0, p.block_hash)
    assert own_votes(actions, PRECOMMIT) == [p.block_hash]
    assert own_votes(n.log, PREVOTE) == []


def test_restarted_proposer_does_not_propose_again() -> None:
    state = SigningState(1, (1, 0, int(Step.PROPOSE)), 0, -1, None, -1, None)
    n = Node(proposer_of(1, 0), mempool=[record()], persisted=state)
    assert broadcast_proposals(n.start()) == []
    assert broadcast_proposals(n.timeout(PROPOSE_T)) == []


def test_restart_keeps_the_persisted_lock() -> None:
    first = started(0)
    x = first.proposal(0)
    first.lock_on(x)
    state = persists(first.log)[-1].state
    assert (state.height, state.last_signed, state.locked_round) == (1, (1, 0, 2), 0)
    n = Node(0, persisted=state)
    n.start()
    assert (n.round, n.core.locked_round, n.core.locked.block_hash) == (0, 0, x.block_hash)
    n.deliver(x)
    n.prevotes(n.others(3), 0, x.block_hash)
    assert broadcast_votes(n.log) == []  # round 0 was signed before the crash
    n.next_round()
    y = n.proposal(1)
    assert own_votes(n.deliver(y), PREVOTE, round=1) == [None]  # L23: locked on x
    n.next_round()
    x2 = n.proposal(2, value=(x.header, x.records))
    assert own_votes(n.deliver(x2), PREVOTE, round=2) == [x.block_hash]


# -- dropped messages ----------------------------------------------------------------------

def _bad_sig(n: Node, r: int) -> SignedVote:
    sv = n.prevote(3, r, None)
    return dataclasses.replace(sv, sig=flip(sv.sig))


BAD_VOTES: dict[str, Callable[[Node, int], SignedVote]] = {
    "bad signature": _bad_sig,
    "signed by a non-validator key": lambda n, r: n.prevote(3, r, None, key=FX.outsider),
    "signed by another validator's key": lambda n, r: n.prevote(
        3, r, None, key=FX.validator_keys[1]),
    "index past the set": lambda n, r: n.prevote(4, r, None, key=FX.validator_keys[3]),
    "negative index": lambda n, r: n.prevote(-1, r, None, key=FX.validator_keys[3]),
    "another chain": lambda n, r: n.prevote(3, r, None, chain="other-chain"),
    "a duplicate of validator 2's vote": lambda n, r: n.prevote(2, r, None),
}


@pytest.mark.parametrize("bad", list(BAD_VOTES.values()), ids=list(BAD_VOTES))
def test_dropped_vote_does_not_count_towards_l44(bad: Callable[[Node, int], SignedVote]) -> None:
    n = started(0)
    n.timeout(PROPOSE_T)  # own nil prevote
    actions = n.deliver(n.prevote(2, 0, None), bad(n, 0))
    assert broadcast_votes(actions) == [] and scheduled(actions, PREVOTE_T) == []
    assert n.core.step == Step.PREVOTE
    actions = n.deliver(n.prevote(3, 0, None))  # a third good one does
    assert own_votes(actions, PRECOMMIT) == [None]


@pytest.mark.parametrize("bad", list(BAD_VOTES.values()), ids=list(BAD_VOTES))
def test_dropped_vote_does_not_count_towards_l55(bad: Callable[[Node, int], SignedVote]) -> None:
    n = started(0)
    n.deliver(n.prevote(2, 3, None), bad(n, 3))
    assert n.round == 0
    n.deliver(n.prevote(3, 3, None))
    assert n.round == 3


BAD_PROPOSALS: dict[str, Callable[[Node], Proposal]] = {
    "not the round's proposer": lambda n: n.proposal(0, proposer=2),
    "signed by another validator": lambda n: n.proposal(0, proposer=1,
                                                        key=FX.validator_keys[2]),
    "bad signature": lambda n: dataclasses.replace(n.proposal(0), sig=flip(n.proposal(0).sig)),
    "index past the set": lambda n: n.proposal(0, proposer=5, key=FX.validator_keys[1]),
    "another chain": lambda n: n.proposal(0, chain="other-chain"),
}


@pytest.mark.parametrize("bad", list(BAD_PROPOSALS.values()), ids=list(BAD_PROPOSALS))
def test_dropped_proposal_is_ignored(bad: Callable[[Node], Proposal]) -> None:
    n = started(0)
    actions = n.deliver(bad(n))
    assert broadcast_votes(actions) == [] and n.core.step == Step.PROPOSE
    assert n.core.proposals == {}
    good = n.proposal(0)
    assert own_votes(n.deliver(good), PREVOTE) == [good.block_hash]


def test_proposal_from_a_non_proposer_does_not_count_towards_l55() -> None:
    n = started(0)
    n.deliver(n.proposal(2, proposer=1), n.prevote(2, 2, None))  # round 2 is validator 3's
    assert n.round == 0


# -- evidence -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [PREVOTE, PRECOMMIT])
def test_conflicting_votes_of_one_validator_are_evidence(kind: int) -> None:
    n = started(0)
    first = n.vote(kind, 2, 0, None)
    second = n.vote(kind, 2, 0, OTHER_HASH)
    assert evidence(n.deliver(first)) == []
    actions = n.deliver(second)
    assert evidence(actions) == [RecordEvidence(first, second)]
    assert list(n.core.evidence) == [(first, second)]
    # the same vote again, or votes of other rounds, are no evidence
    actions = n.deliver(first, n.vote(kind, 2, 1, OTHER_HASH))
    assert evidence(actions) == [] and len(n.core.evidence) == 1


def test_an_equivocator_counts_once_towards_2f_plus_1_of_any_value() -> None:
    n = started(0)
    n.timeout(PROPOSE_T)  # own nil prevote
    actions = n.deliver(n.prevote(2, 0, OTHER_HASH), n.prevote(2, 0, None))
    assert len(evidence(actions)) == 1
    assert scheduled(actions, PREVOTE_T) == []  # 2 validators, not 3 (L34)
    actions = n.deliver(n.prevote(3, 0, OTHER_HASH))
    assert scheduled(actions, PREVOTE_T) == [ScheduleTimeout(1, 0, PREVOTE_T, prevote_delay(0))]


def test_equivocating_proposer_is_evidence_and_the_first_proposal_is_kept() -> None:
    n = started(0)
    p1, p2 = n.proposal(0), n.proposal(0)
    assert p1.block_hash != p2.block_hash
    actions = n.deliver(p1, p2)
    bare1, bare2 = (dataclasses.replace(p, records=()) for p in (p1, p2))  # kept without
    assert evidence(actions) == [RecordEvidence(bare1, bare2)]  # records (header, sig)
    assert list(n.core.evidence) == [(bare1, bare2)]
    assert n.core.proposals[0] == p1
    assert own_votes(actions, PREVOTE) == [p1.block_hash]
    actions = n.precommits(n.others(3), 0, p2.block_hash)
    assert commits(actions) == []  # p2 was dropped: no decision on it
    actions = n.precommits(n.others(3), 1, p1.block_hash)
    assert commits(actions) == []  # (round 1 has no proposal)


def test_same_proposal_twice_is_not_evidence() -> None:
    n = started(0)
    p = n.proposal(0)
    assert evidence(n.deliver(p, p)) == [] and not n.core.evidence


# -- block sync ----------------------------------------------------------------------------

def test_a_vote_of_the_next_height_asks_its_sender_for_blocks() -> None:
    n = started(0)
    actions = n.deliver(n.prevote(2, 0, None, height=2), sender=7)
    assert sends(actions) == [SendTo(7, BlockRequest(1))]
    assert n.height == 1 and broadcast_votes(actions) == []


def _block_responses(actions: list[Action]) -> list[int]:
    """Heights the core asks the runtime to serve (ServeBlocks), in order."""
    return [h for a in actions if isinstance(a, ServeBlocks) for h in range(a.start, a.stop)]


def test_a_late_vote_of_a_decided_height_is_not_answered_with_blocks() -> None:
    """A peer that keeps up also sends votes we no longer need: no blocks for it."""
    n = Node(0, store=stored_chain(2))
    n.start()
    assert n.height == 3
    assert _block_responses(n.deliver(n.precommit(2, 0, None, height=2), sender=2)) == []
    # It is heard at our height before sync_retry_ms: it is not behind.
    n.handle(Tick(T0 + 500 + CONFIG.sync_retry_ms // 2))
    n.deliver(n.prevote(2, 0, None), sender=2)
    n.handle(Tick(T0 + 500 + 2 * CONFIG.sync_retry_ms))
    assert _block_responses(n.deliver(n.precommit(2, 0, None, height=2), sender=2)) == []


def test_a_sender_that_stays_behind_is_sent_the_blocks_it_lacks_at_most_once_per_retry() -> None:
    n = Node(0, store=stored_chain(2))
    n.start()
    assert _block_responses(n.deliver(n.prevote(2, 0, None, height=1), sender=2)) == []
    n.handle(Tick(T0 + 500 + CONFIG.sync_retry_ms))
    assert _block_responses(n.deliver(n.prevote(2, 0, None, height=1), sender=2)) == [1, 2]
    assert _block_responses(n.deliver(n.prevote(2, 0, None, height=1), sender=2)) == []
    n.handle(Tick(T0 + 500 + 2 * CONFIG.sync_retry_ms))
    assert _block_responses(n.deliver(n.prevote(2, 0, None, height=1), sender=2)) == [1, 2]


def _certified(signers: int, *, prev_hash: bytes | None = None) -> Block:
    other = MemoryStore(FX.genesis.hash)
    block = ChainBuilder(FX, other).block([record()], signers=signers)
    if prev_hash is not None:
        header = dataclasses.replace(block.header, prev_hash=prev_hash)
        keys = dict(enumerate(FX.validator_keys[:signers]))
        block = Block(header, block.records, sign_certificate(CHAIN, header, 0, keys))
    return block


def test_block_response_with_a_certified_block_commits_it() -> None:
    n = started(0)
    block = _certified(3)
    actions = n.deliver(BlockResponse(block), sender=7)
    assert commits(actions) == [block]
    assert n.height == 2 and n.store.height == 1 and n.store.tip_hash() == block.hash


def test_block_response_with_two_signatures_is_not_committed() -> None:
    n = started(0)
    actions = n.deliver(BlockResponse(_certified(2)), sender=7)
    assert commits(actions) == [] and n.height == 1 and n.store.height == 0


def test_block_response_with_a_forged_signature_is_not_committed() -> None:
    n = started(0)
    block = _certified(3)
    sigs = list(block.cert.signatures)
    sigs[2] = (sigs[2][0], flip(sigs[2][1]))
    forged = Block(block.header, block.records, dataclasses.replace(block.cert,
                                                                    signatures=tuple(sigs)))
    actions = n.deliver(BlockResponse(forged), sender=7)
    assert commits(actions) == [] and n.height == 1


def test_block_response_certified_but_not_extending_the_chain_is_not_committed() -> None:
    n = started(0)
    actions = n.deliver(BlockResponse(_certified(3, prev_hash=sha256(b"fork"))), sender=7)
    assert commits(actions) == [] and n.height == 1



def test_block_response_certified_by_two_validators_under_three_indexes_is_not_committed() -> None:
    # Validator 3's signature listed twice, as index -1 and as index 3 (ascending: -1, 0, 3).
    n = started(0)
    block = _certified(4)
    sigs = dict(block.cert.signatures)
    cert = dataclasses.replace(block.cert, signatures=((-1, sigs[3]), (0, sigs[0]), (3, sigs[3])))
    actions = n.deliver(BlockResponse(Block(block.header, block.records, cert)), sender=7)
    assert commits(actions) == [] and n.height == 1
