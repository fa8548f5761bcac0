"""Deterministic simulation of a validator set: N consensus cores on one virtual clock.

A seeded network drops, delays (so reorders), duplicates and partitions messages; nodes
crash (possibly half-way through executing the actions of one event — after persisting but
before broadcasting, say) and restart from their persisted signing state and store;
Byzantine validators are made by Twins (two nodes with one key, put in different partitions)
or by an equivocating proposer/voter. After every step the harness checks:

- agreement: no two honest nodes commit different blocks at one height;
- validity: every committed block is valid and certified (checked once per block hash);
- liveness (at the end): after the last fault heals, every honest node commits a new block
  within a bounded virtual time.

A share of the seeds (``Scenario.changes``) also changes the validator set over the run, by a
schedule every node knows (``ValidatorSchedule``: the set in force from each height): a
validator is added, one removed, one re-weighted, and at some height the whole set is
replaced by keys that were not in genesis (so every original validator is gone), possibly
followed by more changes (an original key may come back). Nodes exist for every key that is
ever a validator; a node whose key is not in a height's set follows the chain without voting.
A node is crashed (possibly mid-actions) as the chain reaches a change. The Byzantine key of
Twins or the equivocator never holds a third of the power of any set it is in.

Half of those seeds (``Scenario.governed``) make the same kind of plan happen through the
chain itself, as a live consortium would (SPEC section 9): each set is a signed
``ledger.config`` record (approved by two of the three governing organisations' admins,
joined by every key it adds, ``ChangePlan``) submitted to every node's mempool once the
previous change has committed. Nobody knows in advance at which height a change lands: each
core reads the configuration from its own store's committed chain (``config_at`` =
``store.history.at``), and the harness checks every block against a history it builds
independently from the blocks it has checked (``reference``).

Everything random comes from one ``random.Random(seed)``, so a seed replays exactly:
``python -m tests.sim.run --seed S``.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from ledger.blocks import Block, Certificate, Vote, build_header
from ledger.config import Config, ConfigHistory, apply_change
from ledger.consensus import (
    Broadcast,
    CommitBlock,
    ConsensusConfig,
    ConsensusCore,
    Message,
    MessageReceived,
    Misbehaviour,
    PersistState,
    Proposal,
    RecordEvidence,
    RecordsAvailable,
    ScheduleTimeout,
    SendTo,
    ServeBlocks,
    SignedVote,
    SigningState,
    Start,
    Tick,
    TimeoutFired,
    decode_message,
    encode_message,
)
from ledger.crypto import PrivateKey, is_valid_signature
from ledger.errors import LedgerError
from ledger.genesis import Genesis, Validator, ValidatorSet
from ledger.records import Record
from ledger.store import MemoryStore
from ledger.validation import check_header_fields, check_records, check_unique_within
from tests.factory import (
    ChainBuilder,
    Fixture,
    change_bytes,
    change_record,
    config_doc,
    make_fixture,
    make_governed_fixture,
    seeded_key,
)

FIXTURE = make_fixture()
#: The same validator and client keys, plus three governing organisations (threshold 2).
GOVERNED = make_governed_fixture()
EXTRA_KEYS = [seeded_key(f"sim-validator-{i}") for i in range(3)]  # never in genesis
CHANGE_SHARE = 0.3  # of the seeds that change the validator set
GOVERNED_SHARE = 0.5  # of those, the share whose changes are committed ledger.config records

SIM_CONFIG = ConsensusConfig(
    timeout_propose_ms=300, timeout_propose_delta_ms=100,
    timeout_prevote_ms=200, timeout_prevote_delta_ms=100,
    timeout_precommit_ms=200, timeout_precommit_delta_ms=100,
    timeout_commit_ms=50, resend_ms=400, sync_retry_ms=200, max_block_records=8,
)


@lru_cache(maxsize=1 << 16)
def cached_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """libsodium verification, memoised across the simulated nodes (same answers, faster)."""
    return is_valid_signature(public_key, message, signature)


def record_pool(n: int = 400) -> list[Record]:
    """Signed records shared by every scenario (signing is the slow part)."""
    builder = ChainBuilder(FIXTURE, MemoryStore())
    keys = [FIXTURE.writer, FIXTURE.operator]
    return [builder.record(keys[i % 2], subject=f"plant-{i % 5}/temp") for i in range(n)]


RECORDS = record_pool()
PROBES = 50  # the last records of the pool are kept for liveness probes


class SimMempool:
    """A node's mempool: records it has heard of and its chain does not hold yet."""

    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.pending: dict[bytes, Record] = {}

    def add(self, record: Record) -> None:
        if not self.store.seen_ids([record.id]):
            self.pending.setdefault(record.id, record)

    def remove(self, ids: list[bytes]) -> None:
        for rid in ids:
            self.pending.pop(rid, None)

    def reap(self, max_records: int, max_bytes: int) -> list[Record]:
        out, size = [], 0
        for record in self.pending.values():
            if len(out) >= max_records or size + len(record.envelope) > max_bytes:
                break
            out.append(record)
            size += len(record.envelope)
        return out

    def __len__(self) -> int:
        return len(self.pending)


