"""What goes into the consensus core (events) and what comes out (actions).

Frozen dataclasses, as in h11: the core consumes events and returns actions, and the
runtime (or the simulation) executes the actions *in order*.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ledger.blocks import Block, Certificate
from ledger.consensus.messages import (
    Message,
    Proposal,
    SignedVote,
    decode_message,
    encode_message,
)
from ledger.encoding import expect_array, expect_bytes, expect_int, fail, packb, unpack_exact


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
    """Append ``block`` (with its certificate) to the store; the height is decided.

    ``last_cert``, when given, replaces the stored certificate of the previous block in the
    same transaction (the one the decided proposal carried: canonical on every node).
    """

    block: Block
    last_cert: Certificate | None = None


@dataclass(frozen=True, slots=True)
class RecordEvidence:
    """Two conflicting signed messages from one validator at one (height, round, step)."""

    first: SignedVote | Proposal
    second: SignedVote | Proposal


@dataclass(frozen=True, slots=True)
class ServeBlocks:
    """Send ``peer`` the committed blocks ``start`` .. ``stop - 1`` (block sync), each as a
    ``BlockResponse`` with the certificate of the block before it. The runtime rate-limits
    this per peer and reads the stored bytes off its event loop."""

    peer: int
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    """Peer ``peer`` sent something no correct validator sends (or more than one would):
    ``weight`` says how sure (1: could be an honest node far ahead; 20: a bad signature).
    The runtime keeps a score per peer and disconnects and backs off one past a bound."""

    peer: int
    reason: str
    weight: int


Action = (PersistState | Broadcast | SendTo | ScheduleTimeout | CommitBlock | RecordEvidence
          | ServeBlocks | Misbehaviour)


@dataclass(frozen=True, slots=True)
class SigningState:
    """What must survive a crash so a restarted validator never signs a conflict.

    ``last_signed`` is the highest (height, round, step) this validator has signed; the
    lock and valid value (with their blocks, so the proposer can re-propose) keep the
    safety of the algorithm across a restart within a height; ``messages`` are its own
    signed messages of the latest rounds, which it keeps re-sending after a restart (a
    message lost in a partition must still reach its peers eventually), and the prevotes
    that justify its valid value, which it relays so others can accept a re-proposal.

    ``reserved`` = (H, R, S) reserves the steps (H, R, 0) .. (H, R, S) beyond ``last_signed``:
    once this state is durable its validator may sign them with no write of their own, so
    a validator restarted from it refuses them as if signed (``in_reservation``; the core
    reserves the next height's round-0 proposal, ``core.RESERVED``, see docs/consensus.md,
    "Persistence order / crash safety"). ``NO_RESERVATION`` reserves nothing (the state of
    nodes from before reservations: their wire form has 8 items, this one 9).
    """

    height: int
    last_signed: tuple[int, int, int]
    round: int
    locked_round: int
    locked_block: Proposal | None
    valid_round: int
    valid_block: Proposal | None
    messages: tuple[Proposal | SignedVote, ...] = ()
    reserved: tuple[int, int, int] = (0, 0, -1)

    def to_wire(self) -> bytes:
        """The bytes a runtime persists."""
        def opt(p: Proposal | None) -> Any:
            return None if p is None else p.to_obj()

        return packb([self.height, list(self.last_signed), self.round, self.locked_round,
                      opt(self.locked_block), self.valid_round, opt(self.valid_block),
                      [encode_message(m) for m in self.messages], list(self.reserved)])

    @classmethod
    def from_wire(cls, data: bytes) -> SigningState:
        """Decode persisted signing state (strict)."""
        w = "signing state"
        items = expect_array(unpack_exact(data, w), w)
        if len(items) not in (8, 9):  # 8: written before reservations (none)
            fail(w, f"expected an array of 8 or 9 items, got {len(items)}")
        signed = expect_array(items[1], f"{w}.last_signed", 3)
        reserved = NO_RESERVATION
        if len(items) == 9:
            res = expect_array(items[8], f"{w}.reserved", 3)
            reserved = (expect_int(res[0], f"{w}.reserved"), expect_int(res[1], f"{w}.reserved"),
                        expect_int(res[2], f"{w}.reserved", lo=-1))
        messages = []
        for i, m in enumerate(expect_array(items[7], f"{w}.messages")):
            msg = decode_message(expect_bytes(m, f"{w}.messages[{i}]"))
            if not isinstance(msg, Proposal | SignedVote):
                fail(f"{w}.messages[{i}]", "not a proposal or vote")
            messages.append(msg)
        return cls(
            height=expect_int(items[0], f"{w}.height"),
            last_signed=(expect_int(signed[0], w), expect_int(signed[1], w),
                         expect_int(signed[2], w, lo=-1)),
            round=expect_int(items[2], f"{w}.round"),
            locked_round=expect_int(items[3], f"{w}.locked_round", lo=-1),
            locked_block=None if items[4] is None else Proposal.from_obj(items[4]),
            valid_round=expect_int(items[5], f"{w}.valid_round", lo=-1),
            valid_block=None if items[6] is None else Proposal.from_obj(items[6]),
            messages=tuple(messages),
            reserved=reserved,
        )


NO_RESERVATION = (0, 0, -1)
"""A reservation of no step (``SigningState.reserved``)."""


def in_reservation(step: tuple[int, int, int], reserved: tuple[int, int, int]) -> bool:
    """Whether (height, round, step) ``step`` is one of the steps ``reserved`` reserves:
    the same height and round, at or below its step."""
    return step[:2] == reserved[:2] and step[2] <= reserved[2]
