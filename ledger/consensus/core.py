"""Tendermint consensus as a deterministic state machine.

Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus" (2018), Algorithm 1. Each
rule below carries the paper's line number (``L22`` ...). ``handle(event)`` returns the
actions to run, in order; the core does no I/O, reads no clock (time arrives as events)
and uses no randomness, so the same events always give the same actions.

Persistence order (what the runtime must honour, and what the crash tests check):

1. ``PersistState`` always comes before the ``Broadcast`` of the message it signs: the
   runtime writes it durably (fsync) before sending anything after it. A node restarted
   from that state refuses to sign at or below ``last_signed`` (height, round, step), so it
   can never send two different messages for one (height, round, step), whatever point
   it crashed at. The one exception: a state also *reserves* the next height's round-0
   proposal (``RESERVED``), which is then signed and sent with no write of its own; a node
   restarted from that state refuses it too (``refused``), whatever its store holds.
2. ``CommitBlock`` is executed (the block, its certificate and indexes in one store
   transaction) before any later action; the next height only starts on a later
   ``TimeoutFired(NEW_HEIGHT)`` event, so the core always reads a store that holds it.
3. The lock and valid value travel inside ``PersistState``, so a restarted validator keeps
   the locks that make the algorithm safe.

Beyond the paper, for links that lose messages: every ``RESEND`` timeout re-broadcasts this
validator's own messages of the height (the gossip the paper assumes), and a message from a
later height makes the core ask its sender for the missing committed blocks (block sync),
which it verifies by their certificates instead of replaying rounds.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ledger import merkle
from ledger.blocks import (
    PRECOMMIT,
    PREVOTE,
    Block,
    Certificate,
    Header,
    Vote,
    build_header,
    check_contents,
)
from ledger.config import CONFIG_TYPE, REDACT_TYPE, Config, succeeding
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
)
from ledger.consensus.proposer import proposer_index
from ledger.consensus.votes import CATCHUP_ROUNDS, HeightVotes
from ledger.crypto import PrivateKey, is_valid_signature
from ledger.errors import BlockError, LedgerError
from ledger.genesis import Genesis, ValidatorSet
from ledger.records import MAX_RECORD_ENVELOPE_BYTES, Record
from ledger.validation import (
    ChainTip,
    Redaction,
    check_extends,
    check_header_fields,
    check_record,
    check_records,
    check_redactions,
    check_unique_within,
)

Verifier = Callable[[bytes, bytes, bytes], bool]
ConfigAt = Callable[[int], Config]
"""The configuration governing a height (``ConfigHistory.at``), with the same contract as
``ValidatorsAt``: the core also follows a change it decides itself until the chain holds it."""
ValidatorsAt = Callable[[int], ValidatorSet]
"""The validator set governing a height. It must answer for every height up to the committed
chain's height + 1 (a change committed at height H governs from H + 1); beyond that it may
answer with the latest set it knows, and the core never relies on such an answer."""


class ChainView(Protocol):
    """The committed chain, read-only (a BlockStore satisfies it)."""

    @property
    def height(self) -> int: ...

    @property
    def log(self) -> merkle.CompactRange: ...

    def tip_hash(self) -> bytes | None: ...

    def block(self, height: int) -> Block | None: ...

    def seen_ids(self, ids: list[bytes]) -> set[bytes]: ...

    def seen_nonces(self, pairs: list[tuple[bytes, int]]) -> set[tuple[bytes, int]]: ...

    def seen_digests(self, digests: list[bytes]) -> set[bytes]: ...

    def sealed_signers(self, ids: list[bytes]) -> dict[bytes, bytes]: ...

    def redacted(self, ids: list[bytes]) -> set[bytes]: ...


class Mempool(Protocol):
    """Where a proposer takes records from (already admitted: decoded and verified)."""

    def reap(self, max_records: int, max_bytes: int) -> list[Record]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class ConsensusConfig:
    """Timeouts (ms) grow by ``*_delta_ms`` per round; limits bound a block."""

    timeout_propose_ms: int = 1000
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 500
    timeout_prevote_delta_ms: int = 250
    timeout_precommit_ms: int = 500
    timeout_precommit_delta_ms: int = 250
    timeout_commit_ms: int = 100
    resend_ms: int = 1000
    sync_retry_ms: int = 500
    sync_batch: int = 16
    max_block_records: int = 10_000
    max_block_bytes: int = 8 * 1024 * 1024
    create_empty_blocks: bool = True
    max_future_messages: int = 10_000
    max_future_per_peer: int = 64  # messages for the next height buffered per sender
    max_future_proposals_per_peer: int = 2  # of which proposals (they carry whole blocks)
    catchup_rounds: int = CATCHUP_ROUNDS  # future rounds each validator may open per height
    max_evidence: int = 1000  # conflicting pairs kept (oldest dropped first)
    decisions_max_bytes: int = 64 * 1024 * 1024  # recent decided blocks kept in memory

    def __post_init__(self) -> None:
        # A block must be able to carry the largest record (a 1 MiB ledger.config change).
        if self.max_block_bytes < MAX_RECORD_ENVELOPE_BYTES:
            raise ValueError(f"max_block_bytes {self.max_block_bytes} is below the largest "
                             f"record envelope ({MAX_RECORD_ENVELOPE_BYTES} bytes)")


NO_SIGNATURE = (0, 0, -1)

RESERVED = Step.PROPOSE
"""The steps of the next height's round 0 a signing state reserves: up to its proposal.
Not its prevote: a prevote signed under a reservation and lost in a crash (before it left,
or before it reached more than one peer) is refused after the restart and cannot be sent
again, and without it the round may never gather the 2f+1 prevotes (of any value) that its
timeouts wait for (L34, L47): a two-validator set stalls for good, four with one down until
it returns. A lost proposal costs one propose timeout: everyone prevotes nil (L57) and the
round moves on. See docs/consensus.md, "Persistence order / crash safety"."""


class ConsensusCore:
    """One validator's (or observer's) view of consensus; see the module docstring."""

    def __init__(self, genesis: Genesis, chain: ChainView, mempool: Mempool, *,
                 key: PrivateKey | None = None, config: ConsensusConfig | None = None,
                 persisted: SigningState | None = None,
                 verify: Verifier = is_valid_signature,
                 validators_at: ValidatorsAt | None = None,
                 config_at: ConfigAt | None = None) -> None:
        self.genesis = genesis
        genesis_config = genesis.config
        self._config_source: ConfigAt = config_at or (lambda _height: genesis_config)
        self._validators_source: ValidatorsAt = (
            validators_at or (lambda height: self._config_source(height).validators))
        # A change this core decided, until ``config_at`` (the store) holds it: the next
        # height's set is needed at once, before the CommitBlock action has run.
        self._decided_change: tuple[int, Config] | None = None
        self._changes: dict[bytes, Config] = {}  # block hash -> the config it makes
        self.validators_at: ValidatorsAt = self._validators_for
        self.validators = genesis.validators  # the set of ``self.height`` (``_reset_height``)
        self.chain = chain
        self.mempool = mempool
        self.key = key
        self.config = config or ConsensusConfig()
        self.verify = verify
        self.index: int | None = None  # our index in the height's set, None if not in it
        self.now_ms = 0
        self.last_signed: tuple[int, int, int] = NO_SIGNATURE
        # The reservation of the newest signing state this core emitted (durable before any
        # later action) in an event that did not also commit its height (such a state may
        # be kept in the store only, see _decide): the steps it names are signed with no
        # write of their own.
        self.covered: tuple[int, int, int] = NO_RESERVATION
        # The reservation of the state this core was built from: a previous incarnation
        # may have signed those steps without writing them, so this one never signs them.
        self.refused: tuple[int, int, int] = NO_RESERVATION
        # ``covered`` when the event under way began: what states written alone made
        self._covered_before: tuple[int, int, int] = NO_RESERVATION
        # One pair per (validator, height, round, kind), the newest max_evidence of them.
        self.evidence: deque[tuple[SignedVote | Proposal, SignedVote | Proposal]] = deque(
            maxlen=self.config.max_evidence)
        self._evidence_keys: set[tuple[int, int, int, int]] = set()  # this height's
        self.decisions: dict[int, Block] = {}
        self._decision_bytes: dict[int, int] = {}
        self.synced_commits = 0  # heights decided by block sync rather than by voting
        self.invalid_blocks: dict[str, int] = {}  # blocks found invalid, by error class
        self.last_invalid = ""  # why the last one was
        self.behind_since: dict[int, int] = {}  # validator -> when it was first heard behind
        self._out: list[Action] = []
        self.future: list[tuple[int, Proposal | SignedVote]] = []  # for the next height
        self._future_index: dict[int, tuple[set[bytes], int]] = {}  # sender -> (sigs, props)
        self._resume_round: int | None = None
        self._reset_height(chain.height + 1)
        if persisted is not None:
            self.last_signed = persisted.last_signed
            # Whatever the store holds: a store replaced by an older one (the documented
            # recovery from a lost disk keeps signing_state.bin) must not undo it.
            self.refused = persisted.reserved
            if persisted.height == self.height:
                self._restore(persisted)

    # -- height state -------------------------------------------------------------------

    def config_at(self, height: int) -> Config:
        """The configuration governing ``height``, including a change decided here that the
        chain does not hold yet."""
        base = self._config_source(height)
        decided = self._decided_change
        if decided is not None and height > decided[0] and base.version < decided[1].version:
            return decided[1]
        return base

    def _validators_for(self, height: int) -> ValidatorSet:
        decided = self._decided_change
        if decided is not None and height > decided[0]:
            config = self.config_at(height)
            if config is decided[1]:
                return config.validators
        return self._validators_source(height)

    def _reset_height(self, height: int) -> None:
        """Initialisation (L1-L9) for a new height, and L54's reset. The height's validator
        set governs everything below: quorums, the proposer, signatures, certificates, and
        whether this node votes at all (a key not in the set follows the chain silently)."""
        self.height = height
        self.validators = self.validators_at(height)
        validator = self.validators.by_key(self.key.public) if self.key else None
        self.index = validator.index if validator else None
        self.round = 0
        self.step = Step.PROPOSE
        self.started = False  # round 0 of this height has begun
        self.locked_round = -1
        self.locked: Proposal | None = None
        self.valid_round = -1
        self.valid: Proposal | None = None
        self.proposals: dict[int, Proposal] = {}
        self.votes = HeightVotes(self.validators, catchup_rounds=self.config.catchup_rounds)
        self._evidence_keys = set()
        self._proposal_sigs: set[bytes] = set()  # verified proposals of this height
        self.fired: set[tuple[str, int]] = set()
        self.validity: dict[bytes, bool] = {}
        self.cert_validity: dict[Certificate, bool] = {}
        self.own: dict[tuple[int, int], Proposal | SignedVote] = {}
        self.sync_asked: dict[int, int] = {}
        self.synced: dict[int, BlockResponse] = {}
        self._changes = {}

    def _committed(self, height: int) -> Block | None:
        """A committed block as the store holds it, recent ones without reading the store
        (``decisions`` gets the canonical certificate of the block below, as the store
        does on each commit)."""
        if not 1 <= height <= self.chain.height:
            return None
        return self.decisions.get(height) or self.chain.block(height)

    # -- the entry point ----------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Consume one event; return the actions to execute, in order."""
        self._out = []
        self._covered_before = self.covered
        if isinstance(event, Start):
            self.now_ms = max(self.now_ms, event.now_ms)
            self._on_start()
        elif isinstance(event, Tick):
            self.now_ms = max(self.now_ms, event.now_ms)
        elif isinstance(event, RecordsAvailable):
            if not self.started and self.height > self.chain.height:
                self._start_height_if_ready()
        elif isinstance(event, TimeoutFired):
            self._on_timeout(event)
        elif isinstance(event, MessageReceived):
            self._on_message(event.sender, event.message)
        self._apply_rules()
        return self._out

    def _restore(self, p: SigningState) -> None:
        """Within the same height: keep the locks, our own messages and the valid polka."""
        self.locked_round, self.locked = p.locked_round, p.locked_block
        self.valid_round, self.valid = p.valid_round, p.valid_block
        for msg in p.messages:
            if isinstance(msg, Proposal):
                self.own[(msg.round, Step.PROPOSE)] = msg
                self._accept_proposal(msg)
            else:
                if msg.validator == self.index:
                    step = Step.PREVOTE if msg.vote.kind == PREVOTE else Step.PRECOMMIT
                    self.own[(msg.vote.round, step)] = msg
                self.votes.add(msg)
        self._resume_round = p.round
        self.votes.round = p.round

    def _on_start(self) -> None:
        if self._resume_round is not None:
            # A restart within a height: rejoin our round (last_signed forbids re-signing).
            self.started = True
            self._start_round(self._resume_round)
            self._resume_round = None
        else:
            self._start_height_if_ready()
        self._out.append(Broadcast(BlockRequest(self.height)))  # catch up on what we missed
        self._schedule(self.height, 0, TimeoutKind.RESEND, self.config.resend_ms)

    def _start_height_if_ready(self) -> None:
        """Begin round 0, unless idle chains wait for records (no empty blocks)."""
        if self.config.create_empty_blocks or len(self.mempool) > 0:
            self.started = True
            self._start_round(0)

    # -- L11: StartRound ------------------------------------------------------------------

    def proposer(self, height: int, round: int) -> int:
        """The index (in ``height``'s set) of the validator that proposes in (height,
        round): proportional to voting power (``ledger.consensus.proposer``)."""
        vs = self.validators if height == self.height else self.validators_at(height)
        return proposer_index(vs, vs.since, height, round)

    def _start_round(self, round: int) -> None:
        # L11-L13: round_p <- round; step_p <- propose
        self.round = round
        self.votes.round = round
        self.step = Step.PROPOSE
        # L14: if proposer(h_p, round_p) = p (and may still sign this round's proposal: a
        # node restarted past it, or refusing a reserved one, waits like the others and
        # prevotes nil on the timeout, L57)
        if (self.index is not None and self.proposer(self.height, round) == self.index
                and self._may_sign(Step.PROPOSE)):
            # L15-L18: propose validValue if there is one, else a new value (getValue)
            if self.valid is not None:
                self._propose(self.valid.header, self.valid.records, self.valid_round,
                              self.valid.last_cert)
            else:
                header, records = self._get_value()
                tip = self._committed(self.chain.height)
                self._propose(header, records, -1, tip.cert if tip is not None else None)
        else:
            # L21: schedule OnTimeoutPropose(h_p, round_p) after timeoutPropose(round_p)
            self._schedule(self.height, round, TimeoutKind.PROPOSE,
                           self.config.timeout_propose_ms
                           + round * self.config.timeout_propose_delta_ms)
        self._replay_future()

    def _get_value(self) -> tuple[Header, tuple[Record, ...]]:
        """A new block from the mempool, on top of the committed chain."""
        records = self._fresh_records(self.mempool.reap(self.config.max_block_records,
                                                        self.config.max_block_bytes))
        tip = self._committed(self.chain.height)
        prev_time = tip.header.time_ms if tip else -1
        header = build_header(
            chain=self.genesis.chain_id, height=self.height,
            time_ms=max(self.now_ms, prev_time + 1),
            prev_hash=self.chain.tip_hash() or self.genesis.hash, records=records,
            log=self.chain.log, proposer=self.index if self.index is not None else 0,
            validators_hash=self.validators.hash)
        return header, tuple(records)

    def _fresh_records(self, records: list[Record]) -> list[Record]:
        """Drop records the chain already holds or that repeat one earlier in the list (an
        id, a (signer, nonce), a sealed payload_digest), and redactions the chain-extension
        rule would refuse after the chain and the redactions kept before them (a record
        admitted before a block redacted its target)."""
        seen_ids = self.chain.seen_ids([r.id for r in records])
        seen_pairs = self.chain.seen_nonces([(r.body.signer, r.body.nonce) for r in records])
        seen_digests = self.chain.seen_digests(
            [r.body.payload_digest for r in records if r.body.payload_digest is not None])
        out: list[Record] = []
        ids: set[bytes] = set()
        pairs: set[tuple[bytes, int]] = set()
        digests: set[bytes] = set()
        redacted: set[bytes] = set()  # named by a redaction kept in this block
        change = False  # at most one ledger.config record per block (SPEC section 9)
        for r in records:
            pair = (r.body.signer, r.body.nonce)
            digest = r.body.payload_digest
            if r.id in seen_ids or r.id in ids or pair in seen_pairs or pair in pairs:
                continue
            if digest is not None and (digest in seen_digests or digest in digests):
                continue
            if r.body.type == CONFIG_TYPE:
                if change:
                    continue
                change = True
            if r.body.type == REDACT_TYPE:
                named = self._redaction_fits(r, redacted)
                if named is None:
                    continue
                redacted.update(named)
            ids.add(r.id)
            pairs.add(pair)
            if digest is not None:
                digests.add(digest)
            out.append(r)
        return out

    def _redaction_fits(self, record: Record, redacted: set[bytes]) -> tuple[bytes, ...] | None:
        """The ids a redaction names if the block being built may carry it (the chain's
        rule, ``check_redactions``, with ``redacted`` counting as already redacted)."""
        config = self.config_at(self.height)
        try:
            redaction = check_record(config, record, self.verify)
            if not isinstance(redaction, Redaction):
                return None
            check_redactions(config, [redaction], self.chain.sealed_signers,
                             lambda named: self.chain.redacted(named) | (set(named) & redacted))
        except LedgerError:
            return None
        return redaction.ids

    def _propose(self, header: Header, records: tuple[Record, ...], pol_round: int,
                 last_cert: Certificate | None) -> None:
        # L19: broadcast <PROPOSAL, h_p, round_p, proposal, validRound_p>
        if self.key is None or self.index is None:
            return
        if not self._may_sign(Step.PROPOSE):
            return
        proposal = Proposal.sign(self.genesis.chain_id, self.round, pol_round, header, records,
                                 self.index, self.key, last_cert)
        self._send_signed(Step.PROPOSE, proposal)
        self._accept_proposal(proposal)

    # -- signing, with the persistence order --------------------------------------------

    def _may_sign(self, step: Step) -> bool:
        """True iff (height, round, step) is above everything signed so far and not a step
        a previous incarnation reserved (it may have signed it without writing it)."""
        key = (self.height, self.round, int(step))
        return key > self.last_signed and not in_reservation(key, self.refused)

    def _send_signed(self, step: Step, msg: Proposal | SignedVote) -> None:
        """Persist the signing state (with ``msg``), *then* broadcast ``msg`` — unless the
        step is one the newest state written reserved (``covered``): that state, durable
        before this action, already makes a restarted node refuse the step, so ``msg``
        leaves at once and the next state written carries it (in ``own``)."""
        key = (self.height, self.round, int(step))
        self.last_signed = key
        self.own[(self.round, step)] = msg
        if not in_reservation(key, self.covered):
            state = self.signing_state()
            self.covered = state.reserved
            self._out.append(PersistState(state))
        self._out.append(Broadcast(msg))

    def signing_state(self, *, reserve: bool = True) -> SigningState:
        """What must be persisted before a signature leaves the node. With ``reserve`` it
        reserves the next height's round-0 proposal (``RESERVED``: its proposer signs it
        right after the block this state goes with, at the head of the next block's path);
        without (a node stopping cleanly), it reserves only what ``refused`` still does."""
        recent = [m for (r, _), m in sorted(self.own.items()) if r >= self.round - 1]
        if self.valid is not None:  # the polka that justifies the valid value, to relay
            recent += [v for v in self.votes.prevotes(self.valid_round)
                       .votes_for(self.valid.block_hash) if v.validator != self.index]
        if reserve:
            reserved = (self.height + 1, 0, int(RESERVED))
        else:
            reserved = self.refused if self.refused > self.last_signed else NO_RESERVATION
        return SigningState(self.height, self.last_signed, self.round, self.locked_round,
                            self.locked, self.valid_round, self.valid, tuple(recent),
                            reserved)

    def _vote(self, kind: int, block_hash: bytes | None) -> None:
        """Sign and broadcast a prevote or precommit for the current round."""
        step = Step.PREVOTE if kind == PREVOTE else Step.PRECOMMIT
        if self.key is None or self.index is None or not self._may_sign(step):
            return
        vote = SignedVote.sign(Vote(self.genesis.chain_id, kind, self.height, self.round,
                                    block_hash), self.index, self.key)
        self._send_signed(step, vote)
        self.votes.add(vote)

    def _schedule(self, height: int, round: int, kind: TimeoutKind, delay_ms: int) -> None:
        self._out.append(ScheduleTimeout(height, round, kind, delay_ms))

    # -- messages -----------------------------------------------------------------------

    def _on_message(self, sender: int, msg: Message) -> None:
        if isinstance(msg, BlockRequest):
            self._serve_blocks(sender, msg.height)
            return
        if isinstance(msg, BlockResponse):
            self._on_synced_block(msg)
            return
        chain = msg.vote.chain if isinstance(msg, SignedVote) else msg.chain
        if chain != self.genesis.chain_id:  # links are authenticated under this genesis
            self._misbehaved(sender, "a message of another chain", 20)
            return
        height = _height_of(msg)
        if height < self.height:
            # The sender may be behind (its message is for a height we decided). A late vote
            # from a peer that is keeping up looks the same, and sending it whole blocks it
            # is about to commit costs both sides: serve only a sender that has stayed
            # behind for sync_retry_ms (nothing heard from it at our height meanwhile), then
            # at most once per sync_retry_ms. An idle chain sends nothing else that would
            # tell it.
            since = self.behind_since.setdefault(sender, self.now_ms)
            if self.now_ms - since >= self.config.sync_retry_ms:
                self.behind_since[sender] = self.now_ms
                self._serve_blocks(sender, height)
            return
        self.behind_since.pop(sender, None)
        if height > self.height:
            self._ask_for_blocks(sender)
            if height == self.height + 1:
                self._buffer_future(sender, msg)
            return
        if not self.started and self.height > self.chain.height:
            # Someone else started this height: join it even without records of our own.
            self.started = True
            self._start_round(0)
        if isinstance(msg, Proposal):
            self._on_proposal(sender, msg)
        else:
            self._on_vote(sender, msg)

    def holds_proposal(self, sender: int, height: int, round: int, sig: bytes) -> bool:
        """A proposal with signature ``sig`` for (``height``, ``round``) is already taken
        (or, for the next height, buffered from ``sender``): handing it to the core again
        would change nothing, so a runtime need not decode its records again."""
        if height == self.height:
            taken = self.proposals.get(round)
            return sig in self._proposal_sigs or (taken is not None and taken.sig == sig)
        if height == self.height + 1:
            buffered = self._future_index.get(sender)
            return buffered is not None and sig in buffered[0]
        return False

    def _buffer_future(self, sender: int, msg: Proposal | SignedVote) -> None:
        """Keep a message for the next height, within the global and per-sender bounds."""
        if len(self.future) >= self.config.max_future_messages:
            return
        sigs, proposals = self._future_index.get(sender, (set(), 0))
        if msg.sig in sigs:
            return  # a re-send of a message already kept
        is_proposal = isinstance(msg, Proposal)
        if len(sigs) >= self.config.max_future_per_peer or (
                is_proposal and proposals >= self.config.max_future_proposals_per_peer):
            self._misbehaved(sender, "too many messages for the next height", 1)
            return
        sigs.add(msg.sig)
        self._future_index[sender] = (sigs, proposals + is_proposal)
        self.future.append((sender, msg))

    def _replay_future(self) -> None:
        """Handle messages buffered for this height while the previous one finished."""
        pending = [(s, m) for s, m in self.future if _height_of(m) >= self.height]
        self.future = [(s, m) for s, m in pending if _height_of(m) > self.height]
        self._future_index = {}
        for s, m in self.future:
            sigs, proposals = self._future_index.get(s, (set(), 0))
            sigs.add(m.sig)
            self._future_index[s] = (sigs, proposals + isinstance(m, Proposal))
        for sender, msg in pending:
            if _height_of(msg) == self.height:
                self._on_message(sender, msg)

    def _on_proposal(self, sender: int, p: Proposal) -> None:
        # Only the round's proposer may propose; the signature must be its own.
        if p.proposer != self.proposer(p.height, p.round):  # also rules out a bad index
            self._misbehaved(sender, "a proposal from a validator not proposing that round", 20)
            return
        earlier = self.proposals.get(p.round)
        if earlier is not None and (earlier.block_hash, earlier.pol_round, earlier.sig) == (
                p.block_hash, p.pol_round, p.sig):
            return  # a repeat (gossip re-sends): nothing to verify
        if p.sig in self._proposal_sigs:
            return  # one already taken, e.g. an equivocation's second, relayed by honest nodes
        if earlier is not None and (p.proposer, self.height, p.round, 0) in self._evidence_keys:
            self._misbehaved(sender, "a third proposal for one round", 5)
            return  # one conflicting pair per round is evidence enough
        if earlier is None and not self.votes.admits(p.round, p.proposer):
            self._misbehaved(sender, "a proposal for a round too far ahead", 1)
            return
        if not self.verify(self.validators[p.proposer].pubkey, p.sign_bytes(), p.sig):
            self._misbehaved(sender, "a proposal with a bad signature", 20)
            return
        if not _records_match(p):
            # The signature covers the header, not the records: a relay can swap them. Such
            # a copy must not become the round's proposal (the genuine one, with the same
            # hash, round and signature, would then be dropped as a repeat).
            self._misbehaved(sender, "a proposal whose records are not its header's", 20)
            return
        self._proposal_sigs.add(p.sig)
        self._accept_proposal(p)

    def _accept_proposal(self, p: Proposal) -> None:
        earlier = self.proposals.get(p.round)
        if earlier is not None:
            if earlier.block_hash != p.block_hash or earlier.pol_round != p.pol_round:
                self._evidence(earlier, p)  # an equivocating proposer: keep the first
            return
        self.proposals[p.round] = p
        self.votes.heard_from(p.round, p.proposer)

    def _on_vote(self, sender: int, sv: SignedVote) -> None:
        if not 0 <= sv.validator < len(self.validators):
            self._misbehaved(sender, "a vote of an unknown validator", 20)
            return
        if not self.votes.accepts(sv):
            if not self.votes.admits(sv.vote.round, sv.validator):
                self._misbehaved(sender, "a vote for a round too far ahead", 1)
            return  # a repeat, or a third value: nothing to verify
        v = sv.vote
        if not self.verify(self.validators[sv.validator].pubkey, v.sign_bytes(), sv.sig):
            self._misbehaved(sender, "a vote with a bad signature", 20)
            return
        conflict = self.votes.add(sv)
        if conflict is not None:
            self._evidence(conflict, sv)

    def _evidence(self, first: SignedVote | Proposal, second: SignedVote | Proposal) -> None:
        """Keep one conflicting pair per (validator, height, round, kind)."""
        if isinstance(first, Proposal):
            key = (first.proposer, first.height, first.round, 0)
        else:
            key = (first.validator, first.vote.height, first.vote.round, first.vote.kind)
        if key in self._evidence_keys:
            return
        self._evidence_keys.add(key)
        # The signature covers the header, so a proposal without its records still proves
        # the equivocation; keeping 1,000 pairs of whole blocks would cost up to 16 GiB.
        first, second = _without_records(first), _without_records(second)
        self.evidence.append((first, second))
        self._out.append(RecordEvidence(first, second))

    def _misbehaved(self, sender: int, reason: str, weight: int) -> None:
        self._out.append(Misbehaviour(sender, reason, weight))

    # -- validity ---------------------------------------------------------------------

    def is_valid(self, p: Proposal) -> bool:
        """valid(v): the proposed block extends the committed chain by the SPEC's rules,
        and the previous block's certificate it carries is valid."""
        cached = self.validity.get(p.block_hash)
        if cached is None:
            cached = self.validity[p.block_hash] = self._check_block(p.header, p.records)
        return cached and self._is_valid_last_cert(p.last_cert)

    def _is_valid_last_cert(self, cert: Certificate | None) -> bool:
        tip = self.chain.tip_hash()
        if tip is None:
            return cert is None
        if cert is None or cert.height != self.chain.height or cert.block_hash != tip:
            return False
        known = self.cert_validity.get(cert)
        if known is None:
            try:
                cert.verify(self.genesis.chain_id, self.certifiers(cert.height), self.verify)
                known = True
            except LedgerError:
                known = False
            self.cert_validity[cert] = known
        return known

    def certifiers(self, height: int) -> ValidatorSet:
        """The set whose quorum certifies a block of ``height``: that height's set (every
        certificate the core checks — a proposal's ``last_cert``, a synced block's — is
        checked here)."""
        return self.validators if height == self.height else self.validators_at(height)

    def _check_block(self, h: Header, records: tuple[Record, ...]) -> bool:
        """Whether the block extends the committed chain by every rule; when it does not,
        ``invalid_blocks`` counts why (by error class) and ``last_invalid`` says it."""
        try:
            self.check_block(h, records)
        except LedgerError as exc:
            reason = type(exc).__name__
            self.invalid_blocks[reason] = self.invalid_blocks.get(reason, 0) + 1
            self.last_invalid = f"height {h.height}: {exc}"
            return False
        return True

    def check_block(self, h: Header, records: tuple[Record, ...]) -> None:
        """Raise the error that names why the block of ``h`` and ``records`` does not extend
        the committed chain at this height (the chain-extension rule is
        ``ledger.validation.check_extends``, the one the audit and the store apply)."""
        config = self.config_at(h.height)
        check_header_fields(config, h, self.validators)
        h.validate_basic()
        if len(records) > self.config.max_block_records:
            raise BlockError(f"{len(records)} records exceed the block limit of "
                             f"{self.config.max_block_records}")
        size = sum(len(r.envelope) for r in records)
        if size > self.config.max_block_bytes:
            raise BlockError(f"{size} bytes of records exceed the block limit of "
                             f"{self.config.max_block_bytes}")
        check_unique_within(records)
        leaves = [merkle.leaf_hash(r.envelope) for r in records]
        check_contents(h, leaves)
        # The records first (the audit's order too): the chain-extension rule judges the
        # block's redactions, which only a checked record yields.
        effects = check_records(config, records, self.verify)
        tip = self._committed(self.chain.height)
        check_extends(
            ChainTip(self.chain.height, self.chain.tip_hash() or self.genesis.hash,
                     tip.header.time_ms if tip is not None else -1, self.chain.log),
            h, leaves, [r.id for r in records], [(r.body.signer, r.body.nonce) for r in records],
            seen_ids=self.chain.seen_ids, seen_nonces=self.chain.seen_nonces,
            digests=[r.body.payload_digest for r in records
                     if r.body.payload_digest is not None],
            seen_digests=self.chain.seen_digests, redactions=effects.redactions,
            config=config, sealed_signers=self.chain.sealed_signers,
            redacted=self.chain.redacted)
        if h.height != self.height:  # the chain's next height, yet not the one being decided
            raise BlockError(f"the block is for height {h.height}; consensus is at "
                             f"{self.height}")
        if effects.config is not None:
            self._changes[h.hash] = effects.config

    # -- the upon rules ---------------------------------------------------------------

    def _first_time(self, rule: str, round: int) -> bool:
        key = (rule, round)
        if key in self.fired:
            return False
        self.fired.add(key)
        return True

    def _apply_rules(self) -> None:
        """Evaluate every rule of Algorithm 1 until none fires."""
        while self.started and self._apply_one_rule():
            pass

    def _apply_one_rule(self) -> bool:
        h, r = self.height, self.round
        prop = self.proposals.get(r)
        prevotes = self.votes.prevotes(r)

        # L22: upon <PROPOSAL, h_p, round_p, v, -1> while step_p = propose
        if self.step == Step.PROPOSE and prop is not None and prop.pol_round == -1:
            # L23: valid(v) and (lockedRound_p = -1 or lockedValue_p = v)
            if self.is_valid(prop) and (self.locked_round == -1 or self._is_locked_on(prop)):
                self._vote(PREVOTE, prop.block_hash)  # L24
            else:
                self._vote(PREVOTE, None)  # L26
            self.step = Step.PREVOTE  # L27
            return True

        # L28: upon <PROPOSAL, h_p, round_p, v, vr> and 2f+1 <PREVOTE, h_p, vr, id(v)>
        #      while step_p = propose and (vr >= 0 and vr < round_p)
        if (self.step == Step.PROPOSE and prop is not None and 0 <= prop.pol_round < r
                and self.votes.prevotes(prop.pol_round).has_quorum_for(prop.block_hash)):
            # L29: valid(v) and (lockedRound_p <= vr or lockedValue_p = v)
            if self.is_valid(prop) and (self.locked_round <= prop.pol_round
                                        or self._is_locked_on(prop)):
                self._vote(PREVOTE, prop.block_hash)  # L30
            else:
                self._vote(PREVOTE, None)  # L32
            self.step = Step.PREVOTE  # L33
            return True

        # L34: upon 2f+1 <PREVOTE, h_p, round_p, *> while step_p = prevote, for the first time
        if (self.step == Step.PREVOTE and prevotes.has_quorum_any()
                and self._first_time("L34", r)):
            # L35: schedule OnTimeoutPrevote(h_p, round_p) after timeoutPrevote(round_p)
            self._schedule(h, r, TimeoutKind.PREVOTE, self.config.timeout_prevote_ms
                           + r * self.config.timeout_prevote_delta_ms)
            return True

        # L36: upon <PROPOSAL, h_p, round_p, v, *> and 2f+1 <PREVOTE, h_p, round_p, id(v)>
        #      while valid(v) and step_p >= prevote, for the first time
        if (prop is not None and self.step >= Step.PREVOTE
                and prevotes.has_quorum_for(prop.block_hash) and self.is_valid(prop)
                and self._first_time("L36", r)):
            # L42-L43 (done first, so the precommit's PersistState holds the valid value too:
            # a restarted proposer must still be able to re-propose it)
            self.valid, self.valid_round = prop, r
            if self.step == Step.PREVOTE:  # L37
                self.locked, self.locked_round = prop, r  # L38-L39
                self._vote(PRECOMMIT, prop.block_hash)  # L40
                self.step = Step.PRECOMMIT  # L41
            return True

        # L44: upon 2f+1 <PREVOTE, h_p, round_p, nil> while step_p = prevote
        if self.step == Step.PREVOTE and prevotes.has_quorum_for(None):
            self._vote(PRECOMMIT, None)  # L45
            self.step = Step.PRECOMMIT  # L46
            return True

        # L47: upon 2f+1 <PRECOMMIT, h_p, round_p, *> for the first time
        if self.votes.precommits(r).has_quorum_any() and self._first_time("L47", r):
            # L48: schedule OnTimeoutPrecommit(h_p, round_p) after timeoutPrecommit(round_p)
            self._schedule(h, r, TimeoutKind.PRECOMMIT, self.config.timeout_precommit_ms
                           + r * self.config.timeout_precommit_delta_ms)
            return True

        # L49: upon <PROPOSAL, h_p, r, v, *> and 2f+1 <PRECOMMIT, h_p, r, id(v)>
        #      while decision_p[h_p] = nil  (any round r)
        for rr, p in sorted(self.proposals.items()):
            precommits = self.votes.precommits(rr)
            if precommits.has_quorum_for(p.block_hash) and self.is_valid(p):  # L50
                cert = Certificate(h, rr, p.block_hash, precommits.signatures_for(p.block_hash))
                self._decide(Block(p.header, p.records, cert), p.last_cert)  # L51-L54
                return False

        # L55: upon f+1 <*, h_p, round, *, *> with round > round_p (the highest such round
        # is kept up to date as messages arrive: no work per rule pass)
        if self.votes.skip_round > r:
            self._start_round(self.votes.skip_round)  # L56
            return True
        return False

    def _is_locked_on(self, p: Proposal) -> bool:
        return self.locked is not None and self.locked.block_hash == p.block_hash

    # -- L57-L66: timeouts ----------------------------------------------------------------

    def _on_timeout(self, t: TimeoutFired) -> None:
        if t.kind == TimeoutKind.NEW_HEIGHT:
            if t.height == self.height and not self.started:
                if self._commit_synced():
                    return
                self._start_height_if_ready()
            return
        if t.kind == TimeoutKind.RESEND:
            if t.height == self.height:
                self._resend()
            return
        if t.height != self.height or t.round != self.round:
            return  # a stale timeout
        if t.kind == TimeoutKind.PROPOSE and self.step == Step.PROPOSE:  # L57
            self._vote(PREVOTE, None)  # L59
            self.step = Step.PREVOTE  # L60
        elif t.kind == TimeoutKind.PREVOTE and self.step == Step.PREVOTE:  # L61
            self._vote(PRECOMMIT, None)  # L63
            self.step = Step.PRECOMMIT  # L64
        elif t.kind == TimeoutKind.PRECOMMIT:  # L65
            self._start_round(self.round + 1)  # L67

    def _resend(self) -> None:
        """Gossip: re-broadcast our own messages of the latest two rounds, and the proposal
        and polka behind our valid value, so every correct validator eventually sees what
        we saw (the paper's assumption that correct processes relay what they receive).
        Also ask everyone for blocks past ours: an idle chain sends nothing else that would
        tell a node it fell behind, and a node only takes the blocks it asked for (a peer
        that hears it speak for an old height may offer them; the runtime drops what was
        not asked for). A peer that is not ahead answers nothing."""
        self._out.append(Broadcast(BlockRequest(self.height)))
        for (round, _), msg in sorted(self.own.items(), key=lambda kv: kv[0]):
            if round >= self.round - 1:
                self._out.append(Broadcast(msg))
        if self.valid is not None:
            self._out.append(Broadcast(self.valid))
            for vote in self.votes.prevotes(self.valid_round).votes_for(self.valid.block_hash):
                if vote.validator != self.index:
                    self._out.append(Broadcast(vote))
        self._schedule(self.height, 0, TimeoutKind.RESEND, self.config.resend_ms)

    # -- deciding ---------------------------------------------------------------------

    def _decide(self, block: Block, last_cert: Certificate | None = None) -> None:
        """L51-L54: decide, then move to the next height after timeout_commit."""
        self._out.append(CommitBlock(block, last_cert))
        if any(isinstance(a, PersistState) for a in self._out):
            # The runtime may write this event's state in the block's transaction, in the
            # store only (GroupCommit), which a store lost or replaced by an older copy
            # takes with it: only a reservation made by a state of an earlier event (written
            # alone, to the file) covers the next height's round-0 proposal.
            self.covered = self._covered_before
        self.decisions[block.height] = block
        self._decision_bytes[block.height] = _block_bytes(block)
        below = self.decisions.get(block.height - 1)
        if last_cert is not None and below is not None:
            self.decisions[below.height] = Block(below.header, below.records, last_cert)
        # Recent decisions only, bounded by bytes (the newest two are always kept).
        while (len(self.decisions) > 2
               and sum(self._decision_bytes.values()) > self.config.decisions_max_bytes):
            oldest = min(self.decisions)
            del self.decisions[oldest]
            self._decision_bytes.pop(oldest, None)
        while len(self.decisions) > 64:  # and by count, for chains of empty blocks
            oldest = min(self.decisions)
            del self.decisions[oldest]
            self._decision_bytes.pop(oldest, None)
        next_height = block.height + 1
        new_config = self._changes.get(block.hash)
        if new_config is None and any(r.body.type == CONFIG_TYPE for r in block.records):
            # decided without check_block this height (cannot happen through valid(v);
            # kept so the next height's set never depends on that)
            new_config = check_records(self.config_at(block.height), block.records,
                                       self.verify).config
        if new_config is not None:
            previous = self.config_at(block.height)
            self._decided_change = (block.height,
                                    succeeding(previous, block.height, new_config))
        synced = self.synced
        self._reset_height(next_height)
        self.synced = {h: b for h, b in synced.items() if h >= next_height}
        self._schedule(next_height, 0, TimeoutKind.NEW_HEIGHT,
                       0 if next_height in self.synced else self.config.timeout_commit_ms)
        self._schedule(next_height, 0, TimeoutKind.RESEND, self.config.resend_ms)

    # -- block sync ---------------------------------------------------------------------

    def _ask_for_blocks(self, peer: int) -> None:
        last = self.sync_asked.get(peer)
        if last is not None and self.now_ms - last < self.config.sync_retry_ms:
            return
        self.sync_asked[peer] = self.now_ms
        self._out.append(SendTo(peer, BlockRequest(self.height)))

    def _serve_blocks(self, peer: int, start: int) -> None:
        stop = min(start + self.config.sync_batch, self.chain.height + 1)
        if start < stop:
            self._out.append(ServeBlocks(peer, start, stop))

    def block_responses(self, start: int, stop: int) -> list[BlockResponse]:
        """The answers to ``ServeBlocks(peer, start, stop)`` from the committed chain (what
        a runtime sends; the node's runtime sends the same from stored bytes instead)."""
        out: list[BlockResponse] = []
        previous = self._committed(start - 1)
        for height in range(start, min(stop, self.chain.height + 1)):
            block = self._committed(height)
            if block is None:
                break
            out.append(BlockResponse(block, previous.cert if previous is not None else None))
            previous = block
        return out

    def _on_synced_block(self, response: BlockResponse) -> None:
        height = response.block.height
        if height < self.height or height > self.height + self.config.sync_batch:
            return
        self.synced.setdefault(height, response)
        if height == self.height:
            self._commit_synced()

    def _commit_synced(self) -> bool:
        """Commit a block fetched by block sync, if it is valid and certified; adopt the
        sender's certificate of the previous block when it is valid (it is canonical)."""
        response = self.synced.pop(self.height, None)
        if response is None:
            return False
        block = response.block
        try:
            block.cert.validate_basic()
            if block.cert.height != block.height or block.cert.block_hash != block.hash:
                return False
            block.cert.verify(self.genesis.chain_id, self.certifiers(block.height), self.verify)
        except LedgerError:
            return False
        if not self._check_block(block.header, block.records):
            return False
        self.synced_commits += 1
        last_cert = response.last_cert
        self._decide(block, last_cert if self._is_valid_last_cert(last_cert) else None)
        return True


def _without_records(m: SignedVote | Proposal) -> SignedVote | Proposal:
    """``m``, a proposal stripped of its records (what evidence keeps)."""
    return replace(m, records=()) if isinstance(m, Proposal) else m


def _records_match(p: Proposal) -> bool:
    """The proposal's records are the ones its (signed) header commits to."""
    return (len(p.records) == p.header.record_count and p.header.records_root
            == merkle.root_from_leaf_hashes([merkle.leaf_hash(r.envelope) for r in p.records]))


def _block_bytes(block: Block) -> int:
    """What a decided block costs to keep: its records decoded (``Record.cost``, which
    counts decoded payload elements, not just envelope bytes) plus fixed overhead."""
    return 1024 + sum(r.cost for r in block.records)


def _height_of(msg: Message) -> int:
    if isinstance(msg, SignedVote):
        return msg.vote.height
    if isinstance(msg, Proposal):
        return msg.height
    return 0
