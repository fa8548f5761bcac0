"""What goes into the consensus core (events) and what comes out (actions).

Frozen dataclasses, as in h11: the core consumes events and returns actions, and the
runtime (or the simulation) executes the actions *in order*.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from ledger.blocks import Block
from ledger.consensus.messages import Message, Proposal, SignedVote


class Step(IntEnum):
    """Steps of a round, in the order a validator passes through them."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class TimeoutKind(IntEnum):
    """What a timeout is for. PROPOSE/PREVOTE/PRECOMMIT are the paper's three."""

    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2
    NEW_HEIGHT = 3  # after a commit: start round 0 of the next height
    RESEND = 4  # re-broadcast this height's own messages (gossip for lossy links)


# -- events -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Start:
    """The node starts (or restarts); ``now_ms`` is its clock."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message from peer ``sender`` (a transport-level id, not trusted for anything)."""

    sender: int
    message: Message


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    """A timeout scheduled earlier; stale ones (other height/round) are ignored."""

    height: int
    round: int
    kind: TimeoutKind


@dataclass(frozen=True, slots=True)
class Tick:
    """The current time, so the core never reads a clock."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class RecordsAvailable:
    """The mempool gained records (a proposer waiting for records may now propose)."""


Event = Start | MessageReceived | TimeoutFired | Tick | RecordsAvailable


# -- actions ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PersistState:
    """Durably record the signing state *before* executing any later action."""

    state: SigningState


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send a message to every other validator."""

    message: Message


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send a message to one peer."""

    peer: int
    message: Message


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Deliver ``TimeoutFired(height, round, kind)`` after ``delay_ms``."""

    height: int
    round: int
    kind: TimeoutKind
    delay_ms: int


@dataclass(frozen=True, slots=True)
class CommitBlock:
    """Append ``block`` (with its certificate) to the store; the height is decided."""

    block: Block


@dataclass(frozen=True, slots=True)
class RecordEvidence:
    """Two conflicting signed messages from one validator at one (height, round, step)."""

    first: SignedVote | Proposal
    second: SignedVote | Proposal


Action = PersistState | Broadcast | SendTo | ScheduleTimeout | CommitBlock | RecordEvidence


@dataclass(frozen=True, slots=True)
class SigningState:
    """What must survive a crash so a restarted validator never signs a conflict.

    ``last_signed`` is the highest (height, round, step) this validator has signed; the
    lock and valid value (with their blocks, so the proposer can re-propose) keep the
    safety of the algorithm across a restart within a height; ``messages`` are its own
    signed messages of the latest rounds, which it keeps re-sending after a restart (a
    message lost in a partition must still reach its peers eventually), and the prevotes
    that justify its valid value, which it relays so others can accept a re-proposal.
    """

    height: int
    last_signed: tuple[int, int, int]
    round: int
    locked_round: int
    locked_block: Proposal | None
    valid_round: int
    valid_block: Proposal | None
    messages: tuple[Proposal | SignedVote, ...] = ()
