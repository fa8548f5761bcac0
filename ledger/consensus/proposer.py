"""Who proposes in (height, round): selection proportional to voting power.

CometBFT's proposer-priority algorithm (``types/validator_set.go``:
``IncrementProposerPriority``, ``RescalePriorities``, ``shiftByAvgProposerPriority``,
``incrementProposerPriority``). Every validator holds a priority; one *step*

1. rescales the priorities so that their spread is at most ``2 * total_power`` (each is
   divided, truncating towards zero, by ``ceil(spread / (2 * total_power))``),
2. shifts them so that their average (rounded down) is zero,
3. adds each validator's power to its priority, and selects the validator with the highest
   priority — the lowest index among equal ones (CometBFT: the lowest address) — whose
   priority then drops by the total power.

Over any ``m * total_power`` consecutive steps each validator is selected ``m * power``
times, give or take a small constant; equal powers give round-robin by index.

Our reading (see docs/consensus.md, "Proposer selection"):

- A validator set that comes into force at height ``since`` starts with every priority
  zero. CometBFT instead carries a staying validator's priority over into the new set; we
  restart so that the proposer of a height is a function of that height's set and ``since``
  alone (a node syncing from genesis, an auditor or a test needs no replay of earlier sets).
- The proposer of (height, round) is the one chosen by step
  ``position = height - since + round + 1`` (steps numbered from 0): one step per height and
  one per round, as CometBFT increments once per block and once per round. The ``+ 1``
  keeps the chain's original schedule, ``(height + round) mod n`` for the genesis set of
  equal powers; CometBFT's position is one less, which matters to nobody's share.

``ProposerSchedule`` computes steps incrementally and keeps a checkpoint of the priorities
every ``CHECKPOINT`` steps, so a call costs O(n) amortised along a chain (and at most
``CHECKPOINT`` steps for a far jump back), never O(height).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from ledger.genesis import ValidatorSet

CHECKPOINT = 256  # steps between kept priority vectors
PRIORITY_WINDOW_FACTOR = 2  # CometBFT's PriorityWindowSizeFactor
MAX_SCHEDULES = 16  # distinct power vectors whose schedules are kept


def _trunc_div(a: int, b: int) -> int:
    """Go's integer division (towards zero), for positive ``b``."""
    q = abs(a) // b
    return q if a >= 0 else -q


def step(priorities: list[int], powers: Sequence[int], total: int) -> int:
    """One step, in place: rescale, centre, increment; return the selected index."""
    window = PRIORITY_WINDOW_FACTOR * total
    spread = max(priorities) - min(priorities)
    if spread > window:
        ratio = -(-spread // window)
        for i, p in enumerate(priorities):
            priorities[i] = _trunc_div(p, ratio)
    average = sum(priorities) // len(priorities)
    best = 0
    for i, power in enumerate(powers):
        priorities[i] += power - average
        if priorities[i] > priorities[best]:
            best = i
    priorities[best] -= total
    return best


class ProposerSchedule:
    """The selections of one power vector (index order), step by step from zero priorities."""

    def __init__(self, powers: Sequence[int]) -> None:
        if not powers or any(p <= 0 for p in powers):
            raise ValueError("a proposer schedule needs at least one validator of power > 0")
        self.powers = tuple(powers)
        self.total = sum(self.powers)
        # checkpoints[c]: the priorities before step c * CHECKPOINT
        self.checkpoints: list[tuple[int, ...]] = [(0,) * len(self.powers)]
        self._block = -1  # which block of CHECKPOINT selections ``_selected`` holds
        self._selected: list[int] = []

    def select(self, position: int) -> int:
        """The validator index selected by step ``position`` (>= 0)."""
        if position < 0:
            raise ValueError(f"step {position} is before the set took force")
        block = position // CHECKPOINT
        if block != self._block:
            self._selected = self._compute_block(block)
            self._block = block
        return self._selected[position % CHECKPOINT]

    def _compute_block(self, block: int) -> list[int]:
        start = min(block, len(self.checkpoints) - 1)
        priorities = list(self.checkpoints[start])
        for c in range(start, block):  # walk forward, keeping the checkpoints on the way
            for _ in range(CHECKPOINT):
                step(priorities, self.powers, self.total)
            if c + 1 == len(self.checkpoints):
                self.checkpoints.append(tuple(priorities))
        selected = [step(priorities, self.powers, self.total) for _ in range(CHECKPOINT)]
        if block + 1 == len(self.checkpoints):
            self.checkpoints.append(tuple(priorities))
        return selected


_schedules: OrderedDict[tuple[int, ...], ProposerSchedule] = OrderedDict()


def schedule_for(validators: ValidatorSet) -> ProposerSchedule:
    """The (shared, cached) schedule of ``validators``' powers."""
    powers = tuple(v.power for v in validators)
    found = _schedules.get(powers)
    if found is None:
        found = _schedules[powers] = ProposerSchedule(powers)
        while len(_schedules) > MAX_SCHEDULES:
            _schedules.popitem(last=False)
    else:
        _schedules.move_to_end(powers)
    return found


def proposer_index(validators: ValidatorSet, since: int, height: int, round: int) -> int:
    """The index (in ``validators``) of the proposer of (``height``, ``round``), for the set
    ``validators`` in force from height ``since`` (``since <= height``, ``round >= 0``)."""
    if height < since or round < 0:
        raise ValueError(f"no proposer for height {height} round {round} of a set in force "
                         f"from height {since}")
    return schedule_for(validators).select(height - since + round + 1)