@dataclass
class SimNode:
    """One simulated process: a core, its store, mempool and persisted signing state."""

    id: int
    key: PrivateKey
    honest: bool
    store: MemoryStore
    mempool: SimMempool
    core: ConsensusCore | None = None
    persisted: SigningState | None = None
    alive: bool = True
    incarnation: int = 0
    equivocate: bool = False
    crash_mid_actions: bool = False
    evidence: list[Any] = field(default_factory=list)
    misbehaviour: list[tuple[int, str]] = field(default_factory=list)


class ValidatorSchedule:
    """The validator set in force at each height: genesis's, then each change's from the
    height it names. It is the ``validators_at`` every simulated core is given."""

    def __init__(self, genesis_set: ValidatorSet) -> None:
        self.starts: list[int] = [1]
        self.sets: list[ValidatorSet] = [genesis_set]
        self.kinds: list[str] = ["genesis"]

    def add(self, height: int, kind: str, members: list[tuple[PrivateKey, int]]) -> None:
        """From ``height`` on, ``members`` (key, power) in this index order."""
        assert height > self.starts[-1] and members
        self.starts.append(height)
        self.kinds.append(kind)
        self.sets.append(ValidatorSet(tuple(
            Validator(i, f"v-{k.public.hex()[:8]}", k.public, power)
            for i, (k, power) in enumerate(members)), since=height))

    def __call__(self, height: int) -> ValidatorSet:
        return self.sets[bisect.bisect_right(self.starts, height) - 1]

    def describe(self) -> str:
        return "; ".join(f"h{h} {kind} {[v.power for v in vs]}"
                         for h, kind, vs in zip(self.starts, self.kinds, self.sets, strict=True))


def plan_changes(rng: random.Random, originals: list[PrivateKey], extras: list[PrivateKey],
                 byzantine: PrivateKey | None) -> ValidatorSchedule:
    """A schedule that adds, removes, re-weights and (at least once) replaces every
    original validator, keeping ``byzantine`` below a third of any set's power."""
    genesis_set = ValidatorSet(tuple(
        Validator(i, f"v{i}", k.public, 1) for i, k in enumerate(originals)))
    schedule = ValidatorSchedule(genesis_set)
    current: list[tuple[PrivateKey, int]] = [(k, 1) for k in originals]
    ops = ["add", "remove", "reweight"]
    rng.shuffle(ops)
    ops.insert(rng.randint(1, 3), "replace")
    ops += rng.sample(["add", "remove", "reweight", "readd"], rng.randint(0, 2))
    height = 1
    for op in ops:
        height += rng.randint(1, 4)
        members = [k for k, _ in current]
        if op == "add" and len(current) < len(originals) + len(extras):
            new = ([k for k in extras if k not in members]
                   or [k for k in originals if k not in members])
            current.append((rng.choice(new), rng.randint(1, 3)))
        elif op == "readd" and any(k not in members for k in originals):
            current.append((rng.choice([k for k in originals if k not in members]),
                            rng.randint(1, 2)))
        elif op == "remove" and len(current) > 1:
            current.pop(rng.randrange(len(current)))
        elif op == "reweight":
            i = rng.randrange(len(current))
            current[i] = (current[i][0], current[i][1] % 4 + 1)
        elif op == "replace":
            current = [(k, rng.randint(1, 3)) for k in extras]
            rng.shuffle(current)
        if byzantine is not None and byzantine in [k for k, _ in current]:
            current = [(k, 1 if k == byzantine else p) for k, p in current]
            while sum(p for _, p in current) <= 3:  # 3 * (the Byzantine's 1) < total
                others = [i for i, (k, _) in enumerate(current) if k != byzantine]
                if not others:  # the Byzantine alone: give it company
                    current.append((extras[0], 1))
                    continue
                i = rng.choice(others)
                current[i] = (current[i][0], current[i][1] + 1)
        schedule.add(height, op, list(current))
    return schedule


