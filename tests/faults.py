"""Test-only faults for a real node process, installed by ``tests/faulty_node.py`` (the
entry point the integration tests start instead of ``ledger node run`` when they ask for a
fault); the shipped node only has the no-op ``node.runtime.Hooks``.

``LEDGER_TEST_CRASH_AT=<point>:<n>`` kills the process (``os._exit``, like SIGKILL: no
cleanup) the n-th time it reaches ``point``, one of the steps of the persistence order:
``after_persist`` (signing state on disk, message not yet sent), ``before_commit`` (block
decided, not yet in the store), ``after_commit`` (in the store, no client told yet),
``after_group_commit`` (a block and the signing state written in its transaction, the
messages that state covers not sent, no client told), ``torn_persist`` (a signing-state
file write torn after TORN_AT bytes of its slot, never synced: the reader must fall back to
the previous state), ``after_reserved_send`` (the next height's round-0 proposal sent under
the reservation of the state written before it, with no write of its own: the restarted
node must refuse to propose again).

``LEDGER_TEST_BYZANTINE=equivocate`` makes the node a Byzantine validator: each proposal or
vote it signs goes to half of its peers, and a conflicting one (another block, or nil
instead of a block) to the other half.

``LEDGER_TEST_PARTITION_FILE=<path>`` is a fault-injecting transport for network partitions:
the file holds ``{"groups": [[0, 1], [2, 3]]}`` (or ``{}`` when healed), re-read at most every
100 ms, and frames to or from a validator outside this node's group are dropped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field

from ledger.blocks import Vote, build_header
from ledger.consensus import Message, Proposal, SignedVote
from ledger.crypto import PrivateKey
from ledger.merkle import CompactRange
from node.runtime import Hooks

log = logging.getLogger("ledger.node.faults")
CRASH_POINTS = ("after_persist", "before_commit", "after_commit", "after_group_commit",
                "torn_persist", "after_reserved_send")
TORN_AT = 100  # bytes of a slot written before a torn_persist crash (head and some payload)


@dataclass
class TestFaults(Hooks):
    """The switches read from the environment at start."""

    key: PrivateKey
    crash_at: str | None = None
    crash_after: int = 0
    equivocate: bool = False
    partition_file: str | None = None
    index: int = -1
    _seen: int = 0
    _groups: list[set[int]] = field(default_factory=list)
    _read_at: float = 0.0

    @property
    def filters_peers(self) -> bool:  # type: ignore[override]
        return self.partition_file is not None

    @classmethod
    def from_env(cls, key: PrivateKey, index: int) -> TestFaults:
        faults = cls(key, index=index)
        spec = os.environ.get("LEDGER_TEST_CRASH_AT")
        if spec:
            point, _, count = spec.partition(":")
            if point not in CRASH_POINTS or not count.isdigit():
                raise ValueError(f"LEDGER_TEST_CRASH_AT={spec!r}: expected one of "
                                 f"{CRASH_POINTS} and ':<n>'")
            faults.crash_at, faults.crash_after = point, int(count)
            log.warning("TEST FAULT: will crash at %s #%d", point, faults.crash_after)
        faults.partition_file = os.environ.get("LEDGER_TEST_PARTITION_FILE") or None
        if faults.partition_file:
            log.warning("TEST FAULT: partitions from %s", faults.partition_file)
        if os.environ.get("LEDGER_TEST_BYZANTINE") == "equivocate":
            faults.equivocate = True
            log.warning("TEST FAULT: this validator equivocates")
        return faults

    def blocked(self, peer: int) -> bool:
        """True while a test partition separates this node from validator ``peer``."""
        if self.partition_file is None:
            return False
        now = time.monotonic()
        if now - self._read_at > 0.1:
            self._read_at = now
            try:
                with open(self.partition_file) as f:
                    doc = json.load(f)
                self._groups = [set(g) for g in doc.get("groups", [])]
            except (OSError, ValueError):
                self._groups = []
        if not self._groups:
            return False
        return not any(self.index in g and peer in g for g in self._groups)

    def crash_point(self, point: str) -> None:
        """Die here if this is the configured crash point's n-th visit."""
        if self.crash_at != point:
            return
        self._seen += 1
        if self._seen >= self.crash_after:
            log.warning("TEST FAULT: crashing at %s #%d", point, self._seen)
            logging.shutdown()
            os._exit(137)

    def torn_write(self) -> int | None:
        """TORN_AT on the n-th signing-state file write when the crash point is
        ``torn_persist`` (the write is torn there, then ``crash_point`` exits)."""
        if self.crash_at != "torn_persist":
            return None
        self._seen += 1
        return TORN_AT if self._seen >= self.crash_after else None

    def outgoing(self, message: Message, peers: list[int]
                 ) -> list[tuple[list[int] | None, Message]]:
        """(peers or None for all, message) pairs to send for one broadcast."""
        if not self.equivocate or not isinstance(message, Proposal | SignedVote) or not peers:
            return [(None, message)]
        shuffled = peers[:]
        random.shuffle(shuffled)
        half = max(1, len(shuffled) // 2)
        return [(shuffled[:half], message), (shuffled[half:], self._conflicting(message))]

    def _conflicting(self, message: Proposal | SignedVote) -> Message:
        if isinstance(message, SignedVote):
            v = message.vote
            other = None if v.block_hash is not None else b"\xee" * 32
            return SignedVote.sign(Vote(v.chain, v.kind, v.height, v.round, other),
                                   message.validator, self.key)
        h = message.header
        log_range = CompactRange()  # an empty block with a wrong log: never valid
        header = build_header(chain=h.chain, height=h.height, time_ms=h.time_ms + 1,
                              prev_hash=h.prev_hash, records=(), log=log_range,
                              proposer=h.proposer, validators_hash=h.validators_hash)
        return Proposal.sign(message.chain, message.round, message.pol_round, header, (),
                             message.proposer, self.key, message.last_cert)
