"""The next height's round-0 proposal is reserved by every signing state a validator
writes at a height (``SigningState.reserved``): signing it needs no write of its own, and a
validator built from such a state refuses it, whatever its store holds (docs/consensus.md,
"Persistence order / crash safety")."""

from __future__ import annotations

import pytest

from ledger.blocks import PRECOMMIT, PREVOTE
from ledger.consensus import (
    NO_RESERVATION,
    Broadcast,
    PersistState,
    Proposal,
    SigningState,
    Step,
    TimeoutKind,
    in_reservation,
)
from ledger.encoding import packb
from ledger.errors import DecodeError
from ledger.store import MemoryStore
from node.runtime import GroupCommit, plan_durable_writes
from tests.unit.consensus_helpers import (
    FX,
    N,
    Node,
    broadcast_proposals,
    commits,
    own_votes,
    persists,
    proposer_of,
    record,
    scheduled,
)

ME = 2  # proposes round 0 of height 2 (proposer_of(2, 0) == 2), not of height 1
PROPOSE_T = TimeoutKind.PROPOSE


def through_height_1(n: Node) -> SigningState:
    """Validator ``n`` prevotes and precommits block 1, which commits; the state its
    precommit wrote (the newest)."""
    n.start()
    p = n.proposal(0)
    n.deliver(p)
    n.prevotes(n.others(2), 0, p.block_hash)
    assert own_votes(n.log, PRECOMMIT, height=1) == [p.block_hash]
    n.precommits(n.others(2), 0, p.block_hash)
    assert [b.height for b in commits(n.log)] == [1]
    return persists(n.log)[-1].state


def test_the_reservation_is_round_0_proposal_of_the_next_height() -> None:
    assert in_reservation((2, 0, 0), (2, 0, 0)) and in_reservation((2, 0, 0), (2, 0, 1))
    assert not in_reservation((2, 0, 1), (2, 0, 0))  # the prevote: not reserved
    assert not in_reservation((2, 1, 0), (2, 0, 0))  # another round
    assert not in_reservation((1, 5, 2), (2, 0, 0))  # below it in order, not in it
    assert not in_reservation((0, 0, 0), NO_RESERVATION)
    n = Node(ME, mempool=[record()])
    state = through_height_1(n)
    assert state.height == 1 and state.last_signed == (1, 0, int(Step.PRECOMMIT))
    assert state.reserved == (2, 0, int(Step.PROPOSE))
    # every state written reserves it, the prevote's too
    assert [p.state.reserved for p in persists(n.log)] == [(2, 0, 0), (2, 0, 0)]


def test_round_0_proposal_of_the_next_height_leaves_before_any_write() -> None:
    n = Node(ME, mempool=[record()])
    through_height_1(n)
    actions = n.timeout(TimeoutKind.NEW_HEIGHT, round=0, height=2)
    (proposal,) = broadcast_proposals(actions)  # round 0's proposer of height 2
    assert (proposal.height, proposal.round) == (2, 0)
    (written,) = persists(actions)  # one write: the prevote's, after the proposal left
    first_send = next(i for i, a in enumerate(actions) if isinstance(a, Broadcast))
    assert getattr(actions[first_send], "message", None) == proposal
    assert first_send < actions.index(written)
    assert own_votes(actions[actions.index(written):], PREVOTE) == [proposal.block_hash]
    state = written.state
    assert state.last_signed == (2, 0, int(Step.PREVOTE))
    assert proposal in state.messages  # the unwritten proposal travels in the next write
    assert state.reserved == (3, 0, int(Step.PROPOSE))
    # the precommit writes before it leaves, as ever
    actions = n.prevotes(n.others(2), 0, proposal.block_hash)
    assert own_votes(actions, PRECOMMIT, height=2) == [proposal.block_hash]
    assert [p.state.last_signed for p in persists(actions)] == [(2, 0, int(Step.PRECOMMIT))]


def test_a_proposal_of_round_1_writes_before_it_leaves() -> None:
    n = Node(ME, mempool=[record()])
    n.start()  # height 1: proposer 1
    n.timeout(PROPOSE_T, round=0)  # prevote nil
    n.prevotes(n.others(2), 0, None)  # precommit nil
    actions = n.next_round()  # round 1: ME proposes
    assert n.round == 1 and proposer_of(1, 1) == ME
    (proposal,) = broadcast_proposals(actions)
    (written, *_) = persists(actions)
    assert written.state.last_signed == (1, 1, int(Step.PROPOSE))
    assert actions.index(written) < next(i for i, a in enumerate(actions)
                                         if getattr(a, "message", None) == proposal)


