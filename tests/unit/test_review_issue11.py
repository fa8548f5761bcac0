"""Hostile review of issue 11's consensus and peer hardening: each test is one finding.

In process, on the runtime harness of ``test_peer_budgets`` (a real SQLite store, a fake
transport, frames straight into ``Node.on_frame``) or on the pure core.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ledger.consensus import Proposal
from ledger.consensus.messages import UndecodedProposal
from node import runtime
from tests.unit.consensus_helpers import FX, record
from tests.unit.consensus_helpers import Node as CoreNode
from tests.unit.test_peer_budgets import frame, make_node, pump


class Clock:
    """Stands in for the ``time`` module inside ``node.runtime`` (monotonic seconds)."""

    def __init__(self, t: float = 10_000.0) -> None:
        self.t = t

    def monotonic(self) -> float:
        return self.t

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_one_validator_cannot_fill_the_proposal_budget_for_everyone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ProposalBudget's 4,096 (peer, height, round) keys are shared by all peers. Validator
    3 fills them within its rate (20 proposals/s, ~3.5 minutes of an idle chain) with
    proposals for another chain id, which the core drops without a score; then the honest
    proposer's proposal is refused (and the honest proposer scored) at this node."""
    node = make_node(tmp_path)
    helper = CoreNode(0)
    header, recs = helper.value(records=[])
    clock = Clock()
    attack = [frame(Proposal.sign("not-this-chain", r, -1, header, recs, 3,
                                  FX.validator_keys[3]))
              for r in range(node.proposal_budget.max_keys)]

    async def go() -> None:
        with monkeypatch.context() as m:  # on_frame runs on the event loop, as in a node
            m.setattr(runtime, "time", clock)
            for f in attack:
                clock.t += 1 / runtime.PROPOSALS_PER_S  # within the rate
                node.on_frame(3, f)
        await pump(node)
        node.on_frame(1, frame(helper.proposal(0)))  # validator 1 proposes (1, 0)
        await pump(node)

    asyncio.run(go())
    assert node.misbehaviour.get(1, 0) == 0, "the honest proposer was scored"
    assert 0 in node.core.proposals, "the honest proposal never reached the core"


def test_proposals_for_the_next_height_cannot_keep_the_loop_decoding_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The core keeps at most two proposals per sender for the next height and verifies
    none of them until that height starts; the runtime decoded the records of every one
    (on the event loop) and had their signatures verified, for a score of 1 each: ten a
    second (the decay) cost nothing, for ever. Here 50 proposals for height 2 with 2,000
    records each, 10 per (simulated) second, from validator 3: each was decoded and the
    peer was never backed off (about 50 ms of event loop per frame on this machine)."""
    node = make_node(tmp_path)
    helper = CoreNode(0)
    recs = [record() for _ in range(2000)]
    header = replace(helper.value(records=recs)[0], height=2)
    attack = [frame(Proposal.sign(FX.genesis.chain_id, r, -1, header, tuple(recs), 3,
                                  FX.validator_keys[3])) for r in range(50)]
    decoded = 0
    real_decode = UndecodedProposal.decode

    def counting_decode(self: UndecodedProposal, known: Any = None) -> Proposal:
        nonlocal decoded
        decoded += 1
        return real_decode(self, known)

    monkeypatch.setattr(UndecodedProposal, "decode", counting_decode)
    clock = Clock()
    monkeypatch.setattr(runtime, "time", clock)  # the runtime's clock only, not asyncio's
    on_loop = 0.0

    async def go() -> None:
        nonlocal on_loop
        for f in attack:
            clock.t += 0.1
            started = time.perf_counter()
            node.on_frame(3, f)
            on_loop += time.perf_counter() - started
            await pump(node)

    asyncio.run(go())
    print(f"decoded {decoded} of {len(attack)} (on_frame {on_loop * 1000:.0f} ms in all); "
          f"misbehaviour reports {node.misbehaviour}")
    assert decoded <= node.core.config.max_future_proposals_per_peer + 2 or node.backed_off(3)


def test_a_message_for_another_chain_is_scored_as_misbehaviour() -> None:
    """Links are authenticated under this genesis, so only a Byzantine peer sends a
    proposal or vote of another chain; the core dropped them without a Misbehaviour, which
    made them the free way to have a node decode a proposal's records (see above)."""
    from ledger.consensus import Misbehaviour
    n = CoreNode(0)
    n.start()
    for msg in (n.proposal(0, chain="other-chain"), n.prevote(3, 0, None, chain="other")):
        actions = n.deliver(msg, sender=3)
        assert any(isinstance(a, Misbehaviour) and a.peer == 3 for a in actions), msg



