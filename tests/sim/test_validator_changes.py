"""Consensus over a changing validator set, scenario by scenario (SPEC sections 4 and 9).

Each test runs the simulation with a schedule of its own (``ValidatorSchedule``: the set
in force from each height) and checks who proposed, who signed and who followed.
"""

from __future__ import annotations

from ledger.blocks import Block
from ledger.consensus import Broadcast, Proposal, SignedVote
from tests.sim.harness import (
    EXTRA_KEYS,
    FIXTURE,
    Scenario,
    Simulation,
    ValidatorSchedule,
)

ORIGINALS = FIXTURE.validator_keys


def chain_of(sim: Simulation) -> list[Block]:
    """The committed blocks of the honest node that holds the most."""
    node = max((n for n in sim.nodes if n.honest), key=lambda n: n.store.height)
    blocks = [node.store.block(h) for h in range(1, node.store.height + 1)]
    assert all(b is not None for b in blocks)
    return [b for b in blocks if b is not None]


def signers(sim: Simulation, block: Block) -> set[bytes]:
    """The keys that signed ``block``'s certificate (indexes read in its height's set)."""
    vs = sim.validators_at(block.height)
    return {vs[i].pubkey for i, _ in block.cert.signatures}


def proposer_key(sim: Simulation, block: Block) -> bytes:
    return sim.validators_at(block.height)[block.header.proposer].pubkey


def run(schedule: ValidatorSchedule, seed: int = 3, **scenario: object) -> Simulation:
    sim = Simulation(Scenario(seed=seed, records=20, fault_window_ms=6000, max_delay_ms=20,
                              **scenario), schedule=schedule)  # type: ignore[arg-type]
    signed: list[tuple[bytes, int]] = []  # (key, height) of every vote and proposal sent

    original_do = sim._do

    def do(node, action):  # type: ignore[no-untyped-def]
        if isinstance(action, Broadcast) and isinstance(action.message, SignedVote | Proposal):
            m = action.message
            height = m.vote.height if isinstance(m, SignedVote) else m.height
            signed.append((node.key.public, height))
        original_do(node, action)

    sim._do = do  # type: ignore[method-assign]
    sim.run()
    sim.signed = signed  # type: ignore[attr-defined]
    return sim


def test_an_added_validator_votes_from_its_first_height_and_a_removed_one_stops_at_once(
        ) -> None:
    new, gone = EXTRA_KEYS[0], ORIGINALS[0]
    schedule = ValidatorSchedule(FIXTURE.genesis.validators)
    schedule.add(5, "add", [(k, 1) for k in ORIGINALS] + [(new, 2)])
    schedule.add(9, "remove", [(k, 1) for k in ORIGINALS[1:]] + [(new, 2)])
    sim = run(schedule)
    blocks = chain_of(sim)
    assert len(blocks) >= 12
    signed: list[tuple[bytes, int]] = sim.signed  # type: ignore[attr-defined]
    # The new key signs nothing before height 5, then proposes and certifies.
    assert min(h for k, h in signed if k == new.public) == 5
    assert any(new.public in signers(sim, b) for b in blocks[4:])
    assert any(proposer_key(sim, b) == new.public for b in blocks[4:])
    # The removed key signs nothing from height 9 on, yet its node follows the chain.
    assert max(h for k, h in signed if k == gone.public) == 8
    assert all(gone.public not in signers(sim, b) for b in blocks[8:])
    node0 = sim.nodes[0]
    assert node0.store.height >= len(blocks) - 1
    # And the new node followed the chain before it was a validator (by voting and sync).
    assert sim.nodes[4].store.height >= len(blocks) - 1


def test_proposers_follow_the_powers_of_the_set_in_force() -> None:
    schedule = ValidatorSchedule(FIXTURE.genesis.validators)
    schedule.add(3, "reweight", [(ORIGINALS[0], 1), (ORIGINALS[1], 1), (ORIGINALS[2], 1),
                                 (ORIGINALS[3], 5)])
    sim = run(schedule, seed=5)
    blocks = [b for b in chain_of(sim) if b.height >= 3 and b.cert.round == 0]
    assert len(blocks) >= 16
    heavy = sum(proposer_key(sim, b) == ORIGINALS[3].public for b in blocks)
    assert heavy >= len(blocks) * 5 // 8 - 2  # 5 of every 8 round-0 proposals


def test_a_node_cut_off_through_a_full_replacement_catches_up_by_block_sync() -> None:
    """Node 3 misses the change to a new set and the replacement of every original; the
    blocks it fetches are certified by sets it never saw vote, each checked under its own
    height's set."""
    schedule = ValidatorSchedule(FIXTURE.genesis.validators)
    schedule.add(3, "add", [(k, 1) for k in ORIGINALS] + [(EXTRA_KEYS[0], 1)])
    schedule.add(6, "replace", [(k, p) for k, p in zip(EXTRA_KEYS, (2, 1, 3), strict=True)])
    sim = Simulation(Scenario(seed=11, records=20, fault_window_ms=5000, max_delay_ms=20),
                     schedule=schedule)
    sim._push(0, "partition", [{0, 1, 2, 4, 5, 6}, {3}])
    heights: dict[str, list[int]] = {}
    sim._push(4900, "call",
              lambda s: heights.setdefault("cut", [n.store.height for n in s.nodes]))
    sim.run()
    before = heights["cut"]
    assert before[3] == 0 and min(before[:3]) >= 8
    node3 = sim.nodes[3]
    assert node3.core is not None and node3.core.synced_commits >= 8
    top = node3.store.height
    assert top >= 8 and node3.store.tip_hash() == sim.nodes[0].store.block(top).hash  # type: ignore[union-attr]
    assert node3.core.validators == schedule(top + 1)


def test_twins_with_a_key_that_is_removed_and_re_added_keep_agreement() -> None:
    """The Byzantine key (Twins) leaves the set and comes back; agreement and liveness
    hold throughout (the harness checks both after every step)."""
    for seed in range(4):
        sim = Simulation(Scenario(seed=seed, records=10, twins=True, drop=0.1),
                         schedule=ValidatorSchedule(FIXTURE.genesis.validators))
        byz = next(n.key for n in sim.nodes if not n.honest)
        others = [(k, 1) for k in ORIGINALS if k != byz]
        schedule = ValidatorSchedule(FIXTURE.genesis.validators)
        schedule.add(4, "remove", [*others, (EXTRA_KEYS[0], 1)])
        schedule.add(8, "readd", [*others, (EXTRA_KEYS[0], 1), (byz, 1)])
        sim.schedule = schedule  # before any core exists
        sim.run()
        assert max(n.store.height for n in sim.nodes if n.honest) >= 9