def test_a_validator_restarted_from_a_reserving_state_refuses_the_reserved_proposal() -> None:
    first = Node(ME, mempool=[record()])
    state = SigningState.from_wire(through_height_1(first).to_wire())
    # Built again from its store (block 1) and that state: it may have signed round 0's
    # proposal of height 2 before it crashed, and not written it.
    n = Node(ME, store=first.store, mempool=[record()], persisted=state)
    assert n.height == 2 and n.core.refused == (2, 0, int(Step.PROPOSE))
    actions = n.start()
    assert broadcast_proposals(actions) == []  # its own round-0 proposal: refused
    assert [t.round for t in scheduled(actions, PROPOSE_T)] == [0]  # it waits like others
    actions = n.timeout(PROPOSE_T, round=0)  # ... and prevotes nil (L57), after a write
    assert own_votes(actions, PREVOTE) == [None]
    assert [p.state.last_signed for p in persists(actions)] == [(2, 0, int(Step.PREVOTE))]
    actions = n.prevotes(n.others(2), 0, None)
    assert own_votes(actions, PRECOMMIT, round=0) == [None]
    n.next_round()
    actions = n.deliver(n.proposal(1))  # round 1: signs as ever, after a write
    assert len(own_votes(actions, PREVOTE, round=1)) == 1
    assert [p.state.last_signed for p in persists(actions)] == [(2, 1, int(Step.PREVOTE))]


def test_a_restarted_proposer_prevotes_for_its_own_earlier_proposal() -> None:
    """The proposal it signed before the crash, relayed back to it, is its own (one
    signature per step): it takes it and prevotes for it."""
    first = Node(ME, mempool=[record()])
    state = through_height_1(first)
    (proposal,) = broadcast_proposals(first.timeout(TimeoutKind.NEW_HEIGHT, round=0,
                                                    height=2))
    n = Node(ME, store=first.store, mempool=[record()], persisted=state)
    n.start()
    actions = n.deliver(proposal)
    assert own_votes(actions, PREVOTE) == [proposal.block_hash]
    assert broadcast_proposals(n.log) == []


def test_the_refusal_does_not_depend_on_the_store() -> None:
    """The state is all that counts: a store replaced by an older copy (docs/operations.md
    keeps signing_state.bin when a disk is lost) still leads to the refusal once the node
    is back at the reserved height."""
    first = Node(ME, mempool=[record()])
    state = through_height_1(first)
    n = Node(ME, store=MemoryStore(FX.genesis.hash), mempool=[record()], persisted=state)
    assert n.height == 1  # the store lost block 1: the restart is within height 1
    n.start()
    block_1 = first.store.block(1)
    assert block_1 is not None
    p = n.proposal(0, value=(block_1.header, block_1.records))
    actions = n.deliver(p) + n.precommits(n.others(3), 0, p.block_hash)
    assert [b.height for b in commits(actions)] == [1]
    assert own_votes(actions, PREVOTE) == [] and own_votes(actions, PRECOMMIT) == []
    actions = n.timeout(TimeoutKind.NEW_HEIGHT, round=0, height=2)
    assert n.height == 2 and broadcast_proposals(actions) == []


def test_a_restart_within_the_reserved_height_resends_what_it_signed_unwritten() -> None:
    """Restarted from the state its precommit of height 2 wrote (which holds the round-0
    proposal it signed with no write): it resumes round 0 of height 2, locked, and re-sends
    the proposal; height 3's round-0 proposal is what stays reserved."""
    first = Node(ME, mempool=[record()])
    through_height_1(first)
    first.timeout(TimeoutKind.NEW_HEIGHT, round=0, height=2)
    (proposal,) = broadcast_proposals(first.log)
    first.prevotes(first.others(2), 0, proposal.block_hash)
    state = persists(first.log)[-1].state
    n = Node(ME, store=first.store, persisted=state)
    assert n.height == 2 and n.core.refused == (3, 0, int(Step.PROPOSE))
    actions = n.start() + n.timeout(TimeoutKind.RESEND, round=0)
    sent = [getattr(a, "message", None) for a in actions]
    assert proposal in sent and all(m in sent for m in state.messages)
    assert n.core.locked is not None and n.core.locked.block_hash == proposal.block_hash


def test_signing_state_without_reservation_keeps_what_is_still_refused() -> None:
    """What a node stopping cleanly writes: everything it signed is at or below
    last_signed, so it reserves nothing new; a refusal it inherited and has not passed
    stays."""
    n = Node(ME, mempool=[record()])
    through_height_1(n)
    n.timeout(TimeoutKind.NEW_HEIGHT, round=0, height=2)
    final = n.core.signing_state(reserve=False)
    assert final.last_signed == (2, 0, int(Step.PREVOTE)) and final.reserved == NO_RESERVATION
    first = Node(ME, mempool=[record()])
    state = through_height_1(first)
    restarted = Node(ME, store=first.store, persisted=state)
    kept = restarted.core.signing_state(reserve=False)
    assert kept.reserved == (2, 0, int(Step.PROPOSE)) and kept.last_signed < kept.reserved


