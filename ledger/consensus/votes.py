"""Vote bookkeeping for one height: who voted what, by voting power."""

from __future__ import annotations

from dataclasses import dataclass, field

from ledger.blocks import PRECOMMIT, PREVOTE
from ledger.consensus.messages import SignedVote
from ledger.genesis import ValidatorSet


@dataclass
class VoteSet:
    """The votes of one kind in one round; one vote per validator."""

    validators: ValidatorSet
    votes: dict[int, SignedVote] = field(default_factory=dict)
    power_for: dict[bytes | None, int] = field(default_factory=dict)
    power: int = 0

    def add(self, vote: SignedVote) -> SignedVote | None:
        """Add ``vote``; return the earlier vote it conflicts with, if any (evidence)."""
        earlier = self.votes.get(vote.validator)
        if earlier is not None:
            return earlier if earlier.vote.block_hash != vote.vote.block_hash else None
        weight = self.validators[vote.validator].power
        self.votes[vote.validator] = vote
        self.power_for[vote.vote.block_hash] = self.power_for.get(vote.vote.block_hash, 0) + weight
        self.power += weight
        return None

    def has_quorum_for(self, block_hash: bytes | None) -> bool:
        """More than 2/3 of the power voted for ``block_hash`` (None: nil)."""
        return self.validators.is_quorum(self.power_for.get(block_hash, 0))

    def has_quorum_any(self) -> bool:
        """More than 2/3 of the power voted, for anything."""
        return self.validators.is_quorum(self.power)

    def signatures_for(self, block_hash: bytes) -> tuple[tuple[int, bytes], ...]:
        """(validator, sig) of every vote for ``block_hash``, by ascending index."""
        return tuple(sorted((i, v.sig) for i, v in self.votes.items()
                            if v.vote.block_hash == block_hash))


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
