"""Tendermint consensus as a pure, deterministic state machine (see ``core``)."""

from ledger.consensus.core import ChainView, ConsensusConfig, ConsensusCore, Mempool
from ledger.consensus.events import (
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

__all__ = [
    "Action", "BlockRequest", "BlockResponse", "Broadcast", "ChainView", "CommitBlock",
    "ConsensusConfig", "ConsensusCore", "Event", "Mempool", "Message", "MessageReceived",
    "Misbehaviour", "PersistState", "Proposal", "RecordEvidence", "RecordsAvailable",
    "ScheduleTimeout", "SendTo", "ServeBlocks", "SignedVote", "SigningState", "Start", "Step",
    "Tick", "TimeoutFired", "TimeoutKind", "decode_message", "encode_message",
]