class ChangePlan:
    """A schedule's sets as the ``ledger.config`` records that make them, in order: record k
    changes version k to k + 1 (written against it: its ``prev``, the joins of the keys it
    adds), signed and approved by the fixture's admins (a different pair each time)."""

    def __init__(self, fixture: Fixture, schedule: ValidatorSchedule) -> None:
        keys = {k.public: k for k in [*fixture.validator_keys, *EXTRA_KEYS]}
        admins = fixture.admins
        base = config_doc(fixture.genesis)
        config: Config = fixture.genesis.config
        self.kinds = schedule.kinds[1:]
        self.records: list[Record] = []
        for k, vs in enumerate(schedule.sets[1:]):
            doc = {**base, "validators": [
                {"name": v.name, "pubkey": v.pubkey.hex(), "power": v.power} for v in vs]}
            change = change_bytes(config, doc)
            before = {v.pubkey for v in config.validators}
            record = change_record(
                config, admins[k % len(admins)], change,
                approvers=[admins[k % len(admins)], admins[(k + 1) % len(admins)]],
                joiners=[keys[v.pubkey] for v in vs if v.pubkey not in before],
                nonce=5_000_000 + k)
            config = apply_change(config, record, cached_verify)
            self.records.append(record)


class SafetyViolation(AssertionError):
    """Agreement or validity broke."""


class LivenessViolation(AssertionError):
    """No progress after the network healed."""


@dataclass
class Scenario:
    """What one seed does; derived from the seed by ``Scenario.from_seed``."""

    seed: int
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay_ms: int = 50
    twins: bool = False
    equivocator: bool = False
    crashes: int = 0
    partitions: int = 0
    records: int = 20
    fault_window_ms: int = 6000
    liveness_ms: int = 20000
    empty_blocks: bool = True
    changes: bool = False  # the validator set changes over the run (``plan_changes``)
    governed: bool = False  # ... by committed ledger.config records (``ChangePlan``)

    @classmethod
    def from_seed(cls, seed: int) -> Scenario:
        rng = random.Random(seed * 7919 + 1)
        kind = rng.choice(["clean", "lossy", "partition", "crash", "twins", "equivocator",
                           "twins", "mixed"])
        s = cls(seed, records=rng.randint(0, 30), max_delay_ms=rng.choice([5, 50, 200]),
                empty_blocks=rng.random() < 0.7)
        if kind in ("lossy", "mixed", "twins"):
            s.drop, s.duplicate = rng.uniform(0, 0.3), rng.uniform(0, 0.2)
        if kind in ("partition", "mixed", "twins"):
            s.partitions = rng.randint(1, 4)
        if kind in ("crash", "mixed"):
            s.crashes = rng.randint(1, 4)
        s.twins = kind == "twins" or (kind == "mixed" and rng.random() < 0.5)
        s.equivocator = kind == "equivocator" or (kind == "mixed" and not s.twins
                                                  and rng.random() < 0.5)
        s.changes = rng.random() < CHANGE_SHARE  # drawn last: other fields as before
        if s.changes:  # the chain must move through every change: empty blocks on
            s.empty_blocks = True
            s.governed = rng.random() < GOVERNED_SHARE
        return s

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))


