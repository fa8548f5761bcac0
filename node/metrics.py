"""Prometheus text-format metrics, kept by hand (a few gauges, a counter, a histogram)."""

from __future__ import annotations

from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    """What ``GET /metrics`` reports."""

    height: int = 0
    round: int = 0
    mempool: int = 0
    records_committed: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_commit_latency(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.latency_counts[i] += 1
                break
        else:
            self.latency_counts[-1] += 1
        self.latency_sum += seconds

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
            "# HELP ledger_commit_latency_seconds Admission to commit, per record.",
            "# TYPE ledger_commit_latency_seconds histogram",
        ]
        cumulative = 0
        for bound, count in zip(BUCKETS, self.latency_counts, strict=False):
            cumulative += count
            lines.append(f'ledger_commit_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
        cumulative += self.latency_counts[-1]
        lines += [f'ledger_commit_latency_seconds_bucket{{le="+Inf"}} {cumulative}',
                  f"ledger_commit_latency_seconds_sum {self.latency_sum:.6f}",
                  f"ledger_commit_latency_seconds_count {cumulative}",
                  "# HELP ledger_invalid_blocks_total Proposed or synced blocks this node found "
                  "invalid (and prevoted nil for), by the error that said why.",
                  "# TYPE ledger_invalid_blocks_total counter"]
        lines += [f'ledger_invalid_blocks_total{{reason="{reason}"}} {count}'
                  for reason, count in sorted((invalid_blocks or {}).items())]
        return "\n".join(lines) + "\n"