@pytest.mark.parametrize("content", [b"[" * 100_000, b'[{"kind": "prevote", "validator": 1, '
                                     b'"height": 1, "round": 0}' + b"]" * 2])
def test_a_damaged_evidence_file_does_not_stop_the_node_from_starting(
        tmp_path: Path, content: bytes) -> None:
    """Evidence is advisory: whatever evidence.json holds, the node must start (without
    it). Deep nesting raised RecursionError, which the loader did not catch."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "evidence.json").write_bytes(content)
    node = make_node(tmp_path)
    assert len(node.evidence) == 0


def test_a_relayed_copy_with_other_records_does_not_shadow_the_real_proposal() -> None:
    """A proposal's signature covers its header hash, not its records (they are bound only
    by the header's records_root, checked in valid()). A Byzantine peer that relays the
    honest proposer's proposal with other (validly signed) records first gets it stored as
    *the* proposal of the round, its validity cached as False under the block hash; the
    genuine copy then counts as a repeat (same hash, round, signature) and is dropped, so
    this honest node prevotes nil for a valid block. (Pre-existing; issue 11's repeat
    check keeps it: the genuine copy is now not even verified.)"""
    from ledger.blocks import PREVOTE
    from ledger.consensus import Misbehaviour
    from tests.unit.consensus_helpers import own_votes
    n = CoreNode(0)
    n.start()
    genuine = n.proposal(0)  # validator 1 proposes (1, 0)
    tampered = replace(genuine, records=(record(),))
    first = n.deliver(tampered, sender=3)
    actions = n.deliver(genuine, sender=1)
    prevotes = own_votes(first + actions, PREVOTE)
    assert prevotes == [genuine.block_hash], prevotes
    assert any(isinstance(a, Misbehaviour) and a.peer == 3 for a in first)


def test_an_honest_relay_of_the_second_proposal_of_an_equivocation_is_not_scored() -> None:
    """Honest nodes re-broadcast their valid proposal every resend. When the proposer
    equivocated, an honest node whose valid value is the *second* proposal this node saw
    relays it every second, and each relay was scored 5 as "a third proposal for one
    round" although it is one of the two already kept."""
    from ledger.consensus import Misbehaviour
    n = CoreNode(0)
    n.start()
    first = n.proposal(0)  # validator 1 proposes (1, 0) ...
    second = n.proposal(0)  # ... and equivocates
    n.deliver(first, sender=1)
    n.deliver(second, sender=1)
    assert len(n.core.evidence) == 1
    for _ in range(3):  # honest validator 2 relays its valid value, the second proposal
        actions = n.deliver(second, sender=2)
        assert not any(isinstance(a, Misbehaviour) for a in actions), actions


def test_evidence_of_an_equivocating_proposer_does_not_keep_its_blocks() -> None:
    """The core keeps the newest 1,000 conflicting pairs for ever (across heights). A pair
    of proposals held both proposals whole, records included: an equivocating proposer
    that sends two full blocks per round it may propose (its own rounds and two catch-up
    rounds a height) makes every node keep up to 1,000 x 2 x 8 MiB = 16 GiB of records
    (more once decoded), with no score, since evidence is not misbehaviour. Signature and
    header prove the equivocation; the records are not needed."""
    from ledger.consensus import Proposal
    n = CoreNode(0)
    n.start()
    recs = [record() for _ in range(50)]
    p1 = n.proposal(0, value=n.value(records=recs[:25]))
    p2 = n.proposal(0, value=n.value(records=recs[25:]))
    n.deliver(p1, sender=1)
    n.deliver(p2, sender=1)
    assert len(n.core.evidence) == 1
    kept = sum(len(m.records) for pair in n.core.evidence for m in pair
               if isinstance(m, Proposal))
    assert kept == 0, f"{kept} records kept as evidence"