def test_the_old_8_item_wire_form_loads_with_no_reservation() -> None:
    state = SigningState(4, (4, 1, 2), 1, -1, None, -1, None, reserved=(5, 0, 1))
    assert SigningState.from_wire(state.to_wire()) == state
    old = packb([4, [4, 1, 2], 1, -1, None, -1, None, []])  # a node from before
    loaded = SigningState.from_wire(old)
    assert loaded.reserved == NO_RESERVATION and loaded.last_signed == (4, 1, 2)
    n = Node(ME, store=MemoryStore(FX.genesis.hash), persisted=loaded)
    assert n.core.refused == NO_RESERVATION
    for bad in (packb([4, [4, 1, 2], 1, -1, None, -1, None, [], [5, 0, 1], 0]),
                packb([4, [4, 1, 2], 1, -1, None, -1, None, [], [5, 0]]),
                packb([4, [4, 1, 2], 1, -1, None, -1, None, [], [5, 0, -2]])):
        with pytest.raises(DecodeError):
            SigningState.from_wire(bad)


def test_no_validator_of_the_fixture_is_left_out() -> None:
    assert N == 4 and proposer_of(2, 0) == ME and proposer_of(1, 0) != ME



def file_covers_before_it_leaves(n: Node, message: Proposal) -> bool:
    """Replays ``n``'s batches as the runtime writes them (``plan_durable_writes``):
    whether, when ``message`` leaves, the newest state in the *file* (a plain
    ``PersistState``, not a ``GroupCommit``'s row of the store) covers its step."""
    file_state: SigningState | None = None
    step = (message.height, message.round, int(Step.PROPOSE))
    for batch in n.batches:
        for a in plan_durable_writes(batch):
            if isinstance(a, PersistState):
                file_state = a.state
            elif isinstance(a, Broadcast) and a.message == message:
                return file_state is not None and (
                    file_state.last_signed >= step or in_reservation(step, file_state.reserved))
    raise AssertionError("never sent")


def test_a_reservation_only_the_store_holds_covers_nothing() -> None:
    """When this validator signs everything it signs at a height in the event that
    commits it (the proposal came last), the runtime writes that state in the block's
    transaction (``GroupCommit``): in the store only. A store lost or replaced by an older
    copy (docs/operations.md keeps ``signing_state.bin``; a crashed node's damaged
    ``chain.db`` gives no row back) loses it and its reservation, and the node, back at
    height 2 by block sync, would propose round 0 of height 2 a second time. So that
    proposal is written to the file before it leaves."""
    n = Node(ME, mempool=[record()])
    n.start()
    p = n.proposal(0)
    n.prevotes(n.others(2), 0, p.block_hash)
    n.precommits(n.others(2), 0, p.block_hash)
    actions = n.deliver(p)  # prevote, precommit and commit in one event
    assert [b.height for b in commits(actions)] == [1]
    (grouped,) = [a for a in plan_durable_writes(actions) if isinstance(a, GroupCommit)]
    assert grouped.persist.state.reserved == (2, 0, int(Step.PROPOSE))  # in the store only
    assert not any(isinstance(a, PersistState) for a in plan_durable_writes(n.log))
    (proposal,) = broadcast_proposals(n.timeout(TimeoutKind.NEW_HEIGHT, round=0, height=2))
    assert file_covers_before_it_leaves(n, proposal)


def test_a_reservation_the_file_holds_still_saves_the_write() -> None:
    """The same height with this validator's prevote written to the file in an earlier
    event (its precommit and the block then grouped): the file's state reserves height 2's
    round-0 proposal, which leaves with no write of its own."""
    n = Node(ME, mempool=[record()])
    n.start()
    p = n.proposal(0)
    n.deliver(p)  # the prevote: a state in the file, reserving (2, 0, PROPOSE)
    n.precommits(n.others(2), 0, p.block_hash)
    actions = n.prevotes(n.others(2), 0, p.block_hash)  # the polka: precommit and commit
    assert [b.height for b in commits(actions)] == [1]
    assert any(isinstance(a, GroupCommit) for a in plan_durable_writes(actions))
    actions = n.timeout(TimeoutKind.NEW_HEIGHT, round=0, height=2)
    (proposal,) = broadcast_proposals(actions)
    assert isinstance(plan_durable_writes(actions)[0], Broadcast)  # before any write
    assert file_covers_before_it_leaves(n, proposal)
