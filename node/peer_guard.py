"""Per-peer budgets the node keeps so that one Byzantine validator cannot starve it.

Small, clock-free pieces (time is passed in, as ``now`` in seconds) that ``node.runtime``
wires to the peer links:

- ``TokenBucket``: a rate with a burst; block serving spends one in blocks and one in
  bytes per peer, proposals one in frames and one in bytes.
- ``Scores``: a misbehaviour score per peer that decays with time; past ``limit`` the
  runtime disconnects the peer and backs it off.
- ``SyncRequests``: which heights this node asked which peer for (block sync), so that
  unsolicited block responses are dropped before anything in them is decoded.
- ``ProposalBudget``: distinct proposals per (peer, height, round) (an honest peer sends
  one; a second is an equivocation worth keeping as evidence; more are dropped).
- ``EvidenceLog``: conflicting signed messages, one per (validator, height, round, kind),
  capped, pruned after a window of heights, and serialisable (the node persists it).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. ``spend`` may go into debt
    (a block's size is known only once it is read): the bucket then refills from below 0."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def available(self, now: float) -> float:
        """Tokens now (refilled since the last call)."""
        if self.tokens < 0 and self.at == 0.0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` if that many are available."""
        if self.available(now) < amount:
            return False
        self.tokens -= amount
        return True

    def spend(self, amount: float, now: float) -> None:
        """Spend ``amount`` whatever is available (may leave a debt)."""
        self.available(now)
        self.tokens -= amount


@dataclass
class Scores:
    """Misbehaviour points per peer, decaying by ``decay_per_s``; ``add`` says when a peer
    went past ``limit`` (its score then starts over)."""

    limit: float = 100.0
    decay_per_s: float = 10.0
    scores: dict[int, tuple[float, float]] = field(default_factory=dict)  # peer -> (score, at)

    def score(self, peer: int, now: float) -> float:
        """The current (decayed) score of ``peer``."""
        value, at = self.scores.get(peer, (0.0, now))
        return max(0.0, value - (now - at) * self.decay_per_s)

    def add(self, peer: int, weight: float, now: float) -> bool:
        """Add ``weight`` points; True if ``peer`` is now past the limit."""
        value = self.score(peer, now) + weight
        if value > self.limit:
            self.scores.pop(peer, None)
            return True
        self.scores[peer] = (value, now)
        return False


@dataclass
class SyncRequests:
    """Heights asked of each peer, for ``window_s`` seconds; each answered once."""

    batch: int
    window_s: float = 10.0
    asked: dict[int, tuple[int, float, set[int]]] = field(default_factory=dict)

    def asked_for(self, peer: int, height: int, now: float) -> None:
        """This node sent ``peer`` a BlockRequest(height)."""
        self.asked[peer] = (height, now + self.window_s, set())

    def answer(self, peer: int, height: int, now: float) -> bool:
        """A response for ``height`` from ``peer`` was asked for (and is not a repeat);
        it counts as answered."""
        entry = self.asked.get(peer)
        if entry is None:
            return False
        start, until, seen = entry
        if now > until or not start <= height < start + self.batch or height in seen:
            return False
        seen.add(height)
        return True


@dataclass
class ProposalBudget:
    """At most ``per_round`` distinct proposals (by signature) per (peer, height, round),
    tracked for the heights the node can use (``lowest`` .. ``lowest + 1``), at most
    ``max_keys`` (height, round) keys *per peer* (a shared bound would let one validator
    use it up and have every other peer's proposals refused), and at most ``next_height``
    distinct proposals per peer for ``lowest + 1`` (the core keeps no more of them, and
    decoding the others' records is work for nothing)."""

    per_round: int = 2
    max_keys: int = 256
    next_height: int = 2
    floor: int = 0
    seen: dict[tuple[int, int, int], set[bytes]] = field(default_factory=dict)
    keys_of: dict[int, int] = field(default_factory=dict)  # peer -> keys held
    next_of: dict[int, int] = field(default_factory=dict)  # peer -> proposals for lowest+1

    def allow(self, peer: int, height: int, round: int, sig: bytes, lowest: int) -> bool:
        """False if this would be one distinct proposal too many (repeats are allowed)."""
        if not lowest <= height <= lowest + 1:
            return True  # the core does not look at its records; nothing kept
        if lowest > self.floor:
            self.seen = {k: v for k, v in self.seen.items() if k[1] >= lowest}
            self.floor = lowest
            self.keys_of, self.next_of = {}, {}
            for (p, h, _), kept in self.seen.items():
                self.keys_of[p] = self.keys_of.get(p, 0) + 1
                if h == lowest + 1:
                    self.next_of[p] = self.next_of.get(p, 0) + len(kept)
        key = (peer, height, round)
        sigs = self.seen.get(key)
        if sigs is not None and sig in sigs:
            return True
        if height == lowest + 1 and self.next_of.get(peer, 0) >= self.next_height:
            return False
        if sigs is None:
            if self.keys_of.get(peer, 0) >= self.max_keys:
                return False
            sigs = self.seen[key] = set()
            self.keys_of[peer] = self.keys_of.get(peer, 0) + 1
        if len(sigs) >= self.per_round:
            return False
        sigs.add(sig)
        if height == lowest + 1:
            self.next_of[peer] = self.next_of.get(peer, 0) + 1
        return True


def evidence_key(entry: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """What one piece of evidence is about: (validator, height, round, kind)."""
    return entry["validator"], entry["height"], entry["round"], entry["kind"]


class EvidenceLog(deque[dict[str, Any]]):
    """The JSON views of conflicting pairs (``node.evidence``; ``/v1/status`` shows the
    last ones): one per (validator, height, round, kind), the newest ``maxlen``, none
    older than ``window`` heights below the chain's height."""

    def __init__(self, entries: Iterable[dict[str, Any]] = (), *, maxlen: int = 1000,
                 window: int = 10_000) -> None:
        super().__init__(maxlen=maxlen)
        self.window = window
        self.keys: set[tuple[Any, Any, Any, Any]] = set()
        for e in entries:
            self.record(e)

    def record(self, entry: dict[str, Any]) -> bool:
        """Keep ``entry`` unless the same (validator, height, round, kind) is kept."""
        key = evidence_key(entry)
        if key in self.keys:
            return False
        if len(self) == self.maxlen:
            self.keys.discard(evidence_key(self[0]))
        self.append(entry)
        self.keys.add(key)
        return True

    def prune(self, height: int) -> bool:
        """Drop evidence for heights older than ``window`` below ``height``; True if any."""
        floor = height - self.window
        if all(e["height"] >= floor for e in self):
            return False
        kept = [e for e in self if e["height"] >= floor]
        self.clear()
        self.keys.clear()
        for e in kept:
            self.record(e)
        return True

    def to_bytes(self) -> bytes:
        """What the node writes to its evidence file."""
        return json.dumps(list(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, **kw: Any) -> EvidenceLog:
        """Read an evidence file (entries that do not have the expected shape are skipped)."""
        entries = json.loads(data)
        if not isinstance(entries, list):
            raise ValueError("the evidence file does not hold a list")
        keys = ("kind", "validator", "height", "round")
        return cls([e for e in entries if isinstance(e, dict) and all(k in e for k in keys)
                    and isinstance(e["height"], int)], **kw)