@pytest.mark.parametrize("offset", [-2, 3], ids=["past height", "height far ahead"])
def test_proposals_for_heights_the_core_ignores_are_not_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    """ProposalBudget lets proposals for heights other than the current and next through
    untracked ("the core does not look at its records"), but the runtime then decoded
    their records on the event loop anyway; the core only reads their height (a sender
    behind or ahead) and scores nothing. 40 such proposals of 2,000 records each within
    the rate: 80,000 records decoded on the loop, for free."""
    from ledger.consensus import messages
    node = make_node(tmp_path, blocks=3)  # at height 4
    helper = CoreNode(0)
    recs = [record() for _ in range(2000)]
    header = replace(helper.value(records=recs)[0], height=node.core.height + offset)
    attack = [frame(Proposal.sign(FX.genesis.chain_id, r, -1, header, tuple(recs), 3,
                                  FX.validator_keys[3])) for r in range(40)]
    decoded = [0]
    real = messages.records_from_obj  # type: ignore[attr-defined]

    def counting(obj: Any, *args: Any, **kw: Any) -> Any:
        decoded[0] += len(obj) if isinstance(obj, list) else 0
        return real(obj, *args, **kw)

    monkeypatch.setattr(messages, "records_from_obj", counting)
    clock = Clock()
    monkeypatch.setattr(runtime, "time", clock)

    async def go() -> None:
        for f in attack:
            clock.t += 0.1
            node.on_frame(3, f)
            await pump(node)

    asyncio.run(go())
    print(f"{decoded[0]} records decoded; misbehaviour reports {node.misbehaviour}")
    assert decoded[0] <= 2 * len(recs) or node.backed_off(3)


def test_a_proposal_queued_without_its_records_is_dropped_if_the_core_caught_up(
        tmp_path: Path) -> None:
    """(The fix's own race.) A proposal for a height two ahead is queued without its
    records; if block sync brings the core to that height before it is handled, it must
    not reach the core (its records would not match its header: a score for an honest
    proposer)."""
    from tests.factory import ChainBuilder
    node = make_node(tmp_path)
    ahead = CoreNode(0, store=node.store)  # type: ignore[arg-type]
    builder = ChainBuilder(FX, node.store)
    builder.add(1)
    builder.add(1)  # what an honest proposer of height 3 has committed ...
    honest = ahead.proposal(0, value=ahead.value(records=[record()]))
    assert honest.height == 3
    node.store.close()
    node = make_node(tmp_path / "fresh")  # ... and this node, still at height 1
    node.on_frame(3, frame(honest))
    builder = ChainBuilder(FX, node.store)  # block sync, as far as this test needs it
    builder.add(1)
    builder.add(1)
    node.core = type(node.core)(node.genesis, node.store, node.mempool, key=node.key,
                                config=node.core.config, verify=node.mempool.verify)
    assert node.core.height == 3
    asyncio.run(pump(node))
    assert node.misbehaviour == {}
    assert node.core.proposals == {}


@pytest.mark.parametrize("height", [1, 2], ids=["current height", "next height"])
def test_a_proposal_sent_again_is_not_decoded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, height: int) -> None:
    """Any validator may re-send a proposal it holds (the genuine one of the round, or its
    own for the next height) as often as the rate allows (20 a second): the runtime
    decoded its records each time, and the core then dropped it as a repeat with no
    score. On this machine 20 repeats of a 1.1 MB proposal of 5,000 records held the
    event loop ~3 s, i.e. one peer can keep it busy all the time for free."""
    from ledger.consensus import messages
    node = make_node(tmp_path)
    helper = CoreNode(0)
    recs = [record() for _ in range(500)]
    header = replace(helper.value(records=recs)[0], height=height)
    proposer = (height + 0) % 4
    p = Proposal.sign(FX.genesis.chain_id, 0, -1, header, tuple(recs), proposer,
                      FX.validator_keys[proposer])
    decoded = [0]
    real = messages.records_from_obj  # type: ignore[attr-defined]

    def counting(obj: Any, *args: Any, **kw: Any) -> Any:
        decoded[0] += len(obj) if isinstance(obj, list) else 0
        return real(obj, *args, **kw)

    monkeypatch.setattr(messages, "records_from_obj", counting)
    clock = Clock()
    monkeypatch.setattr(runtime, "time", clock)

    async def go() -> None:
        for _ in range(20):
            clock.t += 0.05  # within the rate
            node.on_frame(3, frame(p))
            await pump(node)

    asyncio.run(go())
    print(f"{decoded[0]} records decoded; misbehaviour reports {node.misbehaviour}")
    assert decoded[0] <= len(recs) or node.backed_off(3)
