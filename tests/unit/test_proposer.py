"""Proposer selection proportional to voting power (``ledger.consensus.proposer``)."""

from __future__ import annotations

import random
import time

import pytest

from ledger.consensus.proposer import CHECKPOINT, ProposerSchedule, proposer_index, step
from ledger.genesis import Validator, ValidatorSet


def vset(*powers: int, since: int = 1) -> ValidatorSet:
    return ValidatorSet(tuple(Validator(i, f"v{i}", bytes([i]) * 32, p)
                              for i, p in enumerate(powers)), since=since)


def test_equal_powers_give_round_robin_by_index() -> None:
    for n in (1, 2, 4, 7):
        vs = vset(*[5] * n)
        for height in range(1, 60):
            for round in range(4):
                assert proposer_index(vs, 1, height, round) == (height + round) % n


def test_the_genesis_schedule_of_equal_powers_is_unchanged() -> None:
    """The chain's original rule, ``(height + round) mod n``, for an unchanged set."""
    vs = vset(1, 1, 1, 1)
    assert [proposer_index(vs, 1, h, 0) for h in range(1, 9)] == [1, 2, 3, 0, 1, 2, 3, 0]
    assert [proposer_index(vs, 1, 1, r) for r in range(5)] == [1, 2, 3, 0, 1]


@pytest.mark.parametrize("powers", [(1, 2, 3, 4), (1, 1, 1, 10), (100, 1), (7, 3, 3, 2, 1),
                                    (1, 1_000_000, 5)])
def test_selection_is_proportional_to_power_within_cometbft_bounds(
        powers: tuple[int, ...]) -> None:
    """After any number of steps T, validator i was chosen T * p_i / total times, give or
    take 2: priorities stay within CometBFT's window of 2 * total power."""
    vs = vset(*powers)
    total = sum(powers)
    counts = [0] * len(powers)
    for height in range(1, 5001):
        counts[proposer_index(vs, 1, height, 0)] += 1
        for i, p in enumerate(powers):
            assert abs(counts[i] - height * p / total) <= 2, (height, counts)


def test_random_sets_stay_within_the_bounds() -> None:
    rng = random.Random(13)
    for _ in range(50):
        powers = [rng.choice([1, 2, 3, 10, rng.randint(1, 10**6)])
                  for _ in range(rng.randint(1, 10))]
        s = ProposerSchedule(powers)
        counts = [0] * len(powers)
        for k in range(2000):
            counts[s.select(k)] += 1
        for i, p in enumerate(powers):
            assert abs(counts[i] - 2000 * p / sum(powers)) <= 2


def test_each_block_of_total_power_steps_is_exact_for_small_sets() -> None:
    s = ProposerSchedule([1, 2, 3, 4])
    for start in range(0, 400, 10):
        window = [s.select(k) for k in range(start, start + 10)]
        assert [window.count(i) for i in range(4)] == [1, 2, 3, 4]


def test_ties_go_to_the_lowest_index() -> None:
    priorities = [0, 0, 0]
    assert step(priorities, (2, 2, 2), 6) == 0
    assert priorities == [-4, 2, 2]
    assert step(priorities, (2, 2, 2), 6) == 1


def test_deterministic_and_independent_of_the_order_of_calls() -> None:
    vs = vset(3, 1, 4, 1, 5)
    forward = [proposer_index(vs, 1, h, r) for h in range(1, 800) for r in range(3)]
    fresh = ProposerSchedule([3, 1, 4, 1, 5])
    positions = [(h - 1 + r + 1) for h in range(1, 800) for r in range(3)]
    order = list(range(len(positions)))
    random.Random(1).shuffle(order)
    backward = {i: fresh.select(positions[i]) for i in order}
    assert forward == [backward[i] for i in range(len(positions))]


def test_a_set_starts_afresh_at_its_first_height() -> None:
    """A set in force from height H proposes at H as a genesis set does at height 1."""
    later = vset(1, 2, 3, since=1000)
    genesis = vset(1, 2, 3)
    assert ([proposer_index(later, 1000, 999 + h, r) for h in range(1, 50) for r in range(3)]
            == [proposer_index(genesis, 1, h, r) for h in range(1, 50) for r in range(3)])
    with pytest.raises(ValueError):
        proposer_index(later, 1000, 999, 0)


def test_far_heights_cost_no_walk_from_the_start_twice() -> None:
    s = ProposerSchedule([5, 3, 2, 7])
    s.select(200_000)  # walks once, keeping a checkpoint every CHECKPOINT steps
    assert len(s.checkpoints) >= 200_000 // CHECKPOINT
    started = time.perf_counter()
    for k in range(200_000, 200_000 + 5000):
        s.select(k)
    for k in (10, 150_000, 199_999, 7):
        s.select(k)
    assert time.perf_counter() - started < 2.0  # generous: a busy 2-core machine


def test_schedules_refuse_empty_sets_and_zero_powers() -> None:
    with pytest.raises(ValueError):
        ProposerSchedule([])
    with pytest.raises(ValueError):
        ProposerSchedule([1, 0])
