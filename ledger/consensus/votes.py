"""Vote bookkeeping for one height: who voted what, by voting power.

Everything here is bounded whatever a Byzantine validator signs (CometBFT's
``HeightVoteSet`` "peer catch-up rounds"): votes and proposals for rounds up to the
current round + 1 are always tracked; beyond that, a round is tracked once some validator
opens it, and each validator may hold at most ``catchup_rounds`` such rounds open (a
round stops counting against it once the node's round catches up). In one (round, kind)
a validator's votes for at most ``MAX_VALUES`` values are kept (its first, and one
conflicting one: the evidence). Per-message work never depends on how many rounds exist:
each round's speaker power is kept as messages arrive, and so is the highest round that
more than 1/3 of the power spoke in (rule L55).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.blocks import PRECOMMIT, PREVOTE
from ledger.consensus.messages import SignedVote
from ledger.genesis import ValidatorSet

CATCHUP_ROUNDS = 2  # future rounds (beyond current + 1) one validator may open per height
MAX_VALUES = 2  # values one validator's votes are kept for, per (round, kind)


@dataclass
class VoteSet:
    """The votes of one kind in one round.

    As in the paper, "2f+1 <PREVOTE, h, r, id(v)>" counts the validators that sent a
    prevote for id(v): a validator that equivocates counts towards each value it voted for
    (once each, for at most ``MAX_VALUES`` values), and towards "any value" once. Its
    conflicting votes are evidence.
    """

    validators: ValidatorSet
    by_value: dict[bytes | None, dict[int, SignedVote]] = field(default_factory=dict)
    power_for: dict[bytes | None, int] = field(default_factory=dict)
    first: dict[int, SignedVote] = field(default_factory=dict)
    values_of: dict[int, int] = field(default_factory=dict)
    power: int = 0

    def is_repeat(self, vote: SignedVote) -> bool:
        """``vote``'s validator already voted for its value here."""
        return vote.validator in self.by_value.get(vote.vote.block_hash, ())

    def is_full_for(self, validator: int) -> bool:
        """``validator`` already has votes for ``MAX_VALUES`` values here."""
        return self.values_of.get(validator, 0) >= MAX_VALUES

    def add(self, vote: SignedVote) -> SignedVote | None:
        """Add ``vote``; return the earlier vote it conflicts with, if any (evidence).
        Repeats, and values beyond ``MAX_VALUES`` per validator, are ignored."""
        value = vote.vote.block_hash
        if self.is_repeat(vote) or self.is_full_for(vote.validator):
            return None
        weight = self.validators[vote.validator].power
        self.by_value.setdefault(value, {})[vote.validator] = vote
        self.values_of[vote.validator] = self.values_of.get(vote.validator, 0) + 1
        self.power_for[value] = self.power_for.get(value, 0) + weight
        earlier = self.first.get(vote.validator)
        if earlier is None:
            self.first[vote.validator] = vote
            self.power += weight
        return earlier

    def has_quorum_for(self, block_hash: bytes | None) -> bool:
        """More than 2/3 of the power voted for ``block_hash`` (None: nil)."""
        return self.validators.is_quorum(self.power_for.get(block_hash, 0))

    def has_quorum_any(self) -> bool:
        """More than 2/3 of the power voted, for anything."""
        return self.validators.is_quorum(self.power)

    def votes_for(self, block_hash: bytes | None) -> list[SignedVote]:
        """Every vote for ``block_hash``, by ascending validator index."""
        return [v for _, v in sorted(self.by_value.get(block_hash, {}).items())]

    def signatures_for(self, block_hash: bytes) -> tuple[tuple[int, bytes], ...]:
        """(validator, sig) of every vote for ``block_hash``, by ascending index."""
        return tuple((v.validator, v.sig) for v in self.votes_for(block_hash))


@dataclass
class HeightVotes:
    """Every vote of one height, by (round, kind), and who spoke in each round.

    ``round`` is the node's current round (the core keeps it up to date); it decides which
    rounds are always tracked and which count against a validator's catch-up budget.
    """

    validators: ValidatorSet
    catchup_rounds: int = CATCHUP_ROUNDS
    round: int = 0
    sets: dict[tuple[int, int], VoteSet] = field(default_factory=dict)
    speakers: dict[int, set[int]] = field(default_factory=dict)
    speaker_power: dict[int, int] = field(default_factory=dict)
    skip_round: int = -1  # the highest round whose speakers hold more than 1/3 of the power
    catchup: dict[int, set[int]] = field(default_factory=dict)  # validator -> rounds opened

    def admits(self, round: int, validator: int) -> bool:
        """A message of ``validator`` for ``round`` would be tracked: the round is at most
        the current one + 1, already tracked, or ``validator`` may open one more."""
        if round <= self.round + 1 or round in self.speakers:
            return True
        opened = self.catchup.get(validator)
        if not opened:
            return True
        opened.difference_update([r for r in opened if r <= self.round + 1])
        return len(opened) < self.catchup_rounds

    def accepts(self, vote: SignedVote) -> bool:
        """``add(vote)`` would change something (checked before its signature is)."""
        v = vote.vote
        if not self.admits(v.round, vote.validator):
            return False
        vs = self.sets.get((v.round, v.kind))
        return vs is None or not (vs.is_repeat(vote) or vs.is_full_for(vote.validator))

    def get(self, round: int, kind: int) -> VoteSet:
        """The vote set for (round, kind), created empty on first use."""
        key = (round, kind)
        vs = self.sets.get(key)
        if vs is None:
            vs = self.sets[key] = VoteSet(self.validators)
        return vs

    def prevotes(self, round: int) -> VoteSet:
        """Prevotes of ``round``."""
        return self.get(round, PREVOTE)

    def precommits(self, round: int) -> VoteSet:
        """Precommits of ``round``."""
        return self.get(round, PRECOMMIT)

    def add(self, vote: SignedVote) -> SignedVote | None:
        """Add a verified vote; return a conflicting earlier vote, if any."""
        self.heard_from(vote.vote.round, vote.validator)
        return self.get(vote.vote.round, vote.vote.kind).add(vote)

    def heard_from(self, round: int, validator: int) -> None:
        """Note that ``validator`` sent a (verified) message for ``round`` (rule L55)."""
        speakers = self.speakers.get(round)
        if speakers is None:
            if round > self.round + 1:
                self.catchup.setdefault(validator, set()).add(round)
            speakers = self.speakers[round] = set()
        if validator in speakers:
            return
        speakers.add(validator)
        power = self.speaker_power[round] = (self.speaker_power.get(round, 0)
                                             + self.validators[validator].power)
        if round > self.skip_round and 3 * power > self.validators.total_power:
            self.skip_round = round

    def speakers_power(self, round: int) -> int:
        """Total power of the validators heard from in ``round``."""
        return self.speaker_power.get(round, 0)

    def rounds(self) -> list[int]:
        """Every round some message was heard for."""
        return sorted(self.speakers)
