"""A harness that drives one ConsensusCore with crafted, signed messages (rule tests).

``Node`` wraps the core under test (validator ``me`` of the 4-validator fixture) over a
MemoryStore and a list mempool. It executes ``CommitBlock`` on the store, as the runtime
does, and builds proposals and votes of the other validators, signed with their keys.
The proposer of (height, round) is ``(height + round) % 4``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence

from ledger.blocks import PRECOMMIT, PREVOTE, Block, Header, Vote, build_header
from ledger.consensus import (
    Action,
    Broadcast,
    CommitBlock,
    ConsensusConfig,
    ConsensusCore,
    Event,
    Message,
    MessageReceived,
    PersistState,
    Proposal,
    RecordEvidence,
    ScheduleTimeout,
    SendTo,
    SignedVote,
    SigningState,
    Start,
    TimeoutFired,
    TimeoutKind,
)
from ledger.crypto import PrivateKey
from ledger.encoding import packb
from ledger.records import Record
from ledger.store import MemoryStore
from tests.factory import ChainBuilder, make_fixture

FX = make_fixture()
CHAIN = FX.genesis.chain_id
N = len(FX.genesis.validators)
T0 = 1_700_000_000_000

# Distinct values per timeout kind, so that a test cannot confuse one delay for another.
CONFIG = ConsensusConfig(
    timeout_propose_ms=1000, timeout_propose_delta_ms=300,
    timeout_prevote_ms=400, timeout_prevote_delta_ms=70,
    timeout_precommit_ms=600, timeout_precommit_delta_ms=90,
    timeout_commit_ms=50, resend_ms=10_000,
)

_nonces = itertools.count(1_000_000)

Value = tuple[Header, tuple[Record, ...]]


def proposer_of(height: int, round: int) -> int:
    """The round-robin proposer of (height, round)."""
    return (height + round) % N


def record(key: PrivateKey | None = None, *, chain: str = CHAIN,
           type: str = "sensor.reading") -> Record:
    """A fresh, signed record (a new nonce each call, so every value differs)."""
    nonce = next(_nonces)
    return Record.create(key or FX.writer, chain=chain, type=type,
                         subject="plant-7/line-3/temp", payload={"v": nonce, "unit": "C"},
                         ts=T0, nonce=nonce)


def with_bad_signature(r: Record) -> Record:
    """``r`` with one bit of its signature flipped (envelope rebuilt to match)."""
    sig = bytes([r.sig[0] ^ 1]) + r.sig[1:]
    return Record.from_wire(packb([r.body_bytes, sig]))


class ListMempool:
    """A mempool that always offers the same records."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self.records = list(records)

    def reap(self, max_records: int, max_bytes: int) -> list[Record]:
        return self.records[:max_records]

    def __len__(self) -> int:
        return len(self.records)


def stored_chain(blocks: int) -> MemoryStore:
    """A MemoryStore already holding ``blocks`` certified blocks of the fixture."""
    store = MemoryStore(FX.genesis.hash)
    builder = ChainBuilder(FX, store)
    for _ in range(blocks):
        builder.add(1)
    return store


