"""The pure parts of the open-loop bench (tests/bench/openloop_bench.py): the seeded Poisson
schedule, batching what is due, latency counted from the intended arrival, the curve."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from tests.bench.openloop_bench import Outcome, curve, due, poisson_schedule, summarize


def test_the_schedule_is_seeded_and_has_the_asked_mean_rate() -> None:
    a = poisson_schedule(500.0, 20_000, seed=7)
    assert a == poisson_schedule(500.0, 20_000, seed=7)
    assert a != poisson_schedule(500.0, 20_000, seed=8)
    assert len(a) == 20_000 and all(x < y for x, y in itertools.pairwise(a))
    # mean rate within 3% (the standard error of 20,000 exponential gaps is 0.7%)
    assert len(a) / a[-1] == pytest.approx(500.0, rel=0.03)
    gaps = [y - x for x, y in itertools.pairwise([0.0, *a])]
    # exponential gaps: the standard deviation equals the mean (a fixed-rate ticker's is 0)
    assert statistics.pstdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.05)


def test_the_schedule_is_bounded_by_count_and_duration() -> None:
    assert len(poisson_schedule(1000.0, 50, seed=1)) == 50
    short = poisson_schedule(1000.0, 1_000_000, seed=1, duration=2.0)
    assert short[-1] <= 2.0 and len(short) == pytest.approx(2000, rel=0.1)
    with pytest.raises(ValueError):
        poisson_schedule(0.0, 10, seed=1)


def test_a_batch_takes_what_is_due_up_to_the_cap() -> None:
    schedule = [0.001, 0.002, 0.003, 0.010, 0.011]
    assert due(schedule, 0, 0.0025, cap=10) == 2  # the third is not due yet
    assert due(schedule, 0, 0.0005, cap=10) == 1  # the first always goes
    assert due(schedule, 0, 1.0, cap=3) == 3
    assert due(schedule, 3, 1.0, cap=10) == 5


def test_latency_runs_from_the_intended_arrival_not_the_send() -> None:
    # A record meant for t=1.0 that the client only got onto the wire at 1.5 (it was
    # behind) and that committed at 1.6 waited 600 ms, not 100 ms.
    late = Outcome(intended=1.0, sent=1.5, acked=1.6, error=None)
    assert late.latency == pytest.approx(0.6)
    assert late.lateness == pytest.approx(0.5)
    outcomes = [Outcome(i / 100, i / 100, i / 100 + 0.01, None) for i in range(1, 100)]
    outcomes.append(late)
    outcomes.append(Outcome(1.2, 1.2, 1.3, "http 503"))
    outcomes.append(Outcome(1.3))  # never sent
    s = summarize(outcomes, target_rate=100.0)
    assert s["records"] == 102 and s["committed"] == 100
    assert s["errors"] == 2 and s["errors_by_kind"] == {"http 503": 1, "not sent": 1}
    assert s["p50_ms"] == pytest.approx(10.0)
    assert s["max_ms"] == pytest.approx(600.0)
    assert s["lateness_max_ms"] == pytest.approx(500.0)
    assert s["offered_rate"] == pytest.approx(102 / 1.3)
    assert s["committed_rate"] == pytest.approx(100 / 1.6)  # until the last acknowledgement


def test_percentiles_and_the_curve() -> None:
    # 1,000 committed records with latencies 1..1000 ms
    outcomes = [Outcome(0.0, 0.0, ms / 1000, None) for ms in range(1, 1001)]
    s = summarize(outcomes, target_rate=1.0)
    assert (s["p50_ms"], s["p99_ms"], s["p999_ms"]) == pytest.approx((501, 991, 1000))
    assert math.isclose(s["lateness_p99_ms"], 0.0)
    phases = [{"committed_rate": r, "p50_ms": r / 10, "p99_ms": r, "p999_ms": 2 * r}
              for r in (300.0, 100.0, 200.0)]
    assert curve(phases) == {"rate": [100.0, 200.0, 300.0], "p50_ms": [10.0, 20.0, 30.0],
                             "p99_ms": [100.0, 200.0, 300.0],
                             "p999_ms": [200.0, 400.0, 600.0]}


def test_the_sender_against_a_stub_node() -> None:
    """``drive`` over the bench's own HTTP client, against a stub that answers each batch
    20 ms later (the 7th request's records are refused) and closes every third
    connection after answering: every record is sent once its time has come, latency
    includes the stub's 20 ms, and a closed keep-alive connection is reopened."""
    import asyncio
    import json
    import time

    import msgpack

    from tests.bench.openloop_bench import Sender, drive

    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            items = msgpack.unpackb(await reader.readexactly(length))
            seen.append(len(items))
            refused = len(seen) == 7
            await asyncio.sleep(0.02)
            body = json.dumps({"results": [
                {"id": "00", "status": "rejected", "error": "invalid_signature"} if refused
                else {"id": "00", "status": "accepted", "height": 1} for _ in items]}).encode()
            served += 1
            close = served % 3 == 0
            writer.write(b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\n"
                         + f"content-length: {len(body)}\r\n".encode()
                         + (b"connection: close\r\n" if close else b"") + b"\r\n" + body)
            await writer.drain()
            if close:
                break
        writer.close()

    async def main() -> list[Outcome]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        schedule = poisson_schedule(400.0, 80, seed=3)
        sender = Sender([f"http://127.0.0.1:{port}"], window=0.005, max_batch=4, per_node=8,
                        timeout=5)
        async with server:
            out = await drive(sender, [b"x%d" % i for i in range(len(schedule))], schedule,
                              time.monotonic() + 0.05)
        assert sender.requests == len(seen)
        return out

    out = asyncio.run(main())
    assert len(out) == 80 and sum(seen) == 80 and max(seen) <= 4
    refused = [o for o in out if o.error is not None]
    assert 1 <= len(refused) <= 4 and {o.error for o in refused} == {"invalid_signature"}
    for o in out:
        assert o.sent >= o.intended - 1e-3  # never before its time
        assert o.latency >= 0.02 and o.latency == pytest.approx(o.acked - o.intended)
    s = summarize(out, 400.0)
    assert s["committed"] == 80 - len(refused) and s["p50_ms"] >= 20
