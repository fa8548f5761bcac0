"""Prometheus text-format metrics, kept by hand (a few gauges, a counter, a histogram)."""

from __future__ import annotations

import asyncio
import bisect
import time
from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Event-loop lag: how late a timer fires (the probe below); finer at the low end, where a
# healthy loop lives.
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25,
               0.5, 1.0)
# Every 50 ms (it was 10): a probe wake-up costs ~75-95 us of CPU on a busy 2-core host
# (epoll, the timer, a task step), ~8-9 ms of CPU per second per node at 10 ms, ~0.2 ms
# per node per height at light load. The histogram samples how late a timer due at an
# arbitrary moment fires: fewer samples, the same distribution.
LAG_PROBE_S = 0.05


@dataclass
class Metrics:
    """What ``GET /metrics`` reports."""

    height: int = 0
    round: int = 0
    mempool: int = 0
    records_committed: int = 0
    blocks_followed: int = 0  # committed by following over HTTP (node.follow)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    loop_lag_counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    loop_lag_sum: float = 0.0
    #: ``POST /v1/log/cosignatures`` answers by result (stored, duplicate, split_view, or the
    #: problem code of a refusal)
    cosignatures: dict[str, int] = field(default_factory=dict)
    #: sealed payload pairs by what happened to them (node.payloads, Node.submit): stored
    #: from peers' answers (fetched), sent to peers (served), stored from a resubmission
    #: (healed), refused from peers for not matching their digests (mismatched)
    payload_pairs: dict[str, int] = field(default_factory=dict)
    #: bytes handed to the peer links (frames, 4-byte length headers included, once per
    #: peer), by what they carry (``frame_kind``)
    peer_bytes_sent: dict[str, int] = field(default_factory=dict)
    #: records of compact proposals received, by how this node came by each: held (in its
    #: mempool or a recent proposal), inline (carried whole), waited (arrived by gossip
    #: while the proposal waited), fetched (asked of a peer); and asked: ids requested
    compact_records: dict[str, int] = field(default_factory=dict)
    #: compact proposals received, by outcome: rebuilt, refetched (ids held with other
    #: envelopes: every record fetched), dropped (records still missing when the wait ended)
    compact_proposals: dict[str, int] = field(default_factory=dict)

    def count_sent(self, kind: str, nbytes: int) -> None:
        self.peer_bytes_sent[kind] = self.peer_bytes_sent.get(kind, 0) + nbytes

    def count_compact(self, outcome: str, records: dict[str, int]) -> None:
        self.compact_proposals[outcome] = self.compact_proposals.get(outcome, 0) + 1
        for how, n in records.items():
            if n:
                self.compact_records[how] = self.compact_records.get(how, 0) + n

    def count_cosignature(self, result: str) -> None:
        self.cosignatures[result] = self.cosignatures.get(result, 0) + 1

    def count_payload_pairs(self, how: str, n: int) -> None:
        if n:
            self.payload_pairs[how] = self.payload_pairs.get(how, 0) + n

    def observe_loop_lag(self, seconds: float) -> None:
        for i, bound in enumerate(LAG_BUCKETS):
            if seconds <= bound:
                self.loop_lag_counts[i] += 1
                break
        else:
            self.loop_lag_counts[-1] += 1
        self.loop_lag_sum += seconds

    async def probe_loop_lag(self) -> None:
        """Forever: sleep ``LAG_PROBE_S`` and record how much later than asked the loop
        woke us: whatever ran on the loop (or kept its thread off the CPU or the GIL)
        meanwhile. A request arriving then waits as long."""
        while True:
            start = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_S)
            self.observe_loop_lag(max(0.0, time.perf_counter() - start - LAG_PROBE_S))

    def observe_commit_latency(self, seconds: float, count: int = 1) -> None:
        """``count`` records committed ``seconds`` after their admission."""
        self.latency_counts[bisect.bisect_left(BUCKETS, seconds)] += count  # first bound >=
        self.latency_sum += seconds * count

    def render(self, peers: int, invalid_blocks: dict[str, int] | None = None) -> str:
        """The text format; ``invalid_blocks``: blocks consensus found invalid, by reason."""
        lines = [
            "# HELP ledger_height Height of the last committed block.",
            "# TYPE ledger_height gauge", f"ledger_height {self.height}",
            "# HELP ledger_round Current consensus round.",
            "# TYPE ledger_round gauge", f"ledger_round {self.round}",
            "# HELP ledger_mempool_records Records waiting in the mempool.",
            "# TYPE ledger_mempool_records gauge", f"ledger_mempool_records {self.mempool}",
            "# HELP ledger_peers_connected Validators with a live authenticated link.",
            "# TYPE ledger_peers_connected gauge", f"ledger_peers_connected {peers}",
            "# HELP ledger_records_committed_total Records committed since start.",
            "# TYPE ledger_records_committed_total counter",
            f"ledger_records_committed_total {self.records_committed}",
            "# HELP ledger_blocks_followed_total Blocks committed by following a validator's"
            " HTTP API (not a validator, no peer link).",
            "# TYPE ledger_blocks_followed_total counter",
            f"ledger_blocks_followed_total {self.blocks_followed}",
        ]
        lines += _histogram("ledger_commit_latency_seconds", "Admission to commit, per record.",
                            BUCKETS, self.latency_counts, self.latency_sum)
        lines += _counter("ledger_invalid_blocks_total", "Proposed or synced blocks this node "
                          "found invalid (and prevoted nil for), by the error that said why.",
                          "reason", invalid_blocks or {})
        lines += _histogram("ledger_event_loop_lag_seconds", "How late a 50 ms timer fires on "
                            "the node's event loop (what a request waits before the node looks "
                            "at it).", LAG_BUCKETS, self.loop_lag_counts, self.loop_lag_sum)
        lines += _counter("ledger_cosignatures_total", "Witness cosignatures posted to this "
                          "node, by result (stored, duplicate, split_view, or why refused).",
                          "result", self.cosignatures)
        lines += _counter("ledger_payload_pairs_total", "Sealed payload pairs by what happened "
                          "to them: committed with their block (with_block), missing when "
                          "their block committed (missing_at_commit), fetched from peers, "
                          "served to peers, healed by a resubmission, or refused from a peer "
                          "for not matching their digests (mismatched).", "how",
                          self.payload_pairs)
        lines += _counter("ledger_peer_bytes_sent_total", "Bytes handed to the peer links "
                          "(with frame headers, counted once per peer), by frame kind.", "kind",
                          self.peer_bytes_sent)
        lines += _counter("ledger_compact_proposals_total", "Compact proposals received, by "
                          "outcome (rebuilt, refetched, dropped: records missing at the end of "
                          "the wait).", "outcome", self.compact_proposals)
        lines += _counter("ledger_compact_records_total", "Records of compact proposals "
                          "received, by how this node came by them (held, inline, waited, "
                          "fetched; asked: ids requested).", "how", self.compact_records)
        return "\n".join(lines) + "\n"


def _histogram(name: str, help_: str, bounds: tuple[float, ...], counts: list[int],
               total: float) -> list[str]:
    """A histogram's lines: ``counts`` per bucket of ``bounds``, the last one above them."""
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    cumulative = 0
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
    cumulative += counts[-1]
    return [*lines, f'{name}_bucket{{le="+Inf"}} {cumulative}', f"{name}_sum {total:.6f}",
            f"{name}_count {cumulative}"]


def _counter(name: str, help_: str, label: str, counts: dict[str, int]) -> list[str]:
    """A counter's lines, one per value of ``label``."""
    return [f"# HELP {name} {help_}", f"# TYPE {name} counter",
            *(f'{name}{{{label}="{value}"}} {count}' for value, count in sorted(counts.items()))]