class Node:
    """The core under test, validator ``me``, and the actions it returned so far."""

    def __init__(self, me: int = 0, *, store: MemoryStore | None = None,
                 mempool: Iterable[Record] = (), persisted: SigningState | None = None,
                 config: ConsensusConfig = CONFIG) -> None:
        self.me = me
        self.store = store if store is not None else MemoryStore(FX.genesis.hash)
        self.mempool = ListMempool(mempool)
        self.core = ConsensusCore(FX.genesis, self.store, self.mempool,
                                  key=FX.validator_keys[me], config=config,
                                  persisted=persisted)
        self.log: list[Action] = []
        self.batches: list[list[Action]] = []

    # -- state --------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.core.height

    @property
    def round(self) -> int:
        return self.core.round

    def others(self, count: int = N - 1, exclude: Sequence[int] = ()) -> list[int]:
        """The first ``count`` validator indexes other than ``me`` (and ``exclude``)."""
        return [i for i in range(N) if i != self.me and i not in exclude][:count]

    # -- events -------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Hand ``event`` to the core; execute CommitBlock on the store like the runtime."""
        actions = self.core.handle(event)
        for a in actions:
            if isinstance(a, CommitBlock):
                self.store.append(a.block, a.last_cert)
        self.log.extend(actions)
        self.batches.append(actions)
        return actions

    def start(self, now_ms: int = T0 + 500) -> list[Action]:
        return self.handle(Start(now_ms))

    def deliver(self, *msgs: Message, sender: int = 99) -> list[Action]:
        """Deliver messages one by one; return all actions they produced."""
        out: list[Action] = []
        for m in msgs:
            out += self.handle(MessageReceived(sender, m))
        return out

    def timeout(self, kind: TimeoutKind, round: int | None = None,
                height: int | None = None) -> list[Action]:
        return self.handle(TimeoutFired(self.height if height is None else height,
                                        self.round if round is None else round, kind))

    def next_round(self) -> list[Action]:
        """OnTimeoutPrecommit of the current round (L65): start the next round."""
        return self.timeout(TimeoutKind.PRECOMMIT)

    # -- crafted messages ---------------------------------------------------------------

    def value(self, records: Sequence[Record] | None = None, *, time_ms: int | None = None,
              prev_hash: bytes | None = None, **fields: object) -> Value:
        """A block on top of the store (valid unless ``fields`` overrides header fields)."""
        recs = tuple([record()] if records is None else records)
        tip = self.store.block(self.store.height)
        if time_ms is None:
            time_ms = tip.header.time_ms + 1000 if tip else T0 + 1000
        header = build_header(
            chain=CHAIN, height=self.store.height + 1, time_ms=time_ms,
            prev_hash=prev_hash or self.store.tip_hash() or FX.genesis.hash, records=recs,
            log=self.store.log, proposer=proposer_of(self.store.height + 1, 0),
            validators_hash=FX.genesis.validators.hash)
        if fields:
            header = dataclasses.replace(header, **fields)  # type: ignore[arg-type]
        return header, recs

    def proposal(self, round: int = 0, pol_round: int = -1,
                 value: Value | None = None, *,
                 proposer: int | None = None, key: PrivateKey | None = None,
                 chain: str = CHAIN) -> Proposal:
        """A proposal for ``round``, by its proposer unless ``proposer`` says otherwise."""
        header, recs = value if value is not None else self.value()
        index = proposer_of(header.height, round) if proposer is None else proposer
        tip = self.store.block(self.store.height)  # the previous block's certificate
        return Proposal.sign(chain, round, pol_round, header, recs, index,
                             key or FX.validator_keys[index % N],
                             tip.cert if tip is not None else None)

    def vote(self, kind: int, index: int, round: int, block_hash: bytes | None, *,
             height: int | None = None, chain: str = CHAIN,
             key: PrivateKey | None = None) -> SignedVote:
        h = self.height if height is None else height
        return SignedVote.sign(Vote(chain, kind, h, round, block_hash), index,
                               key or FX.validator_keys[index % N])

    def prevote(self, index: int, round: int, block_hash: bytes | None,
                **kw: object) -> SignedVote:
        return self.vote(PREVOTE, index, round, block_hash, **kw)  # type: ignore[arg-type]

    def precommit(self, index: int, round: int, block_hash: bytes | None,
                  **kw: object) -> SignedVote:
        return self.vote(PRECOMMIT, index, round, block_hash, **kw)  # type: ignore[arg-type]

    def prevotes(self, indexes: Iterable[int], round: int,
                 block_hash: bytes | None) -> list[Action]:
        return self.deliver(*[self.prevote(i, round, block_hash) for i in indexes])

    def precommits(self, indexes: Iterable[int], round: int,
                   block_hash: bytes | None) -> list[Action]:
        return self.deliver(*[self.precommit(i, round, block_hash) for i in indexes])

    def lock_on(self, prop: Proposal) -> None:
        """In prop's round, step propose: prevote prop, then 2 more prevotes lock it (L36)."""
        assert self.round == prop.round
        self.deliver(prop)
        assert own_votes(self.log, PREVOTE, round=prop.round) == [prop.block_hash]
        self.prevotes(self.others(2), prop.round, prop.block_hash)
        assert self.core.locked_round == prop.round
        assert self.core.locked is not None and self.core.locked.block_hash == prop.block_hash


# -- reading actions -------------------------------------------------------------------------

def broadcast_votes(actions: Iterable[Action], kind: int | None = None) -> list[SignedVote]:
    return [a.message for a in actions
            if isinstance(a, Broadcast) and isinstance(a.message, SignedVote)
            and (kind is None or a.message.vote.kind == kind)]


def own_votes(actions: Iterable[Action], kind: int, *, round: int | None = None,
              height: int | None = None) -> list[bytes | None]:
    """The block hashes (None: nil) of the votes of ``kind`` broadcast in ``actions``."""
    return [sv.vote.block_hash for sv in broadcast_votes(actions, kind)
            if (round is None or sv.vote.round == round)
            and (height is None or sv.vote.height == height)]


def broadcast_proposals(actions: Iterable[Action]) -> list[Proposal]:
    return [a.message for a in actions
            if isinstance(a, Broadcast) and isinstance(a.message, Proposal)]


def scheduled(actions: Iterable[Action], kind: TimeoutKind) -> list[ScheduleTimeout]:
    return [a for a in actions if isinstance(a, ScheduleTimeout) and a.kind == kind]


def commits(actions: Iterable[Action]) -> list[Block]:
    return [a.block for a in actions if isinstance(a, CommitBlock)]


def evidence(actions: Iterable[Action]) -> list[RecordEvidence]:
    return [a for a in actions if isinstance(a, RecordEvidence)]


def sends(actions: Iterable[Action]) -> list[SendTo]:
    return [a for a in actions if isinstance(a, SendTo)]


def persists(actions: Iterable[Action]) -> list[PersistState]:
    return [a for a in actions if isinstance(a, PersistState)]
