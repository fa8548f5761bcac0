"""Tendermint consensus as a pure, deterministic state machine (see ``core``)."""

from ledger.consensus.core import (
    ChainView,
    ConsensusConfig,
    ConsensusCore,
    Mempool,
    ValidatorsAt,
)
from ledger.consensus.events import (
    NO_RESERVATION,
    Action,
    Broadcast,
    CommitBlock,
    Event,
    MessageReceived,
    Misbehaviour,
    PersistState,
    RecordEvidence,
    RecordsAvailable,
    ScheduleTimeout,
    SendTo,
    ServeBlocks,
    SigningState,
    Start,
    Step,
    Tick,
    TimeoutFired,
    TimeoutKind,
    in_reservation,
)
from ledger.consensus.messages import (
    BlockRequest,
    BlockResponse,
    Message,
    Proposal,
    SignedVote,
    decode_message,
    encode_message,
)
from ledger.consensus.proposer import ProposerSchedule, proposer_index

__all__ = [
    "NO_RESERVATION", "Action", "BlockRequest", "BlockResponse", "Broadcast", "ChainView",
    "CommitBlock",
    "ConsensusConfig", "ConsensusCore", "Event", "Mempool", "Message", "MessageReceived",
    "Misbehaviour", "PersistState", "Proposal", "ProposerSchedule", "RecordEvidence",
    "RecordsAvailable", "ScheduleTimeout", "SendTo", "ServeBlocks", "SignedVote",
    "SigningState", "Start", "Step", "Tick", "TimeoutFired", "TimeoutKind", "ValidatorsAt",
    "decode_message", "encode_message", "in_reservation", "proposer_index",
]
