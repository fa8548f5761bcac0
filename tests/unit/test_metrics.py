"""The node's hand-kept Prometheus metrics."""

from __future__ import annotations

from node.metrics import BUCKETS, Metrics


def test_commit_latency_counts_each_record_in_the_first_bucket_that_holds_it() -> None:
    """A bound is inclusive (Prometheus ``le``); past the last bound is +Inf; a batch of
    records committed together counts once per record."""
    m = Metrics()
    for seconds in (0.0, BUCKETS[0], 0.0051, BUCKETS[6], BUCKETS[-1], BUCKETS[-1] + 1):
        m.observe_commit_latency(seconds)
    m.observe_commit_latency(0.3, 250)
    expected = [0] * (len(BUCKETS) + 1)
    for index, count in ((0, 2), (1, 1), (6, 1 + 250), (len(BUCKETS) - 1, 1),
                         (len(BUCKETS), 1)):
        expected[index] += count
    assert m.latency_counts == expected
    assert abs(m.latency_sum - (0.005 + 0.0051 + 0.5 + 10.0 + 11.0 + 0.3 * 250)) < 1e-9
    text = m.render(0)
    assert 'ledger_commit_latency_seconds_bucket{le="+Inf"} 256' in text
