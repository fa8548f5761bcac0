"""Signed consensus messages between validators: proposals, votes, and block sync.

Votes are signed as SPEC section 4 says (``ledger.vote.v1\\0 + packb(vote)``). Proposals are
not in the SPEC (they never reach an auditor), so their sign bytes are ours, tagged
``ledger.proposal.v1\\0`` so that no proposal signature can pass as a vote or a record:
``packb([chain, height, round, pol_round, block_hash])``.

Compact proposals (ours too, never in a block): the same signed proposal with each record
named by its id (``sha256(body)``) unless the proposer thinks a peer may not hold it yet
(then its envelope, as in a full proposal). The receiver rebuilds the record list from what
it holds and asks the sender for the rest (``RecordsRequest``/``RecordsResponse``); the
rebuilt proposal is the very Proposal the full form decodes to (same header, same records,
same signature), so the block's bytes and hash do not depend on the form it travelled in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ledger.blocks import Block, BlockShell, Certificate, Header, Vote, peek_header
from ledger.crypto import SIGNATURE_SIZE, PrivateKey, sha256
from ledger.encoding import (
    BatchItem,
    bin_span,
    expect_array,
    expect_bytes,
    expect_int,
    fail,
    packb,
    require_canonical,
    unpack_exact,
)
from ledger.records import KnownRecords, Record, records_from_obj

PROPOSAL_TAG = b"ledger.proposal.v1\x00"
MAX_ROUND = 2**32 - 1
ID_SIZE = 32  # a record id; an envelope is always longer (it holds a 64-byte signature)


@dataclass(frozen=True, slots=True)
class SignedVote:
    """A vote with the index of the validator that signed it."""

    vote: Vote
    validator: int
    sig: bytes

    @classmethod
    def sign(cls, vote: Vote, validator: int, key: PrivateKey) -> SignedVote:
        """Sign ``vote`` as validator ``validator``."""
        return cls(vote, validator, key.sign(vote.sign_bytes()))

    def to_obj(self) -> list[Any]:
        """``[vote bytes, validator, sig]``."""
        return [self.vote.to_wire(), self.validator, self.sig]

    @classmethod
    def from_obj(cls, obj: Any) -> SignedVote:
        """Decode from ``to_obj``'s shape (strict)."""
        items = expect_array(obj, "signed vote", 3)
        return cls(
            Vote.from_wire(expect_bytes(items[0], "signed vote.vote")),
            expect_int(items[1], "signed vote.validator", hi=2**16),
            expect_bytes(items[2], "signed vote.sig", SIGNATURE_SIZE),
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    """A proposer's block for (height, round), with the round of its polka (or -1).

    ``last_cert`` is the proposer's certificate for the previous block. Nodes that commit
    this proposal's block replace their own certificate of the previous block by it, so
    that once a block has a successor every node serves it with the same bytes.
    """

    chain: str
    height: int
    round: int
    pol_round: int
    header: Header
    records: tuple[Record, ...]
    proposer: int
    sig: bytes
    last_cert: Certificate | None = None

    @property
    def block_hash(self) -> bytes:
        """The proposed block's hash: the value consensus decides on."""
        return self.header.hash

    @staticmethod
    def signed_bytes(chain: str, height: int, round: int, pol_round: int, block_hash: bytes,
                     last_cert: Certificate | None) -> bytes:
        """What a proposer signs."""
        cert_hash = sha256(last_cert.to_wire()) if last_cert is not None else None
        return PROPOSAL_TAG + packb([chain, height, round, pol_round, block_hash, cert_hash])

    def sign_bytes(self) -> bytes:
        """What this proposal's signature covers."""
        return self.signed_bytes(self.chain, self.height, self.round, self.pol_round,
                                 self.block_hash, self.last_cert)

    @classmethod
    def sign(cls, chain: str, round: int, pol_round: int, header: Header,
             records: tuple[Record, ...], proposer: int, key: PrivateKey,
             last_cert: Certificate | None = None) -> Proposal:
        """Sign a proposal of ``header``/``records`` for ``round``."""
        sig = key.sign(cls.signed_bytes(chain, header.height, round, pol_round, header.hash,
                                        last_cert))
        return cls(chain, header.height, round, pol_round, header, records, proposer, sig,
                   last_cert)

    def to_obj(self) -> list[Any]:
        """``[chain, height, round, pol_round, header, [envelope...], proposer, sig,
        last_cert | nil]``."""
        return [self.chain, self.height, self.round, self.pol_round, self.header.to_obj(),
                [r.envelope for r in self.records], self.proposer, self.sig,
                None if self.last_cert is None else self.last_cert.to_obj()]

    @classmethod
    def from_obj(cls, obj: Any, known: KnownRecords | None = None) -> Proposal:
        """Decode from ``to_obj``'s shape (strict; signatures are not checked here;
        ``known``: see ``records_from_obj``)."""
        w = "proposal"
        items = expect_array(obj, w, 9)
        chain = items[0]
        if type(chain) is not str:
            fail(f"{w}.chain", "expected str")
        height = expect_int(items[1], f"{w}.height", lo=1)
        round_ = expect_int(items[2], f"{w}.round", hi=MAX_ROUND)
        pol_round = expect_int(items[3], f"{w}.pol_round", lo=-1, hi=MAX_ROUND)
        if pol_round >= round_:
            fail(f"{w}.pol_round", f"{pol_round} is not below round {round_}")
        header = Header.from_obj(items[4])
        if header.height != height:
            fail(f"{w}.header", f"is for height {header.height}, proposal for {height}")
        records = records_from_obj(items[5], f"{w}.records", known)
        last_cert = None if items[8] is None else Certificate.from_obj(items[8])
        return cls(chain, height, round_, pol_round, header, records,
                   expect_int(items[6], f"{w}.proposer", hi=2**16),
                   expect_bytes(items[7], f"{w}.sig", SIGNATURE_SIZE), last_cert)


@dataclass(frozen=True, slots=True)
class BlockRequest:
    """Ask a peer for committed blocks from ``height`` on (block sync)."""

    height: int


@dataclass(frozen=True, slots=True)
class BlockResponse:
    """A committed block with its certificate, sent for block sync, and the sender's
    certificate of the block before it (canonical, since that block has a successor)."""

    block: Block
    last_cert: Certificate | None = None


Message = Proposal | SignedVote | BlockRequest | BlockResponse


@dataclass(frozen=True, slots=True)
class UndecodedProposal:
    """A proposal decoded up to its records: what a node checks against its per-peer
    budgets before paying for the records (``decode`` gives the Proposal)."""

    height: int
    round: int
    proposer: int
    sig: bytes
    obj: Any

    def decode(self, known: KnownRecords | None = None) -> Proposal:
        """The whole proposal, strictly decoded."""
        return Proposal.from_obj(self.obj, known)

    def without_records(self) -> Proposal:
        """The proposal strictly decoded but for its records, which it holds none of:
        for a height whose records a node never reads (only that the sender is there)."""
        return Proposal.from_obj([*self.obj[:5], [], *self.obj[6:]])


@dataclass(frozen=True, slots=True)
class UndecodedCompactProposal:
    """A compact proposal decoded up to its records, each of which is a record id (32
    bytes) or an envelope: checked against the per-peer budgets as a proposal is, then
    rebuilt (``slots``, then ``assemble`` with every record) into the Proposal it stands
    for."""

    height: int
    round: int
    proposer: int
    sig: bytes
    obj: Any

    def slots(self, known: KnownRecords | None = None) -> list[bytes | Record]:
        """The records in block order: a Record where the proposal carries the envelope
        (``known`` as for ``records_from_obj``), the id where it names one (strict)."""
        w = "compact proposal.records"
        out: list[bytes | Record] = []
        for i, item in enumerate(expect_array(self.obj[5], w)):
            data = expect_bytes(item, f"{w}[{i}]")
            if len(data) == ID_SIZE:
                out.append(data)
            else:
                record = known(data) if known is not None else None
                out.append(record if record is not None else Record.from_wire(data))
        return out

    def assemble(self, records: tuple[Record, ...]) -> Proposal:
        """The Proposal with ``records`` (the rebuilt list), strictly decoded but for the
        records. The caller checks they are the ones named; the consensus core checks
        them against the header, as for any proposal."""
        shell = Proposal.from_obj([*self.obj[:5], [], *self.obj[6:]])
        return Proposal(shell.chain, shell.height, shell.round, shell.pol_round,
                        shell.header, records, shell.proposer, shell.sig, shell.last_cert)

    def without_records(self) -> Proposal:
        """As ``UndecodedProposal.without_records``."""
        return Proposal.from_obj([*self.obj[:5], [], *self.obj[6:]])


def encode_compact_proposal(proposal: Proposal, inline: Callable[[Record], bool]) -> bytes:
    """The frame body of ``proposal`` in compact form: each record named by its id, or
    carried whole where ``inline(record)`` says so (a peer may not hold it yet)."""
    p = proposal
    items = [r.envelope if inline(r) else r.id for r in p.records]
    return packb([COMPACT_PROPOSAL, [p.chain, p.height, p.round, p.pol_round, p.header.to_obj(),
                                     items, p.proposer, p.sig,
                                     None if p.last_cert is None else p.last_cert.to_obj()]])


@dataclass(frozen=True, slots=True)
class RecordsRequest:
    """Ask a peer for records of a proposal for ``height``, by id (to rebuild it)."""

    height: int
    ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class RecordsResponse:
    """The records asked for that the peer holds (possibly none), each as a batch item:
    the envelope, or ``(envelope, salt, payload)`` for a sealed record whose pair the
    peer holds."""

    height: int
    items: tuple[BatchItem, ...]


@dataclass(frozen=True, slots=True)
class UndecodedBlockResponse:
    """A block response with only the block's header read: a node checks that it asked
    this peer for that height, then (off its event loop) the sizes and the certificate
    (``BlockShell.check``) before decoding the records."""

    header: Header
    block: bytes
    last_cert: Certificate | None

    def shell(self) -> BlockShell:
        """The block up to its records, strictly decoded."""
        return BlockShell.from_wire(self.block)

    def decode(self, known: KnownRecords | None = None) -> BlockResponse:
        """The whole response, strictly decoded (no signature checks)."""
        return BlockResponse(self.shell().decode(known), self.last_cert)


Frame = (SignedVote | BlockRequest | UndecodedProposal | UndecodedBlockResponse
         | UndecodedCompactProposal | RecordsRequest | RecordsResponse)

_KINDS: dict[type, int] = {Proposal: 1, SignedVote: 2, BlockRequest: 3, BlockResponse: 4}
# Compact proposals and the record fetch behind them: sent only to a peer that said it
# reads them (node.runtime's feature hello); an older node refuses kinds it does not know.
COMPACT_PROPOSAL, RECORDS_REQUEST, RECORDS_RESPONSE = 5, 6, 7


def encode_records_request(msg: RecordsRequest) -> bytes:
    """The frame body of a RecordsRequest: ``[6, [height, [id, ...]]]``."""
    return packb([RECORDS_REQUEST, [msg.height, list(msg.ids)]])


def encode_records_response(msg: RecordsResponse) -> bytes:
    """The frame body of a RecordsResponse: ``[7, [height, [item, ...]]]``."""
    return packb([RECORDS_RESPONSE, [msg.height, [i if isinstance(i, bytes) else list(i)
                                                  for i in msg.items]]])


def encode_message(msg: Message) -> bytes:
    """The peer-wire frame body of a consensus message: ``[kind, payload]``."""
    payload: Any
    if isinstance(msg, BlockRequest):
        payload = msg.height
    elif isinstance(msg, BlockResponse):
        payload = [msg.block.to_wire(),
                   None if msg.last_cert is None else msg.last_cert.to_obj()]
    else:
        payload = msg.to_obj()
    return packb([_KINDS[type(msg)], payload])


def decode_message(data: bytes, known: KnownRecords | None = None) -> Message:
    """Decode a frame body strictly; DecodeError names what is wrong. ``known`` looks up
    records already decoded from the same envelope bytes (see ``records_from_obj``)."""
    frame = decode_frame(data)
    if isinstance(frame, UndecodedProposal | UndecodedBlockResponse):
        return frame.decode(known)
    if isinstance(frame, UndecodedCompactProposal):
        # what its signature covers, without the records it names (a node rebuilds them)
        return frame.without_records()
    if isinstance(frame, RecordsRequest | RecordsResponse):
        fail("message", "a record fetch, not a consensus message")
    return frame


def decode_frame(data: bytes) -> Frame:
    """Decode a frame body strictly, except the records of a proposal or block response
    (and a block response's block beyond its header): votes and block requests whole."""
    obj = unpack_exact(data, "message")
    require_canonical(data, obj, "message")
    kind, payload = expect_array(obj, "message", 2)
    if kind == 1 or kind == COMPACT_PROPOSAL:
        items = expect_array(payload, "proposal", 9)
        cls = UndecodedProposal if kind == 1 else UndecodedCompactProposal
        return cls(expect_int(items[1], "proposal.height", lo=1),
                                 expect_int(items[2], "proposal.round", hi=MAX_ROUND),
                                 expect_int(items[6], "proposal.proposer", hi=2**16),
                                 expect_bytes(items[7], "proposal.sig", SIGNATURE_SIZE),
                                 payload)
    if kind == 2:
        return SignedVote.from_obj(payload)
    if kind == 3:
        return BlockRequest(expect_int(payload, "block request.height", lo=1))
    if kind == 4:
        block_bytes, last_cert = expect_array(payload, "block response", 2)
        block = expect_bytes(block_bytes, "block response.block")
        return UndecodedBlockResponse(
            peek_header(block), block,
            None if last_cert is None else Certificate.from_obj(last_cert))
    if kind == RECORDS_REQUEST:
        height, ids = expect_array(payload, "records request", 2)
        ids = expect_array(ids, "records request.ids")
        return RecordsRequest(expect_int(height, "records request.height", lo=1),
                              tuple(expect_bytes(i, "records request.ids[]", ID_SIZE)
                                    for i in ids))
    if kind == RECORDS_RESPONSE:
        height, items = expect_array(payload, "records response", 2)
        out: list[BatchItem] = []
        for item in expect_array(items, "records response.items"):
            if type(item) is list:
                env, salt, body = expect_array(item, "records response.items[]", 3)
                out.append((expect_bytes(env, "records response.envelope"),
                            expect_bytes(salt, "records response.salt"),
                            expect_bytes(body, "records response.payload")))
            else:
                out.append(expect_bytes(item, "records response.items[]"))
        return RecordsResponse(expect_int(height, "records response.height", lo=1),
                               tuple(out))
    fail("message", f"unknown kind {kind!r}")


HEADER_PEEK_BYTES = 64 * 1024  # a block header is far smaller


def peek_block_response(data: bytes) -> Header | None:
    """The header of the block in a BlockResponse frame body, read from a prefix of it
    without decoding (or copying) the rest; None if ``data`` is not a block response.
    Nothing else is checked: ``decode_frame`` does that, strictly, later."""
    if len(data) < 5 or data[0] != 0x92 or data[1] != _KINDS[BlockResponse] or data[2] != 0x92:
        return None
    span = bin_span(data, 3)
    if span is None:
        fail("block response.block", "expected bin")
    start, end, _ = span
    return peek_header(data[start:min(end, start + HEADER_PEEK_BYTES)])


def encode_block_response(block: bytes, last_cert_obj: Any) -> bytes:
    """``encode_message(BlockResponse(...))`` from stored block bytes and the previous
    block's certificate array, without decoding either."""
    return packb([_KINDS[BlockResponse], [block, last_cert_obj]])
