"""Vote bookkeeping for one height: who voted what, by voting power."""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.blocks import PRECOMMIT, PREVOTE
from ledger.consensus.messages import SignedVote
from ledger.genesis import ValidatorSet


@dataclass
class VoteSet:
    """The votes of one kind in one round.

    As in the paper, "2f+1 <PREVOTE, h, r, id(v)>" counts the validators that sent a
    prevote for id(v): a validator that equivocates counts towards each value it voted for
    (once each), and towards "any value" once. Its conflicting votes are evidence.
    """

    validators: ValidatorSet
    by_value: dict[bytes | None, dict[int, SignedVote]] = field(default_factory=dict)
    power_for: dict[bytes | None, int] = field(default_factory=dict)
    first: dict[int, SignedVote] = field(default_factory=dict)
    power: int = 0

    def add(self, vote: SignedVote) -> SignedVote | None:
        """Add ``vote``; return the earlier vote it conflicts with, if any (evidence)."""
        value = vote.vote.block_hash
        voters = self.by_value.setdefault(value, {})
        if vote.validator in voters:
            return None  # a repeat
        weight = self.validators[vote.validator].power
        voters[vote.validator] = vote
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
    """Every vote of one height, by (round, kind), and who spoke in each round."""

    validators: ValidatorSet
    sets: dict[tuple[int, int], VoteSet] = field(default_factory=dict)
    speakers: dict[int, set[int]] = field(default_factory=dict)

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
        """Note that ``validator`` sent a message for ``round`` (rule L55)."""
        self.speakers.setdefault(round, set()).add(validator)

    def speakers_power(self, round: int) -> int:
        """Total power of the validators heard from in ``round``."""
        return sum(self.validators[i].power for i in self.speakers.get(round, ()))

    def rounds(self) -> list[int]:
        """Every round some message was heard for."""
        return sorted(self.speakers)