class Simulation:
    """Run one scenario on a virtual clock."""

    def __init__(self, scenario: Scenario, fixture: Fixture = FIXTURE,
                 config: ConsensusConfig = SIM_CONFIG,
                 core_factory: Callable[..., ConsensusCore] = ConsensusCore,
                 schedule: ValidatorSchedule | None = None) -> None:
        self.s = scenario
        self.fx = GOVERNED if scenario.governed and fixture is FIXTURE else fixture
        self.config = (config if scenario.empty_blocks
                       else dataclasses.replace(config, create_empty_blocks=False))
        self.core_factory = core_factory
        self.rng = random.Random(scenario.seed)
        self.now = 0
        self.queue: list[tuple[int, int, str, tuple[Any, ...]]] = []
        self.seq = 0
        self.nodes: list[SimNode] = []
        self.partition: list[set[int]] | None = None
        self.committed: dict[int, bytes] = {}  # height -> block hash (honest commits)
        self.checked: set[bytes] = set()
        self.log: list[str] = []
        self.faults_end = 0
        n = len(self.fx.validator_keys)
        byzantine = self.rng.randrange(n) if (scenario.twins or scenario.equivocator) else -1
        self.schedule = schedule  # a test's own, or planned below
        self.change_crash_height = 0  # a node crashes as the chain reaches this height
        keys = list(self.fx.validator_keys)
        #: Governed: the changes to commit, the history the harness builds from the blocks
        #: it checks, and the version whose commit crashes a node.
        self.plan: ChangePlan | None = None
        self.reference: ConfigHistory | None = None
        self.change_crash_version = 0
        if schedule is not None:
            keys += EXTRA_KEYS
        elif scenario.changes:
            planned = plan_changes(
                self.rng, keys, EXTRA_KEYS, keys[byzantine] if byzantine >= 0 else None)
            if scenario.governed:
                self.plan = ChangePlan(self.fx, planned)
                self.reference = ConfigHistory(self.fx.genesis.config)
                self.change_crash_version = self.rng.randint(1, len(self.plan.records))
            else:
                self.schedule = planned
                self.change_crash_height = self.rng.choice(planned.starts[1:])
            keys += EXTRA_KEYS
        for i, key in enumerate(keys):
            self._add_node(key, honest=i != byzantine)
        if scenario.twins:
            self._add_node(self.fx.validator_keys[byzantine], honest=False)
        if scenario.equivocator:
            self.nodes[byzantine].equivocate = True

    # -- set-up -------------------------------------------------------------------------

    def _add_node(self, key: PrivateKey, honest: bool) -> None:
        # Governed: the store follows the committed changes (its ``history``).
        store = MemoryStore(self.fx.genesis.hash,
                            config=self.fx.genesis.config if self.plan is not None else None)
        node = SimNode(len(self.nodes), key, honest, store, SimMempool(store))
        self.nodes.append(node)

    def _new_core(self, node: SimNode) -> ConsensusCore:
        history = node.store.history
        if history is not None:  # governed: the configuration the committed chain holds
            return self.core_factory(self.fx.genesis, node.store, node.mempool, key=node.key,
                                     config=self.config, persisted=node.persisted,
                                     verify=cached_verify, config_at=history.at)
        return self.core_factory(self.fx.genesis, node.store, node.mempool, key=node.key,
                                 config=self.config, persisted=node.persisted,
                                 verify=cached_verify, validators_at=self.schedule)

    def _push(self, at: int, kind: str, *payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, self.seq, kind, payload))

    def _plan_faults(self) -> None:
        s, rng, window = self.s, self.rng, self.s.fault_window_ms
        ids = [n.id for n in self.nodes]
        for _ in range(s.partitions):
            start = rng.randint(0, window)
            groups = self._random_partition(ids)
            self._push(start, "partition", groups)
            self._push(min(window, start + rng.randint(200, 3000)), "heal")
        for _ in range(s.crashes):
            victim = rng.choice([n.id for n in self.nodes if n.honest])
            start = rng.randint(0, window)
            self._push(start, "crash", victim, rng.random() < 0.5)
            self._push(min(window + 1, start + rng.randint(50, 3000)), "restart", victim)
        if s.twins:
            # Twins: the two nodes sharing a key sit on opposite sides of a partition.
            twin_a = next(n.id for n in self.nodes if not n.honest)
            twin_b = self.nodes[-1].id
            others = [i for i in ids if i not in (twin_a, twin_b)]
            rng.shuffle(others)
            cut = rng.randint(1, len(others) - 1)
            groups = [{twin_a, *others[:cut]}, {twin_b, *others[cut:]}]
            start = rng.randint(0, window // 2)
            self._push(start, "partition", groups)
            self._push(min(window, start + rng.randint(500, 4000)), "heal")
        for record in rng.sample(RECORDS[:-PROBES], s.records):
            self._push(rng.randint(0, window), "record", record)
        if self.plan is not None:  # the first change; each next one once its previous commits
            self._push(rng.randint(0, window // 3), "record", self.plan.records[0])
        self._push(window + 2, "heal")
        # A fresh record at the heal, so even a chain that makes no empty blocks must move.
        self._push(window + 2, "record", RECORDS[-1 - rng.randrange(PROBES)])
        self.faults_end = window + 2

    def _random_partition(self, ids: list[int]) -> list[set[int]]:
        shuffled = ids[:]
        self.rng.shuffle(shuffled)
        cut = self.rng.randint(1, len(shuffled) - 1)
        groups = [set(shuffled[:cut]), set(shuffled[cut:])]
        if len(shuffled) > 3 and self.rng.random() < 0.3:
            third = groups[1].pop()
            groups.append({third})
        return groups

    # -- running ------------------------------------------------------------------------

    def run(self) -> None:
        """Run the scenario; raise SafetyViolation / LivenessViolation on failure."""
        self._plan_faults()
        for node in self.nodes:
            self._start(node)
        heights_at_heal: dict[int, int] | None = None
        deadline = self.faults_end + self.s.liveness_ms
        while self.queue:
            at, _, kind, payload = heapq.heappop(self.queue)
            if at > deadline:
                break
            self.now = at
            self._step(kind, payload)
            if heights_at_heal is None and self.now >= self.faults_end:
                heights_at_heal = {n.id: n.store.height for n in self.nodes if n.honest}
            if (heights_at_heal is not None and self._progressed(heights_at_heal)
                    and self._through_schedule()):
                self._check_identical_blocks()
                return
        if heights_at_heal is None or not self._progressed(heights_at_heal):
            raise LivenessViolation(
                f"no honest progress within {self.s.liveness_ms} ms after the heal at "
                f"{self.faults_end} ms; heights "
                f"{ {n.id: n.store.height for n in self.nodes} }")
        # Progress, but a slow chain (loss, long delays) had not reached the last set of
        # its schedule by the deadline: liveness holds; the schedule was only partly run.
        self._check_identical_blocks()

    def _through_schedule(self) -> bool:
        """Every honest node has committed a block under the schedule's last set (a
        changing-set scenario runs on, after progress, until it has; or to the deadline)."""
        if self.plan is not None and self.reference is not None:
            if len(self.reference) <= len(self.plan.records):
                return False  # a change is still to commit
            last = self.reference.start(len(self.plan.records))
            return all(n.store.height >= last for n in self.nodes if n.honest)
        if self.schedule is None:
            return True
        last = self.schedule.starts[-1]
        return all(n.store.height >= last for n in self.nodes if n.honest)

    def validators_at(self, height: int) -> ValidatorSet:
        """The set in force at ``height`` (genesis's unless the scenario changes it)."""
        if self.reference is not None:
            return self.reference.validators_at(height)
        return self.schedule(height) if self.schedule is not None else self.fx.genesis.validators

    def describe_sets(self) -> str:
        """The validator sets of the run, from the height each governed."""
        if self.reference is not None:
            kinds = ["genesis", *(self.plan.kinds if self.plan else [])]
            return "; ".join(f"h{h} {kinds[c.version]} v{c.version} "
                             f"{[v.power for v in c.validators]}"
                             for h, c in self.reference)
        return self.schedule.describe() if self.schedule is not None else ""

    def _check_identical_blocks(self) -> None:
        """Without Byzantine nodes, every block that has a successor is byte-identical on
        every node (certificates are canonicalised by the next block)."""
        if any(not n.honest or n.equivocate for n in self.nodes):
            return
        upto = min(n.store.height for n in self.nodes) - 1
        for height in range(1, upto + 1):
            versions = {n.store.block_bytes(height) for n in self.nodes}
            if len(versions) != 1:
                raise SafetyViolation(f"nodes store different bytes for block {height}")

    def _progressed(self, before: dict[int, int]) -> bool:
        """Every honest node has committed a block beyond the highest height at the heal."""
        target = max(before.values()) + 1
        return all(n.store.height >= target for n in self.nodes if n.honest)

    def _start(self, node: SimNode) -> None:
        node.core = self._new_core(node)
        node.alive = True
        self._execute(node, node.core.handle(Start(self.now)))

    def _step(self, kind: str, payload: tuple[Any, ...]) -> None:
        if kind == "deliver":
            dst, src, message = payload
            node = self.nodes[dst]
            if node.alive and node.core is not None:
                node.core.handle(Tick(self.now))
                self._execute(node, node.core.handle(MessageReceived(src, message)))
        elif kind == "timeout":
            dst, incarnation, event = payload
            node = self.nodes[dst]
            if node.alive and node.core is not None and node.incarnation == incarnation:
                node.core.handle(Tick(self.now))
                self._execute(node, node.core.handle(event))
        elif kind == "record":
            (record,) = payload
            for node in self.nodes:
                self._push(self.now + self.rng.randint(0, self.s.max_delay_ms), "mempool",
                           node.id, record)
        elif kind == "mempool":
            dst, record = payload
            node = self.nodes[dst]
            node.mempool.add(record)
            if node.alive and node.core is not None:
                self._execute(node, node.core.handle(RecordsAvailable()))
        elif kind == "call":  # a test's probe or fault at a given virtual time
            (fn,) = payload
            fn(self)
        elif kind == "partition":
            (groups,) = payload
            self.partition = groups
            self.log.append(f"{self.now}: partition {groups}")
        elif kind == "heal":
            self.partition = None
            self.log.append(f"{self.now}: heal")
        elif kind == "crash":
            victim, mid_actions = payload
            node = self.nodes[victim]
            if node.alive:
                if mid_actions:
                    node.crash_mid_actions = True
                else:
                    self._crash(node)
        elif kind == "restart":
            (victim,) = payload
            node = self.nodes[victim]
            node.crash_mid_actions = False
            if not node.alive:
                self.log.append(f"{self.now}: restart node {victim}")
                self._start(node)

    def _crash(self, node: SimNode) -> None:
        self.log.append(f"{self.now}: crash node {node.id} at height {node.store.height}")
        node.alive = False
        node.core = None
        node.incarnation += 1

    # -- executing actions ----------------------------------------------------------------

    def _execute(self, node: SimNode, actions: list[Any]) -> None:
        cut = len(actions)
        if node.crash_mid_actions and actions:
            cut = self.rng.randint(0, len(actions))  # crash after `cut` actions
        for action in actions[:cut]:
            self._do(node, action)
        if cut < len(actions) or (node.crash_mid_actions and actions):
            node.crash_mid_actions = False
            self._crash(node)

    def _do(self, node: SimNode, action: Any) -> None:
        if isinstance(action, PersistState):
            node.persisted = action.state
        elif isinstance(action, Broadcast):
            for message, peers in self._outgoing(node, action.message):
                data = encode_message(message)
                decoded = decode_message(data)  # every message crosses the wire format
                for peer in peers:
                    self._send(node.id, peer, decoded)
        elif isinstance(action, SendTo):
            if 0 <= action.peer < len(self.nodes):
                self._send(node.id, action.peer, decode_message(encode_message(action.message)))
        elif isinstance(action, ScheduleTimeout):
            self._push(self.now + action.delay_ms, "timeout", node.id, node.incarnation,
                       TimeoutFired(action.height, action.round, action.kind))
        elif isinstance(action, CommitBlock):
            self._commit(node, action.block, action.last_cert)
        elif isinstance(action, RecordEvidence):
            node.evidence.append((action.first, action.second))
        elif isinstance(action, ServeBlocks):
            if node.core is not None and 0 <= action.peer < len(self.nodes):
                for response in node.core.block_responses(action.start, action.stop):
                    self._send(node.id, action.peer, decode_message(encode_message(response)))
        elif isinstance(action, Misbehaviour):
            node.misbehaviour.append((action.peer, action.reason))

    def _outgoing(self, node: SimNode, message: Message) -> list[tuple[Message, list[int]]]:
        peers = [n.id for n in self.nodes if n.id != node.id]
        if not node.equivocate or not isinstance(message, Proposal | SignedVote):
            return [(message, peers)]
        # Byzantine: a different message to a random half of the peers.
        self.rng.shuffle(peers)
        half = len(peers) // 2
        return [(message, peers[:half]), (self._conflicting(node, message), peers[half:])]

    def _conflicting(self, node: SimNode, message: Proposal | SignedVote) -> Message:
        if isinstance(message, SignedVote):
            v = message.vote
            other = None if v.block_hash is not None else b"\xee" * 32
            return SignedVote.sign(Vote(v.chain, v.kind, v.height, v.round, other),
                                   message.validator, node.key)
        header = build_header(
            chain=message.chain, height=message.height, time_ms=message.header.time_ms + 1,
            prev_hash=message.header.prev_hash, records=(), log=node.store.log,
            proposer=message.proposer, validators_hash=message.header.validators_hash)
        return Proposal.sign(message.chain, message.round, message.pol_round, header, (),
                             message.proposer, node.key)

    def _send(self, src: int, dst: int, message: Message) -> None:
        if self.partition is not None and not any(src in g and dst in g for g in self.partition):
            return
        if self.rng.random() < self.s.drop:
            return
        copies = 2 if self.rng.random() < self.s.duplicate else 1
        for _ in range(copies):
            self._push(self.now + self.rng.randint(1, self.s.max_delay_ms), "deliver", dst, src,
                       message)

    # -- invariants ---------------------------------------------------------------------

    def _commit(self, node: SimNode, block: Block, last_cert: Certificate | None) -> None:
        try:
            node.store.append(block, last_cert)
        except LedgerError as exc:
            raise SafetyViolation(f"node {node.id} committed a block its store refuses: "
                                  f"{exc}") from exc
        node.mempool.remove([r.id for r in block.records])
        if not node.honest:
            return
        if block.height + 1 == self.change_crash_height and block.height not in self.committed:
            # Crash a node (maybe half-way through an action list) as the set changes.
            victim = self.rng.choice([n.id for n in self.nodes if n.honest])
            self._push(self.now, "crash", victim, self.rng.random() < 0.5)
            self._push(self.now + self.rng.randint(50, 3000), "restart", victim)
            self.log.append(f"{self.now}: a crash of node {victim} as height "
                            f"{self.change_crash_height} changes the set")
        self._check_valid(block)
        agreed = self.committed.setdefault(block.height, block.hash)
        if agreed != block.hash:
            raise SafetyViolation(
                f"agreement: node {node.id} committed {block.hash.hex()[:16]} at height "
                f"{block.height}, another honest node committed {agreed.hex()[:16]}")

    def _check_valid(self, block: Block) -> None:
        if block.hash in self.checked:
            return
        g = self.fx.genesis
        validators = self.validators_at(block.height)
        authority: Genesis | Config = (g if self.reference is None
                                       else self.reference.at(block.height))
        try:  # the audit's stateless rules (the store checked links and the log)
            check_header_fields(authority, block.header, validators)
            block.validate_basic()
            block.cert.verify(g.chain_id, validators, cached_verify)
            effects = check_records(authority, block.records, cached_verify)
            check_unique_within(block.records)
        except LedgerError as exc:
            raise SafetyViolation(f"validity: block {block.height}: {exc}") from exc
        self.checked.add(block.hash)
        if effects.config is not None and self.reference is not None:
            self._changed(block.height, effects.config)

    def _changed(self, height: int, config: Config) -> None:
        """A change committed at ``height`` (first seen by the harness): the reference
        follows it, the next change of the plan is submitted, maybe a node crashes."""
        assert self.reference is not None and self.plan is not None
        self.reference.append(height, config)
        self.log.append(f"{self.now}: version {config.version} committed at height {height}")
        if config.version < len(self.plan.records):
            self._push(self.now + self.rng.randint(0, 300), "record",
                       self.plan.records[config.version])
        if config.version == self.change_crash_version:
            victim = self.rng.choice([n.id for n in self.nodes if n.honest])
            self._push(self.now, "crash", victim, self.rng.random() < 0.5)
            self._push(self.now + self.rng.randint(50, 3000), "restart", victim)
            self.log.append(f"{self.now}: a crash of node {victim} as version "
                            f"{config.version} commits")


def run_seed(seed: int, core_factory: Callable[..., ConsensusCore] = ConsensusCore) -> Simulation:
    """Run the scenario of ``seed``; failures carry a one-line replay command."""
    sim = Simulation(Scenario.from_seed(seed), core_factory=core_factory)
    try:
        sim.run()
    except (SafetyViolation, LivenessViolation) as exc:
        sets = sim.describe_sets()
        changes = f"\n  validator sets: {sets}" if sets else ""
        raise type(exc)(f"{exc}\n  scenario: {sim.s.describe()}{changes}\n  replay: "
                        f"python -m tests.sim.run --seed {seed} --verbose") from exc
    return sim
