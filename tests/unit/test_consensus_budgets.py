"""A Byzantine validator cannot make one core do unbounded work or keep unbounded state.

Issue 11 item 2: nil prevotes for rounds 1..12,000 of the current height from one key took
the core 39 s (rule L55 sorted every round and summed its power on each message; rounds
per height were unbounded). Now each validator may open at most ``catchup_rounds`` rounds
beyond the current one + 1 (CometBFT's "peer catch-up rounds"), extra messages are dropped
before their signature is checked and reported as ``Misbehaviour``, and L55 reads one
number kept up to date as messages arrive. Timing is printed, not asserted (a shared
machine); the assertions are on structure: rounds tracked, signatures checked, evidence
kept.
"""

from __future__ import annotations

import dataclasses
import time

from ledger.blocks import PRECOMMIT, PREVOTE
from ledger.consensus import BlockRequest, Misbehaviour, ServeBlocks, TimeoutKind
from ledger.consensus.votes import MAX_VALUES
from ledger.crypto import is_valid_signature, sha256
from tests.unit.consensus_helpers import (
    CONFIG,
    Node,
    evidence,
    record,
    stored_chain,
)

OTHER = sha256(b"other")


class CountingVerify:
    """``is_valid_signature`` that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, key: bytes, message: bytes, sig: bytes) -> bool:
        self.calls += 1
        return is_valid_signature(key, message, sig)


def counted(n: Node) -> CountingVerify:
    verify = CountingVerify()
    n.core.verify = verify
    return verify


def misbehaviour(actions: list[object]) -> list[Misbehaviour]:
    return [a for a in actions if isinstance(a, Misbehaviour)]


def test_12000_future_round_votes_from_one_key_open_two_rounds_and_cost_no_signature_checks(
) -> None:
    n = Node(0)
    n.start()
    votes = [n.prevote(1, r, None) for r in range(1, 12_001)]
    verify = counted(n)
    started = time.perf_counter()
    actions = n.deliver(*votes, sender=1)
    elapsed = time.perf_counter() - started
    print(f"12,000 future-round nil prevotes from one key: {elapsed * 1000:.0f} ms")
    # Round 1 (current + 1) is always tracked, then rounds 2 and 3 are validator 1's two
    # catch-up rounds; the other 11,997 are dropped before their signature is checked.
    assert sorted(n.core.votes.speakers) == [1, 2, 3]
    assert {r for r, _ in n.core.votes.sets} <= {0, 1, 2, 3}
    assert verify.calls == 3
    assert len(misbehaviour(actions)) == 12_000 - 3
    assert {m.peer for m in misbehaviour(actions)} == {1}
    assert n.round == 0 and not n.core.evidence


def test_per_message_work_does_not_grow_with_the_rounds_heard() -> None:
    # L55 reads one number (the highest round with f+1 speakers), kept on insert.
    n = Node(0)
    n.start()
    n.deliver(*[n.prevote(v, r, None) for v in (1, 2, 3) for r in range(1, 4)])
    assert n.core.votes.skip_round == 3 and n.round == 3
    assert n.core.votes.speakers_power(3) == 4  # the three, and its own proposal


def test_l55_still_skips_for_a_node_far_behind_in_rounds() -> None:
    # Validators 1 and 2 (f + 1 = 2 of 4) are at round 40; this node is at round 0 and a
    # Byzantine validator 3 already used up its own budget with a flood.
    n = Node(0)
    n.start()
    n.deliver(*[n.prevote(3, r, None) for r in range(1, 500)], sender=3)
    # their re-sends: their own messages of the latest two rounds
    n.deliver(n.prevote(1, 39, None), n.precommit(1, 39, None), sender=1)
    n.deliver(n.prevote(2, 39, None), n.prevote(2, 40, None), sender=2)
    assert n.round == 39
    n.deliver(n.prevote(1, 40, None), sender=1)
    assert n.round == 40
    # then they move on, one round at a time, and so does this node
    for r in range(41, 45):
        n.deliver(n.prevote(1, r + 1, None), n.prevote(2, r + 1, None))
        assert n.round == r + 1


def test_a_catchup_round_stops_counting_once_the_node_reaches_it() -> None:
    n = Node(0)
    n.start()
    n.deliver(n.prevote(1, 5, None), n.prevote(1, 6, None))
    assert not n.core.votes.admits(7, 1)
    n.deliver(n.prevote(2, 5, None))  # f + 1 at round 5: this node moves there
    assert n.round == 5
    assert n.core.votes.admits(7, 1)  # round 6 is now current + 1: one slot free again
    assert n.core.votes.admits(100, 3)  # other validators have their own budget


def test_a_validators_third_value_in_one_round_is_dropped_before_verification() -> None:
    n = Node(0)
    n.start()
    verify = counted(n)
    a, b, c = (n.prevote(1, 0, h) for h in (None, OTHER, sha256(b"third")))
    n.deliver(a)
    assert len(evidence(n.deliver(b))) == 1
    calls = verify.calls
    assert evidence(n.deliver(c)) == [] and verify.calls == calls  # no signature check
    assert len(n.core.votes.prevotes(0).by_value) == MAX_VALUES
    assert n.core.votes.prevotes(0).power == 1


def test_evidence_is_one_pair_per_validator_height_round_kind_and_capped() -> None:
    config = dataclasses.replace(CONFIG, max_evidence=5)
    n = Node(0, config=config)
    n.start()
    for r in range(0, 2):
        for kind in (PREVOTE, PRECOMMIT):
            for _ in range(3):  # the same conflict re-sent: one piece of evidence
                n.deliver(n.vote(kind, 1, r, None), n.vote(kind, 1, r, OTHER))
    assert len(n.core.evidence) == 4
    for v in (2, 3):
        n.deliver(n.prevote(v, 1, None), n.prevote(v, 1, OTHER))
    assert len(n.core.evidence) == 5  # capped: the oldest went
    assert n.core.evidence[-1][1].validator == 3


def test_proposals_beyond_the_round_budget_or_a_third_per_round_are_not_verified() -> None:
    n = Node(0)
    n.start()
    verify = counted(n)
    # Validator 1 proposes in rounds 0, 4, 8, ... of height 1.
    far = [n.proposal(r) for r in range(8, 40, 4)]
    actions = n.deliver(*far, sender=1)
    assert sorted(n.core.proposals) == [8, 12]  # its two catch-up rounds
    assert verify.calls == 2 and len(misbehaviour(actions)) == len(far) - 2
    p1, p2, p3 = (n.proposal(0, value=n.value([record()])) for _ in range(3))
    n.deliver(p1)
    assert len(evidence(n.deliver(p2))) == 1
    calls = verify.calls
    actions = n.deliver(p3)
    assert verify.calls == calls and misbehaviour(actions)
    assert n.core.proposals[0] == p1


def test_bad_signatures_and_strangers_are_reported_as_misbehaviour() -> None:
    n = Node(0)
    n.start()
    v = n.prevote(1, 0, None)
    forged = type(v)(v.vote, v.validator, bytes(64))
    assert [m.weight for m in misbehaviour(n.deliver(forged, sender=2))] == [20]
    not_proposer = n.proposal(0, proposer=2)
    assert misbehaviour(n.deliver(not_proposer, sender=2))[0].weight == 20


def test_messages_for_the_next_height_are_buffered_per_sender_within_bounds() -> None:
    config = dataclasses.replace(CONFIG, max_future_per_peer=10)
    n = Node(0, config=config)
    n.start()
    n.deliver(*[n.prevote(1, r, None, height=2) for r in range(50)], sender=1)
    resent = [n.prevote(2, r, None, height=2) for r in range(5)]
    n.deliver(*resent, sender=2)
    actions = n.deliver(*resent, sender=2)  # gossip re-sends are not kept twice
    assert len([s for s, _ in n.core.future if s == 1]) == 10
    assert len([s for s, _ in n.core.future if s == 2]) == 5 and not misbehaviour(actions)


def test_decided_blocks_kept_in_memory_are_bounded_by_bytes() -> None:
    config = dataclasses.replace(CONFIG, decisions_max_bytes=4000)
    n = Node(0, config=config)
    n.start()
    for _ in range(3):  # heights 1..3, proposed by validators 1..3
        value = n.value([record() for _ in range(3)])
        h = n.height
        prop = n.proposal(n.round, value=value)
        n.deliver(prop)
        n.precommits(n.others(3), n.round, prop.block_hash)
        assert n.store.height == h
        n.timeout(TimeoutKind.NEW_HEIGHT)
    # each block costs more than 2,000 bytes: only the newest two (always kept) remain
    assert sorted(n.core.decisions) == [2, 3]


def test_a_block_request_asks_the_runtime_to_serve_a_bounded_range() -> None:
    n = Node(0, store=stored_chain(40))
    n.start()
    actions = n.deliver(BlockRequest(3), sender=2)
    serves = [a for a in actions if isinstance(a, ServeBlocks)]
    assert serves == [ServeBlocks(2, 3, 3 + CONFIG.sync_batch)]
    responses = n.core.block_responses(3, 3 + CONFIG.sync_batch)
    assert [r.block.height for r in responses] == list(range(3, 3 + CONFIG.sync_batch))
    assert responses[0].last_cert == n.store.block(2).cert
    assert not [a for a in n.deliver(BlockRequest(41), sender=2) if isinstance(a, ServeBlocks)]
