"""Seeded simulations of consensus: thousands of scenarios in virtual time.

Every seed runs a 4-validator chain through its own mix of message loss, duplication,
reordering, partitions, crashes (some half-way through an action list), Twins and an
equivocating proposer — and, in a share of the seeds, a validator set that changes by
height (added, removed, re-weighted, every original replaced) — checking agreement and
validity after every step and liveness after the last heal. A failure prints the command
that replays it. ``SIM_SEEDS`` sets how many seeds ``make test`` runs (default 2000);
``make soak`` runs many more.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from ledger.blocks import Vote
from ledger.config import CONFIG_TYPE
from ledger.consensus import (
    Broadcast,
    ConsensusCore,
    Message,
    PersistState,
    Proposal,
    SignedVote,
)
from ledger.genesis import ValidatorSet
from tests.sim.harness import (
    LivenessViolation,
    SafetyViolation,
    Scenario,
    SimNode,
    Simulation,
    run_seed,
)

SEEDS = int(os.environ.get("SIM_SEEDS", "2000"))
CHUNK = 100


@pytest.mark.slow
@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_seeded_scenarios_keep_agreement_validity_and_liveness(start: int) -> None:
    for seed in range(start, min(start + CHUNK, SEEDS)):
        run_seed(seed)  # raises with a one-line replay command


def test_a_seed_replays_exactly() -> None:
    seed = next(s for s in range(100) if Scenario.from_seed(s).twins)
    a, b = run_seed(seed), run_seed(seed)
    assert a.log == b.log
    assert [n.store.tip_hash() for n in a.nodes] == [n.store.tip_hash() for n in b.nodes]
    assert a.committed == b.committed and len(a.committed) > 0


def test_default_seeds_cover_every_fault_kind() -> None:
    scenarios = [Scenario.from_seed(s) for s in range(SEEDS)]
    assert sum(s.twins for s in scenarios) > SEEDS // 5
    assert sum(s.equivocator for s in scenarios) > SEEDS // 10
    assert sum(s.crashes > 0 for s in scenarios) > SEEDS // 5
    assert sum(s.partitions > 0 for s in scenarios) > SEEDS // 3
    assert sum(s.drop > 0 for s in scenarios) > SEEDS // 3


def test_twins_really_equivocate_and_honest_nodes_keep_the_evidence() -> None:
    with_evidence = 0
    twins = [s for s in range(400) if Scenario.from_seed(s).twins][:25]
    for seed in twins:
        sim = run_seed(seed)
        byzantine = [n for n in sim.nodes if not n.honest]
        assert len(byzantine) == 2 and byzantine[0].key.public == byzantine[1].key.public
        if any(n.evidence for n in sim.nodes if n.honest):
            with_evidence += 1
    assert with_evidence >= 5  # the twins signed conflicting messages that honest nodes saw


def test_equivocating_proposer_is_recorded_as_evidence() -> None:
    seeds = [s for s in range(200) if Scenario.from_seed(s).equivocator][:10]
    evidence = 0
    for seed in seeds:
        sim = run_seed(seed)
        evidence += sum(len(n.evidence) for n in sim.nodes if n.honest)
    assert evidence > 0


def test_loss_of_quorum_commits_nothing_until_it_returns() -> None:
    sim = Simulation(Scenario(seed=1, records=5, fault_window_ms=3000))
    heights: list[int] = []
    # Two of four validators down from the start: nobody may commit until they return.
    for victim in (0, 1):
        sim._push(0, "crash", victim, False)
        sim._push(2500, "restart", victim)
    sim._push(2499, "call", lambda s: heights.extend(n.store.height for n in s.nodes))
    sim.run()  # and after they return, liveness holds
    assert heights == [0, 0, 0, 0]
    assert all(n.store.height > 0 for n in sim.nodes)


def test_a_node_cut_off_for_long_catches_up_by_block_sync() -> None:
    sim = Simulation(Scenario(seed=7, records=30, fault_window_ms=5000))
    sim._push(0, "partition", [{0, 1, 2}, {3}])
    heights: dict[str, list[int]] = {}
    sim._push(4900, "call",
              lambda s: heights.setdefault("cut", [n.store.height for n in s.nodes]))
    sim.run()
    before = heights["cut"]
    assert before[3] == 0 and min(before[:3]) >= 3  # the others went on without node 3
    node3 = sim.nodes[3]
    assert node3.core is not None and node3.core.synced_commits >= 3
    assert node3.store.height >= min(before[:3])
    assert node3.store.tip_hash() == sim.nodes[0].store.block(node3.store.height).hash  # type: ignore[union-attr]


@pytest.mark.slow
def test_skipping_the_lock_check_is_caught_within_the_default_seeds() -> None:
    """The harness must catch a real safety bug: prevote without honouring the lock."""

    class NoLockCheck(ConsensusCore):
        def _is_locked_on(self, p):  # type: ignore[no-untyped-def]
            return True  # L23/L29's "lockedValue_p = v" always holds: the lock is ignored

    for seed in range(SEEDS):
        try:
            run_seed(seed, core_factory=NoLockCheck)
        except SafetyViolation as exc:
            assert "agreement" in str(exc) and "replay: python -m tests.sim.run" in str(exc)
            return
    pytest.fail(f"a broken lock rule went unnoticed for {SEEDS} seeds")


class FloodingSimulation(Simulation):
    """Validator 3 is Byzantine: with each vote it sends, it also sends every peer nil
    prevotes for the next 60 rounds of its height (issue 11: one key flooding future
    rounds froze honest nodes)."""

    FLOODER = 3

    def _outgoing(self, node: SimNode, message: Message) -> list[tuple[Message, list[int]]]:
        out = super()._outgoing(node, message)
        if node.id == self.FLOODER and isinstance(message, SignedVote):
            v = message.vote
            peers = [n.id for n in self.nodes if n.id != node.id]
            for r in range(v.round + 2, v.round + 62):
                flood = SignedVote.sign(Vote(v.chain, 1, v.height, r, None), node.id, node.key)
                out.append((flood, peers))
        return out


def test_a_validator_flooding_future_rounds_neither_stalls_nor_bloats_honest_nodes() -> None:
    for seed in range(3):
        sim = FloodingSimulation(Scenario(seed=seed, records=10, max_delay_ms=50))
        sim.nodes[FloodingSimulation.FLOODER].honest = False
        worst = 0

        def measure(s: Simulation) -> None:
            nonlocal worst
            for n in s.nodes:
                if n.honest and n.core is not None:
                    worst = max(worst, len(n.core.votes.speakers) - n.core.round)

        for t in range(0, 20_000, 250):
            sim._push(t, "call", measure)
        sim.run()  # raises on a safety or liveness violation
        honest = [n for n in sim.nodes if n.honest]
        assert min(n.store.height for n in honest) >= 3
        # rounds tracked: up to current + 1, plus at most two opened by the flooder
        assert worst <= 2 + 2
        assert all(any(peer == FloodingSimulation.FLOODER for peer, _ in n.misbehaviour)
                   for n in honest)


def test_default_seeds_change_the_validator_set_and_replace_every_original() -> None:
    scenarios = [Scenario.from_seed(s) for s in range(SEEDS)]
    assert sum(s.changes for s in scenarios) > SEEDS // 5
    assert sum(s.changes and s.twins for s in scenarios) > SEEDS // 20
    assert sum(s.changes and s.crashes > 0 for s in scenarios) > SEEDS // 20
    assert sum(s.changes and s.partitions > 0 for s in scenarios) > SEEDS // 10
    seeds = [s for s in range(200)
             if Scenario.from_seed(s).changes and not Scenario.from_seed(s).governed][:20]
    reached = 0
    for seed in seeds:
        sim = run_seed(seed)
        schedule = sim.schedule
        assert schedule is not None
        replaced = schedule.starts[schedule.kinds.index("replace")]
        originals = {k.public for k in sim.fx.validator_keys}
        assert not originals & {v.pubkey for v in schedule(replaced)}
        assert {"add", "remove", "reweight"} <= set(schedule.kinds)
        tip = max(n.store.height for n in sim.nodes if n.honest)
        assert tip >= schedule.starts[-1]  # every set of the schedule governed a block
        reached += 1
        for height in range(1, tip + 1):  # each block certified by its own height's set
            block = next(n.store.block(height) for n in sim.nodes
                         if n.honest and n.store.height >= height)
            assert block is not None
            assert block.header.validators_hash == schedule(height).hash
    assert reached == len(seeds)


@pytest.mark.slow
def test_certificates_checked_against_the_genesis_set_are_caught_within_the_default_seeds(
        ) -> None:
    """The harness must catch a core that checks certificates (a proposal's previous-block
    certificate, a synced block's) against the genesis set instead of the height's."""

    class GenesisCertifiers(ConsensusCore):
        def certifiers(self, height: int) -> ValidatorSet:
            return self.genesis.validators

    for seed in range(SEEDS):
        try:
            run_seed(seed, core_factory=GenesisCertifiers)
        except (SafetyViolation, LivenessViolation) as exc:
            assert "validator sets: h1 genesis" in str(exc)
            return
    pytest.fail(f"certificates checked against genesis went unnoticed for {SEEDS} seeds")


def test_default_seeds_change_the_set_by_committed_config_records_that_every_node_follows(
        ) -> None:
    """Governed seeds: each set change is a ``ledger.config`` record submitted to the
    mempools and committed at a height nobody planned; every node's core and store follow
    the committed chain, and the harness's own history (built from the blocks) agrees."""
    scenarios = [Scenario.from_seed(s) for s in range(SEEDS)]
    assert sum(s.governed for s in scenarios) > SEEDS // 10
    assert sum(s.governed and (s.twins or s.equivocator) for s in scenarios) > SEEDS // 40
    assert sum(s.governed and s.crashes > 0 for s in scenarios) > SEEDS // 40
    seeds = [s for s in range(400) if Scenario.from_seed(s).governed][:20]
    complete = replaced = 0
    for seed in seeds:
        sim = run_seed(seed)
        plan, reference = sim.plan, sim.reference
        assert plan is not None and reference is not None and sim.schedule is None
        versions = list(reference)
        complete += len(versions) == len(plan.records) + 1
        honest = [n for n in sim.nodes if n.honest]
        tip = max(n.store.height for n in honest)
        node = next(n for n in honest if n.store.height == tip)
        for version, (start, config) in enumerate(versions[1:], 1):
            # the change is the plan's record, committed in the block just below its start
            block = node.store.block(start - 1)
            assert block is not None
            changes = [r for r in block.records if r.body.type == CONFIG_TYPE]
            assert [r.id for r in changes] == [plan.records[version - 1].id]
            assert config.version == version
        originals = {k.public for k in sim.fx.validator_keys}
        replaced += any(not originals & {v.pubkey for v in c.validators} for _, c in versions)
        for n in honest:  # each store's history is the reference (up to its height)
            assert n.store.history is not None
            held = [(h, c.id) for h, c in n.store.history]
            assert held == [(h, c.id) for h, c in versions[:len(held)]]
        for height in range(1, tip + 1):  # each block certified by its height's set
            block = node.store.block(height)
            assert block is not None
            assert block.header.validators_hash == reference.validators_at(height).hash
            signed = {reference.validators_at(height)[i].pubkey
                      for i, _ in block.cert.signatures}
            assert signed <= {v.pubkey for v in reference.validators_at(height)}
    assert complete >= len(seeds) - 1  # a very lossy seed may end before its last change
    assert replaced >= len(seeds) - 1  # every original validator gone, by a record


def _first_governed_failure(monkeypatch: pytest.MonkeyPatch) -> str:
    for seed in range(SEEDS):
        if not Scenario.from_seed(seed).governed:
            continue
        try:
            run_seed(seed)
        except (SafetyViolation, LivenessViolation) as exc:
            return str(exc)
    return ""


@pytest.mark.slow
def test_governed_certificates_checked_against_the_genesis_set_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: certificates (a proposal's previous-block one, a synced block's) checked
    against the genesis set, not the committed chain's: the governed seeds catch it."""
    monkeypatch.setattr(ConsensusCore, "certifiers",
                        lambda self, height: self.genesis.validators)
    failure = _first_governed_failure(monkeypatch)
    assert "governed=True" in failure and "validator sets: h1 genesis" in failure, (
        f"certificates checked against genesis went unnoticed for {SEEDS} seeds")


@pytest.mark.slow
def test_a_core_that_ignores_committed_changes_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: the core keeps the genesis configuration whatever the chain committed."""
    monkeypatch.setattr(ConsensusCore, "config_at",
                        lambda self, height: self.genesis.config)
    failure = _first_governed_failure(monkeypatch)
    assert "governed=True" in failure, (
        f"a core ignoring committed changes went unnoticed for {SEEDS} seeds")


class CrashAfterReservedProposal(Simulation):
    """Crashes a proposer right after its round-0 proposal left with no write of its own
    (the reservation of its previous state covered it), before the write that follows (its
    prevote's), then restarts it: the restarted node must refuse to propose again."""

    def __init__(self, scenario: Scenario, crashes: int) -> None:
        super().__init__(scenario)
        self.left = crashes
        self.crashed: list[tuple[int, int]] = []  # (node, height)

    def _execute(self, node: SimNode, actions: list[Any]) -> None:
        if self.left > 0 and node.honest:
            for i, a in enumerate(actions):
                if (isinstance(a, Broadcast) and isinstance(a.message, Proposal)
                        and a.message.round == 0
                        and not any(isinstance(b, PersistState) for b in actions[:i])):
                    for b in actions[:i + 1]:
                        self._do(node, b)
                    self._crash(node)
                    self.left -= 1
                    self.crashed.append((node.id, a.message.height))
                    self._push(self.now + self.rng.randint(20, 600), "restart", node.id)
                    return
        super()._execute(node, actions)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_proposer_crashed_after_its_reserved_proposal_left_never_proposes_twice(
        seed: int) -> None:
    """The window the reservation opens: a proposal sent before any write, then a crash.
    The proposal reached its peers (some prevote for it); the node restarted from the state
    written before it refuses round 0's proposal of that height, so no honest node ever
    holds evidence against it, and the chain goes on (agreement, validity, liveness)."""
    sim = CrashAfterReservedProposal(Scenario(seed, records=20, max_delay_ms=20), crashes=6)
    sim.run()
    assert len(sim.crashed) >= 3, sim.crashed
    assert all(n.evidence == [] for n in sim.nodes), "an honest proposer equivocated"
    assert len(sim.committed) > max(h for _, h in sim.crashed)
